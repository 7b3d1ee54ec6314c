"""``geopose demo``: the whole pipeline on synthetic data, on CPU, within a time budget.

synth -> train (``cpu_small``) -> predict with D4 TTA -> evaluate -> rectify a few -> report.
Each step leaves its output in the demo folder and is skipped (or resumed) when run again.

The budget covers the whole pipeline. Right before training, the steps after it are timed on
this machine at its present load (:func:`measure_post_costs`: the demo's model predicting a
test image with the demo's TTA, a rectification, a report figure). Training stops when the time
left is what those steps need, times the slowdown since (:class:`TrainTimeBox`: the training
steps' times, and near the end the prediction re-timed). Prediction measures itself as it goes:
if it runs late anyway, the images left get fewer TTA views (d4 -> d2 -> flip -> none,
:class:`TtaPlanner`). ``scores.json`` (``demo``) records the times and the TTA each image got.

``settings`` holds what the demo makes and its fixed choices, ``budget`` the time budget, and
``steps`` the steps and :func:`run_demo`.
"""

from geopose.demo.budget import (
    LOAD_RANGE,
    PostCosts,
    SpeedProbe,
    TrainTimeBox,
    TtaPlanner,
    choose_tta,
    clock,
    measure_post_costs,
)
from geopose.demo.settings import (
    DEMO_RECIPE,
    TRAIN_IMAGES,
    UNBOUNDED_EPOCHS,
    DemoSettings,
)
from geopose.demo.steps import (
    claim_folder,
    demo_tta,
    disk_needed,
    make_cache,
    make_data,
    run_demo,
    train_config,
    train_model,
    train_overrides,
)

__all__ = [
    "DEMO_RECIPE",
    "LOAD_RANGE",
    "TRAIN_IMAGES",
    "UNBOUNDED_EPOCHS",
    "DemoSettings",
    "PostCosts",
    "SpeedProbe",
    "TrainTimeBox",
    "TtaPlanner",
    "choose_tta",
    "claim_folder",
    "clock",
    "demo_tta",
    "disk_needed",
    "make_cache",
    "make_data",
    "measure_post_costs",
    "run_demo",
    "train_config",
    "train_model",
    "train_overrides",
]
