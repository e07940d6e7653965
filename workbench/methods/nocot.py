"""No chain of thought: SFT on ``question <bot> <eot> answer <eos>``, the answer-only baseline.

The lower bound: a latent method that does not beat it by a margin has not learned to reason
in latent space (RESEARCH Part A 7). Same model, data and trainer as CoT, steps dropped.
"""

from __future__ import annotations

from functools import partial

from workbench.methods.base import MethodRecord
from workbench.methods.sft import train_sft

NAME = "nocot"

train = partial(train_sft, NAME, with_steps=False)
"""``train(data, base=None, *, train_config=None, model_config=None, callbacks=None, seed=0,
time_budget_s=None)``: the answer-only layout (see :func:`~workbench.methods.sft.train_sft`)."""


RECORD = MethodRecord(
    name=NAME,
    summary="answer only, no reasoning tokens (lower baseline)",
    train=train,
    notebook="00_quickstart.ipynb",
)
