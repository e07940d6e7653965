"""``TrainConfig``: every knob of :class:`workbench.train.Trainer`, checked on construction.

Names follow TRL / ``transformers.TrainingArguments`` where a counterpart exists
(``max_steps``, ``warmup_steps``, ``weight_decay``, ``max_grad_norm``, ``save_total_limit``,
``seed``) and nanoGPT where it is shorter (``lr``, ``betas``, ``batch_size``). Build one from
YAML / CLI mappings with :func:`workbench.config.config_from_dict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from workbench.config import ConfigError

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
        self.max_steps = _int("max_steps", self.max_steps, lo=0)
        self.batch_size = _int("batch_size", self.batch_size, lo=1)
        self.grad_accum_steps = _int("grad_accum_steps", self.grad_accum_steps, lo=1)
        self.warmup_steps = _int("warmup_steps", self.warmup_steps, lo=0)
        self.log_every = _int("log_every", self.log_every, lo=1)
        self.seed = _int("seed", self.seed, lo=0)
        for name in ("eval_every", "save_every", "save_total_limit"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _int(name, value, lo=1, optional=True))

        self.lr = _float("lr", self.lr, lo=0.0)
        self.weight_decay = _float("weight_decay", self.weight_decay, lo=0.0)
        self.min_lr_ratio = _float("min_lr_ratio", self.min_lr_ratio, lo=0.0, hi=1.0)
        self.decay_fraction = _float(
            "decay_fraction", self.decay_fraction, lo=0.0, lo_open=True, hi=1.0
        )
        self.warmup_time_fraction = _float(
            "warmup_time_fraction", self.warmup_time_fraction, lo=0.0, lo_open=True, hi=1.0
        )
        if self.max_time_s is not None:
            self.max_time_s = _float(
                "max_time_s", self.max_time_s, lo=0.0, lo_open=True, optional=True
            )
        if self.max_grad_norm is not None:
            self.max_grad_norm = _float(
                "max_grad_norm", self.max_grad_norm, lo=0.0, lo_open=True, optional=True
            )

        betas = self.betas
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ConfigError(
                f"TrainConfig.betas must be a pair (beta1, beta2) with each value in "
                f"[0, 1), got {betas!r}"
            )
        self.betas = tuple(_float("betas", b, lo=0.0, hi=1.0, hi_open=True) for b in betas)  # type: ignore[assignment]

        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        for name in ("progress", "resume", "shuffle", "drop_last"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"TrainConfig.{name} must be True or False, got {getattr(self, name)!r}"
                )
        if self.output_dir is not None and (
            not isinstance(self.output_dir, str) or not self.output_dir.strip()
        ):
            raise ConfigError(
                f"TrainConfig.output_dir must be a non-empty path string or None, "
                f"got {self.output_dir!r}"
            )
        if self.resume and self.output_dir is None:
            raise ConfigError(
                "TrainConfig.resume=True needs TrainConfig.output_dir (the folder holding "
                "the checkpoint-* folders to resume from); set output_dir or resume=False"
            )


def _int(name: str, value: Any, *, lo: int, optional: bool = False) -> int:
    allowed = f"an integer >= {lo}" + (" or None" if optional else "")
    if isinstance(value, bool):
        raise ConfigError(f"TrainConfig.{name} must be {allowed}, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < lo:
        raise ConfigError(f"TrainConfig.{name} must be {allowed}, got {value!r}")
    return value


def _float(
    name: str,
    value: Any,
    *,
    lo: float,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    optional: bool = False,
) -> float:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    rng = f"{left}{lo}, {hi}{right}" if hi is not None else (f"> {lo}" if lo_open else f">= {lo}")
    allowed = f"a finite number {'in ' if hi is not None else ''}{rng}" + (
        " or None" if optional else ""
    )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"TrainConfig.{name} must be {allowed}, got {value!r}")
    v = float(value)
    bad = (v <= lo if lo_open else v < lo) or (hi is not None and (v >= hi if hi_open else v > hi))
    if bad:
        raise ConfigError(f"TrainConfig.{name} must be {allowed}, got {value!r}")
    return v


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"TrainConfig.{name} must be one of {list(allowed)}, got {value!r}")
