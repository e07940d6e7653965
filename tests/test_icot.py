"""iCoT (stepwise internalization): stage layouts, smoothing draws, training, resume, config."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.config import ConfigError
from workbench.data.layout import SequenceCollator, build_sequence, tokenize_examples
from workbench.data.tasks import generate
from workbench.data.tokenizer import build_char_tokenizer, special_ids
from workbench.experiment import TrainedModel, default_train_config, prepare_data
from workbench.methods import icot
from workbench.methods.icot import (
    ICoTCollator,
    ICoTConfig,
    extra_removal,
    icot_sequence,
    stage_plan,
    tokens_removed,
)
from workbench.models.build import ModelConfig, build_model

NO_SMOOTHING = dict(smoothing_lambda=0.0)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def texs(tok):
    return tokenize_examples(generate("multiplication", 400, 0), tok)  # 3x3: 32 reasoning tokens


def test_stage_layouts_remove_tokens_from_the_left(tok, texs):
    sp = special_ids(tok)
    tex = texs[0]
    reasoning = tex.reasoning()
    assert len(reasoning) == 32
    cfg = ICoTConfig(tokens_per_removal=8, **NO_SMOOTHING)
    assert [tokens_removed(tex, s, cfg) for s in range(6)] == [0, 8, 16, 24, 32, 32]
    assert cfg.n_stages(32) == 4 and ICoTConfig(tokens_per_removal=5).n_stages(32) == 7
    for removed in (0, 8, 13, 31):
        seq = icot_sequence(tex, sp, removed)
        prompt = tex.question + [sp.bot]
        kept = reasoning[removed:]
        assert seq["input_ids"] == prompt + kept + [sp.eot] + tex.answer + [sp.eos]
        # labels: the kept reasoning, <eot>, the answer, <eos>; nothing on the prompt
        assert seq["labels"] == [-100] * len(prompt) + seq["input_ids"][len(prompt) :]
    # no removal is the CoT layout; everything removed is the no-CoT layout
    assert icot_sequence(tex, sp, 0) == build_sequence(tex, sp)
    assert icot_sequence(tex, sp, 32) == build_sequence(tex, sp, with_steps=False)
    batch = ICoTCollator(tok, cfg, stage=2)(texs[:4])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    bot = int((ids == sp.bot).nonzero()[0])
    assert ids[bot + 1 : bot + 17].tolist() == reasoning[16:]
    assert int((labels != -100).nonzero()[0]) == bot + 1
    assert not batch["latent_mask"].any()


def test_final_stage_is_the_nocot_layout(tok, texs):
    cfg = ICoTConfig(tokens_per_removal=8, smoothing_lambda=0.5)  # smoothing cannot add more
    final = ICoTCollator(tok, cfg, stage=cfg.n_stages(32))(texs[:16])
    nocot = SequenceCollator(tok, with_steps=False)(texs[:16])
    assert final.keys() == nocot.keys()
    for k in final:
        assert torch.equal(final[k], nocot[k]), k


def test_stage_plan_has_cumulative_stages_and_an_optional_cot_stage():
    cfg = ICoTConfig(tokens_per_removal=8, steps_per_removal=3, final_steps=7)
    assert stage_plan(cfg, 32) == [(1, 3), (2, 3), (3, 3), (4, 7)]
    assert stage_plan(ICoTConfig(tokens_per_removal=40, final_steps=5), 32) == [(1, 5)]
    with_cot = ICoTConfig(tokens_per_removal=16, steps_per_removal=2, final_steps=4, cot_steps=9)
    assert stage_plan(with_cot, 32) == [(0, 9), (1, 2), (2, 4)]


def test_smoothing_only_adds_tokens_and_is_reproducible_by_seed(tok, texs):
    cfg = ICoTConfig(tokens_per_removal=8, smoothing_lambda=1.0, seed=3)
    for stage in range(5):
        got = ICoTCollator(tok, cfg, stage=stage).removals(texs)
        assert got == ICoTCollator(tok, ICoTConfig(**{**vars(cfg)}), stage=stage).removals(texs)
        scheduled = [min(8 * stage, 32)] * len(texs)
        assert all(s <= g <= 32 for s, g in zip(scheduled, got, strict=True))
        if stage < 4:
            assert any(g > s for s, g in zip(scheduled, got, strict=True))
    other_seed = ICoTCollator(tok, ICoTConfig(smoothing_lambda=1.0, seed=4), stage=1)
    assert other_seed.removals(texs) != ICoTCollator(tok, cfg, stage=1).removals(texs)
    # each visit (epoch) of an example gets its own draw, and the same one when replayed
    col = ICoTCollator(tok, cfg, stage=1, epoch_fn=lambda: 1)
    assert col.removals(texs) != ICoTCollator(tok, cfg, stage=1).removals(texs)
    assert col.removals(texs) == ICoTCollator(tok, cfg, stage=1, epoch_fn=lambda: 1).removals(texs)
    off = ICoTCollator(tok, ICoTConfig(**NO_SMOOTHING), stage=1)
    assert off.removals(texs) == [8] * len(texs)


@pytest.mark.parametrize("lam", [1.0, 4.0])
def test_smoothing_draws_follow_the_reference_distribution(lam):
    """P(k) = (1 - e^-λ) e^-λk, so P(k >= j) = e^-λj (reference compute_lambda_distribution)."""
    cfg = ICoTConfig(smoothing_lambda=lam)
    n = 20000
    ks = [extra_removal(cfg, str(i)) for i in range(n)]
    assert min(ks) == 0
    for j in (1, 2):
        p = math.exp(-lam * j)
        frac = sum(k >= j for k in ks) / n
        assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3, (j, frac, p)


@pytest.mark.parametrize(
    "field,value",
    [
        ("tokens_per_removal", 0),
        ("tokens_per_removal", 2.5),
        ("steps_per_removal", 0),
        ("final_steps", 0),
        ("smoothing_lambda", -1.0),
        ("reset_optimizer", "yes"),
        ("cot_steps", -1),
        ("seed", 1.5),
    ],
)
def test_bad_config_is_a_config_error_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=f"ICoTConfig.{field}"):
        ICoTConfig(**{field: value})


def _tiny(train_size=64):
    data = prepare_data(
        "multiplication", train_size=train_size, val_size=4, test_size=6, seed=0, digits_a=2
    )
    base = build_model(ModelConfig(n_layer=1, d_model=32, n_head=2), data.tokenizer, seed=0)
    return data, base


def test_icot_trains_all_stages_and_ends_without_reasoning_tokens(tmp_path):
    data, base = _tiny()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    ic = ICoTConfig(tokens_per_removal=5, steps_per_removal=3, final_steps=40, seed=0)
    tc = default_train_config(batch_size=8, lr=1e-2, progress=False, warmup_steps=1, log_every=1)
    tm = icot.train(data, base, config=ic, train_config=tc)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items()), (
        "the base model must not change"
    )
    h = tm.history
    assert sorted(h["stage"].unique()) == [1, 2, 3]  # 14 reasoning tokens, 5 per stage
    assert h.groupby("stage")["removed_tokens"].first().tolist() == [5, 10, 14]
    assert tm.meta["train_steps"] == 46 and tm.spec is None and tm.method == icot.NAME
    assert tm.meta["config"]["tokens_per_removal"] == 5 and "data" in tm.meta
    res = tm.evaluate()
    assert (res.per_example["reasoning_tokens"] == 0).all()
    assert (res.per_example["latent_steps"] == 0).all()
    tm.save(tmp_path / "m")
    back = TrainedModel.load(tmp_path / "m", data.test)
    assert back.method == icot.NAME and back.spec is None
    again = back.evaluate()
    assert again.per_example["prediction"].tolist() == res.per_example["prediction"].tolist()
    with pytest.raises(ValueError, match="time budget"):
        icot.train(data, base, config=ic, train_config=tc, time_budget_s=10)


def test_registry_record_trains_through_experiment_train(monkeypatch):
    import workbench.methods as methods
    from workbench.experiment import train

    monkeypatch.setitem(methods._MODULES, icot.NAME, "workbench.methods.icot")
    monkeypatch.setattr(methods, "_CACHE", {})
    rec = methods.get_method(icot.NAME)
    assert rec is icot.RECORD and rec.needs_base and rec.config_cls is ICoTConfig
    assert rec.inference_spec is None and rec.alignment({}) is None and rec.recipe is None
    quick = rec.quick_config(0)
    assert isinstance(quick["config"], ICoTConfig)
    data, base = _tiny(train_size=16)
    with pytest.raises(ValueError, match="base"):
        train(icot.NAME, data)
    ic = ICoTConfig(tokens_per_removal=14, final_steps=2)
    tm = train(icot.NAME, data, base, config=ic, train_config=quick["train_config"])
    assert tm.meta["train_steps"] == 2


class _Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at", [5, 8])  # mid stage 2; exactly at the end of stage 2
def test_icot_resumes_mid_schedule_to_the_uninterrupted_weights(tmp_path, crash_at):
    from workbench.train import TrainerCallback

    class CrashAt(TrainerCallback):
        def on_step_end(self, trainer, logs):
            if trainer.step == crash_at:
                raise _Crash

    # 32 examples at batch 4: 8 batches per epoch, so the 12 steps cross an epoch boundary
    data, base = _tiny(train_size=32)
    ic = ICoTConfig(tokens_per_removal=5, steps_per_removal=4, final_steps=4, smoothing_lambda=1.0)

    def run(out, resume=False, callbacks=None):
        tc = default_train_config(
            batch_size=4, progress=False, warmup_steps=1, output_dir=str(out), save_every=1,
            resume=resume,
        )  # fmt: skip
        return icot.train(data, base, config=ic, train_config=tc, callbacks=callbacks)

    ref = run(tmp_path / "ref")
    with pytest.raises(_Crash):
        run(tmp_path / "run", callbacks=[CrashAt()])
    resumed = run(tmp_path / "run", resume=True)
    assert resumed.meta["train_steps"] == ref.meta["train_steps"] == 12
    pairs = zip(ref.model.state_dict().items(), resumed.model.state_dict().values(), strict=True)
    for (k, a), b in pairs:
        assert torch.equal(a, b), k
