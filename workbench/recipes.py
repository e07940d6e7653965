"""Per-task recipes: the data, model and per-method settings found by measurement.

One :class:`TaskRecipe` per task names the rows a comparison trains (a registered method and
its settings; ``coconut_sup`` is Coconut with step supervision) and which of them ``make
checkpoints`` ships under ``checkpoints/<task>/<row>``. ``benchmarks/compare_methods.py`` trains
and scores every row; :mod:`workbench.checkpoints` builds the shipped ones; the demo and the
notebooks load those. The numbers each setting reached are in docs/results.md and in the
methods' docstrings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from workbench.methods import BASE_METHOD, NO_COT_METHOD, get_method


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
    start: str | None = None
    """The row whose trained model (with its heads and step decoder) this row continues;
    ``None``: the CoT row."""
    opt_in: bool = False
    """A long row that a comparison runs only when asked for by name (``--methods``)."""


@dataclass
class TaskRecipe:
    """Data, model and per-method settings of one task (measured; see docs/results.md)."""

    difficulty: dict
    train_size: int
    d_model: int
    entries: dict[str, Entry]
    max_positions: int = 256
    arch: str = "gpt2"
    """The body of the models trained from scratch (``ModelConfig.arch``)."""
    shipped: tuple[str, ...] = ()
    """Rows ``make checkpoints`` trains and stores under ``checkpoints/<task>/<row>``."""


def _lat(lr: float, **kw) -> dict:
    return {"lr": lr, "warmup_steps": 20, "eval_every": None, "progress": False, **kw}


SUPERVISION = {"latent_ce_weight": 1.0, "step_decoder": "small"}
"""Step supervision of the ``coconut_sup`` rows (RESEARCH Part A 7)."""


def _continued(
    method: str, start: str, steps: int, lr: float = 1e-3, eval_every: int = 1000, **train
) -> Entry:
    """An opt-in baseline row that trains ``start``'s model on in ``method``'s layout (fresh
    optimizer and cosine schedule, validation every ``eval_every`` steps; ``train``: more
    TrainConfig fields)."""
    train = {"max_steps": steps, "eval_every": eval_every, "lr": lr, **train}
    return Entry(method, train=train, start=start, opt_in=True)


def _no_cot_continued(start: str, steps: int) -> Entry:
    """The multiplication rows' no-CoT continuation of ``start``: lr 5e-4, validation every 500
    steps, 20 warm-up steps (the iCoT last-stage settings)."""
    return _continued(NO_COT_METHOD, start, steps, 5e-4, 500, warmup_steps=20)


def curriculum_rows(stages: dict, lr: float = 1e-3) -> dict[str, Entry]:
    """pause, Coconut and step-supervised Coconut under one curriculum (CoconutConfig fields)."""
    return {
        "pause": Entry("pause", dict(stages), _lat(lr)),
        "coconut": Entry("coconut", dict(stages), _lat(lr)),
        "coconut_sup": Entry("coconut", {**stages, **SUPERVISION}, _lat(lr)),
    }


ARITHMETIC_STAGES = {
    "c_thought": 1,
    "max_latent_stage": 4,
    "steps_per_stage": 600,
    "final_stage_steps": 1200,
}
"""The arithmetic curriculum (4 stages, 3,000 steps) of the latent rows."""
ATP_SUPERVISION = {"step_decoder": "small", "latent_ce_weight": 1.0, "kl_weight": 1e-3}
"""ATP's step decoder (small, like ``coconut_sup``'s) plus the per-latent CE that made Coconut's
latents carry the chain here."""

GRAPH_STAGES = {
    "c_thought": 1,
    "max_latent_stage": 2,
    "steps_per_stage": 1000,
    "final_stage_steps": 2000,
}
"""The graph curriculum (one latent per step, 2 stages, 3,000 steps) of the latent rows."""

CONTINUE = {"steps_per_stage": 1, "final_stage_steps": 3000}
"""A trained curriculum model continued at its last stage: one step at each earlier stage
(the schedule's first warm-up step, lr / 20), then 3,000 steps at the last one."""

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
            # CoT2-style targets (each latent's own CoT tokens): r=1 is the sanity run (100%);
            # r=2 and r=4 at 1,000 steps end at 0% (a histogram of digits loses their order)
            "latent_sft_cot": Entry(
                "latent_sft",
                {
                    "teacher": "cot",
                    "gumbel": False,
                    "compression_rate": 1,
                    "stage2_steps": 300,
                    "stage2_lr": 5e-4,
                    "max_latent_steps": 40,
                },
            ),  # fmt: skip
            # iCoT at the reference's ~3k steps per removed token, measured on 3x2
            # (`--difficulty digits_b=2`, 17 tokens; ICoTConfig docstring): icot_slow 74.0%,
            # icot_slow_long 100.0% with no reasoning tokens (no-CoT 0.4%). On 3x3 (32 tokens)
            # icot_slow is 96,000 steps after cot_5000's 5,000 (2 hours): 3.2%; icot_slow_long
            # 10.8%, icot_slow_long2 93.8% with no reasoning tokens (stop 34).
            "cot_5000": Entry(
                BASE_METHOD, train={"max_steps": 5000, "eval_every": 1000}, opt_in=True
            ),
            "icot_slow": Entry(
                "icot",
                {"tokens_per_removal": 1, "steps_per_removal": 3000, "final_steps": 3000},
                {**_lat(5e-4), "eval_every": 500},
                start="cot_5000",
                opt_in=True,
            ),
            # iCoT on 3x3 (32 tokens) at budgets that fit a session on one thread, from the CoT
            # row: 2 tokens per stage at 2,500 steps (~1,250 steps per token, 43,500 steps) and
            # 4 tokens per stage at 3,000 (~750 per token, 27,000 steps); 6,000 final steps.
            # Measured: 1.4% and 0.0%; continued (the _long rows) 1.8% and 1.2%; their control
            # nocot_cot3 0.4% (ICoTConfig docstring).
            **{
                name: Entry(
                    "icot",
                    {"tokens_per_removal": tokens, "steps_per_removal": steps, "final_steps": 6000},
                    {**_lat(5e-4), "eval_every": 500},
                    opt_in=True,
                )
                for name, tokens, steps in (("icot3", 2, 2500), ("icot3_fast", 4, 3000))
            },
            # each trained on 10,000 more steps at its last stage (no CoT), like icot_slow_long
            **{
                f"{start}_long": _no_cot_continued(start, 10000)
                for start in ("icot3", "icot3_fast")
            },
            # their control: no-CoT training of the CoT row itself (all 32 tokens removed at
            # once), icot3_fast's 27,000 steps at the same lr
            "nocot_cot3": _continued(NO_COT_METHOD, BASE_METHOD, 27000, 5e-4, warmup_steps=20),
            # and the control of icot_slow_long2: nocot_cot3 trained on the same 45,000 steps
            # (measured: 1.0%, against icot_slow_long2's 93.8%)
            "nocot_cot3_long": _no_cot_continued("nocot_cot3", 45000),
            # icot_slow trained on 6,000 more steps at its last stage (no CoT), fresh optimizer.
            "icot_slow_long": _no_cot_continued("icot_slow", 6000),
            # on 3x3 icot_slow_long was still climbing at its end: 45,000 more steps of it
            "icot_slow_long2": _no_cot_continued("icot_slow_long", 45000),
            # The control of the rows that start from cot_5000: no-CoT training of cot_5000
            # itself (all CoT tokens removed at once), the same lr, 20,000 steps.
            "nocot_cot_5000": _no_cot_continued("cot_5000", 20000),
            # The latent rows at an iCoT-sized budget, on 3x2 (2 steps, so max_latent_stage=2:
            # 4 latents against CoT's 17 tokens), from cot_5000: 1,500 steps for stage 1, then
            # 18,000 at the last stage, lr 5e-4. Measured: atp and coconut docstrings,
            # docs/results.md.
            **{
                name: Entry(
                    method,
                    {
                        "c_thought": 2,
                        "max_latent_stage": 2,
                        "steps_per_stage": 1500,
                        "final_stage_steps": 18000,
                        **supervision,
                    },
                    {**_lat(5e-4), "eval_every": 1000},
                    start="cot_5000",
                    opt_in=True,
                )
                for name, method, supervision in (
                    ("atp_slow", "atp", ATP_SUPERVISION),
                    ("coconut_sup_slow", "coconut", SUPERVISION),
                )
            },
            # atp_slow's budget on 3x3 (3 steps, so max_latent_stage=3: 6 latents against
            # CoT's 32 tokens), from the CoT row (measured from checkpoints/cot copied to
            # <out>/multiplication/cot, so compare_methods loads it), then continued twice at
            # its last stage with a fresh optimizer and schedule (6,000, then 4,000 steps), like
            # arithmetic's atp_long: 1.6% -> 27.2% -> 93.2% (atp docstring, docs/results.md).
            **{
                name: Entry(
                    "atp",
                    {"c_thought": 2, "max_latent_stage": 3, **stages, **ATP_SUPERVISION},
                    {**_lat(5e-4), "eval_every": 1000},
                    start=start,
                    opt_in=True,
                )
                for name, start, stages in (
                    ("atp_slow3", None, {"steps_per_stage": 1500, "final_stage_steps": 18000}),
                    ("atp_slow3_long", "atp_slow3", {**CONTINUE, "final_stage_steps": 6000}),
                    ("atp_slow3_long2", "atp_slow3_long", {**CONTINUE, "final_stage_steps": 4000}),
                )
            },
            # the arithmetic curriculum's budget with ATP's supervision, c=2: 0.0%, decoded 26%
            "atp": Entry(
                "atp",
                {
                    "c_thought": 2,
                    "max_latent_stage": 3,
                    "steps_per_stage": 1000,
                    "final_stage_steps": 1000,
                    **ATP_SUPERVISION,
                },
                _lat(1e-3),
            ),  # fmt: skip
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
            # a CoT that is often wrong: the SFT start of LEPO and LaTRO (RL cannot improve on
            # the 100% CoT, whose G samples of a question are all the same)
            "cot_1500": Entry(BASE_METHOD, train={"max_steps": 1500, "eval_every": 500}),
            **curriculum_rows(ARITHMETIC_STAGES),
            # the same curriculum and step supervision; stop head, Gaussian latents, KL 1e-3
            "atp": Entry("atp", {**ARITHMETIC_STAGES, **ATP_SUPERVISION}, _lat(1e-3)),
            # coconut_sup continued for 3,000 more steps at the last stage (71.2% -> 87.4%)
            "coconut_sup_long": Entry(
                "coconut",
                {**ARITHMETIC_STAGES, **SUPERVISION, **CONTINUE},
                _lat(5e-4),
                start="coconut_sup",
            ),  # fmt: skip
            # the atp row continued for 3,000 more steps at the last stage (74.8% -> 93.8%)
            "atp_long": Entry(
                "atp", {**ARITHMETIC_STAGES, **ATP_SUPERVISION, **CONTINUE}, _lat(5e-4), start="atp"
            ),  # fmt: skip
        },
        shipped=("cot", "nocot", "coconut_sup", "coconut_sup_long", "atp", "atp_long"),
    ),
    "graph": TaskRecipe(
        # near-chains (6 concepts, 2 steps, about 6 facts) written as word pairs ("Tom wumpus.
        # wumpus yumpus.") on a Llama body, lr 1e-3: the setting where a d=128 CoT model learns
        # the first fact lookup (MQAR-like, docs/results.md, graph). The second, whose subject is
        # also the first fact's object, is not learned in 16,000 steps: CoT 48.2%, no-CoT 63.6%,
        # Coconut 63.6%, latents unused (chance 50). It is after 44,000 (cot_long2: 97.4%); the
        # latent rows from that CoT are the *_l2 rows (Coconut + step supervision 89.6%,
        # continued 97.4% with 2 latents).
        # With ProsQA's sentences on GPT-2 (8 concepts, 2-3 steps, 8,000 steps on 256k problems)
        # the CoT stayed at 54.0%.
        difficulty={
            "n_concepts": 6,
            "min_depth": 2,
            "max_depth": 2,
            "min_people": 2,
            "max_people": 2,
            "edges_per_concept": 0.1,
            "fact_format": "symbolic",
        },
        train_size=256_000,
        d_model=128,
        arch="llama",
        entries={
            "cot": Entry(BASE_METHOD, train={"max_steps": 16000, "eval_every": 1000, "lr": 1e-3}),
            "nocot": Entry(
                NO_COT_METHOD, train={"max_steps": 16000, "eval_every": 1000, "lr": 1e-3}
            ),
            **curriculum_rows(GRAPH_STAGES),
            "atp": Entry("atp", {**GRAPH_STAGES, **ATP_SUPERVISION}, _lat(1e-3)),
            # the CoT trained on (fresh optimizer and schedule): MQAR with two keys that are also
            # values forms its recall circuit only after 8,000-10,000 steps (docs/results.md,
            # graph). Measured: 48.2% -> 65.6%, steps stated in the question 73.7% -> 82.3%.
            "cot_long": _continued(BASE_METHOD, "cot", 12000),
            # cot_long trained on the same way for 16,000 steps: the second lookup forms between
            # 7,000 and 9,000 of them (validation 60 -> 71.5 -> 86 -> 95%). Measured: 97.4%
            # (lr 5e-4 instead: 94.8%).
            "cot_long2": _continued(BASE_METHOD, "cot_long", 16000),
            # the CoT given the 9,000 steps coconut_sup_l2 + coconut_sup_l2_long got after it.
            # Measured: 97.0% (coconut_sup_l2_long 97.4% with 2 latents, usage drop 42.0).
            "cot_long3": _continued(BASE_METHOD, "cot_long2", 9000),
            # the control of the rows from cot_long2: no-CoT trained on the same way. Measured:
            # 65.2% (from 63.6%).
            "nocot_long": _continued(NO_COT_METHOD, "nocot", 16000),
            # the latent rows from cot_long2 (44,000 CoT steps in all) instead of cot
            **{
                f"{name}_l2": replace(entry, start="cot_long2", opt_in=True)
                for name, entry in {
                    **curriculum_rows(GRAPH_STAGES),
                    "atp": Entry("atp", {**GRAPH_STAGES, **ATP_SUPERVISION}, _lat(1e-3)),
                }.items()
            },
            # coconut_sup_l2 continued at its last stage (6,000 steps, fresh optimizer)
            "coconut_sup_l2_long": Entry(
                "coconut",
                {**GRAPH_STAGES, **SUPERVISION, **CONTINUE, "final_stage_steps": 6000},
                _lat(1e-3),
                start="coconut_sup_l2",
                opt_in=True,
            ),
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
    return replace(entry, config=cfg, train=train_overrides, minutes=minutes)


def with_start_rows(recipe: TaskRecipe, rows: list[str]) -> list[str]:
    """``rows`` with every row one of them continues, each before its users, and the CoT row
    first whenever one of those trains from the CoT model (a baseline alone brings none)."""
    out: list[str] = []

    def add(row: str) -> None:
        start = recipe.entries[row].start
        if start is not None:
            add(start)
        if row not in out:
            out.append(row)

    for row in rows:
        add(row)
    from_cot = any(
        get_method(recipe.entries[r].method).needs_base and not recipe.entries[r].start for r in out
    )
    return [BASE_METHOD, *(r for r in out if r != BASE_METHOD)] if from_cot else out


def default_rows(recipe: TaskRecipe) -> list[str]:
    """The rows a comparison runs when none are named: every row but the opt-in ones."""
    return [name for name, entry in recipe.entries.items() if not entry.opt_in]


def start_of(entry: Entry, trained: dict):
    """The model ``entry`` starts from: its ``start`` row's, else the CoT row's."""
    return trained.get(entry.start or BASE_METHOD)


RUN_SAVE_EVERY = 500
"""Optimizer steps between the checkpoints of a row trained with a ``run_dir``."""

RUN_FILE = "row.json"
"""What a row's run folder holds a run of (row, entry, data, seed), checked before resuming."""


def claim_run_dir(run_dir, name: str, entry: Entry, data, seed: int) -> dict:
    """The train settings that checkpoint ``name`` in ``run_dir`` and resume from it.

    The folder's :data:`RUN_FILE` names the setting its checkpoints belong to; a folder of
    another setting (other steps, data or seed under the same ``--out``) is refused, naming
    the fix, instead of resumed into a run nobody asked for.
    """
    import json
    from pathlib import Path

    from workbench.config import ConfigError
    from workbench.io import atomic_write_json

    run_dir = Path(run_dir)
    setting = json.loads(json.dumps(
        {"row": name, "entry": asdict(entry), "data": data.describe(), "seed": seed}
    ))  # fmt: skip
    path = run_dir / RUN_FILE
    if path.exists():
        held = json.loads(path.read_text())
        if held != setting:
            diff = sorted(k for k in setting if held.get(k) != setting[k])
            raise ConfigError(
                f"{run_dir} holds an unfinished run of another setting of row {name!r} (its "
                f"{', '.join(diff)} differ): delete that folder to start over, or use another --out"
            )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, setting, indent=1)
    return {
        "output_dir": str(run_dir),
        "save_every": RUN_SAVE_EVERY,
        "save_total_limit": 1,
        "resume": True,
    }


def train_entry(
    name: str, entry: Entry, data, cot, recipe: TaskRecipe, seed: int, *, run_dir=None,
    callbacks=None,
):  # fmt: skip
    """Train one entry: latent methods by steps from ``cot`` (the model of the entry's
    ``start`` row when it has one, else the CoT row's); baselines by time or steps from
    scratch, or, with a ``start`` row, continuing that row's model (``cot``) in their layout.

    With ``run_dir`` the row checkpoints there every :data:`RUN_SAVE_EVERY` steps and a rerun
    resumes from the newest checkpoint, so a killed hour-long row loses minutes, not the hour
    (:func:`claim_run_dir`). Rows whose method takes no train config (Latent-SFT: its own
    pipeline of short stages), or whose latent method keeps its own train defaults (no
    ``train`` overrides), start over. ``callbacks`` go to the row's trainers.
    """
    from workbench.experiment import default_train_config, train
    from workbench.models.build import ModelConfig

    record = get_method(entry.method)
    kwargs: dict = {"seed": seed}
    if callbacks:
        kwargs["callbacks"] = list(callbacks)
    if record.config_cls is not None:
        kwargs["config"] = record.config_cls(**{**entry.config, "seed": seed})
    resumable = run_dir is not None and record.takes_train_config
    resumable = resumable and (bool(entry.train) or not record.needs_base)
    run = claim_run_dir(run_dir, name, entry, data, seed) if resumable else {}
    if record.needs_base:
        if entry.train:
            kwargs["train_config"] = default_train_config(seed=seed, **{**entry.train, **run})
        return train(entry.method, data, cot, **kwargs)
    mc = ModelConfig(d_model=recipe.d_model, max_positions=recipe.max_positions, arch=recipe.arch)
    tc = default_train_config(seed=seed, **{"progress": False, **entry.train, **run})
    budget = 60 * entry.minutes if entry.minutes is not None else None
    if entry.start is not None:  # e.g. an iCoT model trained on at its last stage (no CoT)
        return train(entry.method, data, cot, train_config=tc, time_budget_s=budget, **kwargs)
    return train(entry.method, data, model_config=mc, train_config=tc,
                 time_budget_s=budget, **kwargs)  # fmt: skip
