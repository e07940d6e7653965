"""Stop rules: when a sample's latent phase ends (RESEARCH Part A section 6, "Pluggable stop rules").

* :class:`FixedSteps`: a fixed number of latents, per sample if wanted (Coconut, CODI).
* :class:`ArgmaxToken`: stop when the distribution read at the latent position puts its
  argmax on the end-of-thought token (Latent-SFT inference, RESEARCH 1.4). Unlike the
  reference, the token is our single ``<eot>`` id, not the first sub-token of a string.
* :class:`EntropyColdStop`: Soft Thinking's Cold Stop, entropy below ``tau`` for ``k``
  consecutive steps (RESEARCH 4).
* :class:`AnyOf`: the first of several rules. ``max_steps`` lives in the engine itself.

A rule is called once per step with the step index ``t`` (latents fed so far), the hidden
state and logits at the current position and their entropy; it returns a bool [B] "stop now".
Stateful rules reset themselves through :meth:`StopRule.reset`. A learned stop head plugs
in as one more subclass.
"""

from __future__ import annotations

import torch


class StopRule:
    """Base class: ``__call__(t, hidden [B,d], logits [B,V], entropy [B]) -> bool [B]``."""

    def reset(self, batch_size: int, device) -> None:
        """Called before a run; stateless rules ignore it."""

    def __call__(
        self, t: int, hidden: torch.Tensor, logits: torch.Tensor, entropy: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def describe(self) -> str:
        return type(self).__name__


class FixedSteps(StopRule):
    """Stop after ``n`` latents; ``n`` is an int or a per-sample tensor [B]."""

    def __init__(self, n: int | torch.Tensor):
        if isinstance(n, int) and n < 0:
            raise ValueError(f"FixedSteps needs n >= 0, got {n}")
        self.n = n

    def __call__(self, t, hidden, logits, entropy):
        n = self.n if isinstance(self.n, torch.Tensor) else torch.tensor(self.n)
        return (torch.as_tensor(t) >= n.to(hidden.device)).expand(hidden.shape[0]).clone()

    def describe(self) -> str:
        return f"fixed({self.n if isinstance(self.n, int) else 'per-sample'})"


class ArgmaxToken(StopRule):
    """Stop when ``argmax(logits) == token_id`` (Latent-SFT's end-of-thought rule), after ``min_steps``."""

    def __init__(self, token_id: int, min_steps: int = 0):
        self.token_id, self.min_steps = token_id, min_steps

    def __call__(self, t, hidden, logits, entropy):
        hit = logits.argmax(-1) == self.token_id
        return hit & (t >= self.min_steps)

    def describe(self) -> str:
        return f"argmax=={self.token_id}"


class EntropyColdStop(StopRule):
    """Soft Thinking's Cold Stop: entropy < ``tau`` for ``k`` consecutive steps."""

    def __init__(self, tau: float = 0.01, k: int = 256):
        if tau <= 0 or k < 1:
            raise ValueError(f"EntropyColdStop needs tau > 0 and k >= 1, got {tau}, {k}")
        self.tau, self.k = tau, k
        self.run: torch.Tensor | None = None

    def reset(self, batch_size, device):
        self.run = torch.zeros(batch_size, dtype=torch.long, device=device)

    def __call__(self, t, hidden, logits, entropy):
        if self.run is None or self.run.shape[0] != entropy.shape[0]:
            self.reset(entropy.shape[0], entropy.device)
        low = entropy < self.tau
        self.run = torch.where(low, self.run + 1, torch.zeros_like(self.run))
        return self.run >= self.k

    def describe(self) -> str:
        return f"cold-stop(tau={self.tau}, k={self.k})"


class AnyOf(StopRule):
    """Stop as soon as any of ``rules`` says stop."""

    def __init__(self, *rules: StopRule):
        self.rules = rules

    def reset(self, batch_size, device):
        for r in self.rules:
            r.reset(batch_size, device)

    def __call__(self, t, hidden, logits, entropy):
        out = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        for r in self.rules:
            out |= r(t, hidden, logits, entropy)
        return out

    def describe(self) -> str:
        return " | ".join(r.describe() for r in self.rules)
