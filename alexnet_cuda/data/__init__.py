"""The data pipeline of `alexnet-cuda train`: the built-in synthetic set,
the paper's preprocessing packed into memory-mapped arrays, and the training
(augmenting) and evaluation loaders.

The cache: $ALEXNET_CUDA_CACHE (default ~/.cache/alexnet-cuda, see
default_cache_root) holds the built-in synthetic set (synthetic-v2-...) and,
under prepared/ (prepared_cache_dir), the prepared copies of raw image
folders that train, eval and visualize make on their own: one entry per
source folder and size (<name>-s<size>-<key>, or ...-val when only val/ was
prepared for evaluation). An entry remembers a fingerprint of its source's
file list (paths, sizes, modification times); when images are added,
removed or changed it is prepared again on the next run. Deleting the folder
only costs the time to prepare again.
"""
from .errors import DataError
from .loader import EvalLoader, TrainLoader, load_image_for_predict
from .prepare import (PreparedDataset, cache_entry, ensure_prepared, is_prepared, list_classes,
                      prepare_dataset, prepared_cache_dir)
from .synthetic import SHAPES, default_cache_root, make_synthetic_dataset

__all__ = [
    "DataError", "make_synthetic_dataset", "prepare_dataset", "PreparedDataset",
    "is_prepared", "ensure_prepared", "TrainLoader", "EvalLoader",
    "load_image_for_predict", "default_cache_root", "SHAPES", "list_classes",
    "prepared_cache_dir", "cache_entry",
]
