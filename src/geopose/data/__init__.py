"""Training data: sources (data folder or prepared cache), the data set and sampler, folds.

Modules import one way: ``sources`` -> ``cache`` -> ``base`` (the source interface) and
``dataset`` -> ``base``; ``folds`` stands alone. The types they hand on (``Sample``,
``Item``, ``Batch``) and the seed rule are :mod:`geopose.types`'.
"""

from geopose.data.base import ImageHandle, ImageSource
from geopose.data.cache import CacheSource, PreparedCache, is_cache, prepare_cache
from geopose.data.dataset import EpochSampler, GeoposeDataset, ResumableLoader, collate, to_item
from geopose.data.folds import load_or_make_folds, make_folds, split_stems
from geopose.data.sources import FolderSource, open_source

__all__ = [
    "CacheSource",
    "EpochSampler",
    "FolderSource",
    "GeoposeDataset",
    "ImageHandle",
    "ImageSource",
    "PreparedCache",
    "ResumableLoader",
    "collate",
    "is_cache",
    "load_or_make_folds",
    "make_folds",
    "open_source",
    "prepare_cache",
    "split_stems",
    "to_item",
]
