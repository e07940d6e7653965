"""The project's own small checkpoints: how they are trained (``make checkpoints``) and stored.

Notebooks start from these instead of a barely-trained toy: one folder per registered method
that has a ``recipe`` (:mod:`workbench.methods`), e.g. ``checkpoints/cot`` (explicit CoT) and the
latent methods trained from it. All are the d=128 variant of the default architecture (4 layers,
0.8M parameters) on 3x3 multiplication, stored in fp16 (about 1.7 MB each). Everything is
trained here, from scratch, on the package's own synthetic data; nothing is downloaded.

The recipes live in each method's file; change one there, rebuild with ``make checkpoints`` and
the notebooks pick the new model up.

Other tasks ship the rows their :mod:`workbench.recipes` entry lists in ``shipped``, under
``checkpoints/<task>/<row>`` (:func:`build_task_checkpoints`): on arithmetic CoT, no-CoT,
Coconut with step supervision (``coconut_sup``) and ATP-Latent, trained exactly as
``benchmarks/compare_methods.py`` trains them (same data, settings and seed), so a benchmark run's
``--out`` folder can be stored as the shipped set without retraining (``reuse``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from workbench.config import ConfigError
from workbench.experiment import (
    SHIPPED_D_MODEL,
    TrainedModel,
    checkpoints_dir,
    default_train_config,
    prepare_data,
    train,
)
from workbench.methods import BASE_METHOD, get_method, method_names
from workbench.models.build import ModelConfig

TRAIN_SIZE = 100_000
"""Generated training problems (more than any recipe consumes: every batch is fresh)."""


def shipped_method_names() -> tuple[str, ...]:
    """Registered methods with a shipped-checkpoint recipe, the CoT base first."""
    names = [BASE_METHOD] + [
        n for n in method_names() if n != BASE_METHOD and get_method(n).recipe is not None
    ]
    return tuple(names)


def build_checkpoints(
    out_dir: str | Path | None = None,
    *,
    methods: tuple[str, ...] | None = None,
    cot_minutes: float = 10.0,
    d_model: int = SHIPPED_D_MODEL,
    seed: int = 0,
    test_size: int = 1000,
) -> dict[str, dict]:
    """Train and save the shipped models; returns ``{method: test summary}``.

    Latent methods start from ``<out_dir>/cot``: trained first when the CoT base is in
    ``methods``, else loaded from there (so ``methods=("coconut",)`` retrains Coconut only).
    """
    shipped = shipped_method_names()
    methods = shipped if methods is None else tuple(methods)
    unknown = [m for m in methods if m not in shipped]
    if unknown:
        raise ConfigError(f"methods = {unknown}: not shipped; expected a subset of {list(shipped)}")
    out = Path(out_dir) if out_dir else checkpoints_dir()
    data = prepare_data(
        "multiplication", train_size=TRAIN_SIZE, test_size=test_size, seed=seed, digits_a=3
    )
    summaries: dict[str, dict] = {}

    def finish(tm: TrainedModel, t0: float) -> None:
        res = tm.evaluate()
        tm.meta.update(
            test_accuracy=res.summary["accuracy"], train_seconds=time.perf_counter() - t0
        )
        path = tm.save(out / tm.method, dtype=torch.float16)
        summaries[tm.method] = {
            **res.summary,
            "train_seconds": tm.meta["train_seconds"],
            "saved": str(path),
        }
        print(json.dumps({"method": tm.method, **summaries[tm.method]}), flush=True)

    if BASE_METHOD in methods:
        t0 = time.perf_counter()
        cot = train(
            BASE_METHOD,
            data,
            model_config=ModelConfig(d_model=d_model),
            train_config=default_train_config(seed=seed, eval_every=500),
            seed=seed,
            time_budget_s=60 * cot_minutes,
        )
        finish(cot, t0)
    latent = [m for m in methods if m != BASE_METHOD]
    if not latent:
        return summaries
    # the stored (fp16-rounded) model, as users get it
    cot = TrainedModel.load(out / BASE_METHOD, data.test, method=BASE_METHOD)
    for name in latent:
        t0 = time.perf_counter()
        kwargs = dict(get_method(name).recipe(seed))
        train_size = kwargs.pop("train_size", None)
        method_data = (
            data if train_size is None else dataclasses.replace(data, train=data.train[:train_size])
        )
        tm = train(name, method_data, cot, seed=seed, **kwargs)
        tm.meta["data"] = data.describe()  # the splits to regenerate: train_size of the full set
        finish(tm, t0)
    return summaries


def build_task_checkpoints(
    task: str,
    out_dir: str | Path | None = None,
    *,
    rows: tuple[str, ...] | None = None,
    seed: int = 0,
    test_size: int = 500,
    reuse: str | Path | None = None,
) -> dict[str, dict]:
    """Train (or take from ``reuse``) and store the shipped rows of ``task``'s recipe.

    ``reuse`` is a folder holding ``<row>/`` models saved by ``compare_methods.py --out``
    (``<out>/<task>``): those rows are loaded and stored instead of retrained. Every model is
    scored on the recipe's test split and stored in fp16 under ``<out_dir>/<task>/<row>``.
    """
    from workbench.recipes import RECIPES, start_of, train_entry, with_start_rows
    from workbench.trained import METHOD_FILE

    if task not in RECIPES or not RECIPES[task].shipped:
        tasks = sorted(t for t, r in RECIPES.items() if r.shipped)
        raise ConfigError(f"task = {task!r}: no shipped recipe rows; expected one of {tasks}")
    recipe = RECIPES[task]
    rows = recipe.shipped if rows is None else tuple(rows)
    unknown = [r for r in rows if r not in recipe.shipped]
    if unknown:
        raise ConfigError(f"rows = {unknown}: not shipped for {task}; expected {recipe.shipped}")
    out = (Path(out_dir) if out_dir else checkpoints_dir()) / task
    data = prepare_data(task, train_size=recipe.train_size, test_size=test_size, seed=seed,
                        **recipe.difficulty)  # fmt: skip
    summaries: dict[str, dict] = {}
    trained: dict = {}
    for row in with_start_rows(recipe, list(rows)):
        stored = out / row
        src = Path(reuse) / row if reuse else None
        t0 = time.perf_counter()
        if row not in rows:  # the start of a row that is rebuilt alone: the stored model
            trained[row] = TrainedModel.load(stored, data.test)
            continue
        entry = recipe.entries[row]
        if src is not None and (src / METHOD_FILE).exists():
            tm = TrainedModel.load(src, data.test)
            print(f"[checkpoints] {task}/{row}: reusing {src}", flush=True)
        else:
            tm = train_entry(row, entry, data, start_of(entry, trained), recipe, seed)
            tm.meta["train_minutes"] = (time.perf_counter() - t0) / 60
        trained[row] = tm
        res = tm.evaluate(data.test)
        tm.meta.update(test_accuracy=res.summary["accuracy"], recipe_row=row)
        tm.save(stored, dtype=torch.float16)
        summaries[row] = {**res.summary, "saved": str(stored)}
        print(json.dumps({"task": task, "row": row, **summaries[row]}), flush=True)
    return summaries
