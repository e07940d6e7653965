"""Stop rules: when a sample's latent phase ends.

RESEARCH Part A section 6, "Pluggable stop rules":

* :class:`FixedSteps`: a fixed number of latents, per sample if wanted (Coconut, CODI).
* :class:`ArgmaxToken`: stop when the distribution read at the latent position puts its
  argmax on the end-of-thought token (Latent-SFT inference, RESEARCH 1.4). Unlike the
  reference, the token is our single ``<eot>`` id, not the first sub-token of a string.
* :class:`EntropyColdStop`: Soft Thinking's Cold Stop, entropy below ``tau`` for ``k``
  consecutive steps (RESEARCH 4).
* :class:`LearnedStopHead`: a ``Linear(d, 1)`` on the hidden state; stop when its sigmoid
  reaches ``threshold`` (ATP-Latent's stop head, trained through
  :meth:`~LearnedStopHead.stop_logit`).
* :class:`StepStopHead`: ATP-Latent's stop policy, ``Linear(d,d) -> GELU -> Linear(d,2)`` on
  the hidden state, consulted only at step-group boundaries (every ``group`` latents); argmax
  (evaluation) or a Bernoulli sample from its own seeded generator (RL) (RESEARCH Part B 1(b)).
* :class:`AnyOf`: the first of several rules. ``max_steps`` lives in the engine itself.

A rule is called once per step with the step index ``t`` (latents fed so far), the hidden
state and logits at the current position and their entropy; it returns a bool [B] "stop now".
Stateful rules reset themselves through :meth:`StopRule.reset`. Like feedback rules, a stop rule
is an ``nn.Module`` that describes itself (a registry ``name`` and a JSON ``config()``; see
:mod:`workbench.engine.rules`) and keeps its weights, if any, in its ``state_dict``. Adding a
rule is one small class registered in :data:`STOP_RULES`.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from workbench.config import ConfigError, check_that
from workbench.engine.rules import Rule, build_rule, check_float, check_int


class StopRule(Rule):
    """Base class: ``__call__(t, hidden [B,d], logits [B,V], entropy [B]) -> bool [B]``."""

    name = "base"

    def reset(self, batch_size: int, device) -> None:
        """Called before a run; stateless rules ignore it."""

    def forward(
        self, t: int, hidden: torch.Tensor, logits: torch.Tensor, entropy: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def describe(self) -> str:
        return type(self).__name__


class FixedSteps(StopRule):
    """Stop after ``n`` latents; ``n`` is an int or a per-sample tensor [B].

    A per-sample ``n`` belongs to one batch: such a rule runs, but has no :meth:`config`.
    """

    name = "fixed"

    def __init__(self, n: int | torch.Tensor):
        super().__init__()
        self.n = n
        if isinstance(n, torch.Tensor):
            check_that(
                self,
                "n",
                n.ndim <= 1 and not n.is_floating_point() and bool((n >= 0).all()),
                "an int >= 0 or an integer tensor [B] of values >= 0",
            )
        else:
            check_int(self, "n", ge=0)

    def forward(self, t, hidden, logits, entropy):
        n = self.n if isinstance(self.n, torch.Tensor) else torch.tensor(self.n)
        return (torch.as_tensor(t) >= n.to(hidden.device)).expand(hidden.shape[0]).clone()

    def config(self) -> dict:
        if isinstance(self.n, torch.Tensor):
            raise ConfigError(
                "FixedSteps.n is a per-sample tensor: such a rule belongs to one batch and "
                "cannot be saved; save FixedSteps(<int>) (e.g. the spec's max_latent_steps)"
            )
        return {"n": self.n}

    def describe(self) -> str:
        return f"fixed({self.n if isinstance(self.n, numbers.Integral) else 'per-sample'})"


class ArgmaxToken(StopRule):
    """Stop when ``argmax(logits) == token_id`` (Latent-SFT's end-of-thought rule).

    Not before ``min_steps`` latents.
    """

    name = "argmax"

    def __init__(self, token_id: int, min_steps: int = 0):
        super().__init__()
        self.token_id, self.min_steps = token_id, min_steps
        check_int(self, "token_id", ge=0)
        check_int(self, "min_steps", ge=0)

    def forward(self, t, hidden, logits, entropy):
        hit = logits.argmax(-1) == self.token_id
        return hit & (t >= self.min_steps)

    def config(self) -> dict:
        return {"token_id": self.token_id, "min_steps": self.min_steps}

    def describe(self) -> str:
        return f"argmax=={self.token_id}"


class EntropyColdStop(StopRule):
    """Soft Thinking's Cold Stop: entropy < ``tau`` for ``k`` consecutive steps."""

    name = "cold"

    def __init__(self, tau: float = 0.01, k: int = 256):
        super().__init__()
        self.tau, self.k = tau, k
        check_float(self, "tau", gt=0.0)
        check_int(self, "k", ge=1)
        self.run: torch.Tensor | None = None

    def reset(self, batch_size, device):
        self.run = torch.zeros(batch_size, dtype=torch.long, device=device)

    def forward(self, t, hidden, logits, entropy):
        if self.run is None or self.run.shape[0] != entropy.shape[0]:
            self.reset(entropy.shape[0], entropy.device)
        low = entropy < self.tau
        self.run = torch.where(low, self.run + 1, torch.zeros_like(self.run))
        return self.run >= self.k

    def config(self) -> dict:
        return {"tau": self.tau, "k": self.k}

    def describe(self) -> str:
        return f"cold-stop(tau={self.tau}, k={self.k})"


class LearnedStopHead(StopRule):
    """A learned stop head: ``sigmoid(Linear(d_model, 1)(hidden)) >= threshold`` stops.

    Not before ``min_steps`` latents. :meth:`stop_logit` is the differentiable score a method
    trains (ATP-Latent's Bernoulli stop policy); the engine only calls the rule under
    ``no_grad``. Its weights are its ``state_dict`` (saved by ``save_spec_parts``).
    """

    name = "learned"

    def __init__(self, d_model: int, threshold: float = 0.5, min_steps: int = 0):
        super().__init__()
        self.d_model, self.threshold, self.min_steps = d_model, threshold, min_steps
        check_int(self, "d_model", ge=1)
        check_float(self, "threshold", ge=0.0, le=1.0)
        check_int(self, "min_steps", ge=0)
        self.head = nn.Linear(self.d_model, 1)

    def stop_logit(self, hidden: torch.Tensor) -> torch.Tensor:
        """Stop logit [...] of hidden states [..., d] (in the head's dtype, with gradients)."""
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)

    def forward(self, t, hidden, logits, entropy):
        prob = torch.sigmoid(self.stop_logit(hidden).float())
        return (prob >= self.threshold) & (t >= self.min_steps)

    def config(self) -> dict:
        return {"d_model": self.d_model, "threshold": self.threshold, "min_steps": self.min_steps}

    def describe(self) -> str:
        return f"learned-stop(p>={self.threshold})"


STOP_HEAD_MODES = ("argmax", "sample")


class StepStopHead(StopRule):
    """ATP-Latent's ``STOPPolicy``: 2-way logits ``[continue, stop]`` from the hidden state.

    Consulted at reads ``t`` with ``t % group == 0`` (``t`` = latents fed so far, so after every
    whole step of ``group`` latents, and once before the first) and ``t >= min_steps``; between
    boundaries it never stops. ``mode="argmax"`` stops when ``stop`` has the larger logit,
    ``"sample"`` draws the Bernoulli stop action from a generator seeded with ``seed`` at every
    :meth:`reset` (reproducible rollouts). :meth:`stop_logits` is the differentiable score a
    method trains. Its weights are its ``state_dict`` (saved by ``save_spec_parts``).

    Deviation: ATP applies the head to the sampled latent ``l_t``; here it reads the hidden
    state after ``l_t`` (the engine's read position), which has seen ``l_t`` and everything
    before it.
    """

    name = "step_head"

    def __init__(
        self, d_model: int, group: int = 1, min_steps: int = 0, mode: str = "argmax", seed: int = 0
    ):
        super().__init__()
        self.d_model, self.group, self.min_steps = d_model, group, min_steps
        self.mode, self.seed = mode, seed
        check_int(self, "d_model", ge=1)
        check_int(self, "group", ge=1)
        check_int(self, "min_steps", ge=0)
        check_that(self, "mode", mode in STOP_HEAD_MODES, f"one of {list(STOP_HEAD_MODES)}")
        check_int(self, "seed", ge=0)
        d = self.d_model
        self.net = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 2))
        self._gen: torch.Generator | None = None

    def stop_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., 2]`` logits (continue, stop) of hidden states ``[..., d]`` (with gradients)."""
        return self.net(hidden.to(self.net[0].weight.dtype))

    def is_boundary(self, t: int) -> bool:
        """Whether read ``t`` is a step-group boundary where the head is consulted."""
        return t % self.group == 0 and t >= self.min_steps

    def reset(self, batch_size, device):
        if self.mode == "sample":
            self._gen = torch.Generator(device=device).manual_seed(self.seed)

    def forward(self, t, hidden, logits, entropy):
        if not self.is_boundary(t):
            return torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        lg = self.stop_logits(hidden).float()
        if self.mode == "argmax":
            return lg[:, 1] > lg[:, 0]
        if self._gen is None:
            self.reset(hidden.shape[0], hidden.device)
        p_stop = torch.softmax(lg, -1)[:, 1]
        u = torch.rand(p_stop.shape, generator=self._gen, device=hidden.device)
        return u < p_stop

    def with_mode(self, mode: str, seed: int | None = None) -> StepStopHead:
        """The same head (shared parameters) in another ``mode``."""
        seed = self.seed if seed is None else seed
        other = StepStopHead(self.d_model, self.group, self.min_steps, mode, seed)
        other.net = self.net
        return other

    def config(self) -> dict:
        return {
            "d_model": self.d_model,
            "group": self.group,
            "min_steps": self.min_steps,
            "mode": self.mode,
            "seed": self.seed,
        }

    def describe(self) -> str:
        return f"step-stop-head(every {self.group}, {self.mode})"


class AnyOf(StopRule):
    """Stop as soon as any of ``rules`` says stop.

    Its config holds the sub-rules as ``{"rules": [{"name": ..., "config": ...}, ...]}``; their
    weights are in its ``state_dict`` under ``rules.<i>.``.
    """

    name = "any"

    def __init__(self, *rules: StopRule):
        super().__init__()
        bad = [r for r in rules if not isinstance(r, StopRule)]
        if bad:
            raise ConfigError(f"AnyOf.rules = {bad!r}: expected StopRule instances")
        self.rules = nn.ModuleList(rules)

    @classmethod
    def config_keys(cls) -> tuple[str, ...]:
        return ("rules",)

    @classmethod
    def required_keys(cls) -> tuple[str, ...]:
        return ("rules",)

    @classmethod
    def from_config(cls, config: dict) -> AnyOf:
        rules = config["rules"]
        ok = isinstance(rules, list) and all(isinstance(r, dict) and "name" in r for r in rules)
        if not ok:
            raise ConfigError(
                f"AnyOf.rules = {rules!r}: expected a list of {{'name': ..., 'config': ...}}"
            )
        return cls(*(make_stop(r["name"], **r.get("config", {})) for r in rules))

    def config(self) -> dict:
        return {"rules": [{"name": r.name, "config": r.config()} for r in self.rules]}

    def reset(self, batch_size, device):
        for r in self.rules:
            r.reset(batch_size, device)

    def forward(self, t, hidden, logits, entropy):
        out = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        for r in self.rules:
            out |= r(t, hidden, logits, entropy)
        return out

    def describe(self) -> str:
        return " | ".join(r.describe() for r in self.rules)


STOP_RULES: dict[str, type[StopRule]] = {
    cls.name: cls
    for cls in (FixedSteps, ArgmaxToken, EntropyColdStop, LearnedStopHead, StepStopHead, AnyOf)
}
"""Stop rules by ``name``: ``STOP_RULES[r.name].from_config(r.config())`` rebuilds ``r``."""


def make_stop(name: str, **config) -> StopRule:
    """Build a registered stop rule by name from its config (``learned`` needs ``d_model``).

    ``make_stop("any", rules=[{"name": "argmax", "config": {"token_id": 3}}, ...])`` builds an
    :class:`AnyOf`. Unknown names, unknown or missing keys and values out of range are a
    :class:`~workbench.config.ConfigError` naming them.
    """
    return build_rule(STOP_RULES, "stop", name, config)
