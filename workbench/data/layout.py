"""The one sequence layout every method shares, and the batch collator.

A sequence is ::

    question <bot> [<latent> x n] reasoning-tokens <eot> answer <eos>

* explicit CoT: n = 0, reasoning = all steps;
* no-CoT: n = 0, no reasoning;
* Coconut stage k: n = k*c, reasoning = steps[k:] (RESEARCH Part A 2.1);
* Latent-SFT stage 2: n latents, no reasoning (RESEARCH Part A 1.3).

Labels are -100 on the question, ``<bot>`` and every latent slot, real ids on the rest, so
"reasoning length" is uniformly the number of positions between ``<bot>`` and ``<eot>``.
Deviation from Coconut: ``<eot>`` is a label (Coconut never predicts it); at inference the
engine can still force it after a fixed number of latents, as Coconut does.

The collator left-pads every sample so that ``<bot>`` sits at the same column across the
batch (so the first latent does too: maximal KV reuse in the multi-pass forward, Coconut's
collator, RESEARCH 2.1), then right-pads to the longest sample. Position ids count only
real tokens, so padding never shifts a sample's positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from workbench.data.schema import Example
from workbench.data.tokenizer import SpecialIds, special_ids

IGNORE = -100


@dataclass
class TokenizedExample:
    """An example as token ids, steps kept apart so methods can drop or replace them."""

    question: list[int]
    steps: list[list[int]]
    answer: list[int]
    sep: list[int]
    """Ids placed between two steps (a space for char tokenizers, nothing for word ones)."""

    def reasoning(self, first_step: int = 0) -> list[int]:
        """Ids of ``steps[first_step:]`` joined by the separator."""
        out: list[int] = []
        for i, s in enumerate(self.steps[first_step:]):
            if i:
                out += self.sep
            out += s
        return out


def tokenize_examples(
    examples: list[Example], tokenizer: PreTrainedTokenizerBase
) -> list[TokenizedExample]:
    """Tokenize every text of ``examples`` in a few batched tokenizer calls."""
    sep = tokenizer.encode(" ", add_special_tokens=False)
    enc = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []  # noqa: E731
    qs = enc([e["question"] for e in examples])
    ans = enc([e["answer"] for e in examples])
    flat = enc([s for e in examples for s in e["steps"]])
    out, i = [], 0
    for e, q, a in zip(examples, qs, ans, strict=True):
        n = len(e["steps"])
        out.append(TokenizedExample(q, flat[i : i + n], a, sep))
        i += n
    return out


def prompt_ids(tex: TokenizedExample, sp: SpecialIds) -> list[int]:
    """What the model is given at inference: ``question <bot>``."""
    return tex.question + [sp.bot]


def build_sequence(
    tex: TokenizedExample,
    sp: SpecialIds,
    *,
    n_latent: int = 0,
    first_step: int = 0,
    with_steps: bool = True,
) -> dict:
    """One training sequence (module docstring) as ``input_ids``, ``labels``, ``n_latent``."""
    prompt = prompt_ids(tex, sp)
    reasoning = tex.reasoning(first_step) if with_steps else []
    target = reasoning + [sp.eot] + tex.answer + [sp.eos]
    ids = prompt + [sp.latent] * n_latent + target
    labels = [IGNORE] * (len(prompt) + n_latent) + target
    return {"input_ids": ids, "labels": labels, "prompt_len": len(prompt), "n_latent": n_latent}


def collate(seqs: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad ``build_sequence`` outputs into a batch with ``<bot>`` aligned across samples.

    Returns input_ids, attention_mask, position_ids, labels, latent_mask (True on latent
    slots) and n_latent [B]; ``latent_start`` is the shared column of the first latent.
    """
    plen = max(s["prompt_len"] for s in seqs)
    left = [plen - s["prompt_len"] for s in seqs]
    total = max(lp + len(s["input_ids"]) for lp, s in zip(left, seqs, strict=True))
    B = len(seqs)
    ids = torch.full((B, total), pad_id, dtype=torch.long)
    labels = torch.full((B, total), IGNORE, dtype=torch.long)
    mask = torch.zeros((B, total), dtype=torch.long)
    latent = torch.zeros((B, total), dtype=torch.bool)
    for b, (lp, s) in enumerate(zip(left, seqs, strict=True)):
        n = len(s["input_ids"])
        ids[b, lp : lp + n] = torch.tensor(s["input_ids"])
        labels[b, lp : lp + n] = torch.tensor(s["labels"])
        mask[b, lp : lp + n] = 1
        latent[b, plen : plen + s["n_latent"]] = True
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": pos,
        "labels": labels,
        "latent_mask": latent,
        "n_latent": torch.tensor([s["n_latent"] for s in seqs]),
        "latent_start": torch.tensor(plen),
    }


def pad_prompts(prompts: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts for generation: input_ids, attention_mask, position_ids."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p) :] = torch.tensor(p)
        mask[b, T - len(p) :] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": (mask.cumsum(1) - 1).clamp(min=0),
    }


class SequenceCollator:
    """``collate_fn`` for the trainer: examples -> padded batch for one layout setting.

    ``n_latent``/``first_step``/``with_steps`` fix the layout (CoT, no-CoT, a Coconut stage);
    methods with per-example layouts build sequences themselves and call :func:`collate`.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        n_latent: int = 0,
        first_step: int = 0,
        with_steps: bool = True,
    ):
        self.sp = special_ids(tokenizer)
        self.n_latent, self.first_step, self.with_steps = n_latent, first_step, with_steps

    def __call__(self, items: list[TokenizedExample]) -> dict[str, torch.Tensor]:
        seqs = [
            build_sequence(
                t,
                self.sp,
                n_latent=self.n_latent,
                first_step=self.first_step,
                with_steps=self.with_steps,
            )
            for t in items
        ]
        return collate(seqs, self.sp.pad)
