"""Lightning training: the task (model + loss + score), the data module, ``train``, and
``plan_run`` (how a run starts or resumes: ``geopose train`` and ``geopose demo``)."""

from geopose.logs import apply_from_env
from geopose.training.run import RunPlan, TrainingDiverged, plan_run, train
from geopose.training.task import GeoposeTask, lr_factor

# After Lightning's import (it sets its loggers' level): the CLI's quiet mode, also in the
# DataLoader workers and DDP processes it starts.
apply_from_env()

__all__ = ["GeoposeTask", "RunPlan", "TrainingDiverged", "lr_factor", "plan_run", "train"]
