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
It describes itself (:class:`~workbench.engine.rules.Rule`): a registry ``name`` and a JSON
:meth:`~workbench.engine.rules.Rule.config` that rebuilds it; its weights, if any, are its
``state_dict``. Settings out of range are a :class:`~workbench.config.ConfigError` naming the
field. Adding a rule is one small class registered in :data:`FEEDBACK_RULES`.

Deviation: the superposition logits always come from the LM head here (stage-2/inference
source). Latent-SFT stage 1 projects the encoder state on ``E`` instead; that method computes
its own logits and reuses :func:`superpose`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from workbench.engine.rules import Rule, build_rule, check_float, check_int


@dataclass
class Feedback:
    """What a rule feeds: ``embeds`` [B, d]; top-k ``ids``/``probs`` [B, k] when it mixes tokens."""

    embeds: torch.Tensor
    ids: torch.Tensor | None = None
    probs: torch.Tensor | None = None


class FeedbackRule(Rule):
    """Base class: ``forward(hidden [B,d], logits [B,V] | None, embedding [V,d], generator)``.

    Returns a :class:`Feedback`. Subclasses set ``name``, ``needs_logits`` (the engine computes
    the LM-head logits only for rules that read them) and ``stochastic``.
    """

    name = "base"
    needs_logits = False
    stochastic = False

    def forward(self, hidden, logits, embedding, generator=None) -> Feedback:  # pragma: no cover
        raise NotImplementedError


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
        self.d_model, self.proj_dim, self.dropout = d_model, proj_dim, dropout
        check_int(self, "d_model", ge=1)
        if proj_dim is not None:
            check_int(self, "proj_dim", ge=1)
        check_float(self, "dropout", ge=0.0, lt=1.0)
        p = self.proj_dim or self.d_model
        self.net = nn.Sequential(
            nn.Dropout(self.dropout),
            nn.Linear(self.d_model, p),
            nn.GELU(),
            nn.Linear(p, self.d_model),
            nn.LayerNorm(self.d_model),
        )

    def forward(self, hidden, logits, embedding, generator=None) -> Feedback:
        return Feedback(self.net(hidden))

    def config(self) -> dict:
        return {"d_model": self.d_model, "proj_dim": self.proj_dim, "dropout": self.dropout}


class SuperpositionFeedback(FeedbackRule):
    """Latent-SFT / Soft Thinking: top-k softmax of the LM-head logits at temperature tau.

    Fed as ``p @ E``.
    """

    name = "superposition"
    needs_logits = True

    def __init__(self, top_k: int = 10, temperature: float = 1.0):
        super().__init__()
        self.top_k, self.temperature = top_k, temperature
        check_int(self, "top_k", ge=1)
        check_float(self, "temperature", gt=0.0)

    def forward(self, hidden, logits, embedding, generator=None) -> Feedback:
        return superpose(logits, embedding, self.top_k, self.temperature)

    def config(self) -> dict:
        return {"top_k": self.top_k, "temperature": self.temperature}

    def describe(self) -> str:
        return f"superposition(k={self.top_k}, tau={self.temperature})"


def gumbel_noise(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard Gumbel(0, 1) samples in fp32, reproducible through ``generator``."""
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    neg_log_u = (-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20)
    return -torch.log(neg_log_u)


class GumbelFeedback(FeedbackRule):
    """LEPO: Gumbel-softmax superposition ``softmax((topk(l)/T + s*g) / tau_g) @ E``.

    For stochastic rollouts; the noise comes from the engine's ``generator``.
    """

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
        self.top_k, self.temperature, self.gumbel_tau, self.noise_scale = (
            top_k,
            temperature,
            gumbel_tau,
            noise_scale,
        )
        check_int(self, "top_k", ge=1)
        check_float(self, "temperature", gt=0.0)
        check_float(self, "gumbel_tau", gt=0.0)
        check_float(self, "noise_scale", ge=0.0)

    def forward(self, hidden, logits, embedding, generator=None) -> Feedback:
        k = min(self.top_k, logits.shape[-1])
        g = gumbel_noise((logits.shape[0], k), generator, logits.device) * self.noise_scale
        return superpose(
            logits, embedding, k, self.temperature, noise=g, gumbel_tau=self.gumbel_tau
        )

    def config(self) -> dict:
        return {
            "top_k": self.top_k,
            "temperature": self.temperature,
            "gumbel_tau": self.gumbel_tau,
            "noise_scale": self.noise_scale,
        }

    def describe(self) -> str:
        return f"gumbel(k={self.top_k}, tau_g={self.gumbel_tau})"


FEEDBACK_RULES: dict[str, type[FeedbackRule]] = {
    cls.name: cls
    for cls in (HiddenFeedback, ProjectedFeedback, SuperpositionFeedback, GumbelFeedback)
}
"""Feedback rules by ``name``: ``FEEDBACK_RULES[r.name].from_config(r.config())`` rebuilds ``r``."""


def make_feedback(name: str, **config) -> FeedbackRule:
    """Build a registered rule by name from its config (``projected`` needs ``d_model``).

    Unknown names, unknown or missing keys and values out of range are a
    :class:`~workbench.config.ConfigError` naming them.
    """
    return build_rule(FEEDBACK_RULES, "feedback", name, config)
