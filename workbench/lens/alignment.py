"""Alignment targets: which CoT tokens a latent stands for (one implementation for the house).

A method says how its latents line up with the explicit chain of thought they replaced, and
everything that compares a latent with text uses this one answer: the lens (target ranks and
probabilities), Latent-SFT (its stage-1 segments) and the chain metrics (ECR).

* **by step** (Coconut, pause, iCoT-style curricula): ``c`` latents per reasoning step, latent
  ``j`` (0-based) stands for step ``j // c``;
* **fixed rate** (Latent-SFT): latent ``j`` stands for reasoning tokens ``[j*r, (j+1)*r)`` of the
  steps joined by the separator, exactly the training layout's segments.

How many lists come back (:meth:`Alignment.targets`): by step, ``c`` per reasoning step unless
``n_latent`` is given (then exactly ``n_latent``, ``[]`` past the last step); fixed rate, one
segment per latent of the training layout, cut or padded with ``[]`` to ``n_latent`` when given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Alignment",
    "default_alignment",
    "split_segments",
    "targets_by_step",
    "targets_fixed_rate",
]


class _Tokenized(Protocol):
    steps: list[list[int]]

    def reasoning(self) -> list[int]: ...


def split_segments(ids: Sequence[int], r: int) -> list[list[int]]:
    """``ids`` cut into consecutive ``r``-token segments (the last one may be shorter)."""
    if r < 1:
        raise ValueError(f"segments need r >= 1 tokens each, got r={r}")
    return [list(ids[i : i + r]) for i in range(0, len(ids), r)]


def targets_by_step(tokenized_example: _Tokenized, n_latent: int, c: int = 1) -> list[list[int]]:
    """Coconut-style alignment: latent ``j`` (0-based) replaced CoT step ``j // c``.

    Args:
        tokenized_example: The example's token ids (``.steps``: one id list per CoT step).
        n_latent: Latents the example was given.
        c: Latents per replaced step (Coconut's ``c_thought``).

    Returns:
        ``n_latent`` lists of token ids (empty for a latent past the last step).
    """
    if c < 1:
        raise ValueError(f"targets_by_step needs c >= 1 latents per step, got {c}")
    steps = tokenized_example.steps
    return [list(steps[j // c]) if j // c < len(steps) else [] for j in range(n_latent)]


def targets_fixed_rate(tokenized_example: _Tokenized, r: int) -> list[list[int]]:
    """Fixed-rate alignment: latent ``j`` replaced reasoning tokens ``[j*r, (j+1)*r)``.

    The reasoning is the steps joined by the tokenizer's separator (as in the training
    layout), so a separator token can be part of a segment. Returns ``ceil(len / r)`` lists.
    """
    if r < 1:
        raise ValueError(f"targets_fixed_rate needs a rate r >= 1, got {r}")
    return split_segments(tokenized_example.reasoning(), r)


@dataclass(frozen=True)
class Alignment:
    """How a method's latents line up with CoT text: give exactly one of the two fields."""

    latents_per_step: int | None = None
    """``c``: latents per replaced reasoning step (by-step alignment)."""
    tokens_per_latent: int | None = None
    """``r``: CoT tokens compressed into one latent (fixed-rate alignment)."""

    def __post_init__(self) -> None:
        if (self.latents_per_step is None) == (self.tokens_per_latent is None):
            raise ValueError(
                "Alignment needs exactly one of latents_per_step (by step) or "
                f"tokens_per_latent (fixed rate), got {self}"
            )
        n = self.latents_per_step if self.latents_per_step is not None else self.tokens_per_latent
        if n < 1:
            raise ValueError(f"Alignment values must be >= 1, got {self}")

    @property
    def kind(self) -> str:
        """``"by_step"`` or ``"fixed_rate"``."""
        return "by_step" if self.latents_per_step is not None else "fixed_rate"

    def targets(
        self, tokenized_example: _Tokenized, n_latent: int | None = None
    ) -> list[list[int]]:
        """Per latent, the CoT token ids it stands for.

        By step, ``n_latent`` (default: ``c`` per step) sets the length; fixed rate returns one
        segment per latent of the training layout, padded with empty lists (or cut) to
        ``n_latent`` when it is given.
        """
        if self.latents_per_step is not None:
            c = self.latents_per_step
            n = c * len(tokenized_example.steps) if n_latent is None else n_latent
            return targets_by_step(tokenized_example, n, c)
        segs = targets_fixed_rate(tokenized_example, self.tokens_per_latent)
        if n_latent is None:
            return segs
        return (segs + [[] for _ in range(max(0, n_latent - len(segs)))])[:n_latent]


def default_alignment(tokenized_example: _Tokenized, n_latent: int) -> Alignment:
    """The guess when a method declares no alignment: by step, ``c = max(1, n_latent // steps)``.

    (The latents spread evenly over the example's reasoning steps, at least one per step.)
    """
    return Alignment(latents_per_step=max(1, n_latent // max(1, len(tokenized_example.steps))))
