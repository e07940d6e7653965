"""Experiments in a few calls: data -> tokenizer -> model -> method training -> evaluation.

This is the layer notebooks, the CLI and the demo share, so none of them defines helpers of its
own. Methods are looked up in the registry (:mod:`workbench.methods`): ``train("coconut", data,
cot)`` runs any registered method; a trained method is a :class:`~workbench.trained.TrainedModel`
that saves to and loads from a folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.config import ConfigError
from workbench.data.prepare import TaskData, prepare_data
from workbench.data.tokenizer import special_ids
from workbench.engine.spec import spec_from_dict, spec_to_dict
from workbench.errors import CheckpointError
from workbench.methods import BASE_METHOD, get_method, method_names
from workbench.methods.base import default_train_config
from workbench.models.build import ModelConfig, count_parameters
from workbench.paths import repo_root
from workbench.trained import METHOD_FILE, TrainedModel

SHIPPED_D_MODEL = 128
"""Hidden size of the shipped checkpoints and of the CoT model trained when they are absent."""


def __getattr__(name: str):
    if name == "METHODS":  # the registered names, read when asked (the registry can grow)
        return method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----- training ------------------------------------------------------------------------------


def train(method: str, data: TaskData, base=None, **kwargs) -> TrainedModel:
    """Train registered ``method`` on ``data`` (from ``base`` for latent methods).

    ``kwargs`` are the method's ``train`` keywords: ``config`` (its config dataclass),
    ``train_config``, ``model_config``, ``callbacks``, ``seed``, ``time_budget_s``.
    """
    record = get_method(method)
    if record.needs_base and base is None:
        raise ConfigError(
            f"method {method!r} starts from a trained CoT model: pass base= "
            "(e.g. cot_starting_point(data))"
        )
    return record.train(data, base, **kwargs)


def train_baseline(
    data: TaskData,
    mode: str = BASE_METHOD,
    *,
    model_config: ModelConfig | None = None,
    train_config=None,
    model=None,
    callbacks=None,
    seed: int = 0,
    time_budget_s: float | None = None,
) -> TrainedModel:
    """A method that needs no base model (``cot``, ``nocot``), new or continuing ``model``."""
    if get_method(mode).needs_base:
        raise ConfigError(f"mode={mode!r} is a latent method; use train({mode!r}, data, base)")
    return get_method(mode).train(
        data,
        model,
        model_config=model_config,
        train_config=train_config,
        callbacks=callbacks,
        seed=seed,
        time_budget_s=time_budget_s,
    )


def train_coconut(data: TaskData, base=None, *, coconut=None, **kwargs) -> TrainedModel:
    """Coconut's curriculum from ``base`` (see :func:`workbench.methods.coconut.train`)."""
    from workbench.methods import coconut as method

    return method.train(data, base, config=coconut, **kwargs)


def train_latent_sft(data: TaskData, base, *, config=None, **kwargs) -> TrainedModel:
    """Latent-SFT from ``base`` (see :func:`workbench.methods.latent_sft.train`)."""
    from workbench.methods import latent_sft as method

    return method.train(data, base, config=config, **kwargs)


def compare(models, examples=None, **kwargs) -> pd.DataFrame:
    """One row per model: accuracy and reasoning lengths on the same examples.

    ``models`` is a list (rows named by method) or a ``{label: model}`` dict (rows named by
    label, e.g. ``"coconut_sup"`` for a step-supervised Coconut).
    """
    labeled = list(models.items()) if isinstance(models, dict) else [(None, m) for m in models]
    rows = []
    for label, m in labeled:
        row = m.evaluate(examples, **kwargs).to_frame()
        if label is not None:
            row["method"] = label
        rows.append(row)
    return pd.concat(rows, ignore_index=True)


# ----- shipped checkpoints -------------------------------------------------------------------


SHIPPED_TASK = "multiplication"
"""The task of the first shipped set, whose folders sit directly under ``checkpoints/``."""


def checkpoints_dir() -> Path:
    """Where the project's own small checkpoints live (rebuilt by ``make checkpoints``);
    ``WORKBENCH_CHECKPOINTS_DIR`` points elsewhere (e.g. a set built with ``--out``)."""
    env = os.environ.get("WORKBENCH_CHECKPOINTS_DIR")
    return Path(env) if env else repo_root() / "checkpoints"


def shipped_path(name: str, task: str = SHIPPED_TASK) -> Path:
    """The folder of shipped model ``name`` for ``task``: ``checkpoints/<name>`` for 3x3
    multiplication, ``checkpoints/<task>/<name>`` for the other tasks' recipe rows
    (:mod:`workbench.recipes`, e.g. ``checkpoints/arithmetic/coconut_sup``)."""
    root = checkpoints_dir()
    return root / name if task == SHIPPED_TASK else root / task / name


def shipped_methods(task: str = SHIPPED_TASK) -> list[str]:
    """Names with a shipped checkpoint for ``task``."""
    folder = shipped_path("", task)
    return sorted(p.name for p in folder.glob("*") if (p / METHOD_FILE).exists())


def data_for(tm: TrainedModel, *, test_size: int = 1000, seed: int = 0) -> TaskData:
    """The splits a saved model was trained with (regenerated from its ``meta["data"]``)."""
    task_meta = tm.meta.get("data", {})
    return prepare_data(
        tm.task,
        train_size=task_meta.get("train_size", 1000),
        val_size=task_meta.get("val_size", 200),
        test_size=test_size,
        seed=task_meta.get("seed", seed),
        tokenizer=tm.tokenizer,
        **task_meta.get("difficulty", {}),
    )


def load_pretrained(
    name: str,
    *,
    task: str = SHIPPED_TASK,
    test_size: int = 1000,
    seed: int = 0,
    test_examples: list | None = None,
) -> TrainedModel:
    """A shipped checkpoint with its task's test split (no network, no training).

    ``name`` is a method (``"coconut"``) or, for tasks with a recipe, a recipe row
    (``"coconut_sup"`` on arithmetic: Coconut with step supervision). The test split is
    regenerated from the model's ``meta["data"]`` unless ``test_examples`` are given.
    """
    path = shipped_path(name, task)
    if not (path / METHOD_FILE).exists():
        raise CheckpointError(
            f"no shipped checkpoint {name!r} for task {task!r} at {path}; rebuild them with "
            f"`make checkpoints` (shipped for {task}: {shipped_methods(task)})"
        )
    method = _row_method(name, task)
    tm = TrainedModel.load(path, method=method)
    if test_examples is None:
        test_examples = data_for(tm, test_size=test_size, seed=seed).test
    tm.test_examples = list(test_examples)
    return tm


def _row_method(name: str, task: str) -> str:
    """The registered method behind shipped ``name`` (a recipe row or a method name)."""
    from workbench.recipes import RECIPES

    entries = RECIPES[task].entries if task in RECIPES else {}
    method = entries[name].method if name in entries else name
    get_method(method)  # an unknown name is a ConfigError listing the methods
    return method


def cot_starting_point(
    data: TaskData, init_from: str = "shipped", *, cot_minutes: float = 2.0, seed: int = 0
) -> TrainedModel:
    """The CoT model latent methods start from: the shipped checkpoint, or one trained here.

    ``init_from="shipped"`` loads the shipped CoT model of ``data``'s task (``checkpoints/cot``,
    ``checkpoints/arithmetic/cot``; rebuilt by ``make checkpoints``) and falls back to training
    for ``cot_minutes`` when it is absent or does not fit ``data``'s tokenizer;
    ``"scratch"`` always trains; any other value is a local TrainedModel folder.
    """
    if init_from not in ("shipped", "scratch"):
        return TrainedModel.load(init_from, data.test)
    shipped = shipped_path(BASE_METHOD, data.task)
    if init_from == "shipped" and (shipped / METHOD_FILE).exists():
        tm = TrainedModel.load(shipped, data.test)
        if tm.tokenizer.get_vocab() == data.tokenizer.get_vocab() and tm.task == data.task:
            return tm
        print(f"[workbench] shipped CoT checkpoint is for task {tm.task!r}; training CoT here")
    elif init_from == "shipped":
        print("[workbench] no shipped CoT checkpoint (make checkpoints); training CoT here instead")
    return train(
        BASE_METHOD,
        data,
        model_config=ModelConfig(d_model=SHIPPED_D_MODEL),
        train_config=default_train_config(seed=seed),
        seed=seed,
        time_budget_s=60 * cot_minutes,
    )


def load_or_train(
    method: str,
    *,
    test_size: int = 500,
    seed: int = 0,
    train_size: int = 1000,
    minutes: float = 2.0,
) -> TrainedModel:
    """A model of ``method`` to inspect: the shipped checkpoint if there is one, else a quick one.

    The quick path starts from the CoT starting point (:func:`cot_starting_point`) and trains
    the method's ``quick_config`` (a baseline without a base trains for ``minutes``); it is
    meant for looking at trajectories, not for headline numbers.
    """
    record = get_method(method)
    if (shipped_path(method) / METHOD_FILE).exists():
        return load_pretrained(method, test_size=test_size, seed=seed)
    data = prepare_data(
        "multiplication", train_size=train_size, test_size=test_size, seed=seed, digits_a=3
    )
    cot = cot_starting_point(data, "shipped", cot_minutes=minutes, seed=seed)
    if method == BASE_METHOD:
        return cot
    if not record.needs_base:
        return train(method, data, seed=seed, time_budget_s=60 * minutes)
    kwargs = record.quick_config(seed) if record.quick_config else {}
    return train(method, data, cot, seed=seed, **kwargs)


def describe(tm: TrainedModel) -> dict[str, Any]:
    """A short JSON-able description (for tables and metrics files)."""
    return {
        "method": tm.method,
        "task": tm.task,
        "params": count_parameters(tm.model),
        "spec": spec_to_dict(tm.spec),
        **{k: v for k, v in tm.meta.items() if not isinstance(v, dict)},
    }


__all__ = [
    "METHOD_FILE",
    "TaskData",
    "TrainedModel",
    "checkpoints_dir",
    "compare",
    "cot_starting_point",
    "data_for",
    "default_train_config",
    "describe",
    "load_or_train",
    "load_pretrained",
    "prepare_data",
    "shipped_methods",
    "shipped_path",
    "spec_from_dict",
    "spec_to_dict",
    "special_ids",
    "train",
    "train_baseline",
    "train_coconut",
    "train_latent_sft",
]
