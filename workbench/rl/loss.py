"""The clipped-ratio policy objective, per action, with an explicit old-policy log-prob.

``rho = exp(clamp(log pi - log pi_old, -c, c))`` (ATP clamps at 3: RESEARCH Part B 1(b));
per action ``-min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)``, masked and aggregated
by ``loss_type`` (TRL's names: ``grpo`` averages each sequence then the batch, ``dapo`` and
``bnpo`` average over every action of the batch, ``dr_grpo`` divides by ``B * max_len``).

``old_logp`` is whatever the trainer cached when the batch was sampled: with
``num_iterations > 1`` the policy has moved by the second pass, the ratio leaves 1 and clipping
fires (LEPO's code silently runs with ``pi_old = pi.detach()``, so ``rho = 1``: pitfall 1).
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "dapo", "bnpo", "dr_grpo")


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    log_ratio_clamp: float = 3.0,
    loss_type: str = "grpo",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss and stats of actions ``[B, T]`` (advantages ``[B]``, broadcast over ``T``)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type = {loss_type!r}: expected one of {list(LOSS_TYPES)}")
    m = mask.float()
    log_ratio = (logp - old_logp.detach()).clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = log_ratio.exp()
    a = advantages.float()[:, None]
    hi = 1 + (epsilon if epsilon_high is None else epsilon_high)
    clipped = ratio.clamp(1 - epsilon, hi)
    per = -torch.minimum(ratio * a, clipped * a)
    if loss_type == "grpo":
        loss = ((per * m).sum(1) / m.sum(1).clamp(min=1)).mean()
    elif loss_type in ("dapo", "bnpo"):
        loss = (per * m).sum() / m.sum().clamp(min=1)
    else:
        loss = (per * m).sum() / (m.shape[0] * max(m.shape[1], 1))
    n = m.sum().clamp(min=1)
    low = ((ratio < 1 - epsilon) & (a < 0)).float()
    high = ((ratio > hi) & (a > 0)).float()
    stats = {
        "clip_ratio/low_mean": float((low * m).sum() / n),
        "clip_ratio/high_mean": float((high * m).sum() / n),
        "clip_ratio/region_mean": float(((low + high) * m).sum() / n),
        "ratio_mean": float((ratio.detach() * m).sum() / n),
    }
    return loss, stats
