"""The shipped 4x4 Sudoku reasoners: one small checkpoint per arm (single pass, TRM, DIS).

RESEARCH Part B 4.3 at notebook scale. :func:`build_recursive_checkpoints` trains the three arms
of :func:`workbench.recursive.model.preset` on the same generated 4x4 puzzles (half ``easy``,
half ``hard``, :func:`training_puzzles`) with the same width, optimiser and seed, and writes each
with :func:`~workbench.recursive.model.save_model` to ``<root>/sudoku/<arm>/`` (root: the repo's
``checkpoints/``, :func:`workbench.experiment.checkpoints_dir`), plus ``shipped.json`` beside
the weights (training settings, the last log record, held-out accuracy). :func:`load_recursive`
loads one back; :func:`held_out` draws test puzzles that are not training puzzles.

The budget is a number of optimizer steps per arm (:data:`STEPS`), so a rebuild is reproducible;
the counts are chosen so that each arm takes about 60-90 s on one busy CPU thread (a TRM step
runs 8 net passes per row, a single-pass step 2, a DIS step 3: equal wall-clock, not equal
steps). The optimiser settings are those of ``benchmarks/recursive.py`` (lr 1e-3, weight decay
0.1, EMA 0.99 instead of RESEARCH 4.3's 1e-4 / 1.0 / 0.999, since an arm gets only hundreds of
steps).

    python -c "from workbench.recursive.shipped import build_recursive_checkpoints as b; b()"
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from workbench.config import ConfigError
from workbench.data.schema import Example
from workbench.data.tasks import sudoku
from workbench.errors import CheckpointError
from workbench.experiment import checkpoints_dir
from workbench.io import atomic_write_json
from workbench.recursive.model import RecursiveReasoner, load_model, preset
from workbench.recursive.train import RecursiveTrainer, TrainConfig

ARMS = ("single", "trm", "dis")
"""The shipped arms, in table order."""
TASK = "sudoku"
SIZE = 4
"""Grid side of the shipped models."""
MODEL = dict(hidden=64, layers=2)
"""Width and depth shared by every arm (the other fields come from the arm's preset)."""
STEPS = {"single": 900, "trm": 400, "dis": 600}
"""Optimizer steps per arm: about 60-90 s each on one thread."""
TRAIN = dict(batch_size=128, lr=1e-3, weight_decay=0.1, ema_decay=0.99, log_every=50)
"""TrainConfig fields shared by every arm (plus ``steps`` and ``seed``)."""
TRAIN_SIZE = 1000
"""Training puzzles: half easy, half hard."""
TEST_SIZE = 200
"""Held-out puzzles per difficulty scored into ``shipped.json``."""
META_FILE = "shipped.json"


def shipped_dir(arm: str, root: str | Path | None = None) -> Path:
    """``<root>/sudoku/<arm>``; root defaults to the repo's checkpoints folder."""
    return Path(root if root is not None else checkpoints_dir()) / TASK / arm


def training_puzzles(
    seed: int = 0,
    size: int = SIZE,
    n: int = TRAIN_SIZE,
    difficulties: Sequence[str] = ("easy", "hard"),
) -> list[Example]:
    """The training puzzles of a build with ``seed``: ``n`` split evenly over ``difficulties``."""
    rng = random.Random(seed)
    per = [n // len(difficulties) + (i < n % len(difficulties)) for i in range(len(difficulties))]
    out: list[Example] = []
    for d, k in zip(difficulties, per, strict=True):
        out += sudoku.generate(k, rng, size=size, difficulty=d)
    return out


def held_out(
    n: int,
    size: int = SIZE,
    difficulty: str = "easy",
    seed: int = 1,
    exclude: Sequence[Example] | None = None,
) -> list[Example]:
    """``n`` generated puzzles (seeded by ``seed``) whose question is in none of ``exclude``
    (default: the shipped training puzzles of seed 0 when ``size`` is the shipped size)."""
    if exclude is None:
        exclude = training_puzzles() if size == SIZE else []
    seen = {e["question"] for e in exclude}
    rng = random.Random(f"held-out/{seed}")
    out: list[Example] = []
    for _ in range(100):
        out += [e for e in sudoku.generate(n, rng, size=size, difficulty=difficulty)
                if e["question"] not in seen]  # fmt: skip
        seen |= {e["question"] for e in out}
        if len(out) >= n:
            return out[:n]
    raise ConfigError(f"could only draw {len(out)} held-out {size}x{size} {difficulty} puzzles")


def train_arm(
    arm: str,
    examples: Sequence[Example],
    steps: int,
    *,
    seed: int = 0,
    size: int = SIZE,
    model: dict | None = None,
    train: dict | None = None,
) -> RecursiveTrainer:
    """Train ``arm`` on ``examples`` for ``steps`` optimizer steps, as the shipped build does.

    ``model`` overrides :data:`MODEL` (and the preset: ``hidden``, ``layers``, ``n_sup``...),
    ``train`` overrides :data:`TRAIN`. Returns the trainer (``.eval_model`` is the EMA model).
    """
    mcfg = preset(arm, size=size, **{**MODEL, **(model or {})})
    tcfg = TrainConfig(steps=steps, seed=seed, **{**TRAIN, **(train or {})})
    trainer = RecursiveTrainer(mcfg, tcfg, examples)
    trainer.fit()
    trainer.eval_model.eval()
    return trainer


def build_recursive_checkpoints(
    out_dir: str | Path | None = None,
    seed: int = 0,
    *,
    arms: Sequence[str] = ARMS,
    steps: dict[str, int] | int | None = None,
    train_size: int = TRAIN_SIZE,
    test_size: int = TEST_SIZE,
    log: Callable[[str], None] | None = print,
) -> dict[str, dict]:
    """Train and save one 4x4 model per arm; returns ``{arm: meta}`` (what ``shipped.json`` holds).

    ``steps`` overrides :data:`STEPS` (one number for every arm, or a dict) for quick builds;
    ``test_size=0`` skips the held-out scoring.
    """
    from workbench.recursive import diagnostics as diag

    train = training_puzzles(seed, n=train_size)
    tests = {}
    if test_size:
        for d in ("easy", "hard"):
            ex = held_out(test_size, difficulty=d, exclude=train)
            tests[d] = (
                sudoku.encode([e["question"] for e in ex]),
                sudoku.encode([e["answer"] for e in ex]),
            )
    result = {}
    for arm in arms:
        n_steps = steps if isinstance(steps, int) else (steps or STEPS).get(arm, STEPS[arm])
        t0 = time.perf_counter()
        trainer = train_arm(arm, train, n_steps, seed=seed)
        tcfg = trainer.cfg
        seconds = time.perf_counter() - t0
        path = trainer.save(shipped_dir(arm, out_dir))
        model = trainer.eval_model.eval()
        meta = {
            "arm": arm,
            "size": SIZE,
            "train_size": len(train),
            "train_difficulties": ["easy", "hard"],
            "seed": seed,
            "train_config": dataclasses.asdict(tcfg),
            "train_seconds": round(seconds, 1),
            "params": sum(p.numel() for p in model.parameters()),
            "last_log": {k: None if v != v else v for k, v in trainer.log_history[-1].items()},
            "held_out": {d: diag.summary(model, *t) for d, t in tests.items()},
        }
        atomic_write_json(path / META_FILE, meta, indent=2)
        result[arm] = meta
        if log is not None:
            scores = ", ".join(
                f"{d} exact {m['exact_acc']:.3f}" for d, m in meta["held_out"].items()
            )
            log(f"[{arm}] {n_steps} steps in {seconds:.0f}s -> {path} ({scores or 'not scored'})")
    return result


def shipped_arms(root: str | Path | None = None) -> list[str]:
    """The arms with a shipped checkpoint under ``root``, in :data:`ARMS` order."""
    return [a for a in ARMS if (shipped_dir(a, root) / "config.json").is_file()]


def shipped_meta(arm: str, root: str | Path | None = None) -> dict:
    """The ``shipped.json`` of an arm ({} if the folder has none)."""
    file = shipped_dir(arm, root) / META_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def load_recursive(arm: str, root: str | Path | None = None) -> RecursiveReasoner:
    """The shipped model of ``arm`` (``"single"``, ``"trm"`` or ``"dis"``), in eval mode.

    Raises :class:`CheckpointError` (saying how to build it) when it is not there.
    """
    if arm not in ARMS:
        raise ConfigError(f"arm = {arm!r}: expected one of {list(ARMS)}")
    path = shipped_dir(arm, root)
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path}: no shipped {arm!r} checkpoint; build it with "
            "workbench.recursive.shipped.build_recursive_checkpoints()"
        )
    model = load_model(path)
    want = preset(arm, size=SIZE)
    if (model.cfg.size, model.cfg.dis, model.cfg.n_sup) != (want.size, want.dis, want.n_sup):
        raise CheckpointError(f"{path}: holds {model.cfg}, not a shipped {arm!r} model")
    return model.eval()
