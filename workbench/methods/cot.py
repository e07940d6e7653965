"""Explicit chain of thought: SFT on ``question <bot> steps <eot> answer <eos>``.

The upper baseline every latent method is compared with, and the model they start from
(RESEARCH Part A 2.2: Coconut starts from a CoT-trained model; 1.2: Latent-SFT's encoder and
decoder are initialised from it). At inference the model writes its own steps and ``<eot>``.
"""

from __future__ import annotations

from functools import partial

from workbench.methods.base import MethodRecord
from workbench.methods.sft import train_sft

NAME = "cot"

train = partial(train_sft, NAME, with_steps=True)
"""``train(data, base=None, *, train_config=None, model_config=None, callbacks=None, seed=0,
time_budget_s=None)``: the full CoT layout (see :func:`~workbench.methods.sft.train_sft`)."""


RECORD = MethodRecord(
    name=NAME,
    summary="explicit chain of thought (upper baseline; the start of every latent method)",
    train=train,
    notebook="00_quickstart.ipynb",
)
