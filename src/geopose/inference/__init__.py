"""Inference: D4 test-time augmentation (``tta``), tiled full-size prediction (``tiling``),
ensembles (``ensemble``), the predictor (``predictor``), satellite scenes of any size window by
window into COGs (``scene``, with its background threads in ``background``), folders of images
as jobs through one loop (``jobs``), and ``geopose predict`` as a function, sharded over
torchrun ranks (``run``).

>>> from geopose.inference import Predictor
>>> predictor, _ = Predictor.from_checkpoints([("best.ckpt", 1.0)], tta="d4", device="cuda")
>>> pred = predictor.predict(rgb, gsd=0.3, city=2)   # .agl (m), .mag (px), .angle, .scale
"""

from geopose.inference.average import average_outputs, mean_direction, weighted_mean
from geopose.inference.ensemble import Ensemble
from geopose.inference.jobs import (
    ImageJob,
    JobOutcome,
    RunSummary,
    SceneOptions,
    predict_jobs,
    resolve_jobs,
)
from geopose.inference.predictor import ImagePrediction, Predictor
from geopose.inference.run import PredictReport, run_predict
from geopose.inference.scene import SceneResult, predict_scene
from geopose.inference.tiling import predict_tiled, tile_starts
from geopose.inference.tta import (
    TTA_MODES,
    TTA_VIEWS,
    TtaChoice,
    choose_tta,
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
    "TTA_MODES",
    "TTA_VIEWS",
    "Ensemble",
    "ImageJob",
    "JobOutcome",
    "ImagePrediction",
    "PredictReport",
    "Predictor",
    "RunSummary",
    "SceneOptions",
    "SceneResult",
    "TtaChoice",
    "average_outputs",
    "choose_tta",
    "d4_direction",
    "d4_direction_inverse",
    "d4_field",
    "d4_field_inverse",
    "d4_tensor",
    "d4_tensor_inverse",
    "mean_direction",
    "predict_jobs",
    "predict_scene",
    "predict_tiled",
    "predict_tta",
    "resolve_jobs",
    "run_predict",
    "tile_starts",
    "tta_views",
    "weighted_mean",
]
