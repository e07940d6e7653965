"""Training: a resumable, accelerate-based ``Trainer`` configured by ``TrainConfig``.

Checkpoint I/O (save / load / resume / mismatch checks / RNG state) is in
:mod:`workbench.train.checkpoint`, as functions any training loop can call.
"""

from workbench.train.checkpoint import CheckpointMismatchError, latest_checkpoint
from workbench.train.config import TrainConfig
from workbench.train.trainer import (
    LogHistory,
    NonFiniteLossError,
    Trainer,
    TrainerCallback,
    end_distributed,
    set_seed,
)

__all__ = [
    "CheckpointMismatchError",
    "LogHistory",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "TrainerCallback",
    "end_distributed",
    "latest_checkpoint",
    "set_seed",
]
