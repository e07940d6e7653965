"""LEPO and LaTRO on the group-policy trainer: soft-token rollouts, recomputation, self-reward."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from workbench.config import ConfigError
from workbench.data.layout import pad_prompts, prompt_ids, tokenize_examples
from workbench.data.tokenizer import special_ids
from workbench.engine.feedback import SuperpositionFeedback
from workbench.engine.loop import run_latent
from workbench.engine.stop import FixedSteps
from workbench.experiment import default_train_config, prepare_data, train
from workbench.methods import latro, lepo
from workbench.models.build import ModelConfig
from workbench.rl import token_policy


@pytest.fixture(scope="module")
def data():
    d = prepare_data(
        "arithmetic",
        train_size=64,
        val_size=4,
        test_size=8,
        seed=0,
        max_value=5,
        max_result=12,
        min_steps=2,
        max_steps=2,
    )
    return dataclasses.replace(d, val=[])


@pytest.fixture(scope="module")
def cot(data):
    tc = default_train_config(batch_size=8, max_steps=40, eval_every=None, progress=False)
    return train(
        "cot",
        data,
        model_config=ModelConfig(d_model=32, n_layer=2, n_head=2),
        train_config=tc,
        seed=0,
    )


def _prompts(tm, data, copies=3):
    sp = special_ids(tm.tokenizer)
    return [prompt_ids(t, sp) for t in tokenize_examples(data.test, tm.tokenizer)] * copies


@pytest.mark.parametrize("soft", [0, 4])
def test_recomputed_scores_equal_the_rollouts(cot, data, soft):
    cot.model.eval()
    kw = dict(soft_top_k=8, gumbel_tau=0.5, temperature=1.0, top_k=10)
    ro = token_policy.rollout(
        cot.model,
        cot.tokenizer,
        _prompts(cot, data),
        soft_tokens=soft,
        max_completion_length=12,
        seed=1,
        **kw,
    )
    with torch.no_grad():
        lp = token_policy.log_probs(cot.model, ro, **kw)
    for seg in ("latent", "answer"):
        assert lp[seg].shape == ro.logp[seg].shape
        assert torch.allclose(lp[seg].cpu(), ro.logp[seg], atol=1e-5), seg
    assert ro.soft_probs.dtype == torch.float32 and ro.soft_ids.shape[1] == soft


def test_gumbel_groups_explore_where_greedy_latents_do_not(cot, data):
    cot.model.eval()
    one = _prompts(cot, data, copies=1)[:1] * 8  # one question, a group of 8
    ro = token_policy.rollout(
        cot.model, cot.tokenizer, one, soft_tokens=4, soft_top_k=8, max_completion_length=4, seed=2
    )
    distinct = {tuple(p.flatten().tolist()) for p in ro.soft_probs.round(decimals=4)}
    assert len(distinct) > 1
    sp = special_ids(cot.tokenizer)
    b = pad_prompts(one, sp.pad)
    greedy = run_latent(
        cot.model,
        b["input_ids"],
        b["attention_mask"],
        sp,
        feedback=SuperpositionFeedback(top_k=8),
        stop=FixedSteps(4),
        max_latent_steps=4,
        max_new_tokens=4,
        append_eot=False,
    )
    # identical rows of one batch may differ in the last float bits (CPU kernels split a batch
    # unevenly), so trajectories are compared at 1e-4, as the soft tokens above
    rows = greedy.trace.embeds.flatten(1).round(decimals=4)
    assert len({tuple(r) for r in rows.tolist()}) == 1


def _small(cls, **kw):
    base = {
        "num_generations": 3,
        "per_device_train_batch_size": 2,
        "max_steps": 2,
        "max_completion_length": 12,
        "top_k": 10,
    }
    return cls(**{**base, **kw})


def test_lepo_trains_both_segments(cot, data, monkeypatch):
    from workbench.rl import rewards

    def text_score(completions, **_):  # any reward that varies between samples of a weak model
        return [float(sum(map(ord, c)) % 7) for c in completions]

    monkeypatch.setitem(rewards.REWARDS, "text_score", text_score)
    tm = lepo.train(
        data,
        cot,
        config=_small(
            lepo.LEPOConfig,
            latent_length=3,
            num_iterations=2,
            learning_rate=5e-2,
            max_completion_length=32,
            rewards={"weights": {"text_score": 1.0}},
        ),
    )
    h = tm.history
    assert {"loss/latent", "loss/answer", "clip_ratio/region_mean", "reward"} <= set(h.columns)
    assert h["reward_std"].iloc[0] > 0  # the groups carry a signal
    assert h["clip_ratio/region_mean"].iloc[1] > 0  # the reused batch clips
    assert tm.spec.max_latent_steps == 3 and not tm.spec.append_eot
    assert 0.0 <= tm.evaluate(data.test[:4]).summary["accuracy"] <= 1.0


def test_latro_logs_its_self_reward(cot, data):
    tm = latro.train(data, cot, config=_small(latro.LaTROConfig, sft_weight=0.5))
    h = tm.history
    assert {"reward", "rewards/self_likelihood/mean", "loss/sft"} <= set(h.columns)
    assert (h["reward"] < 0).all()  # a log-likelihood (minus a KL that starts at 0)
    assert tm.spec is None  # the CoT model writes its own rationale at inference


def test_token_methods_need_a_cot_start(data, cot):
    with pytest.raises(ConfigError, match="explicit-CoT model"):
        lepo.train(data, None)
    first = lepo.train(data, cot, config=_small(lepo.LEPOConfig, latent_length=2, max_steps=1))
    again = lepo.train(data, first, config=_small(lepo.LEPOConfig, latent_length=2, max_steps=1))
    assert again.method == "lepo"  # a LEPO run continues a LEPO model
    with pytest.raises(ConfigError, match="explicit-CoT model.*'lepo'"):
        latro.train(data, first, config=_small(latro.LaTROConfig))  # a latent spec: refused
    with pytest.raises(ConfigError, match="LaTROConfig"):
        latro.train(data, cot, train_config=default_train_config())


def test_the_policy_gradient_raises_the_reward(cot, data, monkeypatch):
    """The sign of the whole update: rewarding odd digits makes the policy write more of them."""
    from workbench.rl import rewards

    def odd(completions, **_):
        return [sum(ch in "13579" for ch in c) / max(1, len(c)) for c in completions]

    monkeypatch.setitem(rewards.REWARDS, "odd", odd)
    prompts = _prompts(cot, data, copies=8)

    def share(model) -> float:  # the reward's mean over 64 seeded samples
        ro = token_policy.rollout(model, cot.tokenizer, prompts, max_completion_length=32, seed=7)
        return sum(odd(ro.completions)) / len(prompts)

    before = share(cot.model)
    tm = lepo.train(data, cot, config=_small(lepo.LEPOConfig, latent_length=1, max_steps=15,
                                             num_generations=8, per_device_train_batch_size=4,
                                             learning_rate=1e-2,
                                             rewards={"weights": {"odd": 1.0}}))  # fmt: skip
    after = share(tm.model)
    assert after > before + 0.05, (before, after)
