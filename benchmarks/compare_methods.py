"""One table per task: every baseline and latent method on the same model, data and metrics.

For ``--task {multiplication,arithmetic,graph}`` this trains (or loads, when ``--out`` already
holds the model) CoT, no-CoT, iCoT, pause, Coconut, Coconut with step supervision and
Latent-SFT (and ATP-Latent where the task has one) under the budgets of the task's recipe in
:mod:`workbench.recipes`, scores all of them on the same held-out
problems and prints: accuracy, reasoning positions, forward passes, the latent-usage drops
(accuracy lost when the latents are zeroed, swapped with another example's, or replaced by the
pause embedding; ``usage_drop`` is the smallest of the three), train steps and minutes. For the
graph task it also scores the real ProsQA test split (``shared_dir()/data/prosqa``; skipped
cleanly when absent) and ``step_fact_rate``: the share of a written rationale's sentences that
are facts of the question (whether the CoT looks its steps up or invents them).

Usage::

    python benchmarks/compare_methods.py --task arithmetic [--scale 1.0] [--out runs/compare]
        [--methods cot,nocot,coconut_sup] [--test-size 500] [--threads 2]

Without ``--methods`` it runs every row but the recipe's opt-in ones (long schedules such as
multiplication's ``icot_slow``), which run when named.

``--difficulty knob=value,...`` overrides knobs of the recipe's task difficulty and
``--train-size`` its number of training problems (use a fresh ``--out`` with them: saved models
are loaded by row name). ``--scale`` multiplies every step budget and training time (0.25 for a
quick look; a GPU run can use 4+); ``--mixed-precision bf16`` trains under accelerate's bf16
autocast (for a GPU). Every model is saved under ``<out>/<task>/<method>`` and loaded instead of
retrained on a rerun, so a killed benchmark continues where it stopped; a row still training
checkpoints under ``<out>/<task>/_unfinished/<method>`` every 500 steps and resumes from there
(a folder of another setting is refused, naming it). Each validation of a training row prints
one ``[compare] <row>: step ...`` line. The last line is one
JSON object
``{"task", "device", "methods": {name: {"accuracy", "reasoning_positions", "usage_drop", ...}}}``.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
import time
from pathlib import Path

try:
    import workbench  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from workbench.data.tasks.graph_qa import mean_step_fact_rate, to_symbolic
from workbench.eval.ablations import usage_drop
from workbench.experiment import TrainedModel, prepare_data
from workbench.io import remove_folder
from workbench.methods import atp
from workbench.recipes import (
    RECIPES,
    default_rows,
    scaled,
    start_of,
    train_entry,
    with_start_rows,
)
from workbench.train import TrainerCallback
from workbench.trained import METHOD_FILE

UNFINISHED = "_unfinished"
"""``<out>/<task>/_unfinished/<row>``: the checkpoints of a row still training."""


def real_prosqa_accuracy(tm: TrainedModel, limit: int, fact_format: str) -> float | None:
    """Exact-answer accuracy on the real ProsQA test split, or ``None`` when it is absent.

    With ``fact_format="symbolic"`` its facts are rewritten like the training data's.
    """
    from workbench.data.loaders import load_coconut_json
    from workbench.paths import shared_dir

    path = shared_dir() / "data" / "prosqa" / "prosqa_test.json"
    if not path.exists():
        return None
    examples = load_coconut_json(path)[:limit]
    if fact_format == "symbolic":
        examples = [to_symbolic(ex) for ex in examples]
    return float(tm.evaluate(examples).summary["accuracy"])


def parse_knobs(text: str) -> dict:
    """``"a=1,b=0.5"`` -> ``{"a": 1, "b": 0.5}`` (values as Python literals)."""
    out = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise argparse.ArgumentTypeError(f"{part!r}: expected knob=value, e.g. n_concepts=8")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise argparse.ArgumentTypeError(
                f"{part!r}: the value must be a number or a quoted string"
            ) from None
    return out


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


class RowProgress(TrainerCallback):
    """One line per validation of a training row (step, loss, metrics): an hour-long row shows
    where it is; without validation, one line every ``every`` steps."""

    def __init__(self, name: str, every: int = 1000):
        self.name, self.every, self.loss, self.started = name, every, float("nan"), False
        self.resumed_s = 0.0
        """Training time the row had before this process resumed it (0 for a fresh start)."""

    def on_train_begin(self, trainer) -> None:
        if not self.started and trainer.step:  # the first train() call starts where it resumed
            self.resumed_s = trainer.elapsed_s
            print(f"[compare] {self.name}: resumed at step {trainer.step}", flush=True)
        self.started = True

    def on_log(self, trainer, logs) -> None:
        self.loss = logs.get("loss", self.loss)
        if trainer.eval_fn is None and trainer.step % self.every == 0:
            self.report(trainer, {})

    def on_evaluate(self, trainer, metrics) -> None:
        self.report(trainer, metrics)

    def report(self, trainer, metrics: dict) -> None:
        parts = [f"step {trainer.step}", f"loss {self.loss:.4f}"]
        parts += [f"{k} {v:.4f}" for k, v in metrics.items()]
        print(f"[compare] {self.name}: " + ", ".join(parts), flush=True)


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
    p.add_argument(
        "--difficulty",
        default="",
        type=parse_knobs,
        help="knob=value,... over the recipe's difficulty, e.g. "
        "edges_per_concept=1.0 (an unknown knob is an error naming the known)",
    )
    p.add_argument("--train-size", type=int, help="training problems (default: the recipe's)")
    p.add_argument("--mixed-precision", choices=("no", "bf16"), default="no",
                   help="the trainers' autocast (accelerate); bf16 is for a GPU run")  # fmt: skip
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    recipe = RECIPES[args.task]
    rows = default_rows(recipe)
    if args.methods:
        rows = [r.strip() for r in args.methods.split(",") if r.strip()]
        unknown = [r for r in rows if r not in recipe.entries]
        if unknown:
            p.error(f"--methods {unknown}: the {args.task} recipe has {list(recipe.entries)}")
        rows = with_start_rows(recipe, rows)  # every latent method starts from CoT or a row
    difficulty = {**recipe.difficulty, **args.difficulty}
    data = prepare_data(args.task, train_size=args.train_size or recipe.train_size,
                        test_size=args.test_size, seed=args.seed, **difficulty)  # fmt: skip
    root = Path(args.out) / args.task
    results: dict[str, dict] = {}
    trained: dict = {}
    for name in rows:
        entry = scaled(recipe.entries[name], args.scale)
        if args.mixed_precision != "no":
            entry.train = {**entry.train, "mixed_precision": args.mixed_precision}
        folder = root / name
        t0 = time.perf_counter()
        if (folder / METHOD_FILE).exists():
            tm = TrainedModel.load(folder, data.test)
            minutes = tm.meta.get("train_minutes", float("nan"))
            print(f"[compare] {name}: loaded from {folder}", flush=True)
        else:
            print(f"[compare] {name}: training ({entry})", flush=True)
            run_dir, progress = root / UNFINISHED / name, RowProgress(name)
            tm = train_entry(name, entry, data, start_of(entry, trained), recipe, args.seed,
                             run_dir=run_dir, callbacks=[progress])  # fmt: skip
            minutes = (time.perf_counter() - t0 + progress.resumed_s) / 60
            tm.meta["train_minutes"] = minutes
            tm.save(folder)
            remove_folder(run_dir)
            if run_dir.parent.is_dir() and not any(run_dir.parent.iterdir()):
                run_dir.parent.rmdir()
        trained[name] = tm
        ev = tm.evaluate(data.test)
        res = ev.summary
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
            row["prosqa_real_accuracy"] = real_prosqa_accuracy(
                tm, args.test_size, difficulty.get("fact_format", "sentence")
            )
            row["step_fact_rate"] = mean_step_fact_rate(
                ev.per_example["question"], ev.per_example["generated"]
            )
        if tm.method == "atp":  # both modes, and whether the latents decode to the steps
            row["accuracy_sampled"] = tm.evaluate(data.test, spec=atp.sampled_spec(tm.spec),
                                                  seed=args.seed).summary["accuracy"]  # fmt: skip
            steps = atp.decode_latents(tm, data.test[: args.usage_size])
            row["decoded_step_exact"] = float(steps["exact"].mean())
        results[name] = row
        print(f"[compare] {name}: {json.dumps(_json_safe(row))}", flush=True)
    cols = ["accuracy", "reasoning_positions", "forward_passes", "drop_zero", "drop_swap",
            "drop_pause", "usage_drop", "train_steps", "train_minutes"]  # fmt: skip
    if args.task == "graph":
        cols += ["prosqa_real_accuracy", "step_fact_rate"]
    if any("accuracy_sampled" in r for r in results.values()):
        cols += ["latent_steps", "accuracy_sampled", "decoded_step_exact"]
    print(f"\n{args.task} ({len(data.test)} test problems, device {device}, scale {args.scale})")
    print("method".ljust(14) + "".join(c[:13].rjust(14) for c in cols))
    for name, row in results.items():
        print(name.ljust(14) + "".join(_cell(row.get(c)).rjust(14) for c in cols))
    summary = {"task": args.task, "device": device, "scale": args.scale,
               "difficulty": difficulty, "train_size": len(data.train),
               "mixed_precision": args.mixed_precision,
               "test_size": len(data.test), "methods": results}  # fmt: skip
    print(json.dumps(_json_safe(summary), default=lambda v: None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
