"""Advantages of a group of ``G`` rollouts of one question.

* ``grpo``: ``(r_i - mean_G r) / (std_G r + eps)`` (GRPO; TRL ``scale_rewards="group"``;
  ``"batch"`` divides by the std over the whole batch, ``"none"`` does not divide);
* ``rloo``: ``r_i - mean_{j != i} r_j`` (RLOO, LaTRO's estimator: RESEARCH Part B 3), which sums
  to zero over each group by construction.

A group whose rewards are all equal carries no signal: its advantages are exactly 0 (never NaN).
"""

from __future__ import annotations

import torch

ADVANTAGES = ("grpo", "rloo")
SCALES = ("group", "batch", "none")


def group_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    kind: str = "grpo",
    scale_rewards: str = "group",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Advantages ``[B * G]`` of rewards ``[B * G]`` laid out group by group."""
    if kind not in ADVANTAGES:
        raise ValueError(f"kind = {kind!r}: expected one of {list(ADVANTAGES)}")
    if scale_rewards not in SCALES:
        raise ValueError(f"scale_rewards = {scale_rewards!r}: expected one of {list(SCALES)}")
    G = num_generations
    r = rewards.float()
    if G < 2 or r.numel() % G:
        raise ValueError(
            f"num_generations = {G}: expected >= 2 and dividing the {r.numel()} rewards"
        )
    grouped = r.view(-1, G)
    mean = grouped.mean(1, keepdim=True)
    if kind == "rloo":
        return ((grouped - mean) * G / (G - 1)).reshape(-1)
    centred = grouped - mean
    if scale_rewards == "group":
        std = grouped.std(1, keepdim=True)
    elif scale_rewards == "batch":
        std = r.std().expand_as(mean)
    else:
        return centred.reshape(-1)
    return torch.where(centred == 0, torch.zeros_like(centred), centred / (std + eps)).reshape(-1)
