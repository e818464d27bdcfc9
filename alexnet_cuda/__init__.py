"""alexnet-cuda: the paper's AlexNet trained with hand-written CUDA kernels.

    >>> import alexnet_cuda
    >>> be = alexnet_cuda.get_backend()          # cuda if a GPU is usable, else numpy
    >>> model = alexnet_cuda.AlexNet(backend=be)
"""
__version__ = "0.1.0"

import os as _os

# Developers building in their own CMake folder can point the package at the extensions
# there (ALEXNET_CUDA_EXT_DIR=build/dev/ext) instead of the installed ones.
if _os.environ.get("ALEXNET_CUDA_EXT_DIR"):
    __path__.insert(0, _os.path.abspath(_os.environ["ALEXNET_CUDA_EXT_DIR"]))

from .backends import available_backends, get_backend  # noqa: F401


def __getattr__(name):
    # The model pulls in more modules; load it on first use.
    if name == "AlexNet":
        from .model import AlexNet
        return AlexNet
    raise AttributeError(f"module 'alexnet_cuda' has no attribute {name!r}")
