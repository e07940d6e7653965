"""One table per task: every baseline and latent method on the same model, data and metrics.

For ``--task {multiplication,arithmetic,graph}`` this trains (or loads, when ``--out`` already
holds the model) CoT, no-CoT, iCoT, pause, Coconut, Coconut with step supervision and
Latent-SFT under the budgets of the task's recipe below, scores all of them on the same held-out
problems and prints: accuracy, reasoning positions, forward passes, the latent-usage drops
(accuracy lost when the latents are zeroed, swapped with another example's, or replaced by the
pause embedding; ``usage_drop`` is the smallest of the three), train steps and minutes. For the
graph task it also scores the real ProsQA test split (``shared_dir()/data/prosqa``; skipped
cleanly when absent).

Usage::

    python benchmarks/compare_methods.py --task arithmetic [--scale 1.0] [--out runs/compare]
        [--methods cot,nocot,coconut_sup] [--test-size 500] [--threads 2]

``--scale`` multiplies every step budget and training time (0.25 for a quick look; a GPU run can
use 4+). Every model is saved under ``<out>/<task>/<method>`` and loaded instead of retrained on
a rerun, so a killed benchmark continues where it stopped. The last line is one JSON object
``{"task", "device", "methods": {name: {"accuracy", "reasoning_positions", "usage_drop", ...}}}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import workbench  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from workbench.eval.ablations import usage_drop
from workbench.experiment import TrainedModel, default_train_config, prepare_data, train
from workbench.methods import BASE_METHOD, NO_COT_METHOD, get_method
from workbench.models.build import ModelConfig
from workbench.trained import METHOD_FILE


@dataclass
class Entry:
    """One row of the comparison: a registered method and its settings for this task."""

    method: str
    config: dict = field(default_factory=dict)
    """Fields of the method's config dataclass."""
    train: dict = field(default_factory=dict)
    """``default_train_config`` overrides (steps, lr, batch...)."""
    minutes: float | None = None
    """Wall-time budget of a baseline trained by time; ``None``: by ``train["max_steps"]``
    (reproducible on any machine, unlike a time budget)."""


@dataclass
class TaskRecipe:
    """Data, model and per-method settings of one task (measured; see README Results)."""

    difficulty: dict
    train_size: int
    d_model: int
    entries: dict[str, Entry]
    max_positions: int = 256


def _lat(lr: float, **kw) -> dict:
    return {"lr": lr, "warmup_steps": 20, "eval_every": None, "progress": False, **kw}


SUPERVISION = {"latent_ce_weight": 1.0, "step_decoder": "small"}
"""Step supervision of the ``coconut_sup`` rows (RESEARCH Part A 7)."""


def curriculum_rows(stages: dict, lr: float = 1e-3) -> dict[str, Entry]:
    """pause, Coconut and step-supervised Coconut under one curriculum (CoconutConfig fields)."""
    return {
        "pause": Entry("pause", dict(stages), _lat(lr)),
        "coconut": Entry("coconut", dict(stages), _lat(lr)),
        "coconut_sup": Entry("coconut", {**stages, **SUPERVISION}, _lat(lr)),
    }


RECIPES: dict[str, TaskRecipe] = {
    "multiplication": TaskRecipe(
        difficulty={"digits_a": 3},
        train_size=50_000,
        d_model=128,
        entries={
            "cot": Entry(BASE_METHOD, minutes=10),
            "nocot": Entry(NO_COT_METHOD, minutes=10),
            "icot": Entry(
                "icot",
                {"tokens_per_removal": 8, "steps_per_removal": 400, "final_steps": 400},
                _lat(5e-4),
            ),
            **curriculum_rows({"c_thought": 2, "steps_per_stage": 300, "final_stage_steps": 500}),
            "latent_sft": Entry(
                "latent_sft",
                {
                    "encoder_steps": 50,
                    "decoder_steps": 300,
                    "union_steps": 300,
                    "stage2_steps": 500,
                },
            ),
        },
    ),
    "arithmetic": TaskRecipe(
        # single-digit operands, results <= 40, 2-4 steps: at the default difficulty (operands
        # to 20, up to 5 steps) a d=128 CoT model reached 8.4% after 8 minutes; here 27%.
        difficulty={"max_value": 9, "max_result": 40, "min_steps": 2, "max_steps": 4},
        train_size=50_000,
        d_model=128,
        # Coconut + step supervision at these budgets: 77.0% with 4 latents (CoT 64.3%, no-CoT
        # 33.3%), usage drops 60-68 points; at 2/3 of them 55.3%, at 1/3 35.0% (Coconut 28.3%,
        # pause 27.0%, their latents bypassed).
        entries={
            "cot": Entry(BASE_METHOD, train={"max_steps": 5000, "eval_every": 500}),
            "nocot": Entry(NO_COT_METHOD, train={"max_steps": 5000, "eval_every": 500}),
            **curriculum_rows(
                {
                    "c_thought": 1,
                    "max_latent_stage": 4,
                    "steps_per_stage": 600,
                    "final_stage_steps": 1200,
                }
            ),  # fmt: skip
        },
    ),
    "graph": TaskRecipe(
        difficulty={"n_concepts": 12, "min_depth": 2, "max_depth": 3},
        train_size=50_000,
        d_model=128,
        max_positions=512,
        entries={
            "cot": Entry(BASE_METHOD, minutes=10),
            "nocot": Entry(NO_COT_METHOD, minutes=10),
            **curriculum_rows(
                {
                    "c_thought": 1,
                    "max_latent_stage": 3,
                    "steps_per_stage": 200,
                    "final_stage_steps": 400,
                }
            ),  # fmt: skip
        },
    ),
}
STEP_FIELDS = (
    "steps_per_stage", "final_stage_steps", "cot_steps", "steps_per_removal", "final_steps",
    "encoder_steps", "decoder_steps", "union_steps", "stage2_steps",
)  # fmt: skip


def scaled(entry: Entry, scale: float) -> Entry:
    """``entry`` with every step budget and time budget multiplied by ``scale``."""
    cfg = {
        k: (max(1, math.ceil(v * scale)) if k in STEP_FIELDS and v else v)
        for k, v in entry.config.items()
    }
    train_overrides = dict(entry.train)
    if train_overrides.get("max_steps"):
        train_overrides["max_steps"] = max(1, math.ceil(train_overrides["max_steps"] * scale))
    minutes = entry.minutes * scale if entry.minutes is not None else None
    return Entry(entry.method, cfg, train_overrides, minutes)


def train_entry(name: str, entry: Entry, data, cot, recipe: TaskRecipe, seed: int):
    """Train one entry (baselines by time, latent methods by steps from ``cot``)."""
    record = get_method(entry.method)
    kwargs: dict = {"seed": seed}
    if record.config_cls is not None:
        kwargs["config"] = record.config_cls(**{**entry.config, "seed": seed})
    if record.needs_base:
        if entry.train:
            kwargs["train_config"] = default_train_config(seed=seed, **entry.train)
        return train(entry.method, data, cot, **kwargs)
    mc = ModelConfig(d_model=recipe.d_model, max_positions=recipe.max_positions)
    tc = default_train_config(seed=seed, progress=False, **entry.train)
    budget = 60 * entry.minutes if entry.minutes is not None else None
    return train(entry.method, data, model_config=mc, train_config=tc,
                 time_budget_s=budget, **kwargs)  # fmt: skip


def real_prosqa_accuracy(tm: TrainedModel, limit: int) -> float | None:
    """Exact-answer accuracy on the real ProsQA test split, or ``None`` when it is absent."""
    from workbench.data.loaders import load_coconut_json
    from workbench.paths import shared_dir

    path = shared_dir() / "data" / "prosqa" / "prosqa_test.json"
    if not path.exists():
        return None
    examples = load_coconut_json(path)[:limit]
    return float(tm.evaluate(examples).summary["accuracy"])


def _json_safe(v):
    """NaN and inf as ``null``: the last line must be strict JSON."""
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(RECIPES), required=True)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every budget")
    p.add_argument("--methods", help="comma-separated subset of the recipe's rows")
    p.add_argument("--out", default="runs/compare", help="models are saved/loaded here")
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--usage-size", type=int, default=200, help="examples for the ablations")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    recipe = RECIPES[args.task]
    rows = list(recipe.entries)
    if args.methods:
        rows = [r.strip() for r in args.methods.split(",") if r.strip()]
        unknown = [r for r in rows if r not in recipe.entries]
        if unknown:
            p.error(f"--methods {unknown}: the {args.task} recipe has {list(recipe.entries)}")
        if BASE_METHOD not in rows:
            rows.insert(0, BASE_METHOD)  # every latent method starts from it
    data = prepare_data(args.task, train_size=recipe.train_size, test_size=args.test_size,
                        seed=args.seed, **recipe.difficulty)  # fmt: skip
    root = Path(args.out) / args.task
    results: dict[str, dict] = {}
    cot = None
    for name in rows:
        entry = scaled(recipe.entries[name], args.scale)
        folder = root / name
        t0 = time.perf_counter()
        if (folder / METHOD_FILE).exists():
            tm = TrainedModel.load(folder, data.test)
            minutes = tm.meta.get("train_minutes", float("nan"))
            print(f"[compare] {name}: loaded from {folder}", flush=True)
        else:
            print(f"[compare] {name}: training ({entry})", flush=True)
            tm = train_entry(name, entry, data, cot, recipe, args.seed)
            minutes = (time.perf_counter() - t0) / 60
            tm.meta["train_minutes"] = minutes
            tm.save(folder)
        if name == BASE_METHOD:
            cot = tm
        res = tm.evaluate(data.test).summary
        usage = usage_drop(tm.model, tm.tokenizer, data.test[: args.usage_size], tm.spec)
        row = {
            "accuracy": res["accuracy"],
            "reasoning_positions": res["reasoning_positions"],
            "latent_steps": res["latent_steps"],
            "forward_passes": res["forward_passes"],
            **usage,
            "train_steps": int(tm.meta.get("train_steps", 0)),
            "train_minutes": minutes,
        }
        if args.task == "graph":
            row["prosqa_real_accuracy"] = real_prosqa_accuracy(tm, args.test_size)
        results[name] = row
        print(f"[compare] {name}: {json.dumps(_json_safe(row))}", flush=True)
    cols = ["accuracy", "reasoning_positions", "forward_passes", "drop_zero", "drop_swap",
            "drop_pause", "usage_drop", "train_steps", "train_minutes"]  # fmt: skip
    if args.task == "graph":
        cols.append("prosqa_real_accuracy")
    print(f"\n{args.task} ({len(data.test)} test problems, device {device}, scale {args.scale})")
    print("method".ljust(14) + "".join(c[:13].rjust(14) for c in cols))
    for name, row in results.items():
        print(name.ljust(14) + "".join(_cell(row.get(c)).rjust(14) for c in cols))
    summary = {"task": args.task, "device": device, "scale": args.scale,
               "test_size": len(data.test), "methods": results}  # fmt: skip
    print(json.dumps(_json_safe(summary), default=lambda v: None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
