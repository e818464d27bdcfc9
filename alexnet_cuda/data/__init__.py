"""The data pipeline of `alexnet-cuda train`: the built-in synthetic set,
the paper's preprocessing packed into memory-mapped arrays, and the training
(augmenting) and evaluation loaders."""
from .errors import DataError
from .loader import EvalLoader, TrainLoader, load_image_for_predict
from .prepare import PreparedDataset, ensure_prepared, is_prepared, prepare_dataset
from .synthetic import SHAPES, default_cache_root, make_synthetic_dataset

__all__ = [
    "DataError", "make_synthetic_dataset", "prepare_dataset", "PreparedDataset",
    "is_prepared", "ensure_prepared", "TrainLoader", "EvalLoader",
    "load_image_for_predict", "default_cache_root", "SHAPES",
]
