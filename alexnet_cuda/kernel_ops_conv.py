"""Kernel-backed conv2d and linear ops."""


class ConvOps:
    pass
