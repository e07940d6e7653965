"""Recursive reasoners (TRM / DIS): targets, carry, EMA, save/load, learning, diagnostics."""

from __future__ import annotations

import random

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from workbench.config import ConfigError
from workbench.data.tasks import sudoku
from workbench.errors import CheckpointError
from workbench.recursive import (
    RecursiveConfig,
    RecursiveReasoner,
    RecursiveTrainer,
    TrainConfig,
    linear_path,
    load_model,
    preset,
    save_model,
)
from workbench.recursive import diagnostics as diag
from workbench.recursive.train import random_ranks

torch.set_num_threads(1)

TINY = dict(hidden=32, layers=1, puzzle_emb_len=2)


@pytest.fixture(scope="module")
def puzzles4():
    return sudoku.generate(8, random.Random(0), size=4, difficulty="easy")


def _tensors(examples):
    return (
        sudoku.encode([e["question"] for e in examples]),
        sudoku.encode([e["answer"] for e in examples]),
    )


def _hamming(a, b):
    return (a != b).sum(1)


# ------------------------------------------------------------------------------ DIS targets


@pytest.mark.parametrize("n_sup", [3, 6, 12])  # 12 > the blanks of a 4x4 easy puzzle
def test_dis_targets_move_strictly_closer_to_the_solution(n_sup):
    exs = sudoku.generate(6, random.Random(1), size=4) + sudoku.generate(
        2, random.Random(2), size=9
    )
    g = torch.Generator().manual_seed(0)
    for grid_size in (16, 81):
        rows = [e for e in exs if len(e["question"]) == grid_size]
        p, s = _tensors(rows)
        ranks = random_ranks(len(p), grid_size, g)
        prev = _hamming(p, s)
        for step in range(1, n_sup + 1):
            t = linear_path(p, s, ranks, torch.full((len(p),), step), n_sup)
            dist = _hamming(t, s)
            assert bool(((dist < prev) | (prev == 0)).all()), (step, dist, prev)
            assert bool((dist <= prev).all())
            assert bool(((t == p) | (t == s)).all())  # every cell: still the puzzle, or solved
            prev = dist
        assert bool((prev == 0).all())  # the last target is the solution


def test_dis_paths_are_random_per_example():
    (ex,) = sudoku.generate(1, random.Random(3), size=9)
    p, s = _tensors([ex] * 4)
    ranks = random_ranks(4, 81, torch.Generator().manual_seed(0))
    t = linear_path(p, s, ranks, torch.full((4,), 2), 6)
    assert len({tuple(r) for r in t.tolist()}) == 4  # same puzzle, different paths


# ------------------------------------------------------------------------ model mechanics


def test_step_detaches_the_carry_and_dis_feeds_back_its_own_prediction(puzzles4):
    p, _ = _tensors(puzzles4)
    torch.manual_seed(0)
    model = RecursiveReasoner(preset("dis", size=4, **TINY))
    carry, logits, q = model.step(model.initial_carry(len(p)), p, torch.ones(len(p), dtype=int))
    assert not carry.y.requires_grad and not carry.z.requires_grad
    assert logits.requires_grad and q is None
    roll = model.rollout(p)
    assert roll.logits.shape == (7, len(p), 16, 5)
    with torch.no_grad():
        t2 = torch.full((len(p),), 2)
        _, own, _ = model.step(carry, logits.argmax(-1), t2)
        _, from_puzzle, _ = model.step(carry, p, t2)
    assert torch.allclose(roll.logits[2], own, atol=1e-5)
    assert not torch.allclose(roll.logits[2], from_puzzle, atol=1e-3)


def test_timestep_embedding_changes_the_output(puzzles4):
    p, _ = _tensors(puzzles4)
    model = RecursiveReasoner(preset("dis", size=4, **TINY))
    c = model.initial_carry(len(p))
    with torch.no_grad():
        a = model.step(c, p, torch.ones(len(p), dtype=int))[1]
        b = model.step(c, p, torch.full((len(p),), 3))[1]
    assert not torch.allclose(a, b)


def test_attention_mixer_runs_and_counts_forward_passes():
    cfg = RecursiveConfig(size=4, mixer="attention", heads=2, **TINY)
    model = RecursiveReasoner(cfg)
    p = torch.zeros(3, 16, dtype=torch.long)
    assert model.rollout(p).logits.shape == (cfg.n_sup + 1, 3, 16, 5)
    assert cfg.nfp_per_step == cfg.T * (cfg.n + 1) == 8
    assert preset("dis").nfp_per_step * preset("dis").n_sup == 18  # RESEARCH 4.2(b)


# --------------------------------------------------------------------- training, EMA, I/O


def _train(examples, arm="trm", steps=30, **train_kw):
    overrides = dict(n_sup=3, T=2, n=1) if arm == "trm" else {}
    mcfg = preset(arm, size=4, **TINY, **overrides)
    kw = dict(steps=steps, batch_size=16, lr=3e-3, weight_decay=0.0, log_every=10, seed=0)
    tcfg = TrainConfig(**{**kw, **train_kw})
    trainer = RecursiveTrainer(mcfg, tcfg, examples)
    trainer.fit()
    return trainer


def test_ema_weights_differ_from_raw_and_are_the_ones_saved(puzzles4, tmp_path):
    tr = _train(puzzles4, ema_decay=0.9)
    raw, ema = tr.model.state_dict(), tr.ema.state_dict()
    assert tr.eval_model is tr.ema
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    saved = load_file(tr.save(tmp_path / "ckpt") / "model.safetensors")
    assert all(torch.equal(saved[k], ema[k]) for k in ema)
    assert any(not torch.equal(saved[k], raw[k]) for k in raw)
    plain = _train(puzzles4, steps=5, ema_decay=None)
    assert plain.eval_model is plain.model
    saved = load_file(plain.save(tmp_path / "plain") / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in plain.model.state_dict().items())


def test_save_load_round_trip_gives_identical_outputs(puzzles4, tmp_path):
    p, _ = _tensors(puzzles4)
    torch.manual_seed(1)
    model = RecursiveReasoner(preset("trm", size=4, **TINY))
    path = save_model(model, tmp_path / "m")
    back = load_model(path, model.cfg)
    a, b = model.rollout(p), back.rollout(p)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.q_halt, b.q_halt)


def test_loading_under_another_config_names_the_field(tmp_path):
    model = RecursiveReasoner(RecursiveConfig(size=4, **TINY))
    path = save_model(model, tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"RecursiveConfig\.hidden = 32.*asks for 64"):
        load_model(path, RecursiveConfig(size=4, **{**TINY, "hidden": 64}))
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "missing")
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable weights"):
        load_model(path)


def test_trainer_keeps_its_batch_on_its_device_and_rollouts_return_cpu(puzzles4):
    cfg = TrainConfig(steps=2, batch_size=4, device="cpu")
    trainer = RecursiveTrainer(preset("trm", size=4, hidden=16, layers=1), cfg, puzzles4)
    trainer.fit()
    assert all(v.device == trainer.device for v in trainer._batch.values())
    roll = trainer.eval_model.rollout(sudoku.encode([puzzles4[0]["question"]]))
    assert roll.logits.device.type == "cpu" and roll.logits.dtype == torch.float32


def test_same_seed_same_training(puzzles4):
    a = _train(puzzles4, steps=10)
    b = _train(puzzles4, steps=10)
    assert [r["loss"] for r in a.log_history] == [r["loss"] for r in b.log_history]


def test_callbacks_see_records_and_can_stop_training(puzzles4):
    seen = []

    def cb(trainer, record):
        seen.append(record["step"])
        return record["step"] >= 20

    mcfg = preset("single", size=4, **TINY)
    tr = RecursiveTrainer(mcfg, TrainConfig(steps=100, batch_size=8, log_every=10), puzzles4)
    log = tr.fit(callbacks=[cb])
    assert seen == [10, 20] and tr.global_step == 20
    assert {"step", "loss", "cell_acc", "exact_acc", "halt_depth", "seconds"} <= set(log[-1])


def test_time_budget_stops_training_and_logs_the_partial_window(puzzles4):
    mcfg = preset("single", size=4, **TINY)
    tcfg = TrainConfig(steps=10**6, max_seconds=0.3, batch_size=8, log_every=10**5)
    tr = RecursiveTrainer(mcfg, tcfg, puzzles4)
    # the time used when each step began: load-independent, unlike a bound on the total (one
    # step on a busy CI machine took 0.26 s)
    began, step = [], tr.train_step
    tr.train_step = lambda: (began.append(tr.seconds), step())[1]
    log = tr.fit()
    assert 0 < tr.global_step < 10**6 and log[-1]["step"] == tr.global_step
    assert began[-1] < 0.3 <= tr.seconds + 1e-3  # the last step began inside the budget


def test_exploration_forces_a_minimum_depth(puzzles4):
    mcfg = preset("trm", size=4, **{**TINY, "n_sup": 5})
    tr = RecursiveTrainer(mcfg, TrainConfig(batch_size=64, halt_explore_prob=1.0), puzzles4)
    tr._refill(tr._batch)
    assert bool(((tr._batch["min_steps"] >= 2) & (tr._batch["min_steps"] <= 5)).all())


@pytest.mark.parametrize("arm", ["trm", "dis"])
def test_tiny_model_overfits_a_handful_of_puzzles(puzzles4, arm):
    p, s = _tensors(puzzles4)
    tr = _train(puzzles4, arm=arm, steps=250, augment=False, ema_decay=None)
    res = diag.summary(tr.eval_model, p, s)
    assert res["cell_acc"] > 0.8, res  # chance is 0.25 per blank cell
    if arm == "trm":  # the Q-head learned to halt before n_sup on solved puzzles
        assert tr.log_history[-1]["halt_depth"] < 3
        assert res["nfp_halt"] < res["nfp"]


# ------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    "make,field",
    [
        (lambda: RecursiveConfig(size=5), "RecursiveConfig.size"),
        (lambda: RecursiveConfig(mixer="conv"), "RecursiveConfig.mixer"),
        (lambda: RecursiveConfig(mixer="attention", hidden=30, heads=4), "RecursiveConfig.heads"),
        (lambda: RecursiveConfig(T=0), "RecursiveConfig.T"),
        (lambda: RecursiveConfig(n_sup=2.5), "RecursiveConfig.n_sup"),
        (lambda: RecursiveConfig(dis=True, halting=True), "RecursiveConfig.halting"),
        (lambda: TrainConfig(lr=0), "TrainConfig.lr"),
        (lambda: TrainConfig(ema_decay=1.0), "TrainConfig.ema_decay"),
        (lambda: TrainConfig(halt_explore_prob=1.5), "TrainConfig.halt_explore_prob"),
        (lambda: TrainConfig(device="tpu"), "TrainConfig.device"),
        (lambda: preset("nope"), "arm"),
    ],
)
def test_config_errors_name_the_field(make, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make()


def test_examples_of_the_wrong_size_are_refused(puzzles4):
    with pytest.raises(ConfigError, match=r"RecursiveConfig\.size"):
        RecursiveTrainer(RecursiveConfig(size=9, **TINY), TrainConfig(), puzzles4)


# ---------------------------------------------------------------------------- diagnostics


def test_advantage_margin_sign():
    prev = torch.zeros(1, 3)
    target = torch.tensor([0])
    good = diag.advantage_margin(prev, torch.tensor([[2.0, 0.0, 0.0]]), target)
    bad = diag.advantage_margin(prev, torch.tensor([[0.0, 2.0, 0.0]]), target)
    flat = diag.advantage_margin(prev, torch.tensor([[1.0, 1.0, 1.0]]), target)
    assert good.item() > 0 > bad.item()
    assert flat.item() == pytest.approx(0.0)


def test_margin_brackets_the_loss_drop():
    # L(w) = CE(prev + w * delta) is convex in w and margin(w) = -L'(w), so the CE a step removes
    # lies between its margin at w = 1 and at w = 0; a wrong sign or policy would break this.
    g = torch.Generator().manual_seed(0)
    prev, cur = 3 * torch.randn(2, 500, 10, generator=g)
    target = torch.randint(0, 10, (500,), generator=g)
    m1 = diag.advantage_margin(prev, cur, target)
    m0 = diag.advantage_margin(prev, cur, target, w=0.0)
    drop = diag.loss_drop(prev, cur, target)
    ce = F.cross_entropy(prev, target, reduction="none") - F.cross_entropy(
        cur, target, reduction="none"
    )
    assert torch.allclose(drop, ce, atol=1e-5)
    assert (m1 <= drop + 1e-5).all() and (drop <= m0 + 1e-5).all()
    assert (m0 - m1).min() >= -1e-5 and (m0 - m1).max() > 0.1


def test_diagnostics_tables_and_figures(puzzles4):
    p, s = _tensors(puzzles4)
    model = RecursiveReasoner(preset("trm", size=4, **{**TINY, "n_sup": 3}))
    with torch.no_grad():  # make the Q-head halt at once, so NFP at halting is one step
        model.q_head.bias.fill_(5.0)
    steps = diag.per_step(model, p, s, batch_size=3)
    assert len(steps) == len(p) * 4 and steps["step"].max() == 3
    summ = diag.step_summary(steps)
    assert list(summ["nfp"]) == [0, 8, 16, 24]
    assert summ["cell_gain"].iloc[1] == pytest.approx(summ["cell_acc"][1] - summ["cell_acc"][0])
    assert summ["dead_compute"].dtype == bool
    later = summ.iloc[1:]
    assert (later["advantage_margin"] <= later["loss_drop"] + 1e-5).all()
    assert (later["loss_drop"] <= later["margin_w0"] + 1e-5).all()
    nfp = diag.nfp_per_example(steps)
    assert (nfp["halt_step"] == 1).all() and (nfp["nfp_halt"] == 8).all()
    assert (nfp["nfp_full"] == 24).all()
    sweep = diag.guidance_sweep(model, p, s, ws=(0.0, 1.0))
    assert sweep["exact_acc"].iloc[1] == pytest.approx(summ["exact_acc"].iloc[-1])
    assert isinstance(summ, pd.DataFrame)
    assert isinstance(diag.plot_steps(summ), go.Figure)
    assert isinstance(diag.plot_nfp(nfp), go.Figure)


def test_dead_compute_flags_a_step_that_changes_nothing():
    rows = []
    for step, margin in ((0, float("nan")), (1, 0.5), (2, 0.0)):
        rows.append(
            dict(example=0, step=step, cell_acc=0.5, exact=False, margin=margin, q_halt=-1.0,
                 nfp=4 * step)
        )  # fmt: skip
    summ = diag.step_summary(pd.DataFrame(rows))
    assert list(summ["dead_compute"]) == [False, False, True]
