"""Training checkpoints: atomic, exact, unpickling-free; usable by any training loop.

A checkpoint is a folder ``checkpoint-{step}/`` written with :func:`workbench.io.atomic_folder`
(filled as a hidden sibling, fsynced, renamed into place), so a crash or ``kill -9`` mid-save
leaves earlier checkpoints untouched and never a half-written ``checkpoint-{step}``. It holds

* the weights: ``save_pretrained`` for ``transformers`` models, a de-duplicated ``safetensors``
  state dict (``model.safetensors``) otherwise;
* ``trainer_state.json``: the loop's own state (whatever the caller passes, e.g. step, epoch,
  data position, log history, config) plus ``format_version``, ``num_processes``, the model
  config, the weights format and the python / numpy RNG states (as JSON, one per process);
* ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt`` (fp16 only) and ``rng_state_{rank}.pt``
  (torch CPU / CUDA RNG), loaded back with ``torch.load(weights_only=True)`` only.

Nothing is ever unpickled. The functions take the objects they need (accelerator, model,
optimizer, scheduler, a state dict) rather than a trainer, so a second loop (e.g. an RL
trainer) saves and resumes the same way::

    state = {"step": step, ...}                       # anything JSON-serialisable
    save_checkpoint(path, accelerator=acc, model=model, optimizer=opt, scheduler=sched,
                    state=state)
    ...
    state = load_checkpoint(latest_checkpoint(out), accelerator=acc, model=model,
                            optimizer=opt, scheduler=sched)   # raises CheckpointMismatchError

``model`` is the prepared (possibly wrapped) model; weights are taken with
``accelerator.get_state_dict`` and matched against ``accelerator.unwrap_model(model)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.errors import CheckpointError, MissingFileError
from workbench.io import atomic_folder, leftovers, remove_folder

__all__ = [
    "CHECKPOINT_PREFIX",
    "FORMAT_VERSION",
    "TRAINER_STATE",
    "CheckpointMismatchError",
    "any_process",
    "check_checkpoint_compatible",
    "checkpoint_path",
    "data_order_changes",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model_weights",
    "model_config_dict",
    "read_trainer_state",
    "remove_stale_checkpoint_temps",
    "restore_rng_state",
    "rng_state",
    "rotate_checkpoints",
    "save_checkpoint",
    "save_model_weights",
    "sorted_checkpoints",
]

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
SCALER_NAME = "scaler.pt"
RNG_NAME = "rng_state_{rank}.pt"
FORMAT_VERSION = 1
_CKPT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
# Model-config keys that are bookkeeping, not architecture: ignored when matching checkpoints.
_IGNORED_CONFIG_KEYS = {
    "transformers_version",
    "architectures",
    "dtype",
    "torch_dtype",
    "name_or_path",
    "use_cache",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "attn_implementation",
}
# Config fields that decide which batch comes next: a resume with different values cannot
# reproduce the data position exactly.
DATA_ORDER_FIELDS = ("batch_size", "grad_accum_steps", "seed", "shuffle", "drop_last")


class CheckpointMismatchError(CheckpointError, ValueError):
    """A checkpoint was saved from a model whose config or weights differ from the current one.

    A :class:`~workbench.errors.WorkbenchError` (the CLI prints its message as one line) and,
    as before, a ``ValueError``."""


class _FailedElsewhere(Exception):
    """Another process failed while writing its part of a checkpoint."""


# --------------------------------------------------------------------------------------------
# Finding checkpoints
# --------------------------------------------------------------------------------------------


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> str:
    """``output_dir/checkpoint-{step}`` (absolute)."""
    return os.path.abspath(os.path.join(os.fspath(output_dir), f"{CHECKPOINT_PREFIX}{step}"))


def latest_checkpoint(output_dir: str | os.PathLike | None) -> str | None:
    """Path of the complete ``checkpoint-{step}`` folder with the highest step, or ``None``.

    Only folders named exactly ``checkpoint-{step}`` that hold ``trainer_state.json`` count;
    the hidden temporary folders of an interrupted save never do.
    """
    if output_dir is None or not os.path.isdir(output_dir):
        return None
    best: tuple[int, str] | None = None
    for name in os.listdir(output_dir):
        m = _CKPT_RE.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isfile(os.path.join(path, TRAINER_STATE)):
            step = int(m.group(1))
            if best is None or step > best[0]:
                best = (step, path)
    return None if best is None else best[1]


def sorted_checkpoints(output_dir: str | os.PathLike) -> list[str]:
    """Every ``checkpoint-{step}`` folder in ``output_dir``, oldest (lowest step) first."""
    found = []
    for name in os.listdir(output_dir):
        m = _CKPT_RE.match(name)
        if m and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(m.group(1)), os.path.join(output_dir, name)))
    return [p for _, p in sorted(found)]


def rotate_checkpoints(output_dir: str | os.PathLike, limit: int | None, keep: str) -> None:
    """Delete the oldest checkpoints beyond ``limit`` (never ``keep``); ``None`` keeps all."""
    if limit is None:
        return
    ckpts = sorted_checkpoints(output_dir)
    excess = len(ckpts) - limit
    for old in ckpts:
        if excess <= 0:
            break
        if os.path.abspath(old) != os.path.abspath(keep):
            with contextlib.suppress(OSError):
                remove_folder(old)  # renamed away first: never seen half-deleted
            excess -= 1


def remove_stale_checkpoint_temps(output_dir: str | os.PathLike) -> None:
    """Delete hidden leftovers of checkpoint saves that were killed mid-write.

    Call it only from the one process that writes checkpoints into ``output_dir``.
    """
    for target, path in leftovers(output_dir):
        if _CKPT_RE.match(target):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()


def read_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """The ``trainer_state.json`` of checkpoint ``path`` (``FileNotFoundError`` if incomplete)."""
    state_file = os.path.join(os.fspath(path), TRAINER_STATE)
    if not os.path.isfile(state_file):
        raise MissingFileError(
            f"{os.fspath(path)} has no {TRAINER_STATE}; not a complete workbench checkpoint"
        )
    with open(state_file) as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def any_process(accelerator, flag: bool) -> bool:
    """``True`` if ``flag`` is true on any process (a collective call when distributed)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor(float(flag), device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


# --------------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------------


def _python_rng_to_json() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _python_rng_from_json(state: list[Any]) -> None:
    random.setstate((state[0], tuple(state[1]), state[2]))


def _numpy_rng_to_json() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _numpy_rng_from_json(state: list[Any]) -> None:
    np.random.set_state(
        (state[0], np.asarray(state[1], dtype=np.uint32), state[2], state[3], state[4])
    )


def rng_state() -> dict[str, Any]:
    """This process's python and numpy global RNG states as JSON values."""
    return {"python": _python_rng_to_json(), "numpy": _numpy_rng_to_json()}


def torch_rng_state() -> dict[str, Any]:
    """This process's torch CPU RNG state (and CUDA states once CUDA is initialised)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(
    rng: dict[str, Any] | None = None, torch_rng: dict[str, Any] | None = None
) -> None:
    """Set the global RNGs back: ``rng`` from :func:`rng_state`, ``torch_rng`` from
    :func:`torch_rng_state` (CUDA states only when the device count matches)."""
    if torch_rng is not None:
        torch.set_rng_state(torch_rng["cpu"])
        if "cuda" in torch_rng and torch.cuda.is_available():
            cuda_states = torch_rng["cuda"]
            if len(cuda_states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_states)
    if rng:
        _python_rng_from_json(rng["python"])
        _numpy_rng_from_json(rng["numpy"])


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def _json_normalise(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


def model_config_dict(model: nn.Module) -> dict[str, Any] | None:
    """The model's config as plain JSON values (``config.to_dict()`` or a dataclass), if any."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    if hasattr(cfg, "to_dict"):
        d = cfg.to_dict()
    elif dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        d = dataclasses.asdict(cfg)
    elif isinstance(cfg, dict):
        d = dict(cfg)
    else:
        return None
    return _json_normalise(
        {k: v for k, v in d.items() if not k.startswith("_") and k not in _IGNORED_CONFIG_KEYS}
    )


def _is_pretrained(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(model, PreTrainedModel)


def _dedup_for_safetensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop exact aliases (tied weights) and un-share partial views so ``save_file`` accepts it."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    storages: dict[tuple, list[str]] = {}
    for name, t in state_dict.items():
        t = t.detach()
        ptr = (t.device.type, t.untyped_storage().data_ptr())
        alias = ptr + (t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if t.numel() > 0 and alias in seen:
            continue  # tied to a tensor already kept; restored by load_state_dict through the tie
        seen.add(alias)
        out[name] = t
        if t.numel() > 0:
            storages.setdefault(ptr, []).append(name)
    for names in storages.values():
        if len(names) > 1:
            for name in names:
                out[name] = out[name].clone()
    return {k: v.contiguous().cpu() for k, v in out.items()}


def _weight_files(ckpt: str) -> list[str]:
    index = os.path.join(ckpt, WEIGHTS_INDEX)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(ckpt, s) for s in shards]
    single = os.path.join(ckpt, WEIGHTS_NAME)
    if os.path.isfile(single):
        return [single]
    raise MissingFileError(
        f"{ckpt}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX}; not a workbench checkpoint"
    )


def _checkpoint_shapes(ckpt: str) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in _weight_files(ckpt):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def _missing_are_tied(model: nn.Module, missing: Iterable[str], present: set[str]) -> list[str]:
    """The subset of ``missing`` keys that are NOT aliases of a tensor stored under another name."""
    sd = model.state_dict(keep_vars=True)
    kept = {}
    for name in present:
        t = sd.get(name)
        if t is not None and t.numel() > 0:
            kept[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))] = name
    really = []
    for name in missing:
        t = sd[name]
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() == 0 or key not in kept:
            really.append(name)
    return really


def _fmt_keys(keys: Sequence[str], limit: int = 8) -> str:
    keys = list(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def save_model_weights(
    folder: str | os.PathLike, model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """Write ``model``'s weights into ``folder`` (``save_pretrained`` or a safetensors file).

    ``model`` is the unwrapped model; ``state_dict`` its full state dict (default: its own).
    Plain, not atomic: write into an :func:`~workbench.io.atomic_folder`.
    """
    folder = os.fspath(folder)
    if state_dict is None:
        state_dict = model.state_dict()
    if _is_pretrained(model):
        import inspect

        kwargs: dict[str, Any] = {"state_dict": state_dict}
        params = inspect.signature(model.save_pretrained).parameters
        if "save_original_format" in params:
            kwargs["save_original_format"] = False  # keys == state_dict keys
        if "safe_serialization" in params:
            kwargs["safe_serialization"] = True
        from transformers.utils import logging as hf_logging

        bars_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Writing model shards" bar inside the loop
        try:
            model.save_pretrained(folder, **kwargs)
        finally:
            if bars_on:
                hf_logging.enable_progress_bar()
    else:
        from safetensors.torch import save_file

        save_file(
            _dedup_for_safetensors(state_dict),
            os.path.join(folder, WEIGHTS_NAME),
            metadata={"format": "pt"},
        )
    _weight_files(folder)  # raises if save_pretrained wrote something we cannot read back


def check_checkpoint_compatible(path: str | os.PathLike, model: nn.Module) -> None:
    """Raise :class:`CheckpointMismatchError` naming what differs between checkpoint and model.

    ``model`` is the unwrapped model. Compares the model config (bookkeeping keys ignored) and
    every weight's name and shape; tied weights stored once are not reported missing.
    """
    path = os.fspath(path)
    state = read_trainer_state(path)
    problems = []
    saved_cfg, current_cfg = state.get("model_config"), model_config_dict(model)
    if saved_cfg is not None and current_cfg is not None:
        diffs = []
        for k in sorted(set(saved_cfg) | set(current_cfg)):
            a, b = saved_cfg.get(k, "<absent>"), current_cfg.get(k, "<absent>")
            if a != b:
                diffs.append(f"{k} (checkpoint {a!r}, current {b!r})")
        if diffs:
            problems.append("model config differs: " + _fmt_keys(diffs))
    shapes = _checkpoint_shapes(path)
    current = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    unexpected = sorted(set(shapes) - set(current))
    missing = _missing_are_tied(
        model, sorted(set(current) - set(shapes)), set(shapes) & set(current)
    )
    wrong = [
        f"{k} (checkpoint {list(shapes[k])}, current {list(current[k])})"
        for k in sorted(set(shapes) & set(current))
        if shapes[k] != current[k]
    ]
    if wrong:
        problems.append("weight shapes differ: " + _fmt_keys(wrong))
    if missing:
        problems.append("weights missing from the checkpoint: " + _fmt_keys(missing))
    if unexpected:
        problems.append("weights in the checkpoint but not in the model: " + _fmt_keys(unexpected))
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit the current model: "
            + "; ".join(problems)
            + ". Build the model with the checkpoint's config, or point output_dir at a fresh "
            "folder (or set resume=False) to start over."
        )


def load_model_weights(path: str | os.PathLike, model: nn.Module) -> None:
    """Load the checkpoint's weights into the unwrapped ``model`` (after checking they fit)."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    check_checkpoint_compatible(path, model)
    weights: dict[str, torch.Tensor] = {}
    for file in _weight_files(path):
        weights.update(load_file(file, device="cpu"))
    model.load_state_dict(weights, strict=False)  # completeness checked above (tied keys)


# --------------------------------------------------------------------------------------------
# Save and load
# --------------------------------------------------------------------------------------------


def _write_checkpoint_files(
    tmp: str,
    *,
    accelerator,
    model: nn.Module,
    optimizer,
    scheduler,
    state_dict: dict[str, torch.Tensor],
    state: dict[str, Any],
    rng: list[dict[str, Any]],
) -> None:
    acc = accelerator
    torch.save(torch_rng_state(), os.path.join(tmp, RNG_NAME.format(rank=acc.process_index)))
    if not acc.is_main_process:
        return
    save_model_weights(tmp, model, state_dict)
    torch.save(optimizer.state_dict(), os.path.join(tmp, OPTIMIZER_NAME))
    torch.save(scheduler.state_dict(), os.path.join(tmp, SCHEDULER_NAME))
    if acc.scaler is not None:
        torch.save(acc.scaler.state_dict(), os.path.join(tmp, SCALER_NAME))
    trainer_state = {
        "format_version": FORMAT_VERSION,
        **state,
        "num_processes": acc.num_processes,
        "model_config": model_config_dict(model),
        "weights_format": "save_pretrained" if _is_pretrained(model) else "safetensors_state_dict",
        "rng": rng,
    }
    # written last: a folder without it is never taken for a complete checkpoint
    with open(os.path.join(tmp, TRAINER_STATE), "w") as f:
        json.dump(trainer_state, f, indent=1, default=str)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    accelerator,
    model: nn.Module,
    optimizer,
    scheduler,
    state: dict[str, Any],
) -> str:
    """Write a complete checkpoint to ``path`` atomically and return its absolute path.

    Call it on every process (it synchronises them). ``model``: the prepared model;
    ``optimizer`` / ``scheduler``: anything with ``state_dict()``; ``state``: the loop's own
    JSON-serialisable state, stored in ``trainer_state.json`` next to ``format_version``,
    ``num_processes``, ``model_config``, ``weights_format`` and ``rng`` (python / numpy RNG of
    every process). On any error, on any process, nothing is left behind, an existing
    checkpoint at ``path`` stays as it was and the error is raised (a ``RuntimeError`` on the
    processes that did not fail themselves).
    """
    from accelerate.utils import broadcast_object_list, gather_object

    acc = accelerator
    path = os.path.abspath(os.fspath(path))
    unwrapped = acc.unwrap_model(model)
    rng = gather_object([rng_state()])
    state_dict = acc.get_state_dict(model)  # full weights on the main process
    acc.wait_for_everyone()

    error: BaseException | None = None
    try:
        with contextlib.ExitStack() as stack:
            tmp = None
            if acc.is_main_process:
                try:
                    tmp = str(stack.enter_context(atomic_folder(path)))
                except BaseException as err:  # noqa: BLE001 - reported to every process below
                    error = err
            # every process writes its own RNG file into the main process's temporary folder
            tmp = broadcast_object_list([tmp])[0]
            if tmp is not None:
                try:
                    _write_checkpoint_files(
                        tmp,
                        accelerator=acc,
                        model=unwrapped,
                        optimizer=optimizer,
                        scheduler=scheduler,
                        state_dict=state_dict,
                        state=state,
                        rng=rng,
                    )
                except BaseException as err:  # noqa: BLE001 - re-raised below
                    error = err
                acc.wait_for_everyone()
                if any_process(acc, error is not None):
                    # leaving the block with an exception deletes the temporary folder
                    raise error if error is not None else _FailedElsewhere()
            # leaving the block normally moves the temporary folder onto ``path``
    except _FailedElsewhere:
        pass
    except BaseException as err:  # noqa: BLE001 - this process's error, or the final rename's
        error = err
    failed_somewhere = any_process(acc, error is not None)  # also a barrier when distributed
    if error is not None:
        raise error
    if failed_somewhere:
        raise RuntimeError(f"saving {path} failed on another process; see its traceback")
    return path


def load_checkpoint(
    path: str | os.PathLike,
    *,
    accelerator,
    model: nn.Module,
    optimizer=None,
    scheduler=None,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler, scaler and RNG states from ``path``.

    Returns the checkpoint's ``trainer_state.json`` for the caller to restore its own state
    from. The weights must fit ``accelerator.unwrap_model(model)``
    (else :class:`CheckpointMismatchError`, before anything is changed). ``optimizer`` /
    ``scheduler`` ``None``: not restored.
    """
    acc = accelerator
    path = os.fspath(path)
    state = read_trainer_state(path)
    load_model_weights(path, acc.unwrap_model(model))

    def load(name: str):
        return torch.load(os.path.join(path, name), map_location="cpu", weights_only=True)

    if optimizer is not None:
        optimizer.load_state_dict(load(OPTIMIZER_NAME))
    if scheduler is not None:
        scheduler.load_state_dict(load(SCHEDULER_NAME))
    if acc.scaler is not None and os.path.isfile(os.path.join(path, SCALER_NAME)):
        acc.scaler.load_state_dict(load(SCALER_NAME))

    rng_file = os.path.join(path, RNG_NAME.format(rank=acc.process_index))
    if not os.path.isfile(rng_file):
        rng_file = os.path.join(path, RNG_NAME.format(rank=0))
    torch_rng = torch.load(rng_file, map_location="cpu", weights_only=True)
    rngs = state.get("rng") or []
    mine = None
    if rngs:
        mine = rngs[acc.process_index] if acc.process_index < len(rngs) else rngs[0]
    restore_rng_state(mine, torch_rng)
    return state


def data_order_changes(
    state: dict[str, Any], config: Any, num_examples: int, num_processes: int
) -> list[str]:
    """What differs between a checkpoint and the current run in the settings that decide the
    batch order (``config`` fields :data:`DATA_ORDER_FIELDS`, dataset size, process count), as
    ``"name (saved -> current)"`` strings; empty when a resume replays the same batches."""
    saved_cfg = state.get("config", {})
    changed = [
        f"{k} ({saved_cfg[k]!r} -> {getattr(config, k)!r})"
        for k in DATA_ORDER_FIELDS
        if k in saved_cfg and hasattr(config, k) and saved_cfg[k] != getattr(config, k)
    ]
    n_saved = state.get("num_examples", num_examples)
    if n_saved != num_examples:
        changed.append(f"train_dataset size ({n_saved} -> {num_examples})")
    if state.get("num_processes", num_processes) != num_processes:
        changed.append(f"num_processes ({state['num_processes']} -> {num_processes})")
    return changed
