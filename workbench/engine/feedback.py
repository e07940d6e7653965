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
* ``gaussian`` (:class:`GaussianFeedback`): ATP-Latent's conditional-VAE latent policy; an MLP
  + LayerNorm trunk with mu and log sigma^2 heads reads the hidden state, and the latent fed is
  ``mu + sigma * eps`` (``mode="sample"``) or ``mu`` (``mode="mean"``) (RESEARCH Part B 1(b)).
  It reports ``mu`` and ``logvar`` per latent in :attr:`Feedback.stats`.
* ``learned_constant`` (:class:`PauseFeedback`): pause tokens; one learned vector at every latent
  slot, whatever the hidden state. The control that tells whether the fed state carries
  information (RESEARCH Part A 7, item 3; Coconut's "pause as thought", Part A 2.3).

Inference-only ablation rules (RESEARCH Part A 7: "check by zeroing or swapping them at
inference"), used by :mod:`workbench.eval.ablations` and not registered (nothing to save):
:class:`ZeroFeedback` feeds zeros, :class:`ConstantFeedback` one given vector,
:class:`ReplayFeedback` a recorded embedding per sample and step (e.g. another example's
latents). The engine calls :meth:`FeedbackRule.reset` before a run's first latent step and then
the rule once per step ``t = 0, 1, ...``; a rule that needs ``t`` counts its own calls.

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

from workbench.config import ConfigError, check_that
from workbench.engine.rules import Rule, build_rule, check_float, check_int


@dataclass
class Feedback:
    """What a rule feeds: ``embeds`` [B, d]; top-k ``ids``/``probs`` [B, k] when it mixes tokens;
    ``stats``: per-sample tensors [B, ...] the rule wants recorded (e.g. a Gaussian's ``mu`` and
    ``logvar``), stacked per latent by the engine (``Trace.latent_stats``) and the training
    forward (``LatentForward.stats``)."""

    embeds: torch.Tensor
    ids: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] | None = None


class FeedbackRule(Rule):
    """Base class: ``forward(hidden [B,d], logits [B,V] | None, embedding [V,d], generator)``.

    Returns a :class:`Feedback`. Subclasses set ``name``, ``needs_logits`` (the engine computes
    the LM-head logits only for rules that read them) and ``stochastic``.
    """

    name = "base"
    needs_logits = False
    stochastic = False

    def reset(self, batch_size: int, device) -> None:
        """Called by the engine before a run's first latent step; stateless rules ignore it."""

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


GAUSSIAN_MODES = ("sample", "mean")


class GaussianFeedback(FeedbackRule):
    """ATP-Latent's latent policy ``q(l_t | question, l_<t) = N(mu, diag sigma^2)``.

    ``trunk = Linear(d,d) -> GELU -> Linear(d,d) -> LayerNorm(d)`` reads the hidden state before
    the latent slot; ``mu = Linear(d,d)(trunk)``, ``logvar = Linear(d,d)(trunk)`` (ATP's
    ``LatentPolicy``, RESEARCH Part B 1(b)). ``mode="sample"`` feeds the reparameterised
    ``mu + exp(logvar / 2) * eps`` (``eps`` from the engine's ``generator``; differentiable in
    ``mu`` and ``logvar``), ``mode="mean"`` feeds ``mu`` (the deterministic mode; ATP samples at
    evaluation too, pitfall 3). The log-variance head's bias starts at ``init_logvar``.

    Deviation: ATP's heads start at PyTorch's default init (sigma about 1 against a unit-scale
    mu); ``init_logvar = -4`` (sigma 0.14) lets the decoder read the latents from the first
    step, and the KL term still pulls sigma towards 1. ``init_logvar = 0`` is ATP's scale.
    """

    name = "gaussian"

    def __init__(self, d_model: int, mode: str = "sample", init_logvar: float = -4.0):
        super().__init__()
        self.d_model, self.mode, self.init_logvar = d_model, mode, init_logvar
        check_int(self, "d_model", ge=1)
        check_that(self, "mode", mode in GAUSSIAN_MODES, f"one of {list(GAUSSIAN_MODES)}")
        check_float(self, "init_logvar", ge=-20.0, le=5.0)
        d = self.d_model
        self.trunk = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.LayerNorm(d))
        self.mu = nn.Linear(d, d)
        self.logvar = nn.Linear(d, d)
        with torch.no_grad():
            self.logvar.weight.mul_(0.1)
            self.logvar.bias.fill_(self.init_logvar)

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.mode == "sample"

    def distribution(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` [..., d] of the latent after ``hidden`` (with gradients)."""
        x = self.trunk(hidden.to(self.mu.weight.dtype))
        return self.mu(x), self.logvar(x)

    def forward(self, hidden, logits, embedding, generator=None) -> Feedback:
        mu, logvar = self.distribution(hidden)
        z = mu
        if self.mode == "sample":
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * eps
        return Feedback(z, stats={"mu": mu, "logvar": logvar})

    def with_mode(self, mode: str) -> GaussianFeedback:
        """The same heads (shared parameters, not copies) in another ``mode``."""
        other = GaussianFeedback(self.d_model, mode, self.init_logvar)
        other.trunk, other.mu, other.logvar = self.trunk, self.mu, self.logvar
        return other

    def config(self) -> dict:
        return {"d_model": self.d_model, "mode": self.mode, "init_logvar": self.init_logvar}

    def describe(self) -> str:
        return f"gaussian({self.mode})"


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, I))`` per dimension, ``(mu^2 + sigma^2 - 1 - log sigma^2)/2``
    (fp32); sum over the last axis for the per-latent KL."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


class PauseFeedback(FeedbackRule):
    """Pause tokens: one learned vector ``[d_model]`` fed at every latent slot.

    Ignores the hidden state, so a model trained with it under Coconut's curriculum gets the
    extra positions but no information through them (RESEARCH Part A 7: a third-party "pause as
    thought" came within 0.4 points of Coconut on ProsQA; Part A 2.3). The vector starts as
    ``init_std * N(0, 1)`` drawn from its own generator seeded with ``seed`` (``init_std = 0``:
    zeros), so the init is deterministic and leaves the global RNG alone; it trains with the
    model and saves in ``spec.safetensors`` as ``feedback.vector``.
    """

    name = "learned_constant"

    def __init__(self, d_model: int, init_std: float = 0.02, seed: int = 0):
        super().__init__()
        self.d_model, self.init_std, self.seed = d_model, init_std, seed
        check_int(self, "d_model", ge=1)
        check_float(self, "init_std", ge=0.0)
        check_int(self, "seed", ge=0)
        g = torch.Generator().manual_seed(self.seed)
        self.vector = nn.Parameter(torch.randn(self.d_model, generator=g) * self.init_std)

    def forward(self, hidden, logits, embedding, generator=None) -> Feedback:
        return Feedback(self.vector.to(hidden.device).expand(hidden.shape[0], -1))

    def config(self) -> dict:
        return {"d_model": self.d_model, "init_std": self.init_std, "seed": self.seed}

    def describe(self) -> str:
        return "pause-vector"


# ----- inference-only ablations (not registered: they hold nothing worth saving) -------------


class ZeroFeedback(FeedbackRule):
    """Ablation: feed zeros at every latent slot (RESEARCH Part A 7, "zeroing")."""

    name = "zero"

    def forward(self, hidden, logits, embedding, generator=None) -> Feedback:
        return Feedback(torch.zeros_like(hidden))


def _unsaveable(rule: FeedbackRule) -> ConfigError:
    return ConfigError(
        f"{type(rule).__name__} holds tensors of one run: it is an inference-only ablation "
        "and cannot be saved in a spec"
    )


class ConstantFeedback(FeedbackRule):
    """Ablation: feed one given vector ``[d]`` at every latent slot (e.g. the ``<latent>``
    token's input embedding). Holds a tensor, so it has no :meth:`config`."""

    name = "constant"

    def __init__(self, vector: torch.Tensor):
        super().__init__()
        self.vector = vector
        ok = isinstance(vector, torch.Tensor) and vector.ndim == 1
        check_that(self, "vector", ok, "a tensor [d]")
        self.vector = vector.detach()

    def forward(self, hidden, logits, embedding, generator=None) -> Feedback:
        v = self.vector.to(device=hidden.device, dtype=hidden.dtype)
        return Feedback(v.expand(hidden.shape[0], -1))

    def config(self) -> dict:
        raise _unsaveable(self)


class ReplayFeedback(FeedbackRule):
    """Ablation: at step ``t`` feed row ``b`` the recorded embedding ``embeds[b, t]``.

    ``embeds`` is ``[B, S, d]`` in the batch's row order, e.g. a run's ``trace.embeds`` (itself:
    the run is reproduced exactly; rolled by one along the batch: every example gets another
    example's latents). The step is the number of calls since :meth:`reset`, which the engine
    calls before each run. Holds a tensor, so it has no :meth:`config`.
    """

    name = "replay"

    def __init__(self, embeds: torch.Tensor):
        super().__init__()
        self.embeds = embeds
        ok = isinstance(embeds, torch.Tensor) and embeds.ndim == 3
        check_that(self, "embeds", ok, "a tensor [B, S, d]")
        self.embeds = embeds.detach()
        self.t = 0

    def reset(self, batch_size: int, device) -> None:
        if batch_size != self.embeds.shape[0]:
            raise ValueError(
                f"ReplayFeedback holds embeddings of {self.embeds.shape[0]} samples, the run has "
                f"{batch_size}"
            )
        self.t = 0

    def forward(self, hidden, logits, embedding, generator=None) -> Feedback:
        B, S, _ = self.embeds.shape
        if hidden.shape[0] != B:
            raise ValueError(f"ReplayFeedback holds {B} samples, got a batch of {hidden.shape[0]}")
        if self.t >= S:
            raise ValueError(
                f"ReplayFeedback holds {S} steps; the run asked for step {self.t} "
                "(give it a stop rule with no more latents than were recorded)"
            )
        e = self.embeds[:, self.t].to(device=hidden.device, dtype=hidden.dtype)
        self.t += 1
        return Feedback(e)

    def config(self) -> dict:
        raise _unsaveable(self)


FEEDBACK_RULES: dict[str, type[FeedbackRule]] = {
    cls.name: cls
    for cls in (
        HiddenFeedback,
        ProjectedFeedback,
        SuperpositionFeedback,
        GumbelFeedback,
        GaussianFeedback,
        PauseFeedback,
    )
}
"""Feedback rules by ``name``: ``FEEDBACK_RULES[r.name].from_config(r.config())`` rebuilds ``r``."""


def make_feedback(name: str, **config) -> FeedbackRule:
    """Build a registered rule by name from its config (``projected``, ``gaussian`` and
    ``learned_constant`` need ``d_model``).

    Unknown names, unknown or missing keys and values out of range are a
    :class:`~workbench.config.ConfigError` naming them.
    """
    return build_rule(FEEDBACK_RULES, "feedback", name, config)
