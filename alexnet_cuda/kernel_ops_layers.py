"""Kernel-backed LRN, max-pooling, dropout, softmax cross-entropy, SGD and top-k ops."""


class LayerOps:
    pass
