"""A small, resumable training loop on top of ``accelerate`` (minGPT-sized, TRL-flavoured).

Design
------
* **One loop, accelerate underneath.** Model, optimizer, data loader and LR scheduler go through
  ``Accelerator.prepare``; gradient accumulation uses ``accelerator.accumulate``, clipping uses
  ``accelerator.clip_grad_norm_`` and mixed precision is the accelerator's autocast (+ loss scaler
  for fp16). There is no process-group code here, so ``accelerate launch script.py`` runs the same
  loop on several devices (on CPU too: ``accelerate launch --multi_gpu --num_processes 2``
  gives gloo). Gradients are averaged over processes by one ``accelerator.reduce`` per update
  rather than by DDP's hooks, because methods call the LM and its heads directly, not through
  the wrapper. Callbacks, ``eval_fn`` and logging run on every process; check
  ``trainer.is_main_process`` before writing files of your own.
* **Steps are optimizer steps.** ``max_steps``, ``log_every``, ``eval_every``, ``save_every`` and
  the LR schedule all count optimizer updates. Accumulation windows run across epoch boundaries
  (accelerate's ``sync_with_dataloader=False``), so every update sees exactly
  ``grad_accum_steps`` micro-batches.
* **Determinism.** ``config.seed`` seeds python/numpy/torch when the trainer is built (dropout) and
  the data order: epoch ``e`` is a permutation drawn from a ``torch.Generator`` seeded from
  ``(seed, e)``, independent of the global RNG. The loader has its own generator, so starting an
  epoch never consumes global random numbers. Same seed, same machine: same losses.
* **Checkpoints are atomic and exact** (the I/O lives in :mod:`workbench.train.checkpoint`,
  shared with other loops). ``checkpoint-{step}/`` is written into a hidden sibling folder,
  fsynced and ``os.replace``-d into place; a crash or ``kill -9`` mid-save leaves the previous
  checkpoints untouched, and ``resume=True`` continues from the newest complete one. It holds
  the weights (``save_pretrained`` for ``transformers`` models, a de-duplicated ``safetensors``
  state dict otherwise), ``trainer_state.json`` (step, epoch, batch index inside the epoch, log
  history, config, python/numpy RNG as JSON) and optimizer / scheduler / scaler / torch-RNG
  tensors loaded back with ``torch.load(weights_only=True)`` only. Resuming
  restores all of it and skips the batches already consumed in the current epoch, so an
  interrupted-and-resumed run reaches the same parameters as an uninterrupted one.
* **Curricula.** ``train()`` may be called again after raising ``config.max_steps``;
  ``set_train_dataset`` swaps the data and ``reset_optimizer`` re-creates AdamW and a schedule that
  spans the remaining steps (Coconut resets the optimizer at every stage).

Deviations: none from a paper. Conventions: AdamW decays only parameters with ``dim >= 2``
(nanoGPT); warm-up is linear from ``lr / warmup_steps``; the cosine / linear decay floors at
``lr * min_lr_ratio``. Loss metrics returned by ``loss_fn`` and throughput are this process's
values; the logged ``loss`` is averaged over processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from workbench.train import checkpoint as _ckpt
from workbench.train.checkpoint import CheckpointMismatchError, latest_checkpoint
from workbench.train.config import TrainConfig

__all__ = [
    "CheckpointMismatchError",
    "LogHistory",
    "NonFiniteLossError",
    "Trainer",
    "TrainerCallback",
    "latest_checkpoint",
    "set_seed",
]

# --------------------------------------------------------------------------------------------
# Errors, log history, callbacks
# --------------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; no optimizer step and no checkpoint were made for it."""

    def __init__(self, step: int, loss: float, config: TrainConfig):
        self.step, self.loss = step, loss
        tips = [
            f"lower the learning rate (lr={config.lr:g})",
            "check the data and labels (e.g. a batch whose labels are all -100 has no target "
            "tokens and gives a 0/0 loss; token ids must be < vocab_size)",
        ]
        if config.mixed_precision != "no":
            tips.append(
                f"train in fp32 (mixed_precision='no' instead of {config.mixed_precision!r})"
            )
        else:
            tips.append("keep fp32 (mixed_precision='no') while debugging")
        if config.max_grad_norm is None:
            tips.append("enable gradient clipping (max_grad_norm=1.0)")
        if config.warmup_steps == 0:
            tips.append("add a learning-rate warm-up (warmup_steps)")
        super().__init__(
            f"Non-finite training loss {loss} at step {step}. The optimizer step was not taken and "
            f"nothing was saved for this step (earlier checkpoints are intact). Suggestions: "
            + "; ".join(tips)
            + "."
        )


class LogHistory(list):
    """``trainer.log_history``: a list of flat ``dict`` rows, one per logged step."""

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame`` (one column per key, NaN where a row lacks it)."""
        import pandas as pd

        return pd.DataFrame(list(self))

    def values(self, key: str) -> list[Any]:
        """All values of ``key`` in order, skipping rows that lack it."""
        return [row[key] for row in self if key in row]


class TrainerCallback:
    """Base class for trainer hooks (minGPT-style); override the events you need.

    Every method gets the :class:`Trainer`; set ``trainer.should_stop = True`` to stop training
    after the current optimizer step.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Start of every ``train()`` call (after an automatic resume)."""

    def on_step_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        """After each optimizer step; ``logs``: step, epoch, loss, lr, grad_norm of that step."""

    def on_log(self, trainer: Trainer, logs: dict[str, float]) -> None:
        """A row was appended to ``trainer.log_history`` (every ``log_every`` steps)."""

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """``eval_fn`` ran; ``metrics`` are the prefixed values that were logged."""

    def on_save(self, trainer: Trainer, path: str) -> None:
        """A checkpoint was written (atomically) to ``path``."""

    def on_train_end(self, trainer: Trainer) -> None:
        """End of every ``train()`` call, also when it stopped early."""


class _FunctionCallback(TrainerCallback):
    """Adapter: a plain ``fn(trainer, payload)`` bound to one event (``on_log`` by default)."""

    def __init__(self, event: str, fn: Callable[..., Any]):
        self.event, self.fn = event, fn
        setattr(self, event, self._call)

    def _call(self, trainer: Trainer, *args: Any) -> None:
        self.fn(trainer, *args)

    def __repr__(self) -> str:
        return f"_FunctionCallback({self.event}, {getattr(self.fn, '__name__', self.fn)!r})"


_EVENTS = ("on_train_begin", "on_step_end", "on_log", "on_evaluate", "on_save", "on_train_end")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices); call it before building the model."""
    from accelerate.utils import set_seed as _accelerate_set_seed

    _accelerate_set_seed(seed)


class _EpochSampler(Sampler[int]):
    """Indices of one epoch: a fixed permutation per ``(seed, epoch)``, or ``range(n)``.

    No ``generator`` attribute on purpose: accelerate then leaves it alone, and every process
    draws the same permutation (its batch sampler shards it).
    """

    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator()
        g.manual_seed(
            (self.seed + 1) * 1_000_003 + self.epoch
        )  # distinct streams per (seed, epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def end_distributed() -> None:
    """Leave the process group of an ``accelerate launch`` run cleanly (no-op otherwise).

    Every process waits for the others, then destroys the group before the interpreter exits.
    Left to interpreter shutdown, gloo's worker threads can be torn down while still joinable,
    and a process then dies with SIGABRT ("terminate called without an active exception")
    after its work is done: the launch fails although training succeeded (seen once in CI in
    ``tests/test_distributed.py``; the mechanism is described in pytorch/pytorch#179291).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _has_accelerator() -> bool:
    """A CUDA (or other torch accelerator) device is present."""
    probe = getattr(torch, "accelerator", None)
    if probe is not None and hasattr(probe, "is_available"):
        return bool(probe.is_available())
    return torch.cuda.is_available()


def _to_float(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        return (
            float(v.detach().float().mean().item()) if v.numel() != 1 else float(v.detach().item())
        )
    return float(v)


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------


class Trainer:
    """Train ``model`` on ``train_dataset`` with AdamW, a warm-up schedule and accelerate.

    Args:
        model: a ``transformers`` causal LM, or any ``nn.Module`` (e.g. an LM plus extra heads).
        train_dataset: a sized sequence or map-style ``torch`` Dataset of raw items.
        collate_fn: turns a list of items into a batch (a dict of tensors for the default loss).
        config: the :class:`TrainConfig`.
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``-> (loss, {name: float})``; the extra
            metrics are averaged over the log window and logged under their names. ``model`` is
            the prepared model (under DDP call it, or use ``trainer.unwrapped_model`` for
            attribute access). Default: ``model(**batch).loss``.
        eval_fn: ``eval_fn(trainer) -> {name: float}``, run under ``torch.no_grad()`` with the
            model in eval mode. Names without a ``/`` are logged as ``eval/<name>``; names that
            contain one are logged as given.
        callbacks: :class:`TrainerCallback` objects or plain ``fn(trainer, logs)`` (``on_log``).
        optimizer_params: what to optimise instead of all trainable parameters: an iterable of
            parameters (split into decay / no-decay by ``dim``) or of torch param-group dicts
            (used as given; ``weight_decay`` defaults to the config's).

    Attributes:
        step: optimizer steps done. epoch, batch_in_epoch: data position (this process's
        micro-batches consumed in the current epoch). log_history: a :class:`LogHistory`.
        should_stop: set it (e.g. from a callback) to stop after the current step.

    Changing ``config.lr`` / ``betas`` / ``weight_decay`` takes effect at :meth:`reset_optimizer`;
    ``max_steps``, ``lr_schedule``, ``max_time_s``, logging/eval/save intervals and (between
    ``train()`` calls) ``batch_size`` / ``grad_accum_steps`` / ``shuffle`` take effect at once.
    """

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Any,
        collate_fn: Callable[[list[Any]], Any] | None,
        config: TrainConfig,
        *,
        loss_fn: Callable[[nn.Module, Any], Any] | None = None,
        eval_fn: Callable[[Trainer], dict[str, float]] | None = None,
        callbacks: Iterable[TrainerCallback | Callable[..., Any]] | None = None,
        optimizer_params: Iterable[Any] | None = None,
    ):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.loss_fn = loss_fn
        self.eval_fn = eval_fn
        self.collate_fn = collate_fn
        self.callbacks: list[TrainerCallback] = []
        for cb in callbacks or ():
            self.add_callback(cb)

        self.accelerator = self._make_accelerator()
        set_seed(config.seed)

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.should_stop = False
        self.log_history = LogHistory()
        self._elapsed_s = 0.0
        self._sched_offset = 0  # optimizer step at which the current schedule started
        self._last_saved_step: int | None = None
        self._auto_resume_done = False
        self._window = self._new_window()
        self._optimizer_params = None
        if optimizer_params is not None:  # materialise generators: reset_optimizer reuses them
            self._optimizer_params = [
                {**g, "params": list(g["params"])} if isinstance(g, dict) else g
                for g in optimizer_params
            ]

        self.train_dataset = train_dataset
        loader = self._build_loader(train_dataset)
        optimizer = self._build_optimizer(model)
        scheduler = self._build_scheduler(optimizer)
        self.model, self.optimizer, self._train_loader, self.scheduler = self.accelerator.prepare(
            model, optimizer, loader, scheduler
        )
        # DDP averages gradients only for a forward through its wrapper, but latent methods call
        # the LM and its heads directly (``lm_of``); so the wrapper is dropped once it has
        # broadcast rank 0's weights, and :meth:`_average_gradients` syncs every update.
        if isinstance(self.model, nn.parallel.DistributedDataParallel):
            self.model = self.model.module

    # ----- public properties -----------------------------------------------------------------

    @property
    def unwrapped_model(self) -> nn.Module:
        """The user's model without DDP / compile / autocast wrappers."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def elapsed_s(self) -> float:
        """Training wall time of this run up to the last finished step or ``train()`` call,
        the time before a resume included (it is saved with every checkpoint)."""
        return self._elapsed_s

    @property
    def steps_per_epoch(self) -> float:
        """Optimizer steps per pass over the training set (per process)."""
        return len(self._train_loader) / self.config.grad_accum_steps

    # ----- construction helpers --------------------------------------------------------------

    def _make_accelerator(self):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, PartialState
        from accelerate.utils import GradientAccumulationPlugin

        cfg = self.config
        plugin = GradientAccumulationPlugin(
            num_steps=cfg.grad_accum_steps, sync_with_dataloader=False
        )
        kwargs = dict(
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_plugin=plugin,
            step_scheduler_with_optimizer=False,
        )
        # With no accelerator device, accelerate only picks the gloo process group when told the
        # run is on the CPU; otherwise `accelerate launch --num_processes 2` gives two unrelated
        # single-process runs.
        kwargs["cpu"] = not _has_accelerator()
        try:
            acc = Accelerator(**kwargs)
        except ValueError as err:
            # accelerate keeps one process-wide state; in a notebook, a second trainer with another
            # mixed_precision is legitimate on a single process, so reset that state and retry.
            if "already been initialized" not in str(err) or PartialState().num_processes != 1:
                raise
            AcceleratorState._reset_state(reset_partial_state=False)
            acc = Accelerator(**kwargs)
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and acc.num_processes != launched:
            raise RuntimeError(
                f"launched as {launched} processes (WORLD_SIZE) but accelerate set up "
                f"{acc.num_processes} ({acc.distributed_type}); launch with "
                "`accelerate launch --multi_gpu --num_processes N` (also on CPU: gloo)"
            )
        return acc

    def _sync_accumulation_settings(self) -> None:
        # GradientState is process-wide in accelerate: another Trainer may have changed it.
        self.accelerator.gradient_state.plugin_kwargs.update(
            {"num_steps": self.config.grad_accum_steps, "sync_with_dataloader": False}
        )

    def _build_loader(self, dataset: Any) -> DataLoader:
        cfg = self.config
        try:
            n = len(dataset)
        except TypeError:
            raise TypeError(
                "train_dataset must be sized (a list, a sequence or a map-style "
                f"torch Dataset); got {type(dataset).__name__}"
            ) from None
        if n == 0:
            raise ValueError("train_dataset is empty")
        if cfg.drop_last and n < cfg.batch_size:
            raise ValueError(
                f"train_dataset has {n} items, fewer than batch_size={cfg.batch_size}, "
                "and drop_last=True leaves no batch; lower batch_size or set drop_last=False"
            )
        self._sampler = _EpochSampler(n, cfg.seed, cfg.shuffle)
        self._loader_key = (n, cfg.batch_size, cfg.seed, cfg.shuffle, cfg.drop_last)
        return DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=self._sampler,
            collate_fn=self.collate_fn,
            drop_last=cfg.drop_last,
            generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
        )

    def _param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        wd = self.config.weight_decay
        if self._optimizer_params is not None:
            items = self._optimizer_params
            if items and all(isinstance(g, dict) for g in items):
                return [{"weight_decay": wd, **g} for g in items]
            params = [p for p in items if p.requires_grad]
        else:
            params = [p for p in model.parameters() if p.requires_grad]
        # de-duplicate tied parameters (same tensor object listed twice)
        unique = list({id(p): p for p in params}.values())
        decay = [p for p in unique if p.dim() >= 2]
        no_decay = [p for p in unique if p.dim() < 2]
        if not unique:
            raise ValueError("no trainable parameters: every parameter has requires_grad=False")
        groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def _build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        cfg = self.config
        return torch.optim.AdamW(
            self._param_groups(model), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )

    def _lr_factor(self, sched_step: int) -> float:
        cfg = self.config
        warm = cfg.warmup_steps
        clock = getattr(self, "_clock", None)
        by_time = bool(cfg.schedule_by_time and cfg.max_time_s and clock is not None)
        if sched_step < warm:
            frac = (sched_step + 1) / warm
            if by_time:  # a slow machine must not spend its budget warming up
                frac = max(frac, clock() / (cfg.warmup_time_fraction * cfg.max_time_s))
            if frac < 1.0:
                return frac
        if cfg.lr_schedule == "constant":
            return 1.0
        horizon = max(1, cfg.max_steps - self._sched_offset - warm)
        progress = min(1.0, max(0.0, (sched_step - warm) / horizon))
        if by_time:
            # whichever budget binds first drives the decay (time-budgeted runs end on a low lr)
            progress = max(progress, min(1.0, clock() / cfg.max_time_s))
        progress = min(1.0, progress / cfg.decay_fraction)
        floor = cfg.min_lr_ratio
        if cfg.lr_schedule == "cosine":
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return floor + (1.0 - floor) * (1.0 - progress)

    def _build_scheduler(self, optimizer: torch.optim.Optimizer):
        def lr_lambda(sched_step: int) -> float:  # a plain function: nothing of it is pickled
            return self._lr_factor(sched_step)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    def _forget_prepared(self, obj: Any, attr: str) -> None:
        """Drop a replaced optimizer / scheduler / loader from the accelerator's registry."""
        registry = getattr(self.accelerator, attr, None)
        if isinstance(registry, list):
            for i, item in enumerate(registry):
                if item is obj:
                    del registry[i]
                    break

    # ----- public API: curricula --------------------------------------------------------------

    def reset_optimizer(self) -> None:
        """New AdamW (fresh moments, current config lr/betas/weight decay) and a new schedule.

        The schedule restarts here: warm-up again, then decay over the steps left until
        ``config.max_steps``. Raise ``max_steps`` first when starting a new curriculum stage.
        """
        self._forget_prepared(self.optimizer, "_optimizers")
        self._forget_prepared(self.scheduler, "_schedulers")
        self._sched_offset = self.step
        optimizer = self._build_optimizer(self.unwrapped_model)
        scheduler = self._build_scheduler(optimizer)
        self.optimizer, self.scheduler = self.accelerator.prepare(optimizer, scheduler)

    def set_train_dataset(self, dataset: Any) -> None:
        """Train on ``dataset`` from now on, starting a fresh epoch (e.g. a curriculum stage)."""
        self._forget_prepared(self._train_loader, "_dataloaders")
        self.train_dataset = dataset
        if self.batch_in_epoch > 0:
            self.epoch += 1
            self.batch_in_epoch = 0
        self._train_loader = self.accelerator.prepare(self._build_loader(dataset))

    # ----- public API: callbacks and logging ----------------------------------------------------

    def add_callback(
        self,
        callback: TrainerCallback | Callable[..., Any] | str,
        fn: Callable[..., Any] | None = None,
    ) -> TrainerCallback:
        """Register a hook and return it.

        ``add_callback(MyCallback())``, ``add_callback(fn)`` (``fn(trainer, logs)`` on every log
        row) or minGPT-style ``add_callback("on_step_end", fn)``.
        """
        if isinstance(callback, str):
            if callback not in _EVENTS:
                raise ValueError(f"unknown callback event {callback!r}; events: {list(_EVENTS)}")
            if fn is None or not callable(fn):
                raise TypeError(f"add_callback({callback!r}, fn) needs a callable fn")
            cb: TrainerCallback = _FunctionCallback(callback, fn)
        elif isinstance(callback, TrainerCallback):
            cb = callback
        elif isinstance(callback, type) and issubclass(callback, TrainerCallback):
            cb = callback()
        elif callable(callback):
            cb = _FunctionCallback("on_log", callback)
        else:
            raise TypeError(
                f"callback must be a TrainerCallback or a function, got {type(callback).__name__}"
            )
        self.callbacks.append(cb)
        return cb

    def remove_callback(self, callback: TrainerCallback | Callable[..., Any]) -> None:
        """Unregister a callback object, or the function given to :meth:`add_callback`."""
        self.callbacks = [
            c
            for c in self.callbacks
            if c is not callback and getattr(c, "fn", None) is not callback
        ]

    def _emit(self, event: str, *args: Any) -> None:
        for cb in list(self.callbacks):
            getattr(cb, event)(self, *args)

    def log(self, values: dict[str, Any]) -> dict[str, Any]:
        """Add ``values`` to the row of the current step (creating it) and call ``on_log``."""
        row = self._log_row(values)
        self._emit("on_log", row)
        return row

    def _log_row(self, values: dict[str, Any]) -> dict[str, Any]:
        clean = {
            k: (_to_float(v) if isinstance(v, (torch.Tensor, np.generic)) else v)
            for k, v in values.items()
        }
        if self.log_history and self.log_history[-1].get("step") == self.step:
            self.log_history[-1].update(clean)
            return self.log_history[-1]
        row = {"step": self.step, "epoch": self._epoch_float(), **clean}
        self.log_history.append(row)
        return row

    def _epoch_float(self) -> float:
        return round(self.epoch + self.batch_in_epoch / max(1, len(self._train_loader)), 6)

    # ----- public API: evaluation -----------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Run ``eval_fn(self)``, log the metrics (``eval/`` prefix) and call ``on_evaluate``."""
        if self.eval_fn is None:
            raise ValueError("no eval_fn was given to the Trainer")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                raw = self.eval_fn(self) or {}
        finally:
            self.model.train(was_training)
        if not isinstance(raw, dict):
            raise TypeError(f"eval_fn must return a dict of floats, got {type(raw).__name__}")
        metrics = {(k if "/" in k else f"eval/{k}"): _to_float(v) for k, v in raw.items()}
        self._log_row(metrics)
        self._emit("on_evaluate", metrics)
        return metrics

    # ----- the loop ------------------------------------------------------------------------

    @staticmethod
    def _new_window() -> dict[str, Any]:
        return {
            "steps": 0,
            "loss": 0.0,
            "grad_norm": 0.0,
            "lr": 0.0,
            "tokens": 0,
            "examples": 0,
            "metrics": {},
            "metric_counts": {},
        }

    def _compute_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        if self.loss_fn is not None:
            out = self.loss_fn(self.model, batch)
        else:
            if not isinstance(batch, dict):
                raise TypeError(
                    "the default loss calls model(**batch); collate_fn must return a dict "
                    f"(got {type(batch).__name__}), or pass loss_fn"
                )
            res = self.model(**batch)
            out = (
                res.loss
                if hasattr(res, "loss")
                else res.get("loss")
                if isinstance(res, dict)
                else None
            )
            if out is None:
                raise ValueError(
                    "model(**batch) returned no loss: put `labels` in the batch or pass "
                    "loss_fn(model, batch)"
                )
        metrics: dict[str, float] = {}
        if isinstance(out, tuple):
            if len(out) != 2 or not isinstance(out[1], dict):
                raise TypeError(
                    "loss_fn must return a loss tensor or (loss, dict_of_float_metrics)"
                )
            out, raw = out
            metrics = {k: _to_float(v) for k, v in raw.items()}
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            raise TypeError(
                f"the loss must be a scalar tensor, got {type(out).__name__}"
                + (f" of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else "")
            )
        return out.reshape(()), metrics

    @staticmethod
    def _count(batch: Any) -> tuple[torch.Tensor | int, int]:
        """(tokens, examples) in a micro-batch; tokens from attention_mask, else input_ids.

        The token count stays a device tensor (no host sync per micro-batch).
        """
        if not isinstance(batch, dict):
            return 0, 0
        ids = batch.get("input_ids")
        mask = batch.get("attention_mask")
        tokens = (
            mask.detach().sum()
            if isinstance(mask, torch.Tensor)
            else (ids.numel() if isinstance(ids, torch.Tensor) else 0)
        )
        first = next(
            (v for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0), None
        )
        return tokens, (first.shape[0] if first is not None else 0)

    def _any_process(self, flag: bool) -> bool:
        return _ckpt.any_process(self.accelerator, flag)

    def _epoch_loader(self):
        self._sampler.set_epoch(self.epoch)
        if hasattr(self._train_loader, "set_epoch"):
            self._train_loader.set_epoch(self.epoch)
        if self.batch_in_epoch > 0:
            loader = self.accelerator.skip_first_batches(self._train_loader, self.batch_in_epoch)
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(self.epoch)
            return loader
        return self._train_loader

    @torch.enable_grad()  # a notebook may have switched gradients off globally
    def train(self) -> LogHistory:
        """Train until ``config.max_steps`` optimizer steps, ``max_time_s`` or ``should_stop``.

        Returns ``self.log_history``. Rows have ``step``, ``epoch``, ``loss`` (mean over the
        window), ``lr``, ``grad_norm`` (mean pre-clip norm), ``tokens_per_s`` (when batches have
        input_ids), ``examples_per_s``, ``elapsed_s``, the ``loss_fn`` metrics and eval metrics.
        """
        cfg = self.config
        acc = self.accelerator
        if cfg.resume and not self._auto_resume_done and self.step == 0:
            path = latest_checkpoint(cfg.output_dir)
            if path is not None:
                self.resume_from_checkpoint(path)
        self._auto_resume_done = True
        if self._loader_key[1:] != (cfg.batch_size, cfg.seed, cfg.shuffle, cfg.drop_last):
            self.set_train_dataset(self.train_dataset)  # config changed between train() calls
        self._sync_accumulation_settings()
        self.should_stop = False
        self.model.train()
        # Always start a fresh accumulation window (an exception may have left one half done);
        # the raw optimizer is used because accelerate's wrapper only zeroes on sync steps.
        acc.step = 0
        acc.gradient_state._set_sync_gradients(True)
        getattr(self.optimizer, "optimizer", self.optimizer).zero_grad(set_to_none=True)

        t0 = time.perf_counter()
        elapsed0 = self._elapsed_s
        win_t0 = t0
        paused = 0.0  # eval/save time inside the current log window (excluded from throughput)

        def elapsed() -> float:
            return elapsed0 + (time.perf_counter() - t0)

        self._clock = elapsed  # read by a time-driven schedule (config.schedule_by_time)

        self._emit("on_train_begin")
        bar = self._progress_bar()
        micro_loss = torch.zeros((), device=acc.device)
        micro_tokens = torch.zeros((), dtype=torch.long, device=acc.device)
        micro_n = 0
        # the time budget is checked after every step, so a call with budget left makes progress
        done = self.step >= cfg.max_steps or self._time_up(elapsed0)
        open_loader = None
        try:
            while not done:
                n_batches = len(self._train_loader)
                loader = open_loader = self._epoch_loader()
                for batch in loader:
                    with acc.accumulate(self.model):
                        loss, metrics = self._compute_loss(batch)
                        acc.backward(loss)
                    self.batch_in_epoch += 1
                    micro_loss += loss.detach().float()
                    micro_n += 1
                    tokens, examples = self._count(batch)
                    micro_tokens += tokens
                    w = self._window
                    w["examples"] += examples
                    for k, v in metrics.items():
                        w["metrics"][k] = w["metrics"].get(k, 0.0) + v
                        w["metric_counts"][k] = w["metric_counts"].get(k, 0) + 1
                    if self.batch_in_epoch >= n_batches:
                        self.epoch += 1
                        self.batch_in_epoch = 0
                    if not acc.sync_gradients:
                        continue

                    # ---- one optimizer step ----
                    step_loss = micro_loss / micro_n
                    if acc.num_processes > 1:
                        step_loss = acc.reduce(step_loss, reduction="mean")
                    loss_value = float(step_loss.item())
                    w["tokens"] += int(micro_tokens.item())
                    micro_loss = torch.zeros((), device=acc.device)
                    micro_tokens = torch.zeros((), dtype=torch.long, device=acc.device)
                    micro_n = 0
                    if not math.isfinite(loss_value):
                        self.optimizer.zero_grad(set_to_none=True)
                        raise NonFiniteLossError(self.step + 1, loss_value, cfg)
                    if acc.num_processes > 1:
                        self._average_gradients()
                    clip = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
                    grad_norm = acc.clip_grad_norm_(self.model.parameters(), clip)
                    grad_norm = (
                        float(grad_norm.item())
                        if isinstance(grad_norm, torch.Tensor)
                        else float(grad_norm if grad_norm is not None else float("nan"))
                    )
                    lr = float(self.optimizer.param_groups[0]["lr"])
                    self.optimizer.step()
                    if not getattr(self.optimizer, "step_was_skipped", False):
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.step += 1

                    w["steps"] += 1
                    w["loss"] += loss_value
                    w["grad_norm"] += grad_norm
                    w["lr"] = lr
                    step_logs = {
                        "step": self.step,
                        "epoch": self._epoch_float(),
                        "loss": loss_value,
                        "lr": lr,
                        "grad_norm": grad_norm,
                    }
                    self._emit("on_step_end", step_logs)
                    if bar is not None:
                        bar.update(1)

                    last = self.step >= cfg.max_steps
                    if self.step % cfg.log_every == 0 or last:
                        now = time.perf_counter()
                        row = self._flush_window(lr, max(1e-9, now - win_t0 - paused), elapsed())
                        win_t0, paused = now, 0.0
                        if bar is not None:
                            bar.set_postfix(
                                loss=f"{row['loss']:.4g}", lr=f"{lr:.2e}", refresh=False
                            )
                    t_pause = time.perf_counter()
                    if (
                        self.eval_fn is not None
                        and cfg.eval_every
                        and self.step % cfg.eval_every == 0
                    ):
                        self.evaluate()
                    if (
                        cfg.output_dir is not None
                        and cfg.save_every
                        and self.step % cfg.save_every == 0
                    ):
                        self._elapsed_s = elapsed()
                        self.save_checkpoint()
                    paused += time.perf_counter() - t_pause

                    if last or self._any_process(self.should_stop or self._time_up(elapsed())):
                        done = True
                        break
                else:
                    open_loader = None
                    continue  # epoch exhausted: next epoch
        finally:
            self._elapsed_s = elapsed()
            if open_loader is not None and hasattr(open_loader, "end"):
                # left mid-epoch (stop or error): unregister it from accelerate's gradient state
                with contextlib.suppress(ValueError, AttributeError):
                    open_loader.end()
            if bar is not None:
                bar.close()

        if self._window["steps"] > 0:  # stopped early: log the partial window
            window_s = max(1e-9, time.perf_counter() - win_t0 - paused)
            self._flush_window(self._window["lr"], window_s, self._elapsed_s)
        if cfg.output_dir is not None and self.step > 0 and self._last_saved_step != self.step:
            self.save_checkpoint()
        self._emit("on_train_end")
        return self.log_history

    def _average_gradients(self) -> None:
        """Mean of every optimised parameter's gradient over the processes (one all-reduce)."""
        params = list({id(p): p for g in self.optimizer.param_groups for p in g["params"]}.values())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), "mean")
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p)
            offset += n

    def _time_up(self, elapsed_s: float) -> bool:
        return self.config.max_time_s is not None and elapsed_s >= self.config.max_time_s

    def _flush_window(self, lr: float, window_s: float, elapsed_s: float) -> dict[str, Any]:
        w = self._window
        n = max(1, w["steps"])
        values: dict[str, Any] = {"loss": w["loss"] / n, "lr": lr, "grad_norm": w["grad_norm"] / n}
        procs = self.accelerator.num_processes
        if w["tokens"]:
            values["tokens_per_s"] = w["tokens"] * procs / window_s
        if w["examples"]:
            values["examples_per_s"] = w["examples"] * procs / window_s
        values["elapsed_s"] = elapsed_s
        for k, total in w["metrics"].items():
            values[k] = total / max(1, w["metric_counts"][k])
        self._window = self._new_window()
        return self.log(values)

    def _progress_bar(self):
        cfg = self.config
        env_off = os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")
        if not cfg.progress or env_off or not self.accelerator.is_local_main_process:
            return None
        from tqdm.auto import tqdm

        if cfg.schedule_by_time and cfg.max_time_s:  # the time budget is what ends this run
            return tqdm(
                total=None,
                initial=self.step,
                desc=f"train ({cfg.max_time_s:.0f} s budget)",
                dynamic_ncols=True,
                mininterval=2.0,
            )
        return tqdm(
            total=cfg.max_steps,
            initial=min(self.step, cfg.max_steps),
            desc="train",
            dynamic_ncols=True,
        )

    # ----- checkpoints ---------------------------------------------------------------------

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> str:
        """Write a complete checkpoint atomically and return its path.

        Default path: ``output_dir/checkpoint-{step}`` (then the oldest folders beyond
        ``save_total_limit`` are deleted, as are hidden leftovers of saves that were killed).
        Everything is written into a hidden sibling folder first and moved into place with
        ``os.replace`` (:func:`workbench.train.checkpoint.save_checkpoint`); on any error the
        temporary folder is removed and an existing checkpoint at ``path`` is left as it was.
        """
        cfg = self.config
        rotate = path is None
        if path is None:
            if cfg.output_dir is None:
                raise ValueError("save_checkpoint() needs a path when config.output_dir is None")
            path = _ckpt.checkpoint_path(cfg.output_dir, self.step)
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "elapsed_s": self._elapsed_s,
            "sched_offset": self._sched_offset,
            "num_examples": len(self.train_dataset),
            "config": dataclasses.asdict(cfg),
            "log_window": self._window,
            "log_history": list(self.log_history),
        }
        path = _ckpt.save_checkpoint(
            path,
            accelerator=self.accelerator,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state=state,
        )
        if rotate and self.accelerator.is_main_process:
            _ckpt.rotate_checkpoints(cfg.output_dir, cfg.save_total_limit, keep=path)
            _ckpt.remove_stale_checkpoint_temps(cfg.output_dir)
        self._last_saved_step = self.step
        self._emit("on_save", path)
        return path

    def check_checkpoint_compatible(self, path: str | os.PathLike) -> None:
        """Raise :class:`CheckpointMismatchError` naming what differs from the current model."""
        _ckpt.check_checkpoint_compatible(path, self.unwrapped_model)

    def resume_from_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore weights, optimizer, schedule, scaler, RNG, data position and log history.

        The model must match the checkpoint (else :class:`CheckpointMismatchError`). The current
        ``config`` is kept (so ``max_steps`` may be raised); a warning says when fields that
        decide the data order differ from the checkpoint's.
        """
        acc = self.accelerator
        path = os.fspath(path)
        state = _ckpt.load_checkpoint(
            path,
            accelerator=acc,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
        )
        changed = _ckpt.data_order_changes(
            state, self.config, len(self.train_dataset), acc.num_processes
        )
        if changed:
            warnings.warn(
                f"resuming from {path} with different data-order settings: {', '.join(changed)}; "
                "training continues but will not replay the same batches",
                stacklevel=2,
            )

        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        if self.batch_in_epoch >= len(self._train_loader):
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self._elapsed_s = float(state.get("elapsed_s", 0.0))
        self._sched_offset = int(state.get("sched_offset", 0))
        self._window = state.get("log_window") or self._new_window()
        self.log_history = LogHistory(state.get("log_history", []))
        self._last_saved_step = self.step
        self._auto_resume_done = True
        acc.wait_for_everyone()
