"""Explicit chain of thought: SFT on ``question <bot> steps <eot> answer <eos>``.

The upper baseline every latent method is compared with, and the model they start from
(RESEARCH Part A 2.2: Coconut starts from a CoT-trained model; 1.2: Latent-SFT's encoder and
decoder are initialised from it). At inference the model writes its own steps and ``<eot>``.
"""

from __future__ import annotations

from workbench.methods.base import MethodRecord
from workbench.methods.sft import train_sft

NAME = "cot"


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
    """Train (or continue training ``base``) on the full CoT layout; ``config`` is unused."""
    return train_sft(
        NAME,
        data,
        base,
        with_steps=True,
        train_config=train_config,
        model_config=model_config,
        callbacks=callbacks,
        seed=seed,
        time_budget_s=time_budget_s,
    )


RECORD = MethodRecord(
    name=NAME,
    summary="explicit chain of thought (upper baseline; the start of every latent method)",
    train=train,
    notebook="00_quickstart.ipynb",
)
