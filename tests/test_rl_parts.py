"""The RL building blocks: action distributions, advantages, the clipped loss, rewards, config."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.config import ConfigError
from workbench.rl.advantages import group_advantages
from workbench.rl.config import GroupPolicyConfig
from workbench.rl.distributions import BernoulliStop, GaussianLatent, GumbelSoftToken
from workbench.rl.loss import clipped_policy_loss
from workbench.rl.rewards import (
    RewardConfig,
    RewardError,
    coherence_score,
    compute_rewards,
    numbers,
    step_result,
)

G = torch.Generator().manual_seed(0)


def test_gaussian_latent_matches_torch_distributions():
    mu, logvar = torch.randn(4, 6, generator=G), torch.randn(4, 6, generator=G)
    ref = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    z = torch.randn(4, 6, generator=G)
    d = GaussianLatent(mu, logvar)
    assert torch.allclose(d.log_prob(z), ref.log_prob(z).sum(-1), atol=1e-5)
    assert torch.allclose(d.entropy(), ref.entropy().sum(-1), atol=1e-5)
    mean = GaussianLatent(mu, logvar, reduction="mean")
    assert torch.allclose(mean.log_prob(z), ref.log_prob(z).mean(-1), atol=1e-5)
    # cross-entropy H(p, q) = H(p) + KL(p || q)
    mu2, lv2 = torch.randn(4, 6, generator=G), torch.randn(4, 6, generator=G)
    p = torch.distributions.Normal(mu2, (0.5 * lv2).exp())
    want = (p.entropy() + torch.distributions.kl_divergence(p, ref)).sum(-1)
    assert torch.allclose(d.soft_ce(mu2, lv2), want, atol=1e-4)


def test_gumbel_soft_token_scores_the_filtered_distribution_it_samples():
    logits = torch.randn(3, 50, generator=G)
    d = GumbelSoftToken(logits, top_k=5, temperature=0.7, tau=0.5)
    vals, ids = (logits / 0.7).topk(5, -1)
    filtered = torch.distributions.Categorical(logits=vals)
    assert torch.allclose(d.entropy(), filtered.entropy(), atol=1e-5)
    assert torch.allclose(d.log_prob(ids[:, 2]), filtered.log_prob(torch.full((3,), 2)), atol=1e-5)
    outside = (logits / 0.7).argmin(-1)
    assert torch.isinf(d.log_prob(outside)).all()  # not in the support it samples from
    sid, probs = d.sample(torch.Generator().manual_seed(1))
    assert torch.equal(sid, ids) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(-1), torch.ones(3))
    want = -(probs * filtered.logits).sum(-1)  # Categorical normalises its logits
    assert torch.allclose(d.soft_ce(sid, probs), want, atol=1e-5)
    one_hot = torch.nn.functional.one_hot(torch.full((3,), 1), 5).float()
    assert torch.allclose(d.soft_ce(sid, one_hot), -d.log_prob(ids[:, 1]), atol=1e-5)


def test_bernoulli_stop_matches_torch_distributions():
    logits = torch.randn(7, 2, generator=G)
    d = BernoulliStop(logits)
    ref = torch.distributions.Bernoulli(probs=torch.softmax(logits, -1)[:, 1])
    a = torch.tensor([1, 0, 1, 1, 0, 0, 1]).bool()
    assert torch.allclose(d.log_prob(a), ref.log_prob(a.float()), atol=1e-5)
    assert torch.allclose(d.entropy(), ref.entropy(), atol=1e-5)
    assert torch.allclose(d.soft_ce(a.float()), -ref.log_prob(a.float()), atol=1e-5)


def test_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    rloo = group_advantages(r, 4, kind="rloo")
    assert torch.allclose(rloo.view(2, 4).sum(1), torch.zeros(2), atol=1e-6)
    assert rloo[0] == pytest.approx(1.0 - 1 / 3)  # r_0 minus the mean of the other three
    grpo = group_advantages(r, 4)
    assert torch.equal(grpo[4:], torch.zeros(4)) and not torch.isnan(grpo).any()
    g0 = r[:4]
    assert torch.allclose(grpo[:4], (g0 - g0.mean()) / (g0.std() + 1e-4))
    assert torch.equal(group_advantages(torch.ones(6), 3, kind="rloo"), torch.zeros(6))
    with pytest.raises(ValueError, match="num_generations"):
        group_advantages(r, 3)


def test_clipped_loss_moves_only_off_policy():
    torch.manual_seed(0)
    logp = torch.randn(4, 5, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    mask = torch.ones(4, 5)
    loss, stats = clipped_policy_loss(logp, logp.detach(), adv, mask)
    assert stats["clip_ratio/region_mean"] == 0.0 and stats["ratio_mean"] == pytest.approx(1.0)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)  # ratio 1: -mean(A)
    moved = logp.detach() + torch.randn(4, 5) * 0.5  # the policy after an update
    _, stats = clipped_policy_loss(moved, logp.detach(), adv, mask)
    assert stats["clip_ratio/region_mean"] > 0
    # the clamp bounds the ratio even for a wild log-ratio
    _, stats = clipped_policy_loss(logp.detach() + 50, logp.detach(), adv, mask)
    assert stats["ratio_mean"] == pytest.approx(math.exp(3.0), rel=1e-5)


def test_coherence_by_number_tokens():
    assert numbers("<<4*2=14>>") == {"4", "2", "14"} and "4" in numbers("4")
    assert step_result("<<8+8=16>>") == "16" and step_result("no result") is None
    chain = ["<<8+8=16>>", "<<16-7=9>>", "<<9*2=18>>"]
    assert coherence_score(chain, "18") == 1.0
    assert coherence_score(chain, "19") == pytest.approx(2 / 3)  # the last result is not the answer
    assert coherence_score(["<<2+2=4>>", "<<14-1=13>>"], "13") == 0.5  # "4" is not inside "14"
    assert coherence_score(["garbled", "<<3+3=6>>"], "6") == 0.5  # no result, no credit
    assert coherence_score([], "6") == 0.0


def test_composed_and_gated_rewards():
    cfg = RewardConfig(weights={"accuracy": 1.0, "format": 0.5, "coherence": 0.1},
                       gates={"coherence": "accuracy"})  # fmt: skip
    total, parts = compute_rewards(
        cfg,
        ["18", "19"],
        answers=["18", "18"],
        finished=[True, True],
        step_texts=[["<<9*2=18>>"], ["<<9*2=19>>"]],
    )
    assert parts["accuracy"].tolist() == [1.0, 0.0] and parts["coherence"].tolist() == [1.0, 1.0]
    assert total.tolist() == pytest.approx([1.6, 0.5])  # wrong answers get no coherence credit


def test_a_broken_reward_names_itself_and_the_example(monkeypatch):
    from workbench.rl import rewards

    def bad(completions, **_):
        return [float("nan") if c == "x" else 1.0 for c in completions]

    def boom(completions, **_):
        if "x" in completions:
            raise KeyError("no gold")
        return [0.0] * len(completions)

    monkeypatch.setitem(rewards.REWARDS, "bad", bad)
    monkeypatch.setitem(rewards.REWARDS, "boom", boom)
    with pytest.raises(RewardError, match=r"reward 'bad' returned nan on example 1"):
        compute_rewards(RewardConfig(weights={"bad": 1.0}), ["a", "x"])
    with pytest.raises(RewardError, match=r"reward 'boom' raised KeyError.*on example 2"):
        compute_rewards(RewardConfig(weights={"boom": 1.0}), ["a", "b", "x"])


def test_config_uses_trl_names_and_checks_them():
    cfg = GroupPolicyConfig(rewards={"weights": {"accuracy": 1.0}})
    assert isinstance(cfg.rewards, RewardConfig) and cfg.num_generations == 8
    for bad, field in [
        ({"num_generations": 1}, "num_generations"),
        ({"loss_type": "ppo"}, "loss_type"),
        ({"segment_weights": {"latnt": 1.0}}, "segment_weights"),
        ({"rewards": {"weights": {"acc": 1.0}}}, "weights"),
    ]:
        with pytest.raises(ConfigError, match=field):
            GroupPolicyConfig(**bad)


def test_rl_diagnostics():
    import pandas as pd

    from workbench.rl.diagnostics import distinct_per_group, reward_curves, rl_curves

    class Ro:  # two groups of 3: the first all alike, the second with one different latent
        latents = torch.zeros(6, 2, 4)
        answer = torch.zeros(6, 3, dtype=torch.long)

    Ro.latents[5, 1, 0] = 0.5
    assert distinct_per_group(Ro, 3)["distinct"].tolist() == [1, 2]
    h = pd.DataFrame(
        {
            "step": [1, 2],
            "reward": [0.1, 0.3],
            "reward_std": [0.05, 0.0],
            "clip_ratio/region_mean": [0.0, 0.2],
        }
    )
    fig = reward_curves({"run": h})
    assert list(fig.data[0].y) == [0.1, 0.3] and len(fig.data) == 2  # the mean and its band
    assert [t.name for t in rl_curves({"run": h}).data] == ["run: clip_ratio/region_mean"]
