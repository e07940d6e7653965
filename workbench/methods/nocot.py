"""No chain of thought: SFT on ``question <bot> <eot> answer <eos>``, the answer-only baseline.

The lower bound: a latent method that does not beat it by a margin has not learned to reason
in latent space (RESEARCH Part A 7). Same model, data and trainer as CoT, steps dropped.
"""

from __future__ import annotations

from workbench.methods.base import MethodRecord
from workbench.methods.sft import train_sft

NAME = "nocot"


def train(
    data,
    base=None,
    *,
    config=None,
    train_config=None,
    model_config=None,
    callbacks=None,
    seed: int = 0,
    time_budget_s: float | None = None,
):
    """Train (or continue training ``base``) on the answer-only layout; ``config`` is unused."""
    return train_sft(
        NAME,
        data,
        base,
        with_steps=False,
        train_config=train_config,
        model_config=model_config,
        callbacks=callbacks,
        seed=seed,
        time_budget_s=time_budget_s,
    )


RECORD = MethodRecord(
    name=NAME,
    summary="answer only, no reasoning tokens (lower baseline)",
    train=train,
    notebook="00_quickstart.ipynb",
)
