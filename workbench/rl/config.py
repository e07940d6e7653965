"""``GroupPolicyConfig``: the group-policy RL settings, named as TRL's ``GRPOConfig`` names them.

ECOSYSTEM 7 lists TRL's fields; where one exists it is used with its meaning (``num_generations``,
``beta``, ``epsilon``, ``epsilon_high``, ``num_iterations``, ``temperature``, ``top_k``,
``max_completion_length``, ``loss_type``, ``scale_rewards``, ``learning_rate``). The rest are
the latent methods' own: the advantage estimator, the log-ratio clamp, per-segment weights of
the latent, stop and answer actions, and the Gaussian log-prob reduction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.config import check_choice, check_range, check_that
from workbench.rl.advantages import ADVANTAGES, SCALES
from workbench.rl.gaussian_policy import LATENT_GRADIENTS
from workbench.rl.loss import LOSS_TYPES
from workbench.rl.rewards import RewardConfig

SEGMENTS = ("latent", "stop", "answer")


@dataclass
class GroupPolicyConfig:
    """Settings of one group-policy RL run (TRL's names where TRL has the setting)."""

    num_generations: int = 8
    """Rollouts per question, G (TRL default 8; >= 2: advantages compare within a group)."""
    per_device_train_batch_size: int = 4
    """Questions per optimizer step (each sampled ``num_generations`` times)."""
    max_steps: int = 50
    """Optimizer steps (each batch of rollouts is reused ``num_iterations`` times)."""
    learning_rate: float = 1e-5
    """AdamW learning rate (ATP RL: 1e-6 on a 1B model)."""
    beta: float = 0.0
    """KL weight to a frozen reference copy (0: no reference model, ATP's and TRL's default)."""
    epsilon: float = 0.2
    """Lower clip range of the ratio."""
    epsilon_high: float | None = None
    """Upper clip range (default ``epsilon``; DAPO's clip-higher when larger)."""
    num_iterations: int = 1
    """Optimizer passes over each batch of rollouts; > 1 makes the cached old log-probs differ
    from the current ones, so the ratio moves and clipping can fire."""
    temperature: float = 1.0
    """Sampling temperature of the answer tokens (and of soft tokens' logits)."""
    top_k: int = 30
    """Top-k of sampled tokens and soft tokens (LEPO: 30)."""
    max_completion_length: int = 16
    """Answer tokens decoded per rollout (ATP: 16)."""
    loss_type: str = "grpo"
    """Aggregation of the per-action loss (``grpo``, ``dapo``, ``bnpo``, ``dr_grpo``)."""
    scale_rewards: str = "group"
    """GRPO advantage scaling: by the group's std, the batch's, or none."""
    advantage: str = "grpo"
    """``grpo`` (group-normalised) or ``rloo`` (leave-one-out, LaTRO)."""
    log_ratio_clamp: float = 3.0
    """Clamp of ``log pi - log pi_old`` before the exponential (ATP: 3)."""
    segment_weights: dict[str, float] = field(
        default_factory=lambda: {"latent": 1.0, "stop": 1.0, "answer": 1.0}
    )
    """Loss weight of each action segment (latent actions, stop decisions, answer tokens)."""
    gaussian_reduction: str = "mean"
    """Gaussian latent log-prob over dimensions: ``sum`` (ATP) or ``mean`` (pitfall 4)."""
    latent_gradient: str = "score"
    """How Gaussian latents learn: ``score`` (ATP: each latent is an action scored by its
    log-prob) or ``pathwise`` (the rollout's noise is kept and the answer and stop log-probs
    differentiate through the rebuilt latents; no latent segment)."""
    latent_noise_scale: float = 1.0
    """Multiplier of the Gaussian latents' sigma in the rollouts (exploration of the latent
    chain; the scaled distribution is the one scored). Evaluation feeds ``mu`` either way."""
    rewards: RewardConfig = field(default_factory=RewardConfig)
    """Reward functions, weights and gates."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    seed: int = 0
    """Seeds rollouts (latent noise, stop and token sampling) and data order."""

    def __post_init__(self) -> None:
        check_range(self, "num_generations", ge=2)
        check_range(self, "per_device_train_batch_size", ge=1)
        check_range(self, "max_steps", ge=0)
        check_range(self, "learning_rate", gt=0)
        check_range(self, "beta", ge=0)
        check_range(self, "epsilon", gt=0, lt=1)
        check_range(self, "epsilon_high", gt=0, allow_none=True)
        check_range(self, "num_iterations", ge=1)
        check_range(self, "temperature", gt=0)
        check_range(self, "top_k", ge=1)
        check_range(self, "max_completion_length", ge=1)
        check_choice(self, "loss_type", LOSS_TYPES)
        check_choice(self, "scale_rewards", SCALES)
        check_choice(self, "advantage", ADVANTAGES)
        check_range(self, "log_ratio_clamp", gt=0)
        check_choice(self, "gaussian_reduction", ("sum", "mean"))
        check_choice(self, "latent_gradient", LATENT_GRADIENTS)
        check_range(self, "latent_noise_scale", gt=0)
        unknown = sorted(set(self.segment_weights) - set(SEGMENTS))
        check_that(self, "segment_weights", not unknown,
                   f"keys from {list(SEGMENTS)} (unknown: {unknown})")  # fmt: skip
        check_range(self, "max_grad_norm", gt=0)
        if isinstance(self.rewards, dict):
            self.rewards = RewardConfig(**self.rewards)
