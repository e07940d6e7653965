"""Feedback rules: how a latent position's input embedding is made.

Every latent method differs mainly here (RESEARCH Part A section 6, "LatentLoop"):

* ``hidden``: Coconut; the last hidden state after the final norm is fed back as is
  (RESEARCH 2.1 "Continuous thought").
* ``projected``: CODI; Dropout -> Linear(d, p) -> GELU -> Linear(p, d) -> LayerNorm applied to
  that hidden state (RESEARCH 3, "Student"). Its parameters train with the model.
* ``superposition``: Latent-SFT / Soft Thinking; ``p = softmax(topk(logits) / tau)`` renormalised
  within the top-k, embedded as ``p @ E`` with ``E`` the input embedding matrix (RESEARCH 1.1).
* ``gumbel``: LEPO / Latent-SFT's perturbed teachers; Gumbel noise on the top-k logits before the
  softmax at temperature ``tau_g`` (RESEARCH Part B 2(b), Part A 1.3). Probabilities stay fp32
  (LEPO casts them to bf16: RESEARCH Part B 2(d).5).

A rule is an ``nn.Module`` taking the hidden state and logits of the position before the latent
slot and returning the embedding plus, for vocabulary rules, the top-k weights actually fed.
Adding a rule is one small class registered in :data:`FEEDBACK_RULES`.

Deviation: the superposition logits always come from the LM head here (stage-2/inference
source). Latent-SFT stage 1 projects the encoder state on ``E`` instead; that method computes
its own logits and reuses :func:`superpose`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Feedback:
    """What a rule feeds: ``embeds`` [B, d]; top-k ``ids``/``probs`` [B, k] when it mixes tokens."""

    embeds: torch.Tensor
    ids: torch.Tensor | None = None
    probs: torch.Tensor | None = None


class FeedbackRule(nn.Module):
    """Base class: ``forward(hidden [B,d], logits [B,V] | None, embedding [V,d], generator) -> Feedback``."""

    name = "base"
    needs_logits = False
    stochastic = False

    def forward(self, hidden, logits, embedding, generator=None) -> Feedback:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:
        """Short human-readable description for tables and traces."""
        return self.name


def superpose(
    logits: torch.Tensor,
    embedding: torch.Tensor,
    top_k: int,
    temperature: float = 1.0,
    noise: torch.Tensor | None = None,
    gumbel_tau: float = 1.0,
) -> Feedback:
    """Top-k superposition ``softmax(topk(logits)/T [+ noise] / tau_g) @ E`` in fp32."""
    k = min(top_k, logits.shape[-1])
    vals, ids = logits.float().topk(k, dim=-1)
    scores = vals / temperature
    if noise is not None:
        scores = (scores + noise) / gumbel_tau
    probs = torch.softmax(scores, dim=-1)
    embeds = torch.einsum("bk,bkd->bd", probs.to(embedding.dtype), embedding[ids])
    return Feedback(embeds, ids, probs)


class HiddenFeedback(FeedbackRule):
    """Coconut: feed the last hidden state back unchanged."""

    name = "hidden"

    def forward(self, hidden, logits, embedding, generator=None) -> Feedback:
        return Feedback(hidden)


class ProjectedFeedback(FeedbackRule):
    """CODI: an MLP + LayerNorm maps the hidden state into the embedding space."""

    name = "projected"

    def __init__(self, d_model: int, proj_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        p = proj_dim or d_model
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(d_model, p),
            nn.GELU(),
            nn.Linear(p, d_model),
            nn.LayerNorm(d_model),
        )

    def forward(self, hidden, logits, embedding, generator=None) -> Feedback:
        return Feedback(self.net(hidden))


class SuperpositionFeedback(FeedbackRule):
    """Latent-SFT / Soft Thinking: top-k softmax of the LM-head logits at temperature tau, as ``p @ E``."""

    name = "superposition"
    needs_logits = True

    def __init__(self, top_k: int = 10, temperature: float = 1.0):
        super().__init__()
        if top_k < 1 or temperature <= 0:
            raise ValueError(
                f"superposition needs top_k >= 1 and temperature > 0, got {top_k}, {temperature}"
            )
        self.top_k, self.temperature = top_k, temperature

    def forward(self, hidden, logits, embedding, generator=None) -> Feedback:
        return superpose(logits, embedding, self.top_k, self.temperature)

    def describe(self) -> str:
        return f"superposition(k={self.top_k}, tau={self.temperature})"


def gumbel_noise(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard Gumbel(0, 1) samples in fp32, reproducible through ``generator``."""
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    neg_log_u = (-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20)
    return -torch.log(neg_log_u)


class GumbelFeedback(FeedbackRule):
    """LEPO: Gumbel-softmax superposition ``softmax((topk(l)/T + s*g) / tau_g) @ E`` for stochastic rollouts."""

    name = "gumbel"
    needs_logits = True
    stochastic = True

    def __init__(
        self,
        top_k: int = 30,
        temperature: float = 1.0,
        gumbel_tau: float = 0.5,
        noise_scale: float = 1.0,
    ):
        super().__init__()
        if top_k < 1 or temperature <= 0 or gumbel_tau <= 0:
            raise ValueError(
                f"gumbel needs top_k >= 1, temperature > 0, gumbel_tau > 0; got "
                f"{top_k}, {temperature}, {gumbel_tau}"
            )
        self.top_k, self.temperature, self.gumbel_tau, self.noise_scale = (
            top_k,
            temperature,
            gumbel_tau,
            noise_scale,
        )

    def forward(self, hidden, logits, embedding, generator=None) -> Feedback:
        k = min(self.top_k, logits.shape[-1])
        g = gumbel_noise((logits.shape[0], k), generator, logits.device) * self.noise_scale
        return superpose(
            logits, embedding, k, self.temperature, noise=g, gumbel_tau=self.gumbel_tau
        )

    def describe(self) -> str:
        return f"gumbel(k={self.top_k}, tau_g={self.gumbel_tau})"


FEEDBACK_RULES: dict[str, type[FeedbackRule]] = {
    "hidden": HiddenFeedback,
    "projected": ProjectedFeedback,
    "superposition": SuperpositionFeedback,
    "gumbel": GumbelFeedback,
}


def make_feedback(name: str, **kwargs) -> FeedbackRule:
    """Build a registered rule by name (``projected`` needs ``d_model``)."""
    if name not in FEEDBACK_RULES:
        raise ValueError(f"unknown feedback rule {name!r}; choose one of {sorted(FEEDBACK_RULES)}")
    return FEEDBACK_RULES[name](**kwargs)
