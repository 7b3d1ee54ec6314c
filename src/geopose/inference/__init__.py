"""Inference: D4 test-time augmentation, tiled full-size prediction, ensembles, folders of
images to competition submissions or GeoTIFFs, sharded over torchrun ranks, satellite scenes of
any size window by window into COGs (``predict_scene``).

>>> from geopose.inference import Predictor
>>> predictor, _ = Predictor.from_checkpoints([("best.ckpt", 1.0)], tta="d4", device="cuda")
>>> pred = predictor.predict(rgb, gsd=0.3, city=2)   # .agl (m), .mag (px), .angle, .scale
"""

from geopose.inference.average import average_outputs, mean_direction, weighted_mean
from geopose.inference.ensemble import Ensemble, load_ensemble, read_ensemble_spec
from geopose.inference.predictor import (
    ImageJob,
    ImagePrediction,
    Predictor,
    RunSummary,
    predict_jobs,
    resolve_jobs,
)
from geopose.inference.run import PredictReport, run_predict
from geopose.inference.scene import SceneResult, predict_scene
from geopose.inference.tiling import predict_tiled, tile_starts
from geopose.inference.tta import (
    TTA_VIEWS,
    d4_direction,
    d4_direction_inverse,
    d4_field,
    d4_field_inverse,
    d4_tensor,
    d4_tensor_inverse,
    predict_tta,
    tta_views,
)

__all__ = [
    "TTA_VIEWS",
    "Ensemble",
    "ImageJob",
    "ImagePrediction",
    "PredictReport",
    "Predictor",
    "RunSummary",
    "SceneResult",
    "average_outputs",
    "d4_direction",
    "d4_direction_inverse",
    "d4_field",
    "d4_field_inverse",
    "d4_tensor",
    "d4_tensor_inverse",
    "load_ensemble",
    "mean_direction",
    "predict_jobs",
    "predict_scene",
    "predict_tiled",
    "predict_tta",
    "read_ensemble_spec",
    "resolve_jobs",
    "run_predict",
    "tile_starts",
    "tta_views",
    "weighted_mean",
]
