"""alexnet-cuda: the paper's AlexNet trained with hand-written CUDA kernels.

    >>> import alexnet_cuda
    >>> be = alexnet_cuda.get_backend()          # cuda if a GPU is usable, else numpy
    >>> model = alexnet_cuda.AlexNet(backend=be)
"""
__version__ = "0.1.0"
__all__ = ["AlexNet", "get_backend", "available_backends", "__version__"]

import os as _os

# Developers building in their own CMake folder can point the package at the extensions
# there (ALEXNET_CUDA_EXT_DIR=build/dev/ext) instead of the installed ones.
if _os.environ.get("ALEXNET_CUDA_EXT_DIR"):
    __path__.insert(0, _os.path.abspath(_os.environ["ALEXNET_CUDA_EXT_DIR"]))

from .backends import available_backends, get_backend  # noqa: E402,F401
from .model import AlexNet  # noqa: E402,F401
