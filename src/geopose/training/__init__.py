"""Lightning training: the task (model + loss + score), the data module, and ``train``."""

from geopose.training.run import TrainingDiverged, train
from geopose.training.task import GeoposeTask, lr_factor

__all__ = ["GeoposeTask", "TrainingDiverged", "lr_factor", "train"]
