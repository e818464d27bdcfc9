"""DataError lives with the package's other error classes (alexnet_cuda.errors)."""
from ..errors import DataError  # noqa: F401
