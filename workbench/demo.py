"""The main job on the embedded default: train CoT and no-CoT on 3x3 multiplication, compare.

Writes a run folder with ``results.csv`` (one row per method), per-example predictions, the
learning histories, plotly figures (HTML, offline) and ``metrics.json``, then prints the table.
About 10 minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from workbench.experiment import default_train_config, prepare_data, train_baseline
from workbench.runs import new_run_dir, write_figure, write_json, write_table
from workbench.viz.curves import accuracy_vs_length, learning_curves


@dataclass
class DemoConfig:
    """Budget and data of the demo run."""

    cot_minutes: float = 5.5
    """Training wall time of the explicit-CoT model."""
    nocot_minutes: float = 2.5
    """Training wall time of the answer-only model."""
    task: str = "multiplication"
    """Synthetic task (see ``workbench.data.tasks``)."""
    train_size: int = 50_000
    """Training problems generated (more than the budget can consume: every batch is fresh)."""
    test_size: int = 1_000
    """Held-out problems scored at the end."""
    seed: int = 0
    """Seeds data, init and data order."""
    out_dir: str | None = None
    """Run folder (default ``runs/demo-<timestamp>``)."""

    def __post_init__(self) -> None:
        if self.cot_minutes <= 0 or self.nocot_minutes <= 0:
            raise ValueError("DemoConfig.cot_minutes and nocot_minutes must be > 0")
        if self.test_size < 1 or self.train_size < 1:
            raise ValueError("DemoConfig.train_size and test_size must be >= 1")


def run_demo(cfg: DemoConfig | None = None) -> pd.DataFrame:
    """Run the demo; returns the results table (also written under the run folder)."""
    cfg = cfg or DemoConfig()
    t0 = time.perf_counter()
    run = Path(cfg.out_dir) if cfg.out_dir else new_run_dir("demo")
    run.mkdir(parents=True, exist_ok=True)
    print(f"[demo] run folder: {run}")
    data = prepare_data(cfg.task, train_size=cfg.train_size, val_size=200, test_size=cfg.test_size, seed=cfg.seed)
    print(f"[demo] {cfg.task}: {len(data.train)} train / {len(data.test)} test; e.g. {data.test[0]}")
    trained, rows, hist = {}, [], {}
    for mode, minutes in (("cot", cfg.cot_minutes), ("nocot", cfg.nocot_minutes)):
        print(f"[demo] training {mode} for {minutes:g} min")
        tc = default_train_config(seed=cfg.seed, eval_every=250)
        tm = train_baseline(data, mode, train_config=tc, seed=cfg.seed, time_budget_s=60 * minutes)
        res = tm.evaluate()
        trained[mode], hist[mode] = tm, tm.history
        rows.append({**res.summary, "train_steps": tm.meta["train_steps"], "train_minutes": minutes,
                     "params": tm.meta["params"]})
        write_table(run / f"predictions_{mode}.csv", res.per_example)
        write_table(run / f"history_{mode}.csv", tm.history)
    results = pd.DataFrame(rows)
    write_table(run / "results.csv", results)
    write_figure(run / "learning_curves.html", learning_curves(hist, "loss", title="training loss"))
    write_figure(run / "val_accuracy.html", learning_curves(hist, "eval/accuracy", title="validation accuracy"))
    write_figure(run / "accuracy_vs_length.html", accuracy_vs_length(results))
    write_json(run / "metrics.json", {"results": rows, "seconds": time.perf_counter() - t0})
    cols = ["method", "accuracy", "reasoning_positions", "answer_tokens", "forward_passes", "ms_per_example",
            "train_steps"]
    print("\n" + results[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\n[demo] done in {(time.perf_counter() - t0) / 60:.1f} min; results in {run}")
    return results
