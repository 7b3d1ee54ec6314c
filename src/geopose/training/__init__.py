"""Lightning training: the task (model + loss + score), the data module, and ``train``."""

from geopose.logs import apply_from_env
from geopose.training.run import TrainingDiverged, train
from geopose.training.task import GeoposeTask, lr_factor

# After Lightning's import (it sets its loggers' level): the CLI's quiet mode, also in the
# DataLoader workers and DDP processes it starts.
apply_from_env()

__all__ = ["GeoposeTask", "TrainingDiverged", "lr_factor", "train"]
