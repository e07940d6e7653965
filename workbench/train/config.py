"""``TrainConfig``: every knob of :class:`workbench.train.Trainer`, checked on construction.

Names follow TRL / ``transformers.TrainingArguments`` where a counterpart exists
(``max_steps``, ``warmup_steps``, ``weight_decay``, ``max_grad_norm``, ``save_total_limit``,
``seed``) and nanoGPT where it is shorter (``lr``, ``betas``, ``batch_size``). Build one from
YAML / CLI mappings with :func:`workbench.config.config_from_dict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from workbench.config import check_choice, check_range, check_that

LR_SCHEDULES = ("cosine", "constant", "linear")
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Settings of one training run (optimizer, schedule, data order, logging, checkpoints)."""

    output_dir: str | None = None
    """Folder for ``checkpoint-{step}/`` sub-folders. ``None``: never write checkpoints."""

    max_steps: int = 1000
    """Total number of optimizer steps (not micro-batches). Raise it and call ``train()``
    again to continue, e.g. for the next stage of a curriculum. ``>= 0``."""

    max_time_s: float | None = None
    """Stop once the total training wall time (all ``train()`` calls and resumes of this run
    together, evaluation and saving included) reaches this many seconds; checked after every
    optimizer step. ``None``: no time limit. ``> 0``."""

    batch_size: int = 8
    """Examples per micro-batch, per process. ``>= 1``."""

    grad_accum_steps: int = 1
    """Micro-batches whose gradients are summed (loss averaged) before one optimizer step.
    Examples per optimizer step = ``batch_size * grad_accum_steps * num_processes``. ``>= 1``."""

    lr: float = 3e-4
    """Peak learning rate of AdamW (reached after warm-up). ``>= 0``."""

    weight_decay: float = 0.0
    """AdamW decoupled weight decay, applied only to parameters with ``dim >= 2`` (matrices,
    embeddings); biases and norm gains are never decayed. ``>= 0``."""

    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW ``(beta1, beta2)``, each in ``[0, 1)``."""

    warmup_steps: int = 0
    """Linear warm-up length in optimizer steps: step ``i < warmup_steps`` uses
    ``lr * (i + 1) / warmup_steps``. ``>= 0``."""

    lr_schedule: Literal["cosine", "constant", "linear"] = "cosine"
    """Shape after warm-up: ``"cosine"`` decays to ``lr * min_lr_ratio`` at ``max_steps``,
    ``"linear"`` does the same along a straight line, ``"constant"`` stays at ``lr``."""

    min_lr_ratio: float = 0.1
    """Floor of the decaying schedules as a fraction of ``lr`` (``0`` decays to zero). In
    ``[0, 1]``."""

    decay_fraction: float = 1.0
    """The decay reaches its floor after this fraction of the run (of ``max_steps``, or of
    ``max_time_s`` with ``schedule_by_time``) and stays there for the rest. Small models on
    synthetic tasks often need a long low-lr tail to consolidate. In ``(0, 1]``."""

    max_grad_norm: float | None = 1.0
    """Clip the global L2 norm of the gradients to this value. ``None`` disables clipping (the
    norm is still logged). ``> 0``."""

    log_every: int = 10
    """Append a row to ``trainer.log_history`` (and call ``on_log``) every this many optimizer
    steps; the last step of a ``train()`` call is always logged. ``>= 1``."""

    eval_every: int | None = None
    """Call ``eval_fn(trainer)`` every this many optimizer steps. ``None`` disables periodic
    evaluation (``trainer.evaluate()`` still works). ``>= 1``."""

    save_every: int | None = None
    """Write ``output_dir/checkpoint-{step}`` every this many optimizer steps. ``None``
    disables periodic saves; a final checkpoint is still written at the end of ``train()``
    whenever ``output_dir`` is set. ``>= 1``."""

    save_total_limit: int | None = 3
    """Keep at most this many ``checkpoint-*`` folders in ``output_dir`` (oldest deleted
    first). ``None`` keeps all. ``>= 1``."""

    seed: int = 0
    """Seeds python/numpy/torch when the ``Trainer`` is built (dropout) and the data order
    (epoch ``e`` is shuffled by a ``torch.Generator`` seeded from ``(seed, e)``). Seed the model
    initialisation yourself before building the model (``workbench.train.set_seed``). ``>= 0``."""

    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast mode handed to ``accelerate.Accelerator``: ``"no"`` (fp32), ``"bf16"`` or
    ``"fp16"`` (with a dynamic loss scaler)."""

    progress: bool = True
    """Show a tqdm progress bar (also off when the environment sets ``TQDM_DISABLE=1`` and on
    processes other than the local main one)."""

    schedule_by_time: bool = False
    """With ``max_time_s``: the lr decay also advances with elapsed training time, so a
    time-budgeted run ends on the low lr of a finished schedule whatever the machine's speed.
    Losses then depend on machine speed (not bit-reproducible across machines)."""

    warmup_time_fraction: float = 0.05
    """With ``schedule_by_time``: the warm-up also ends once this fraction of ``max_time_s``
    has elapsed, so a slow machine does not spend its whole budget warming up. In ``(0, 1]``."""

    resume: bool = False
    """On the first ``train()`` call, continue from the latest ``checkpoint-*`` in
    ``output_dir`` if there is one (model, optimizer, schedule, RNG and data position)."""

    shuffle: bool = True
    """Shuffle the training set every epoch (deterministically from ``seed``)."""

    drop_last: bool = False
    """Drop the last incomplete micro-batch of each epoch."""

    def __post_init__(self) -> None:
        for name, lo in (
            ("max_steps", 0), ("batch_size", 1), ("grad_accum_steps", 1), ("warmup_steps", 0),
            ("log_every", 1), ("seed", 0),
        ):  # fmt: skip
            _as_int(self, name)
            check_range(self, name, ge=lo, integer=True)
        for name in ("eval_every", "save_every", "save_total_limit"):
            _as_int(self, name)
            check_range(self, name, ge=1, integer=True, allow_none=True)
        check_range(self, "lr", ge=0.0)
        check_range(self, "weight_decay", ge=0.0)
        check_range(self, "min_lr_ratio", ge=0.0, le=1.0)
        check_range(self, "decay_fraction", gt=0.0, le=1.0)
        check_range(self, "warmup_time_fraction", gt=0.0, le=1.0)
        check_range(self, "max_time_s", gt=0.0, allow_none=True)
        check_range(self, "max_grad_norm", gt=0.0, allow_none=True)
        for name in ("lr", "weight_decay", "min_lr_ratio", "decay_fraction",
                     "warmup_time_fraction", "max_time_s", "max_grad_norm"):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                check_that(self, name, math.isfinite(value), "a finite number")
                setattr(self, name, float(value))
        betas = self.betas
        check_that(
            self,
            "betas",
            isinstance(betas, (tuple, list))
            and len(betas) == 2
            and all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                for b in betas
            ),
            "a pair (beta1, beta2) with each value in [0, 1)",
        )
        self.betas = (float(betas[0]), float(betas[1]))
        check_choice(self, "lr_schedule", LR_SCHEDULES)
        check_choice(self, "mixed_precision", MIXED_PRECISION)
        for name in ("progress", "resume", "shuffle", "drop_last"):
            check_that(self, name, isinstance(getattr(self, name), bool), "True or False")
        check_that(
            self,
            "output_dir",
            self.output_dir is None
            or (isinstance(self.output_dir, str) and bool(self.output_dir.strip())),
            "a non-empty path string or None",
        )
        check_that(
            self,
            "resume",
            not (self.resume and self.output_dir is None),
            "False when output_dir is None (resume continues from the checkpoint-* folders "
            "in output_dir): set output_dir or resume=False",
        )


def _as_int(owner, name: str) -> None:
    """YAML and the CLI may give ``300.0`` for an integer field: keep it as ``300``."""
    value = getattr(owner, name)
    if isinstance(value, float) and value.is_integer():
        setattr(owner, name, int(value))
