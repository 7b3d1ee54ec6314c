"""Training data: sources (data folder or prepared cache), the data set and sampler, folds."""

from geopose.data.cache import CacheSource, is_cache, prepare_cache
from geopose.data.dataset import EpochSampler, GeoposeDataset, ResumableLoader, to_item
from geopose.data.folds import load_or_make_folds, make_folds, split_stems
from geopose.data.sources import FolderSource, ImageSource, open_source

__all__ = [
    "CacheSource",
    "EpochSampler",
    "FolderSource",
    "GeoposeDataset",
    "ImageSource",
    "ResumableLoader",
    "is_cache",
    "load_or_make_folds",
    "make_folds",
    "open_source",
    "prepare_cache",
    "split_stems",
    "to_item",
]
