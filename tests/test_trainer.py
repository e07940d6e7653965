"""Tests for workbench.train: tiny GPT-2s built from config, a handful of short sequences, CPU."""

from __future__ import annotations

import hashlib
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from workbench.config import ConfigError, config_from_dict
from workbench.train import (
    CheckpointMismatchError,
    LogHistory,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    TrainerCallback,
    latest_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread", "quiet")

VOCAB = 50


def tiny_gpt2(seed: int = 0, n_embd: int = 32, dropout: float = 0.1) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=n_embd,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    return GPT2LMHeadModel(cfg)


def make_data(n: int = 10, length: int = 12, seed: int = 123) -> list[torch.Tensor]:
    """``n`` random sequences; sequence i starts with token i+1 so every sequence is learnable."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        row = torch.randint(1, VOCAB, (length,), generator=g)
        row[0] = i + 1
        rows.append(row)
    return rows


def collate(items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    ids = torch.stack(items)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def cfg(**kw) -> TrainConfig:
    base = dict(max_steps=4, batch_size=2, lr=1e-3, warmup_steps=1, log_every=1, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_param_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def tree_hash(folder) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, logs):
        if trainer.step >= self.step:
            trainer.should_stop = True


# ------------------------------------------------------------------------------------------


def test_overfits_tiny_set():
    model = tiny_gpt2(n_embd=64, dropout=0.0)
    config = cfg(
        max_steps=40,
        batch_size=8,
        lr=1e-2,
        warmup_steps=10,
        lr_schedule="constant",
        log_every=10,
        max_grad_norm=1.0,
    )
    trainer = Trainer(model, make_data(8), collate, config)
    history = trainer.train()
    assert isinstance(history, LogHistory)
    assert history[0]["loss"] > 2.0
    assert history[-1]["loss"] < 0.1, history.values("loss")
    assert trainer.step == 40


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_matches_uninterrupted(tmp_path, grad_accum):
    # 10 items, batch 2 -> 5 micro-batches per epoch; 6 steps cross 1-2 epoch boundaries and the
    # save at step 3 lands inside an epoch. Dropout is on, so the torch RNG must be restored too.
    data = make_data(10)
    n_steps, half = 6, 3
    kw = dict(
        max_steps=n_steps,
        grad_accum_steps=grad_accum,
        save_every=half,
        lr_schedule="cosine",
        warmup_steps=2,
    )

    full = Trainer(tiny_gpt2(), data, collate, cfg(output_dir=str(tmp_path / "full"), **kw))
    full.train()

    out = str(tmp_path / "split")
    first = Trainer(tiny_gpt2(), data, collate, cfg(output_dir=out, **kw), callbacks=[StopAt(half)])
    first.train()
    assert first.step == half
    assert latest_checkpoint(out).endswith(f"checkpoint-{half}")
    expected_epoch = half * grad_accum * 2 / 10
    assert first.log_history[-1]["epoch"] == pytest.approx(expected_epoch)

    # different init: everything must come from the checkpoint
    second = Trainer(tiny_gpt2(seed=99), data, collate, cfg(output_dir=out, resume=True, **kw))
    second.train()
    assert second.step == n_steps
    assert second.log_history.values("step") == list(range(1, n_steps + 1))
    assert second.log_history.values("loss") == pytest.approx(
        full.log_history.values("loss"), abs=1e-6
    )
    assert second.log_history.values("lr") == pytest.approx(
        full.log_history.values("lr"), abs=1e-12
    )
    assert max_param_diff(params_of(second.unwrapped_model), params_of(full.unwrapped_model)) < 1e-6
    assert latest_checkpoint(out).endswith(f"checkpoint-{n_steps}")


def test_same_seed_same_losses_different_seed_differs():
    data = make_data(10)

    def run(seed):
        t = Trainer(tiny_gpt2(), data, collate, cfg(max_steps=5, seed=seed))
        return t.train().values("loss")

    a, b, c = run(0), run(0), run(1)
    assert a == b
    assert a != c


def test_atomic_save_failure_leaves_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = Trainer(tiny_gpt2(), make_data(6), collate, cfg(max_steps=2, output_dir=str(out)))
    trainer.train()
    assert sorted(os.listdir(out)) == ["checkpoint-2"]
    before = tree_hash(out / "checkpoint-2")
    assert {
        "model.safetensors",
        "config.json",
        "trainer_state.json",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state_0.pt",
    } <= set(before)

    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        if str(f).endswith("optimizer.pt"):
            raise OSError("disk full (simulated)")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    trainer.config.max_steps = 4
    with pytest.raises(OSError, match="disk full"):
        trainer.train()  # the final save at step 4 fails half-way
    assert sorted(os.listdir(out)) == ["checkpoint-2"]  # no checkpoint-4, no temp folder left
    # overwriting an existing checkpoint that fails keeps the old one byte for byte
    with pytest.raises(OSError):
        trainer.save_checkpoint(out / "checkpoint-2")
    assert sorted(os.listdir(out)) == ["checkpoint-2"]
    assert tree_hash(out / "checkpoint-2") == before

    monkeypatch.setattr(torch, "save", real_save)
    again = Trainer(tiny_gpt2(seed=5), make_data(6), collate, cfg(max_steps=2, output_dir=str(out)))
    again.resume_from_checkpoint(out / "checkpoint-2")
    assert again.step == 2


def test_save_total_limit_and_latest(tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(
        tiny_gpt2(),
        make_data(6),
        collate,
        cfg(max_steps=5, output_dir=str(out), save_every=1, save_total_limit=2),
    )
    trainer.train()
    assert sorted(os.listdir(out)) == ["checkpoint-4", "checkpoint-5"]
    assert latest_checkpoint(out) == str(out / "checkpoint-5")
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_nan_loss_raises_with_step(tmp_path):
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        loss = model(**batch).loss
        return loss * float("nan") if calls["n"] == 3 else loss

    out = tmp_path / "run"
    trainer = Trainer(
        tiny_gpt2(),
        make_data(6),
        collate,
        cfg(max_steps=5, output_dir=str(out), save_every=1),
        loss_fn=loss_fn,
    )
    with pytest.raises(NonFiniteLossError, match="step 3") as info:
        trainer.train()
    assert info.value.step == 3 and math.isnan(info.value.loss)
    assert "lower the learning rate" in str(info.value)
    assert sorted(os.listdir(out)) == ["checkpoint-1", "checkpoint-2"]
    assert all(torch.isfinite(p).all() for p in trainer.unwrapped_model.parameters())
    assert trainer.step == 2


def test_callbacks_eval_and_to_pandas(tmp_path):
    events: list[str] = []
    log_rows: list[dict] = []
    saves: list[str] = []

    class Recorder(TrainerCallback):
        def on_train_begin(self, trainer):
            events.append("begin")

        def on_step_end(self, trainer, logs):
            events.append(f"step{logs['step']}")

        def on_evaluate(self, trainer, metrics):
            events.append(f"eval{trainer.step}:{sorted(metrics)}")

        def on_save(self, trainer, path):
            saves.append(path)

        def on_train_end(self, trainer):
            events.append("end")

    def eval_fn(trainer):
        assert not trainer.model.training
        return {"acc": 0.5, "custom/x": torch.tensor(2.0)}

    minigpt_style: list[int] = []
    trainer = Trainer(
        tiny_gpt2(),
        make_data(6),
        collate,
        cfg(max_steps=4, log_every=2, eval_every=2, save_every=2, output_dir=str(tmp_path / "run")),
        eval_fn=eval_fn,
        callbacks=[Recorder(), lambda tr, logs: log_rows.append(logs)],
    )
    trainer.add_callback("on_step_end", lambda tr, logs: minigpt_style.append(logs["step"]))
    history = trainer.train()

    assert events[0] == "begin" and events[-1] == "end"
    assert "eval2:['custom/x', 'eval/acc']" in events and "step4" in events
    assert minigpt_style == [1, 2, 3, 4]
    assert [r["step"] for r in log_rows] == [2, 4]
    assert all({"loss", "lr", "grad_norm"} <= set(r) for r in log_rows)
    assert [os.path.basename(p) for p in saves] == ["checkpoint-2", "checkpoint-4"]
    df = history.to_pandas()
    assert {
        "step",
        "epoch",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "examples_per_s",
        "elapsed_s",
        "eval/acc",
        "custom/x",
    } <= set(df.columns)
    assert df["step"].tolist() == [2, 4] and df["eval/acc"].tolist() == [0.5, 0.5]

    stopper = Trainer(tiny_gpt2(), make_data(6), collate, cfg(max_steps=10), callbacks=[StopAt(2)])
    stopper.train()
    assert stopper.step == 2 and stopper.log_history[-1]["step"] == 2


def test_config_validation_names_the_field():
    bad = [
        ({"max_steps": -1}, "max_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"lr_schedule": "exp"}, "lr_schedule"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"betas": (0.9, 1.5)}, "betas"),
        ({"min_lr_ratio": 2.0}, "min_lr_ratio"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"eval_every": 0}, "eval_every"),
        ({"max_time_s": -5}, "max_time_s"),
        ({"progress": "yes"}, "progress"),
        ({"resume": True}, "resume"),
    ]
    for kwargs, field in bad:
        with pytest.raises(ConfigError, match=field):
            TrainConfig(**kwargs)
    with pytest.raises(ConfigError, match=r"\['constant', 'cosine', 'linear'\]|cosine"):
        TrainConfig(lr_schedule="exp")
    c = config_from_dict(
        TrainConfig, {"lr": "1e-3", "max_steps": "7", "betas": [0.8, 0.9], "progress": "false"}
    )
    assert c.lr == 1e-3 and c.max_steps == 7 and c.betas == (0.8, 0.9) and c.progress is False
    with pytest.raises(ConfigError, match="learning_rate"):
        config_from_dict(TrainConfig, {"learning_rate": 1e-3})


class LMWithHead(nn.Module):
    """An LM plus a small classifier head, the shape of the latent-method wrappers."""

    def __init__(self, lm: GPT2LMHeadModel, n_out: int = 3):
        super().__init__()
        self.lm = lm
        self.head = nn.Linear(lm.config.n_embd, n_out)


def head_loss_fn(model, batch):
    out = model.lm(**batch, output_hidden_states=True)
    logits = model.head(out.hidden_states[-1][:, -1])
    head_loss = F.cross_entropy(logits, batch["input_ids"][:, 0] % logits.shape[-1])
    return out.loss + head_loss, {"lm_loss": out.loss.detach(), "head_loss": head_loss}


def test_custom_loss_metrics_and_wrapper_resume(tmp_path):
    data = make_data(6)
    kw = dict(max_steps=4, save_every=2)

    def wrapper(seed=0, n_out=3):
        lm = tiny_gpt2(seed)
        torch.manual_seed(seed + 1)
        return LMWithHead(lm, n_out)

    full = Trainer(
        wrapper(), data, collate, cfg(output_dir=str(tmp_path / "full"), **kw), loss_fn=head_loss_fn
    )
    full.train()
    row = full.log_history[-1]
    assert {"lm_loss", "head_loss"} <= set(row)
    assert row["loss"] == pytest.approx(row["lm_loss"] + row["head_loss"], rel=1e-5)

    out = tmp_path / "split"
    first = Trainer(
        wrapper(),
        data,
        collate,
        cfg(output_dir=str(out), **kw),
        loss_fn=head_loss_fn,
        callbacks=[StopAt(2)],
    )
    first.train()
    files = set(os.listdir(out / "checkpoint-2"))
    assert "model.safetensors" in files and "config.json" not in files
    second = Trainer(
        wrapper(seed=7),
        data,
        collate,
        cfg(output_dir=str(out), resume=True, **kw),
        loss_fn=head_loss_fn,
    )
    second.train()
    assert max_param_diff(params_of(second.unwrapped_model), params_of(full.unwrapped_model)) < 1e-6
    # tied LM weights stay tied after loading a de-duplicated safetensors file
    lm = second.unwrapped_model.lm
    assert lm.lm_head.weight.data_ptr() == lm.transformer.wte.weight.data_ptr()

    # a wrapper whose head has another shape is refused, naming the weight
    other = Trainer(
        wrapper(n_out=4), data, collate, cfg(output_dir=str(out), **kw), loss_fn=head_loss_fn
    )
    with pytest.raises(CheckpointMismatchError, match=r"head\.weight.*\[3, 32\].*\[4, 32\]"):
        other.resume_from_checkpoint(latest_checkpoint(out))


def test_checkpoint_from_other_model_config_raises(tmp_path):
    out = tmp_path / "run"
    Trainer(
        tiny_gpt2(n_embd=32), make_data(6), collate, cfg(max_steps=1, output_dir=str(out))
    ).train()
    bigger = Trainer(
        tiny_gpt2(n_embd=64),
        make_data(6),
        collate,
        cfg(max_steps=2, output_dir=str(out), resume=True),
    )
    with pytest.raises(CheckpointMismatchError, match=r"n_embd \(checkpoint 32, current 64\)"):
        bigger.train()


def test_curriculum_stages_reset_optimizer_and_data():
    data_a, data_b = make_data(6, seed=1), make_data(6, seed=2)
    trainer = Trainer(
        tiny_gpt2(), data_a, collate, cfg(max_steps=2, warmup_steps=2, lr_schedule="constant")
    )
    trainer.train()
    trainer.config.max_steps = 4
    trainer.set_train_dataset(data_b)
    trainer.reset_optimizer()
    assert not trainer.optimizer.state  # fresh moments
    trainer.train()
    assert trainer.step == 4
    assert trainer.log_history.values("step") == [1, 2, 3, 4]
    # the warm-up restarts with the new optimizer: lr 0.5x, 1x, 0.5x, 1x
    assert trainer.log_history.values("lr") == pytest.approx([5e-4, 1e-3, 5e-4, 1e-3])


def test_lr_schedules_and_time_limit():
    trainer = Trainer(
        tiny_gpt2(),
        make_data(6),
        collate,
        cfg(max_steps=10, warmup_steps=2, lr_schedule="cosine", min_lr_ratio=0.1),
    )
    f = trainer._lr_factor
    assert [f(0), f(1)] == pytest.approx([0.5, 1.0])
    assert (
        f(2) == pytest.approx(1.0) and f(10) == pytest.approx(0.1) and f(6) == pytest.approx(0.55)
    )
    trainer.config.lr_schedule = "linear"
    assert f(6) == pytest.approx(0.55) and f(4) == pytest.approx(1 - 0.9 * 0.25)

    timed = Trainer(tiny_gpt2(), make_data(6), collate, cfg(max_steps=50, max_time_s=1e-6))
    timed.train()
    assert timed.step == 1
    assert timed.log_history[-1]["elapsed_s"] > 0


def test_weight_decay_groups_and_optimizer_params():
    trainer = Trainer(tiny_gpt2(), make_data(6), collate, cfg(max_steps=1, weight_decay=0.1))
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() < 2 for p in no_decay["params"])
    n_unique = len({id(p) for p in trainer.unwrapped_model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique  # tied wte/lm_head once

    model = LMWithHead(tiny_gpt2())
    lm_before = params_of(model.lm)
    head_only = Trainer(
        model,
        make_data(6),
        collate,
        cfg(max_steps=2),
        loss_fn=head_loss_fn,
        optimizer_params=(p for p in model.head.parameters()),
    )
    head_only.train()
    head_only.reset_optimizer()  # the generator was materialised, so this still finds the head
    assert max_param_diff(params_of(model.lm), lm_before) == 0.0
    assert sum(len(g["params"]) for g in head_only.optimizer.param_groups) == 2


def test_train_again_after_raising_max_steps_continues_exactly():
    data = make_data(10)
    kw = dict(lr_schedule="constant", warmup_steps=0, grad_accum_steps=2)
    straight = Trainer(tiny_gpt2(), data, collate, cfg(max_steps=4, **kw))
    straight.train()
    staged = Trainer(tiny_gpt2(), data, collate, cfg(max_steps=2, **kw))
    staged.train()
    assert staged.batch_in_epoch == 4  # stopped inside the first epoch
    staged.config.max_steps = 4
    staged.train()
    assert staged.log_history.values("loss") == straight.log_history.values("loss")
    assert staged.accelerator.gradient_state.in_dataloader is False


def test_schedule_by_time_decays_with_the_clock():
    """With schedule_by_time, the lr reaches the floor when the time budget is spent."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from workbench.train import TrainConfig, Trainer

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=16)
    )
    data = [torch.randint(0, 20, (8,)) for _ in range(8)]

    def collate(items):
        x = torch.stack(items)
        return {"input_ids": x, "labels": x}

    cfg = TrainConfig(
        max_steps=10**9,
        max_time_s=1.0,
        schedule_by_time=True,
        lr=1e-3,
        min_lr_ratio=0.1,
        batch_size=4,
        progress=False,
        log_every=1,
    )
    trainer = Trainer(model, data, collate, cfg)
    trainer.train()
    lrs = trainer.log_history.values("lr")
    assert 1 < trainer.step < 10**9  # stopped by the clock, not by steps
    assert lrs[0] > 0.5e-3 and lrs[-1] < 0.3e-3  # decayed towards min_lr_ratio * lr as time ran out


def test_time_budget_ends_a_long_step_warmup():
    """A step warm-up longer than the budget allows ends after warmup_time_fraction of the time."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from workbench.train import TrainConfig, Trainer

    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=16)
    )
    cfg = TrainConfig(
        max_steps=10**9,
        max_time_s=100.0,
        schedule_by_time=True,
        warmup_steps=1000,
        warmup_time_fraction=0.1,
        lr=1e-3,
        min_lr_ratio=0.1,
        progress=False,
    )
    trainer = Trainer(model, [torch.zeros(4, dtype=torch.long)], lambda xs: {}, cfg)
    now = [0.0]
    trainer._clock = lambda: now[0]
    assert trainer._lr_factor(9) == pytest.approx(0.01)  # step-driven warm-up early on
    now[0] = 5.0
    assert trainer._lr_factor(9) == pytest.approx(0.5)  # half of the 10 s warm-up time
    now[0] = 10.0
    assert trainer._lr_factor(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    now[0] = 100.0
    assert trainer._lr_factor(12) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="warmup_time_fraction"):
        TrainConfig(warmup_time_fraction=0.0)


def test_decay_fraction_reaches_the_floor_early_and_stays():
    from transformers import GPT2Config, GPT2LMHeadModel

    from workbench.train import TrainConfig, Trainer

    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=16)
    )
    cfg = TrainConfig(max_steps=100, decay_fraction=0.5, lr=1e-3, min_lr_ratio=0.1, progress=False)
    trainer = Trainer(model, [torch.zeros(4, dtype=torch.long)], lambda xs: {}, cfg)
    assert trainer._lr_factor(0) == pytest.approx(1.0)
    assert trainer._lr_factor(25) == pytest.approx(0.1 + 0.9 * 0.5)  # cosine midpoint at a quarter
    assert trainer._lr_factor(50) == pytest.approx(0.1) and trainer._lr_factor(90) == pytest.approx(
        0.1
    )
    with pytest.raises(ValueError, match="decay_fraction"):
        TrainConfig(decay_fraction=1.5)


def test_trains_when_gradients_were_switched_off_globally():
    """Notebooks often call torch.set_grad_enabled(False); training must still work."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from workbench.train import TrainConfig, Trainer

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=16)
    )
    data = [torch.randint(0, 20, (8,)) for _ in range(4)]
    before = [p.clone() for p in model.parameters()]
    torch.set_grad_enabled(False)
    try:
        trainer = Trainer(
            model,
            data,
            lambda xs: {"input_ids": torch.stack(xs), "labels": torch.stack(xs)},
            TrainConfig(max_steps=2, batch_size=2, progress=False),
        )
        trainer.train()
        assert not torch.is_grad_enabled()  # the caller's setting is restored
    finally:
        torch.set_grad_enabled(True)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
