"""Experiment layer: Coconut stages, spec/model save-load round trips, CLI errors."""

from __future__ import annotations

import pytest
import torch

from workbench.cli import main as cli_main
from workbench.data.tasks import generate
from workbench.data.tokenizer import build_char_tokenizer, special_ids
from workbench.engine.feedback import SuperpositionFeedback
from workbench.engine.stop import ArgmaxToken
from workbench.eval.evaluator import LatentSpec
from workbench.experiment import (
    TrainedModel,
    default_train_config,
    prepare_data,
    spec_from_dict,
    spec_to_dict,
    train_coconut,
)
from workbench.methods.coconut import CoconutCollator, CoconutConfig, stage_layout
from workbench.methods.layout import tokenize_examples
from workbench.models.build import ModelConfig, build_model


def test_coconut_stage_layouts():
    tok = build_char_tokenizer()
    sp = special_ids(tok)
    tex = tokenize_examples(generate("multiplication", 1, 0), tok)[0]  # 3 steps
    cfg = CoconutConfig(c_thought=2, max_latent_stage=3)
    assert [stage_layout(tex, k, cfg) for k in range(5)] == [(0, 0), (2, 1), (4, 2), (6, 3), (6, 3)]
    batch = CoconutCollator(tok, cfg, stage=2)([tex, tex])
    ids = batch["input_ids"][0]
    lat = (ids == sp.latent).nonzero().flatten()
    assert len(lat) == 4 and int(lat[0]) == int(batch["latent_start"])
    assert (batch["labels"][0][batch["latent_mask"][0]] == -100).all()
    # the remaining explicit step (step 3) follows the latents and is supervised
    first_label = int((batch["labels"][0] != -100).nonzero()[0])
    assert first_label == int(lat[-1]) + 1
    with pytest.raises(ValueError, match="c_thought"):
        CoconutConfig(c_thought=0)
    assert CoconutConfig(c_thought=2, max_latent_stage=3).inference_spec().max_latent_steps == 6


def test_spec_round_trip():
    spec = LatentSpec(SuperpositionFeedback(top_k=7, temperature=0.5), ArgmaxToken(3, 1), 9, True)
    back = spec_from_dict(spec_to_dict(spec), d_model=16)
    assert back.feedback.top_k == 7 and back.feedback.temperature == 0.5
    assert (
        isinstance(back.stop, ArgmaxToken)
        and back.stop.token_id == 3
        and back.max_latent_steps == 9
    )


def test_coconut_trains_saves_loads(tmp_path):
    torch.manual_seed(0)
    data = prepare_data(
        "multiplication", train_size=64, val_size=4, test_size=6, seed=0, digits_a=2
    )
    base = build_model(ModelConfig(n_layer=1, d_model=32, n_head=2), data.tokenizer)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cc = CoconutConfig(c_thought=1, max_latent_stage=2, steps_per_stage=2, feedback="projected")
    tm = train_coconut(
        data,
        base,
        coconut=cc,
        train_config=default_train_config(batch_size=4, progress=False, warmup_steps=1),
    )
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items()), (
        "the base model must not change"
    )
    assert sorted(tm.history["stage"].unique()) == [1, 2]
    res = tm.evaluate()
    assert (res.per_example["latent_steps"] == 2).all()
    tm.save(tmp_path / "m")
    back = TrainedModel.load(tmp_path / "m", data.test)
    assert back.method == "coconut" and back.spec.max_latent_steps == 2
    for (k, a), b in zip(
        tm.spec.feedback.state_dict().items(), back.spec.feedback.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    again = back.evaluate()
    assert again.per_example["prediction"].tolist() == res.per_example["prediction"].tolist()


def test_cli_unknown_keys_are_named(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data: {task: multiplication}\ntrain: {lr: 1e-3, learning_rate: 1}\n")
    assert cli_main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "lr" in err
    cfg.write_text("modle: {}\n")
    assert cli_main(["data", "--config", str(cfg)]) == 2
    assert "modle" in capsys.readouterr().err


def test_build_checkpoints_saves_loadable_fp16_models(tmp_path, monkeypatch):
    """`make checkpoints` path: a (tiny) CoT model saved in fp16, loadable, with its test
    accuracy."""
    import workbench.checkpoints as ck

    monkeypatch.setattr(ck, "TRAIN_SIZE", 200)
    with pytest.raises(ValueError, match="not shipped"):
        ck.build_checkpoints(tmp_path, methods=("nocot",))
    out = ck.build_checkpoints(
        tmp_path, methods=("cot",), cot_minutes=0.02, d_model=16, test_size=8
    )
    assert set(out) == {"cot"} and 0.0 <= out["cot"]["accuracy"] <= 1.0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "cot" / "model.safetensors"), "pt") as f:
        names = f.keys()  # safe_open has keys() but is not iterable
        assert {f.get_tensor(k).dtype for k in names} == {torch.float16}
    tm = TrainedModel.load(tmp_path / "cot")
    assert (
        tm.meta["test_accuracy"] == out["cot"]["accuracy"] and tm.meta["data"]["train_size"] == 200
    )
    assert next(tm.model.parameters()).dtype == torch.float32


class _Crash(Exception):
    pass


class _CrashAt:
    """A callback that kills the run (an exception) after optimizer step ``n``."""

    def __init__(self, n):
        self.n = n

    def __getattr__(self, name):
        return lambda *a, **k: None

    def on_step_end(self, trainer, logs):
        if trainer.step == self.n:
            raise _Crash


@pytest.mark.parametrize("crash_at", [5, 8])  # mid stage 2; exactly at the end of stage 2
def test_coconut_resumes_mid_curriculum_to_the_uninterrupted_weights(tmp_path, crash_at):
    from workbench.train import TrainerCallback

    data = prepare_data(
        "multiplication", train_size=64, val_size=4, test_size=4, seed=0, digits_a=2
    )
    base = build_model(ModelConfig(n_layer=1, d_model=32, n_head=2), data.tokenizer, seed=0)
    cc = CoconutConfig(c_thought=1, max_latent_stage=3, steps_per_stage=4, feedback="projected")

    def run(out, resume=False, callbacks=None):
        tc = default_train_config(
            batch_size=4, progress=False, warmup_steps=1, output_dir=str(out), save_every=1,
            resume=resume,
        )  # fmt: skip
        return train_coconut(data, base, coconut=cc, train_config=tc, callbacks=callbacks)

    ref = run(tmp_path / "ref")
    crash = type("Crash", (TrainerCallback,), {"on_step_end": _CrashAt(crash_at).on_step_end})()
    with pytest.raises(_Crash):
        run(tmp_path / "run", callbacks=[crash])
    resumed = run(tmp_path / "run", resume=True)
    assert resumed.meta["train_steps"] == ref.meta["train_steps"] == 12
    for (k, a), b in zip(
        ref.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    for a, b in zip(
        ref.spec.feedback.parameters(), resumed.spec.feedback.parameters(), strict=True
    ):
        assert torch.equal(a, b)
