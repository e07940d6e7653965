"""Training: a resumable, accelerate-based ``Trainer`` configured by ``TrainConfig``."""

from workbench.train.config import TrainConfig
from workbench.train.trainer import (
    CheckpointMismatchError,
    LogHistory,
    NonFiniteLossError,
    Trainer,
    TrainerCallback,
    latest_checkpoint,
    set_seed,
)

__all__ = [
    "CheckpointMismatchError",
    "LogHistory",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "TrainerCallback",
    "latest_checkpoint",
    "set_seed",
]
