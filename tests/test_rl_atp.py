"""ATP-Latent's RL stage on the group-policy trainer: rollouts, recomputation, clipping, rewards."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from workbench.config import ConfigError
from workbench.data.layout import prompt_ids, tokenize_examples
from workbench.data.tokenizer import special_ids
from workbench.experiment import default_train_config, prepare_data
from workbench.methods import atp, atp_rl
from workbench.methods.atp import ATPConfig
from workbench.models.build import ModelConfig
from workbench.rl import gaussian_policy
from workbench.rl.rewards import RewardConfig, RewardError


@pytest.fixture(scope="module")
def data():
    d = prepare_data("arithmetic", train_size=64, val_size=4, test_size=8, seed=0,
                     max_value=5, max_result=12, min_steps=2, max_steps=3)  # fmt: skip
    return dataclasses.replace(d, val=[])


@pytest.fixture(scope="module")
def cvae(data):
    """A briefly trained CVAE whose stop head is sharpened, so rollouts stop at different reads."""
    tm = atp.train(data, None, config=ATPConfig(max_latent_stage=3, steps_per_stage=5,
                                                step_decoder="small"),
                   train_config=default_train_config(batch_size=8, max_steps=1, eval_every=None,
                                                     progress=False),
                   model_config=ModelConfig(d_model=32, n_layer=2, n_head=2), seed=0)  # fmt: skip
    with torch.no_grad():
        tm.spec.stop.net[2].weight.mul_(20.0)
    return tm


def _rollouts(tm, data, reduction="mean", seed=3, noise_scale=1.0):
    sp = special_ids(tm.tokenizer)
    prompts = [prompt_ids(t, sp) for t in tokenize_examples(data.test, tm.tokenizer)] * 3
    tm.model.eval()
    ro = gaussian_policy.rollout(tm.model, tm.tokenizer, prompts, tm.spec.feedback, tm.spec.stop,
                                 max_latents=3, max_completion_length=6, top_k=10,
                                 reduction=reduction, seed=seed,
                                 noise_scale=noise_scale)  # fmt: skip
    return ro


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_recomputed_log_probs_equal_the_rollouts(cvae, data, reduction):
    ro = _rollouts(cvae, data, reduction)
    assert len(set(ro.n_latent.tolist())) > 1  # stops at different reads are covered
    with torch.no_grad():
        lp = gaussian_policy.log_probs(cvae.model, cvae.spec.feedback, cvae.spec.stop, ro,
                                       top_k=10, reduction=reduction)  # fmt: skip
    tol = 1e-5 if reduction == "mean" else 1e-3  # a sum over d dimensions adds up rounding
    for seg in ("latent", "stop", "answer"):
        assert ro.masks[seg].any(), seg
        assert torch.allclose(lp[seg].cpu(), ro.logp[seg], atol=tol), seg


def test_pathwise_log_probs_rebuild_the_rollouts_latents(cvae, data):
    """With the stored noise the multi-pass forward rebuilds the sampled latents, so the answer
    and stop log-probs are the rollout's; their gradient reaches the Gaussian heads through the
    latents, which the score-function path's answer log-probs never do."""
    ro = _rollouts(cvae, data)
    fb, stop = cvae.spec.feedback, cvae.spec.stop
    lp = gaussian_policy.log_probs(cvae.model, fb, stop, ro, top_k=10, latent_gradient="pathwise")
    assert "latent" not in lp
    for seg in ("stop", "answer"):
        assert torch.allclose(lp[seg].detach().cpu(), ro.logp[seg], atol=1e-5), seg
    lp["answer"].sum().backward()
    assert fb.mu.weight.grad is not None and fb.mu.weight.grad.abs().sum() > 0
    fb.zero_grad(set_to_none=True)
    cvae.model.zero_grad(set_to_none=True)
    fixed = gaussian_policy.log_probs(cvae.model, fb, stop, ro, top_k=10)
    fixed["answer"].sum().backward()
    assert fb.mu.weight.grad is None  # score path: the answer sees the latents as inputs
    cvae.model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="latent_gradient"):
        gaussian_policy.log_probs(cvae.model, fb, stop, ro, latent_gradient="reparam")


def test_a_noise_scale_widens_the_samples_and_is_the_distribution_scored(cvae, data):
    fb, stop = cvae.spec.feedback, cvae.spec.stop
    ro = _rollouts(cvae, data, noise_scale=3.0)
    one = _rollouts(cvae, data)
    # same seed, same noise: the first latent (same hidden state) sits 3x as far from mu
    with torch.no_grad():
        lp = gaussian_policy.log_probs(cvae.model, fb, stop, ro, top_k=10, noise_scale=3.0)
        path = gaussian_policy.log_probs(cvae.model, fb, stop, ro, top_k=10, noise_scale=3.0,
                                         latent_gradient="pathwise")  # fmt: skip
    assert torch.allclose(ro.noise[:, 0], one.noise[:, 0], atol=1e-4)
    for seg in ("latent", "stop", "answer"):
        assert torch.allclose(lp[seg].cpu(), ro.logp[seg], atol=1e-5), seg
    for seg in ("stop", "answer"):
        assert torch.allclose(path[seg].cpu(), ro.logp[seg], atol=1e-5), seg
    assert not torch.allclose(ro.latents[:, 0], one.latents[:, 0])
    with pytest.raises(ConfigError, match="latent_noise_scale"):
        atp_rl.ATPRLConfig(latent_noise_scale=0.0)


def test_rollouts_are_seeded_and_distinct(cvae, data):
    a, b = _rollouts(cvae, data, seed=5), _rollouts(cvae, data, seed=5)
    assert torch.equal(a.latents, b.latents) and a.completions == b.completions
    c = _rollouts(cvae, data, seed=6)
    assert not torch.equal(a.latents, c.latents)
    # the 3 copies of a question sample different latents (a group explores)
    n = len(data.test)
    assert not torch.equal(a.latents[0, 0], a.latents[n, 0])


def _rl(cvae, data, **kw):
    small = {"num_generations": 3, "per_device_train_batch_size": 2, "max_steps": 2,
             "max_completion_length": 6, "top_k": 10}  # fmt: skip
    cfg = atp_rl.ATPRLConfig(**{**small, **kw})
    return atp_rl.train(data, cvae, config=cfg)


def test_a_reused_batch_clips_after_the_update(cvae, data):
    tm = _rl(cvae, data, num_iterations=2, learning_rate=5e-2, max_steps=2)
    h = tm.history
    assert {"reward", "reward_std", "clip_ratio/region_mean", "completions/mean_length",
            "latents/mean", "rewards/coherence/mean", "loss/latent"} <= set(h.columns)  # fmt: skip
    first, second = h.iloc[0], h.iloc[1]
    assert first["clip_ratio/region_mean"] == 0.0  # first pass: the ratio is exactly 1
    assert second["clip_ratio/region_mean"] > 0.0  # same rollouts after an update: it moved
    assert first["reward"] == second["reward"]  # the same cached rollouts
    changed = any(not torch.equal(p, q) for p, q in zip(
        tm.model.parameters(), cvae.model.parameters(), strict=True))  # fmt: skip
    assert changed and tm.method == "atp_rl"


def test_pathwise_training_has_no_latent_segment_and_moves_the_latent_heads(cvae, data):
    tm = _rl(cvae, data, latent_gradient="pathwise", learning_rate=1e-2, max_steps=2)
    assert "loss/latent" not in tm.history.columns and "loss/answer" in tm.history.columns
    moved = not torch.equal(tm.spec.feedback.mu.weight, cvae.spec.feedback.mu.weight)
    assert moved
    with pytest.raises(ConfigError, match="latent_gradient"):
        atp_rl.ATPRLConfig(latent_gradient="reparam")


def test_kl_to_a_reference_is_logged_when_beta_is_set(cvae, data):
    tm = _rl(cvae, data, beta=0.1, max_steps=1)
    assert "kl" in tm.history.columns and tm.history["kl"].iloc[0] == pytest.approx(0.0, abs=1e-6)


def test_a_broken_reward_stops_training_naming_it(cvae, data, monkeypatch):
    from workbench.rl import rewards

    monkeypatch.setitem(
        rewards.REWARDS, "nan_reward", lambda completions, **_: [float("nan")] * len(completions)
    )
    with pytest.raises(RewardError, match="reward 'nan_reward' returned nan on example 0"):
        _rl(cvae, data, rewards=RewardConfig(weights={"nan_reward": 1.0}), max_steps=1)


def test_atp_rl_needs_a_cvae_model(data):
    with pytest.raises(ConfigError, match="starts from an ATP-Latent model"):
        atp_rl.train(data, None)
