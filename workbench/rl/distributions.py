"""The action distributions of latent rollouts, each scoring what the rollout sampled.

* :class:`GaussianLatent`: ATP-Latent's ``l_t ~ N(mu, diag sigma^2)`` (RESEARCH Part B 1(b)).
  ``log_prob`` sums the dimensions (ATP) or averages them (``reduction="mean"``, the guard
  against ATP's noisy 2048-dimension ratio, pitfall 4). ``soft_ce`` is the cross-entropy
  ``-E_target[log q]`` to a target Gaussian (closed form).
* :class:`GumbelSoftToken`: LEPO's soft token ``softmax((s + g) / tau_g)`` over the top-k of the
  temperature-scaled logits ``s`` (RESEARCH Part B 2(b)). ``soft_ce(ids, probs) = -sum_k p_k
  log pi(k)`` scores the **same filtered distribution** the rollout sampled from, its support
  the stored top-k (LEPO scores the raw full-vocabulary logits instead: pitfall 3);
  probabilities stay fp32 (pitfall 5).
* :class:`BernoulliStop`: the stop decision from a stop head's ``[continue, stop]`` logits.

Every method returns one value per leading position (the action axis is reduced).
"""

from __future__ import annotations

import math

import torch

from workbench.engine.feedback import gumbel_noise

LOG_2PI = math.log(2 * math.pi)


class GaussianLatent:
    """Diagonal Gaussian over ``[..., d]`` latents with mean ``mu`` and log-variance ``logvar``."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "sum"):
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction = {reduction!r}: expected 'sum' or 'mean'")
        self.mu, self.logvar, self.reduction = mu.float(), logvar.float(), reduction

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(-1) if self.reduction == "sum" else x.mean(-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.mu.shape, generator=generator, device=self.mu.device)
        return self.mu + torch.exp(0.5 * self.logvar) * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        per_dim = -0.5 * ((z - self.mu) ** 2 * torch.exp(-self.logvar) + self.logvar + LOG_2PI)
        return self._reduce(per_dim)

    def entropy(self) -> torch.Tensor:
        return self._reduce(0.5 * (1.0 + LOG_2PI + self.logvar))

    def soft_ce(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Cross-entropy ``-E_{N(mu, e^logvar)}[log q]`` of a target Gaussian under this one."""
        mu, logvar = mu.float(), logvar.float()
        per_dim = 0.5 * (
            LOG_2PI + self.logvar + (logvar.exp() + (mu - self.mu) ** 2) * torch.exp(-self.logvar)
        )
        return self._reduce(per_dim)


class GumbelSoftToken:
    """Soft tokens over the top-``k`` of ``logits / temperature`` (``[..., V]``)."""

    def __init__(
        self, logits: torch.Tensor, top_k: int = 30, temperature: float = 1.0, tau: float = 0.5
    ):
        if top_k < 1 or temperature <= 0 or tau <= 0:
            raise ValueError(
                f"top_k = {top_k}, temperature = {temperature}, tau = {tau}: expected "
                "top_k >= 1 and temperature, tau > 0"
            )
        k = min(top_k, logits.shape[-1])
        scores = logits.float() / temperature
        vals, self.ids = scores.topk(k, dim=-1)
        self.scores = scores
        self.log_pi = torch.log_softmax(vals, -1)  # the filtered policy over its top-k support
        self.vals, self.tau = vals, tau

    def sample(self, generator: torch.Generator | None = None):
        """``(ids [..., k], probs [..., k])`` of one Gumbel-softmax draw (fp32)."""
        g = gumbel_noise(self.vals.shape, generator, self.vals.device)
        return self.ids, torch.softmax((self.vals + g) / self.tau, -1)

    def _log_pi_of(self, ids: torch.Tensor) -> torch.Tensor:
        """``log pi(ids)`` under the filtered policy (``-inf`` outside the top-k)."""
        full = torch.full_like(self.scores, -math.inf).scatter(-1, self.ids, self.log_pi)
        return full.gather(-1, ids)

    def log_prob(self, token: torch.Tensor) -> torch.Tensor:
        """Log-probability of a discrete token id ``[...]`` under the filtered policy."""
        return self._log_pi_of(token[..., None]).squeeze(-1)

    def soft_ce(self, ids: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """``-sum_k p_k log pi(ids_k)`` for the soft token ``(ids, probs)`` a rollout stored.

        ``pi`` is this policy's tempered softmax renormalised on the stored support ``ids``:
        with the policy that drew the token it is exactly the filtered top-k distribution the
        rollout sampled from; after an update moved the top-k it stays finite (a token outside
        the new top-k would otherwise score ``-inf``).
        """
        lp = torch.log_softmax(self.scores.gather(-1, ids), -1)
        return -(probs.float() * lp).sum(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.log_pi.exp() * self.log_pi).sum(-1)


class BernoulliStop:
    """The stop action from ``[..., 2]`` logits ``(continue, stop)``."""

    def __init__(self, logits: torch.Tensor):
        self.log_p = torch.log_softmax(logits.float(), -1)

    @property
    def p_stop(self) -> torch.Tensor:
        return self.log_p[..., 1].exp()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(self.p_stop.shape, generator=generator, device=self.log_p.device)
        return u < self.p_stop

    def log_prob(self, stop: torch.Tensor) -> torch.Tensor:
        return torch.where(stop.bool(), self.log_p[..., 1], self.log_p[..., 0])

    def soft_ce(self, p_stop: torch.Tensor) -> torch.Tensor:
        """``-(p log q_stop + (1 - p) log q_continue)`` against a target stop probability."""
        p = p_stop.float()
        return -(p * self.log_p[..., 1] + (1 - p) * self.log_p[..., 0])

    def entropy(self) -> torch.Tensor:
        return -(self.log_p.exp() * self.log_p).sum(-1)
