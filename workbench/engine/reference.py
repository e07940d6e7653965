"""Slow, obviously-correct references for the engine: no cache, full recompute every token.

``reference_generate`` re-implements the approach of the reference codes (batch 1, the whole
sequence recomputed for every latent and every answer token, as facebookresearch/coconut's
``generate`` does: RESEARCH Part A 2.1 "Generation"). Tests check the cached engine against it;
``benchmarks/latent_engine.py`` measures the speed-up over it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from workbench.data.tokenizer import SpecialIds
from workbench.engine.feedback import FeedbackRule, HiddenFeedback
from workbench.engine.loop import base_and_head, entropy_and_topk
from workbench.engine.stop import FixedSteps, StopRule


@dataclass
class ReferenceRun:
    """One example's latents, reads and generated tokens."""

    latent_embeds: list[torch.Tensor]
    read_logits: list[torch.Tensor]
    generated: list[int]
    forward_passes: int


@torch.no_grad()
def reference_generate(
    model: PreTrainedModel,
    prompt: list[int],
    special: SpecialIds,
    *,
    feedback: FeedbackRule | None = None,
    stop: StopRule | None = None,
    max_latent_steps: int = 0,
    max_new_tokens: int = 64,
    append_eot: bool = True,
    generator: torch.Generator | None = None,
) -> ReferenceRun:
    """Batch-1 generation that recomputes the full sequence at every step (no KV cache)."""
    base, head = base_and_head(model)
    emb = model.get_input_embeddings()
    feedback = feedback or HiddenFeedback()
    stop = stop or FixedSteps(max_latent_steps)
    dev = emb.weight.device
    embeds = emb(torch.tensor([prompt], device=dev))
    nfp = 0

    def last():
        nonlocal nfp
        nfp += 1
        return base(inputs_embeds=embeds, use_cache=False).last_hidden_state[:, -1]

    stop.reset(1, dev)
    latents, reads = [], []
    for t in range(max_latent_steps + 1):
        h = last()
        logits = head(h).float()
        reads.append(logits[0])
        ent, _, _ = entropy_and_topk(logits, 1)
        if bool(stop(t, h, logits, ent)[0]) or t >= max_latent_steps:
            break
        fb = feedback(h, logits if feedback.needs_logits else None, emb.weight, generator)
        latents.append(fb.embeds[0])
        embeds = torch.cat([embeds, fb.embeds[:, None].to(embeds.dtype)], 1)
    if append_eot:
        embeds = torch.cat([embeds, emb(torch.tensor([[special.eot]], device=dev))], 1)
    gen: list[int] = []
    for _ in range(max_new_tokens):
        tok = int(head(last()).argmax(-1))
        gen.append(tok)
        if tok == special.eos:
            break
        embeds = torch.cat([embeds, emb(torch.tensor([[tok]], device=dev))], 1)
    return ReferenceRun(latents, reads, gen, nfp)
