"""The main job on the embedded default: CoT, no-CoT and the latent methods that work, compared.

``source="shipped"`` (the default) loads the shipped models of the task where latents work best,
arithmetic chains (``checkpoints/arithmetic``: CoT, no-CoT, Coconut with step supervision and
ATP-Latent, trained by the recipes of :mod:`workbench.recipes`; their training takes about an
hour on 2 cores, rebuilt by ``make checkpoints``), scores them on the same held-out problems with
the latent-usage ablations, and decodes the best latent model's trajectories. A few minutes.

``source="train"`` trains here instead: the explicit-CoT and answer-only baselines from scratch
for ``cot_minutes`` / ``nocot_minutes``, then a short Coconut curriculum from the CoT model
(defaults fit 3x3 multiplication, ``task="multiplication"``: about 10 minutes on 2 cores).

Either way the run folder gets ``results.csv`` (one row per model), per-example predictions,
learning histories, plotly figures (HTML, offline), the static latent-trajectory report
(``latent_trajectories.html``, viewable without a kernel), ATP's decoded latent steps
(``decoded_steps_<row>.csv``) and ``metrics.json``; then the table is printed.

The models are the d=128 variant of the default architecture (4 layers, 0.8M parameters): on 2
CPU cores they fit about three times as many optimizer steps into a budget as the d=256 default.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from workbench.config import ConfigError, check_choice, check_range, check_that
from workbench.eval.ablations import usage_drop
from workbench.experiment import (
    TrainedModel,
    default_train_config,
    prepare_data,
    train,
    train_baseline,
)
from workbench.lens.views import trajectory_of, write_standard_report
from workbench.methods import BASE_METHOD, DEMO_LATENT_METHOD, NO_COT_METHOD, get_method
from workbench.methods.coconut import CoconutConfig
from workbench.models.build import ModelConfig
from workbench.runs import new_run_dir, write_figure, write_json, write_table
from workbench.train.config import TrainConfig
from workbench.viz.curves import accuracy_vs_length, learning_curves

COCONUT_STEPS, COCONUT_C, COCONUT_LR = 60, 2, 1e-3  # see DemoConfig
SOURCES = ("shipped", "train")


@dataclass
class DemoConfig:
    """Budget and data of the demo run."""

    source: str = "shipped"
    """``shipped``: score the task's shipped models (``checkpoints/<task>``); ``train``: train
    CoT, no-CoT and Coconut here within the budgets below."""
    cot_minutes: float = 6.0
    """Training wall time of the explicit-CoT model (``source="train"``)."""
    nocot_minutes: float = 1.5
    """Training wall time of the answer-only model."""
    coconut_steps_per_stage: int = COCONUT_STEPS
    """Coconut optimizer steps per curriculum stage (3 stages on 3x3; 0 skips Coconut)."""
    coconut_c: int = COCONUT_C
    """Coconut latent thoughts per replaced reasoning step."""
    d_model: int = 128
    """Hidden size of the demo models (256 is the 3.2M-parameter default; slower per step)."""
    batch_size: int = 32
    """Training micro-batch of the baselines."""
    report_examples: int = 64
    """Test examples decoded into the latent-trajectory report."""
    task: str = "arithmetic"
    """Synthetic task (``workbench.data.tasks``); ``shipped`` needs one with shipped models."""
    train_size: int = 50_000
    """Training problems generated (more than the budget can consume: every batch is fresh)."""
    test_size: int = 1_000
    """Held-out problems scored at the end."""
    seed: int = 0
    """Seeds data, init and data order."""
    out_dir: str | None = None
    """Run folder (default ``runs/demo-<timestamp>``)."""

    def __post_init__(self) -> None:
        check_choice(self, "source", SOURCES)
        check_range(self, "cot_minutes", gt=0)
        check_range(self, "nocot_minutes", gt=0)
        check_range(self, "coconut_steps_per_stage", ge=0)
        check_range(self, "coconut_c", ge=1)
        check_range(self, "d_model", ge=8)
        check_that(
            self, "d_model", self.d_model % 4 == 0, "a multiple of 4 (the default has 4 heads)"
        )
        check_range(self, "batch_size", ge=1)
        check_range(self, "report_examples", ge=1)
        check_range(self, "train_size", ge=1)
        check_range(self, "test_size", ge=1)


def run_demo(cfg: DemoConfig | None = None) -> pd.DataFrame:
    """Run the demo; returns the results table (also written under the run folder)."""
    cfg = cfg or DemoConfig()
    t0 = time.perf_counter()
    run = Path(cfg.out_dir) if cfg.out_dir else new_run_dir("demo")
    run.mkdir(parents=True, exist_ok=True)
    print(f"[demo] run folder: {run}")
    rows, hist, latent = [], {}, []

    def record(name: str, tm: TrainedModel, minutes: float) -> None:
        res = tm.evaluate()
        hist[name] = tm.history
        rows.append(
            {
                **res.summary,
                "method": name,
                "train_steps": tm.meta.get("train_steps"),
                "train_minutes": minutes,
                "params": tm.meta.get("params"),
                # accuracy lost with the latents zeroed / swapped / pause-embedded (NaN: none)
                **usage_drop(tm.model, tm.tokenizer, tm.test_examples[:200], tm.spec),
            }
        )
        write_table(run / f"predictions_{name}.csv", res.per_example)
        if tm.history is not None:
            write_table(run / f"history_{name}.csv", tm.history)
        if tm.spec is not None:
            latent.append((res.summary["accuracy"], name, tm))
        decode_steps = get_method(tm.method).decode_steps
        if decode_steps is not None:  # what each latent group decodes to, beside the gold step
            steps = decode_steps(tm, tm.test_examples[:200])
            write_table(run / f"decoded_steps_{name}.csv", steps)
            rows[-1]["decoded_step_exact"] = float(steps["exact"].mean())
        print(
            f"[demo] {name}: accuracy {res.summary['accuracy']:.3f}, "
            f"{res.summary['reasoning_positions']:.1f} reasoning positions"
        )

    if cfg.source == "shipped":
        for name, tm in _shipped_models(cfg):
            record(name, tm, float(tm.meta.get("train_minutes", float("nan"))))
    else:
        _train_here(cfg, record)
    if latent:
        _, name, best = max(latent, key=lambda x: x[0])
        report = _trajectory_report(
            run / "latent_trajectories.html", best, best.test_examples[: cfg.report_examples]
        )
        print(f"[demo] latent-trajectory report ({name}): {report}")
    results = pd.DataFrame(rows)
    write_table(run / "results.csv", results)
    write_figure(run / "learning_curves.html", learning_curves(hist, "loss", title="training loss"))
    write_figure(
        run / "val_accuracy.html",
        learning_curves(hist, "eval/accuracy", title="validation accuracy"),
    )
    write_figure(run / "accuracy_vs_length.html", accuracy_vs_length(results))
    write_json(
        run / "metrics.json",
        {"results": rows, "config": asdict(cfg), "seconds": time.perf_counter() - t0},
    )
    cols = [
        "method",
        "accuracy",
        "reasoning_positions",
        "answer_tokens",
        "forward_passes",
        "usage_drop",
        "ms_per_example",
        "train_steps",
    ]
    print("\n" + results[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\n[demo] done in {(time.perf_counter() - t0) / 60:.1f} min; results in {run}")
    return results


def _shipped_models(cfg: DemoConfig) -> list[tuple[str, TrainedModel]]:
    """The task's shipped models, CoT and no-CoT first, on one test split of ``test_size``."""
    from workbench.experiment import load_pretrained, shipped_methods

    names = shipped_methods(cfg.task)
    latent = [n for n in names if n not in (BASE_METHOD, NO_COT_METHOD)]
    if BASE_METHOD not in names or not latent:
        raise ConfigError(
            f"DemoConfig.task = {cfg.task!r}: the shipped models there are {names}, the demo "
            "needs CoT and a latent method (and no-CoT when shipped); rebuild them with `make "
            "checkpoints`, or run the demo with source='train'"
        )
    if NO_COT_METHOD not in names:
        print(f"[demo] no shipped no-CoT model for {cfg.task} (make checkpoints): left out")
    order = [n for n in (BASE_METHOD, NO_COT_METHOD) if n in names] + latent
    first = load_pretrained(order[0], task=cfg.task, test_size=cfg.test_size, seed=cfg.seed)
    models = [(order[0], first)] + [
        (n, load_pretrained(n, task=cfg.task, test_examples=first.test_examples)) for n in order[1:]
    ]  # one regenerated test split for all
    print(
        f"[demo] {cfg.task}: shipped {order}; {len(first.test_examples)} test problems, e.g. "
        f"{first.test_examples[0]}"
    )
    return models


def _train_here(cfg: DemoConfig, record) -> None:
    """``source="train"``: CoT and no-CoT from scratch, then Coconut from the CoT model."""
    data = prepare_data(
        cfg.task, train_size=cfg.train_size, val_size=200, test_size=cfg.test_size, seed=cfg.seed
    )
    print(
        f"[demo] {cfg.task}: {len(data.train)} train / {len(data.test)} test; e.g. {data.test[0]}"
    )
    model_config = ModelConfig(d_model=cfg.d_model)
    trained = {}
    for mode, minutes in ((BASE_METHOD, cfg.cot_minutes), (NO_COT_METHOD, cfg.nocot_minutes)):
        print(f"[demo] training {mode} for {minutes:g} min")
        tm = train_baseline(
            data,
            mode,
            model_config=model_config,
            train_config=demo_train_config(cfg),
            seed=cfg.seed,
            time_budget_s=60 * minutes,
        )
        trained[mode] = tm
        record(mode, tm, minutes)
    if not cfg.coconut_steps_per_stage:
        return
    print(
        f"[demo] training coconut from the CoT model: c={cfg.coconut_c}, "
        f"{cfg.coconut_steps_per_stage} steps per stage"
    )
    t1 = time.perf_counter()
    cc = CoconutConfig(
        c_thought=cfg.coconut_c, steps_per_stage=cfg.coconut_steps_per_stage, seed=cfg.seed
    )
    tc = default_train_config(
        seed=cfg.seed, batch_size=cfg.batch_size, lr=COCONUT_LR, warmup_steps=10, eval_every=None
    )
    coconut = train(
        DEMO_LATENT_METHOD, data, trained[BASE_METHOD], config=cc, train_config=tc, seed=cfg.seed
    )
    record(DEMO_LATENT_METHOD, coconut, (time.perf_counter() - t1) / 60)


def demo_train_config(cfg: DemoConfig) -> TrainConfig:
    """The baselines' recipe (:func:`~workbench.experiment.default_train_config`), demo batch."""
    return default_train_config(seed=cfg.seed, eval_every=250, batch_size=cfg.batch_size)


def _trajectory_report(path: Path, tm: TrainedModel, examples) -> Path:
    """Decode ``tm``'s latents on ``examples`` and write the standard trajectory report."""
    return write_standard_report(
        path, {tm.method: trajectory_of(tm, examples)}, tm.method, top_k=10
    )
