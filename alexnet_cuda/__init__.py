"""alexnet-cuda: the paper's AlexNet trained with hand-written CUDA kernels."""
__version__ = "0.1.0"
