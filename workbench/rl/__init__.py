"""RL fine-tuning of latent reasoning (RESEARCH Part B sections 1-3 and 5; ECOSYSTEM 7).

The pieces every group-policy method shares, one idea per module:

* :mod:`~workbench.rl.distributions`: the latent actions (a Gaussian latent, a Gumbel soft token,
  a Bernoulli stop), each with ``log_prob`` / ``soft_ce`` / ``entropy``;
* :mod:`~workbench.rl.advantages`: group-normalised (GRPO) and leave-one-out (RLOO) advantages;
* :mod:`~workbench.rl.rewards`: the reward registry (exact answer, format, ATP's coherence by
  number tokens, LaTRO's self log-likelihood, a length penalty) and their weighted, gated sum;
* :mod:`~workbench.rl.loss`: the token-level clipped ratio objective with a clamped log-ratio;
* :mod:`~workbench.rl.config`: :class:`GroupPolicyConfig`, with TRL's ``GRPOConfig`` names.
"""
