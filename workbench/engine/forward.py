"""Teacher-forced forward with gradients through every latent (training path).

Coconut's multi-pass forward with KV reuse (RESEARCH Part A 2.1, section 6 item 2): with the
first latent at the same column ``c0`` for every sample (the collator aligns ``<bot>``) and
``n`` the most latents in the batch,

* pass 0 computes columns ``[0, c0)``;
* pass ``i`` computes column ``c0 + i``: samples with a latent there get the feedback of the
  hidden state at ``c0 + i - 1``, the others their ordinary token embedding;
* the last pass computes ``[c0 + n, T)``.

That is ``n + 2`` passes over ``T`` positions in total instead of ``n + 1`` full passes, and
the cache keeps the autograd graph, so gradients flow through every thought (full BPTT).
Vectorised: one ``torch.where`` per column, no per-sample loops, no rebuilding
``inputs_embeds`` from Python lists. Logits are computed once over all hidden states.

:func:`naive_latent_forward` is the reference: ``n + 1`` full recomputations without cache.
Both must agree (logits and parameter gradients) for every feedback rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from workbench.engine.feedback import FeedbackRule
from workbench.engine.loop import base_and_head, require_cache_api


@dataclass
class LatentForward:
    """Outputs of a teacher-forced latent forward."""

    logits: torch.Tensor
    """[B, T, V] logits at every position."""
    hidden: torch.Tensor
    """[B, T, d] last hidden state (after the final norm) at every position."""
    weight_ids: torch.Tensor | None = None
    """[B, n, k] tokens mixed into each latent (vocabulary rules), column order."""
    weight_probs: torch.Tensor | None = None
    """[B, n, k] their weights."""
    latent_embeds: torch.Tensor | None = None
    """[B, n, d] embeddings fed at the latent columns (garbage where a sample has no latent)."""
    stats: dict[str, torch.Tensor] | None = None
    """The rule's :attr:`~workbench.engine.feedback.Feedback.stats` per latent column, each
    ``[B, n, ...]`` (e.g. a Gaussian rule's ``mu`` and ``logvar``, with gradients)."""


def _stack_stats(stats: list[dict | None]) -> dict[str, torch.Tensor] | None:
    """Per-column ``Feedback.stats`` dicts -> one dict of ``[B, n, ...]`` tensors."""
    if not stats or stats[0] is None:
        return None
    return {k: torch.stack([s[k] for s in stats], 1) for k in stats[0]}


def _feed(feedback, h_prev, head, emb_w, generator):
    logits = head(h_prev) if feedback.needs_logits else None
    return feedback(h_prev, logits, emb_w, generator)


def latent_forward(
    model: PreTrainedModel,
    batch: dict,
    feedback: FeedbackRule,
    generator: torch.Generator | None = None,
) -> LatentForward:
    """Multi-pass, KV-cached, differentiable forward over a batch.

    ``batch`` is a :func:`~workbench.data.layout.collate` batch (``input_ids``,
    ``attention_mask``, ``position_ids``, ``latent_mask``, ``n_latent``, ``latent_start``).
    """
    base, head = base_and_head(model)
    emb_layer = model.get_input_embeddings()
    ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    lat = batch["latent_mask"]
    embeds = emb_layer(ids)
    n = int(batch["n_latent"].max()) if lat.any() else 0
    if n == 0:
        out = base(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False)
        return LatentForward(head(out.last_hidden_state), out.last_hidden_state)
    c0 = int(batch["latent_start"])
    require_cache_api()
    cache = DynamicCache()
    out = base(
        inputs_embeds=embeds[:, :c0],
        attention_mask=mask[:, :c0],
        position_ids=pos[:, :c0],
        cache=cache,
        use_cache=True,
    )
    hidden = [out.last_hidden_state]
    h_prev = out.last_hidden_state[:, -1]
    wid, wp, fed, stats = [], [], [], []
    for i in range(n):
        col = c0 + i
        fb = _feed(feedback, h_prev, head, emb_layer.weight, generator)
        x = torch.where(lat[:, col, None], fb.embeds.to(embeds.dtype), embeds[:, col])
        fed.append(fb.embeds)
        stats.append(fb.stats)
        if fb.ids is not None:
            wid.append(fb.ids), wp.append(fb.probs)
        out = base(
            inputs_embeds=x[:, None],
            attention_mask=mask[:, : col + 1],
            position_ids=pos[:, col : col + 1],
            cache=cache,
            use_cache=True,
        )
        hidden.append(out.last_hidden_state)
        h_prev = out.last_hidden_state[:, -1]
    if c0 + n < ids.shape[1]:
        out = base(
            inputs_embeds=embeds[:, c0 + n :],
            attention_mask=mask,
            position_ids=pos[:, c0 + n :],
            cache=cache,
            use_cache=True,
        )
        hidden.append(out.last_hidden_state)
    h = torch.cat(hidden, 1)
    return LatentForward(
        head(h),
        h,
        torch.stack(wid, 1) if wid else None,
        torch.stack(wp, 1) if wp else None,
        torch.stack(fed, 1),
        _stack_stats(stats),
    )


def naive_latent_forward(
    model: PreTrainedModel,
    batch: dict,
    feedback: FeedbackRule,
    generator: torch.Generator | None = None,
) -> LatentForward:
    """Reference: recompute the whole sequence once per latent column, no cache."""
    base, head = base_and_head(model)
    emb_layer = model.get_input_embeddings()
    ids, mask, pos, lat = (
        batch["input_ids"],
        batch["attention_mask"],
        batch["position_ids"],
        batch["latent_mask"],
    )
    embeds = emb_layer(ids)
    n = int(batch["n_latent"].max()) if lat.any() else 0
    c0 = int(batch["latent_start"]) if n else 0
    wid, wp, fed, stats = [], [], [], []
    for i in range(n):
        col = c0 + i
        h = base(
            inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False
        ).last_hidden_state
        fb = _feed(feedback, h[:, col - 1], head, emb_layer.weight, generator)
        x = torch.where(lat[:, col, None], fb.embeds.to(embeds.dtype), embeds[:, col])
        embeds = torch.cat([embeds[:, :col], x[:, None], embeds[:, col + 1 :]], 1)
        fed.append(fb.embeds)
        stats.append(fb.stats)
        if fb.ids is not None:
            wid.append(fb.ids), wp.append(fb.probs)
    h = base(
        inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False
    ).last_hidden_state
    return LatentForward(
        head(h),
        h,
        torch.stack(wid, 1) if wid else None,
        torch.stack(wp, 1) if wp else None,
        torch.stack(fed, 1) if fed else None,
        _stack_stats(stats),
    )


def shifted_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean next-token cross-entropy, ignoring -100 labels."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
    )
