"""Latent-SFT: latent reasoning as a chain of vocabulary-space superpositions (RESEARCH Part A 1).

A latent token is a top-k mixture of input-embedding rows ``z = sum_v alpha_v E_v`` (RESEARCH 1.1).
The pipeline, each part with its RESEARCH section:

* **Segments** (1.2): the explicit CoT ``c_1..c_n`` (the workbench's reasoning tokens, steps
  joined by the separator) is cut into ``N = ceil(n / r)`` consecutive segments of ``r`` tokens
  (the last one shorter when ``r`` does not divide ``n``): :func:`split_segments`.
* **Stage 1** (1.2): an *encoder* (a copy of the backbone, initialised from the given, typically
  CoT-trained, model) reads ``[question, <bot>, S_1, C, S_2, C, ..., S_N, C, <eot>]`` under the
  Latent Token Induction Mask (:mod:`workbench.methods.masks`). Its last hidden state at the i-th
  ``C`` is projected on the *decoder's input-embedding matrix* ``E`` (``l = E h``, detached ``E``,
  not the LM head) and turned into ``z_i`` = top-k superposition (:func:`encoder_latents`). The
  *decoder* reads ``[question, <bot>, L_1, S_2, L_2, ..., S_N, L_N, <eot>, answer, <eos>]`` with
  ``z_i`` scattered into the ``L_i`` slots (one vectorised ``masked_scatter``), under the Latent
  Token Supervision Mask with dual-track position ids, and is trained by token-mean CE on
  ``S_{i+1}``, ``<eot>`` and the answer (:class:`LatentSFTStage1`). Three steps, each a
  :class:`~workbench.train.Trainer` run: encoder only (decoder frozen), decoder only (encoder
  frozen), union (both).
* **Soft-label cache** (1.2, last paragraph): the union encoder is run over the training set and
  the top-k ``(ids, probs)`` of every latent are stored: safetensors (flattened tensors + offsets)
  plus a JSON meta, written atomically, checked on load (:func:`build_soft_labels`,
  :func:`save_soft_labels`, :func:`load_soft_labels`).
* **Stage 2** (1.3): the union decoder learns to produce its own latents. The sequence
  ``[question, <bot>, z~_1..z~_N, <eot>, answer, <eos>]`` is teacher-forced in ONE forward pass with
  ``inputs_embeds`` under plain causal attention; ``z~_i = alpha~_i @ E[ids_i]`` is rebuilt from
  the cached labels with the *current* ``E``, ``alpha~`` = Gumbel-perturbed teacher with
  rejection while its top-1 is ``<eot>`` (:func:`perturb_soft_labels`). Loss
  ``ce_weight * CE(<eot>, answer, <eos>) +
  kl_weight * (1/B) sum_b mean_i KL(alpha~_{b,i} || softmax(l_{b, s+i-1}))``
  with the KL on the teacher's top-k support against the full-vocabulary student log-softmax;
  ``l_{s+i-1}`` is the logit at the position preceding slot ``i`` (the ``<bot>`` position predicts
  ``z_1``; the last latent's position is trained by CE to predict ``<eot>``) (:class:`Stage2Loss`).
* **Inference** (1.4): :func:`latent_sft_spec` = superposition feedback of the LM-head logits
  (top-k, temperature), stop when ``argmax == <eot>``, at most ``max_latent_steps`` latents, then
  ``<eot>`` is appended and the answer decoded. Chain length = latent steps.

Workbench mapping and deviations from the reference code (DJC-GO-SOLO/Latent-SFT, v2):

* Full fine-tuning of a small model (both encoder and decoder are full copies) instead of LoRA
  adapters (r=64, alpha=128) on a 1B/7B model; the encoder is a full copy, not a LoRA on shared
  weights. The input model is not modified (it is deep-copied).
* The compress token ``C`` is the workbench ``<latent>`` token (learned in the encoder's own
  embedding table); ``<think>``/``</think>`` are ``<bot>``/``<eot>``, single tokens, so the stop
  rule needs no "first sub-token" artefact (RESEARCH 1.8). The latent slot placeholder ``L_i`` is
  also ``<latent>`` (the reference uses -100); its embedding is overwritten.
* The answer is short and has no explicit prose (multiplication: the reversed product), so the
  chain length is exactly the number of latent steps; answer tokens are still counted separately
  by the evaluator (RESEARCH 1.8, "chain length excludes the answer").
* For the default model (GPT-2, ``tie_embeddings=True``) ``E h`` (stage 1) and the LM head (stage 2
  and inference) are the same geometry; for untied models the stage-2 KL bridges two geometries,
  as in the reference for Qwen2.5-Math-7B (RESEARCH 1.1, 1.8).
* ``E`` is detached in stage 1 both for the projection and for the mixture (as the reference:
  ``W = embed_tokens.weight.detach()``; ``probs @ W``), so the decoder's embeddings learn only
  through the explicit tokens in stage 1.
* Encoder position ids are plain (every token, ``C`` included, takes the next position), as the
  reference (which passes no position ids with its 4-D mask).
* Padding is read from the attention mask, not the pad id (RESEARCH 1.8: the reference masks a
  real EOS when pad == eos). Batches are built per example in the collators; every forward is
  batched (the reference loops per sample to scatter).
* Gumbel rejection: resample (vectorised, only the offending latents) while the perturbed top-1
  is ``<eot>``, at most ``gumbel_max_rejections`` times; a latent still rejected afterwards falls
  back to the unperturbed teacher (the reference behaviour after 100 failures is not documented).
* Stage-2 KL mean: per example over its latents, then over the examples that have latents
  (``(1/B) sum_b mean_i``); examples without any latent add nothing.
* Inference decodes the answer greedily on the same KV cache (the reference re-prefills
  ``[P, <think>, z_1..z_T, </think>]`` and samples at T=0.6, top-p 0.95, RESEARCH 1.4 step 3);
  the engine's batched cache continuation is equivalent to a greedy re-prefill.
* Schedule: a fixed number of optimizer steps per sub-stage with the workbench Trainer (cosine,
  warm-up), not "10 epochs each, best checkpoint on a dev set" (RESEARCH 1.6).

Option not in Latent-SFT: ``teacher="cot"`` (CoT2-style per-latent targets, RESEARCH Part A 7)
replaces the encoder's soft labels by the token histogram of each latent's own ``r`` CoT tokens
(:func:`cot_soft_labels`) and skips stage 1; stage 2 and inference are unchanged. CoT2 trains
from scratch on traces whose per-step distribution mixes several paths; here the trace is a
single path, so a target has at most ``r`` tokens (one-hot at ``r = 1``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workbench.config import ConfigError, check_choice, check_range, check_that
from workbench.data.layout import (
    IGNORE,
    TokenizedExample,
    build_sequence,
    collate,
    prompt_ids,
    tokenize_examples,
)
from workbench.data.tokenizer import SpecialIds, special_ids
from workbench.engine.feedback import Feedback, SuperpositionFeedback, gumbel_noise, superpose
from workbench.engine.forward import shifted_ce
from workbench.engine.spec import LatentSpec
from workbench.engine.stop import ArgmaxToken
from workbench.eval.evaluator import EvalResult, evaluate
from workbench.io import atomic_write_json
from workbench.lens.alignment import Alignment
from workbench.lens.alignment import split_segments as split_segments  # the one implementation
from workbench.methods.base import MethodRecord
from workbench.methods.masks import (
    LATENT,
    PAD,
    PREFIX,
    TAIL,
    TEXT,
    dual_track_positions,
    induction_mask,
    require_mask_capable_attention,
    supervision_mask,
)

STAGE1_PARTS = ("encoder", "decoder", "union")
SOFT_LABEL_FORMAT = "workbench.latent_sft.soft_labels"
SOFT_LABEL_VERSION = 1
SOFT_LABEL_TENSORS = "soft_labels.safetensors"
SOFT_LABEL_META = "soft_labels.json"
# Meta keys that must match for a cache to be reused (the rest is informative).
_CACHE_KEYS = (
    "format",
    "version",
    "n_examples",
    "vocab_size",
    "top_k",
    "compression_rate",
    "temperature",
    "teacher",
    "examples_sha1",
)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


TEACHERS = ("encoder", "cot")
"""Sources of the stage-2 targets (:attr:`LatentSFTConfig.teacher`)."""


@dataclass
class LatentSFTConfig:
    """Every knob of the Latent-SFT pipeline (RESEARCH Part A 1.2-1.6), checked on construction."""

    compression_rate: int = 4
    """``r``: explicit CoT tokens per latent (RESEARCH 1.2). Default 4: the 3x3 multiplication CoT
    is 32 character tokens, so r=4 gives N=8 latents, 4x fewer reasoning positions than CoT (>= 3x),
    while each r-token segment (at most 4 distinct characters) still fits inside a top-10 support,
    so one latent *can* superpose its whole segment. It is the v1 paper's r=4 setting (the v2
    GSM8k scripts use r=2 on ~25-token CoTs, Math r=16 on long ones). ``>= 1``."""

    top_k: int = 10
    """Support of every superposition, stage 1, stage 2 and inference (v2
    ``topk_interpolation``). ``>= 1``."""

    temperature: float = 1.0
    """Softmax temperature inside the top-k (tau; never changed in the reference). ``> 0``."""

    encoder_steps: int = 300
    """Stage-1 step 1 (encoder trained, decoder frozen): optimizer steps. ``>= 0`` (0 skips)."""

    decoder_steps: int = 300
    """Stage-1 step 2 (decoder trained, encoder frozen): optimizer steps. ``>= 0``."""

    union_steps: int = 300
    """Stage-1 step 3 (both trained): optimizer steps. ``>= 0``."""

    stage2_steps: int = 1000
    """Stage 2 (autonomous latents, CE + KL): optimizer steps. ``>= 0``."""

    encoder_lr: float = 5e-4
    """Peak AdamW learning rate of stage-1 step 1 (reference: 1e-4 with LoRA; a small model trained
    in full tolerates more). ``> 0``."""

    decoder_lr: float = 5e-4
    """Peak learning rate of stage-1 step 2. ``> 0``."""

    union_lr: float = 3e-4
    """Peak learning rate of stage-1 step 3. ``> 0``."""

    stage2_lr: float = 5e-4
    """Peak learning rate of stage 2 (reference GSM8k: 3e-4). ``> 0``."""

    warmup_steps: int = 20
    """Linear warm-up of every sub-stage (reference: 5% of the run). ``>= 0``."""

    weight_decay: float = 0.01
    """AdamW weight decay of every sub-stage (reference: 0.01). ``>= 0``."""

    batch_size: int = 64
    """Stage-1 micro-batch (examples). ``>= 1``."""

    stage2_batch_size: int | None = None
    """Stage-2 micro-batch; ``None`` uses ``batch_size``. ``>= 1``."""

    cache_batch_size: int = 256
    """Batch of the soft-label cache pass (no gradients). ``>= 1``."""

    gumbel: bool = True
    """Perturb the stage-2 teachers with Gumbel noise (Latent-Optim; on in the reference)."""

    gumbel_noise_scale: float = 1.0
    """``s`` in ``clamp(s * g, lo, hi)``. ``>= 0``."""

    gumbel_clamp: tuple[float, float] = (-1.5, 3.0)
    """``(lo, hi)`` clamp of the scaled noise, ``lo < hi``."""

    gumbel_tau: float = 1.0
    """``tau_g``: temperature of the perturbed softmax. ``> 0``."""

    gumbel_max_rejections: int = 100
    """Resample a perturbed teacher at most this many times while its top-1 is ``<eot>``.
    ``>= 0``."""

    teacher: str = "encoder"
    """Where the stage-2 targets come from. ``encoder``: Latent-SFT, the stage-1 union encoder's
    top-k superposition of every segment. ``cot``: CoT2-style (RESEARCH Part A 7; arXiv
    2505.23648), the empirical token distribution of the latent's own ``r`` CoT tokens, so every
    latent is supervised by the trace itself; stage 1 is skipped (its step counts are ignored)
    and the noise is off (``gumbel`` must be False)."""

    kl_weight: float = 1.0
    """Weight of the stage-2 top-k KL term. ``>= 0``."""

    ce_weight: float = 1.0
    """Weight of the stage-2 CE on ``<eot>``, answer and ``<eos>``. ``>= 0`` (not both weights
    0)."""

    max_latent_steps: int = 16
    """Inference cap on latents per example (the model normally stops itself with ``<eot>``;
    default twice the 8 latents of 3x3 multiplication at r=4). ``>= 1``."""

    max_time_s: float | None = None
    """Wall-time cap of each sub-stage (Trainer ``max_time_s``); ``None``: no cap. ``> 0``."""

    eval_every: int | None = None
    """Evaluate every this many steps when ``eval_examples`` are given (stage 1: teacher-forced
    CE and answer accuracy; stage 2: generation accuracy and latent steps). ``None``: only at
    the end of each sub-stage. ``>= 1``."""

    eval_size: int = 256
    """At most this many ``eval_examples`` are used by the periodic evaluations. ``>= 1``."""

    log_every: int = 25
    """Trainer logging interval (optimizer steps). ``>= 1``."""

    progress: bool = False
    """Show the Trainer's progress bars."""

    seed: int = 0
    """Seeds the Trainer (data order) and the Gumbel generator. ``>= 0``."""

    def __post_init__(self) -> None:
        for name, lo in (
            ("compression_rate", 1),
            ("top_k", 1),
            ("encoder_steps", 0),
            ("decoder_steps", 0),
            ("union_steps", 0),
            ("stage2_steps", 0),
            ("warmup_steps", 0),
            ("batch_size", 1),
            ("cache_batch_size", 1),
            ("gumbel_max_rejections", 0),
            ("max_latent_steps", 1),
            ("eval_size", 1),
            ("log_every", 1),
            ("seed", 0),
        ):
            check_range(self, name, ge=lo, integer=True)
        for name in ("stage2_batch_size", "eval_every"):
            check_range(self, name, ge=1, integer=True, allow_none=True)
        for name in ("temperature", "encoder_lr", "decoder_lr", "union_lr", "stage2_lr"):
            check_range(self, name, gt=0)
        check_range(self, "gumbel_tau", gt=0)
        for name in ("weight_decay", "gumbel_noise_scale", "kl_weight", "ce_weight"):
            check_range(self, name, ge=0)
        check_range(self, "max_time_s", gt=0, allow_none=True)
        c = self.gumbel_clamp
        check_that(
            self,
            "gumbel_clamp",
            isinstance(c, (tuple, list))
            and len(c) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in c)
            and c[0] < c[1],
            "a pair (lo, hi) with lo < hi",
        )
        self.gumbel_clamp = (float(c[0]), float(c[1]))
        for name in ("gumbel", "progress"):
            check_choice(self, name, (True, False))
        check_choice(self, "teacher", TEACHERS)
        check_that(
            self,
            "gumbel",
            not (self.teacher == "cot" and self.gumbel),
            "False with teacher='cot' (the noise perturbs an encoder's teacher, not a trace)",
        )
        check_that(
            self,
            "ce_weight",
            self.kl_weight != 0 or self.ce_weight != 0,
            "> 0 when kl_weight is 0 (stage 2 would have no loss)",
        )

    @property
    def stage2_bs(self) -> int:
        return self.stage2_batch_size or self.batch_size


# --------------------------------------------------------------------------------------------
# Segments and stage-1 batches
# --------------------------------------------------------------------------------------------


# split_segments (consecutive r-token segments) is workbench.lens.alignment's, re-exported above.


def cot_segments(tex: TokenizedExample, r: int) -> list[list[int]]:
    """The explicit CoT of ``tex`` (all steps, joined by the separator) as ``r``-token segments.

    S_1..S_N, the fixed-rate alignment: ``Alignment(tokens_per_latent=r).targets(tex)``.
    """
    return Alignment(tokens_per_latent=r).targets(tex)


def encoder_sequence(tex: TokenizedExample, sp: SpecialIds, segments: list[list[int]]) -> list[int]:
    """Encoder input ``[question, <bot>, S_1, C, ..., S_N, C, <eot>]`` (C = ``<latent>``)."""
    ids = prompt_ids(tex, sp)
    for s in segments:
        ids += list(s) + [sp.latent]
    return ids + [sp.eot]


def decoder_sequence(
    tex: TokenizedExample, sp: SpecialIds, segments: list[list[int]]
) -> dict[str, list[int]]:
    """Decoder input ``[question, <bot>, L_1, S_2, L_2, ..., S_N, L_N, <eot>, answer, <eos>]``.

    Returns ``input_ids`` (``L`` slots hold ``<latent>``), ``labels`` (-100 on the prefix and the
    ``L`` slots), ``role`` (masks.PREFIX/LATENT/TEXT/TAIL) and ``segment`` (``i`` on ``L_i`` and on
    ``S_{i+1}``, 0 elsewhere).
    """
    prompt = prompt_ids(tex, sp)
    ids, labels, role, seg = (
        list(prompt),
        [IGNORE] * len(prompt),
        [PREFIX] * len(prompt),
        [0] * len(prompt),
    )
    n = len(segments)
    for i in range(1, n + 1):
        ids.append(sp.latent), labels.append(IGNORE), role.append(LATENT), seg.append(i)
        if i < n:
            nxt = list(segments[i])  # S_{i+1}
            ids += nxt
            labels += nxt
            role += [TEXT] * len(nxt)
            seg += [i] * len(nxt)
    tail = [sp.eot] + list(tex.answer) + [sp.eos]
    ids += tail
    labels += tail
    role += [TAIL] * len(tail)
    seg += [0] * len(tail)
    return {"input_ids": ids, "labels": labels, "role": role, "segment": seg}


def _pad(rows: list[list[int]], fill: int) -> torch.Tensor:
    T = max(len(r) for r in rows)
    out = torch.full((len(rows), T), fill, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _mask(rows: list[list[int]]) -> torch.Tensor:
    return _pad([[1] * len(r) for r in rows], 0)


class Stage1Collator:
    """``collate_fn`` of stage 1: tokenized examples -> right-padded encoder and decoder batches.

    Keys: ``enc_input_ids``/``enc_attention_mask`` (encoder), ``input_ids``/``attention_mask``/
    ``labels``/``role``/``segment`` (decoder), ``n_latent`` [B]. Per-example Python here; the
    forward is batched.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, compression_rate: int):
        self.sp = special_ids(tokenizer)
        self.r = compression_rate

    def __call__(self, items: list[TokenizedExample]) -> dict[str, torch.Tensor]:
        return stage1_batch(items, self.sp, [cot_segments(t, self.r) for t in items])


def stage1_batch(
    items: list[TokenizedExample], sp: SpecialIds, segments: list[list[list[int]]]
) -> dict[str, torch.Tensor]:
    """Stage-1 batch of ``items`` with the given per-example segments (see
    :class:`Stage1Collator`)."""
    enc = [encoder_sequence(t, sp, s) for t, s in zip(items, segments, strict=False)]
    dec = [decoder_sequence(t, sp, s) for t, s in zip(items, segments, strict=False)]
    return {
        "enc_input_ids": _pad(enc, sp.pad),
        "enc_attention_mask": _mask(enc),
        "input_ids": _pad([d["input_ids"] for d in dec], sp.pad),
        "attention_mask": _mask([d["input_ids"] for d in dec]),
        "labels": _pad([d["labels"] for d in dec], IGNORE),
        "role": _pad([d["role"] for d in dec], PAD),
        "segment": _pad([d["segment"] for d in dec], 0),
        "n_latent": torch.tensor([len(s) for s in segments]),
    }


# --------------------------------------------------------------------------------------------
# Stage 1
# --------------------------------------------------------------------------------------------


def encoder_latents(
    encoder: PreTrainedModel,
    embedding: torch.Tensor,
    enc_input_ids: torch.Tensor,
    enc_attention_mask: torch.Tensor,
    compress_id: int,
    top_k: int,
    temperature: float = 1.0,
) -> Feedback:
    """Latents of every compress token in the batch (RESEARCH 1.1, stage-1 source).

    The encoder body reads the batch under the induction mask; its last hidden state at each
    ``C`` is projected on ``embedding`` (the decoder's input-embedding matrix, detached):
    ``l = E h``, then ``z = softmax(topk(l) / tau) @ E``. Rows are in batch order (sample-major,
    then position), ``[M, d]`` / ``[M, k]`` with ``M`` the number of ``C`` in the batch.
    """
    require_mask_capable_attention(encoder)
    body = encoder.base_model
    E = embedding.detach()
    mask4 = induction_mask(enc_input_ids, enc_attention_mask, compress_id, dtype=E.dtype)
    pos = (enc_attention_mask.long().cumsum(1) - 1).clamp(min=0)
    h = body(
        input_ids=enc_input_ids, attention_mask=mask4, position_ids=pos, use_cache=False
    ).last_hidden_state
    is_c = (enc_input_ids == compress_id) & enc_attention_mask.bool()
    hc = h[is_c]  # [M, d]
    logits = F.linear(hc.float(), E.float())  # [M, V]
    return superpose(logits, E, top_k, temperature)


def scatter_latents(embeds: torch.Tensor, slots: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``embeds`` [B, T, d] with row ``m`` of ``z`` [M, d] written into the m-th True of
    ``slots`` [B, T] (sample-major, then position: the order of ``h[is_c]`` in the encoder),
    differentiable in both."""
    if int(slots.sum()) != z.shape[0]:
        raise ValueError(
            f"{z.shape[0]} latents for {int(slots.sum())} decoder slots: the encoder and decoder "
            "batches disagree on the number of segments"
        )
    return embeds.masked_scatter(slots[..., None], z.to(embeds.dtype))


class LatentSFTStage1(nn.Module):
    """Encoder + decoder of stage 1 (RESEARCH 1.2); ``forward(batch) -> (loss, metrics)``.

    :meth:`set_trainable` selects the step (``encoder``, ``decoder``, ``union``); frozen parts stay
    in eval mode and, for a frozen encoder, its latents are computed without gradients.
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        decoder: PreTrainedModel,
        special: SpecialIds,
        top_k: int = 10,
        temperature: float = 1.0,
    ):
        super().__init__()
        require_mask_capable_attention(encoder)
        require_mask_capable_attention(decoder)
        self.encoder, self.decoder, self.sp = encoder, decoder, special
        self.top_k, self.temperature = top_k, temperature
        self.part = "union"

    def set_trainable(self, part: str) -> None:
        if part not in STAGE1_PARTS:
            raise ValueError(f"stage-1 part must be one of {STAGE1_PARTS}, got {part!r}")
        self.part = part
        self.encoder.requires_grad_(part in ("encoder", "union"))
        self.decoder.requires_grad_(part in ("decoder", "union"))
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.part == "encoder":
            self.decoder.eval()
        elif self.part == "decoder":
            self.encoder.eval()
        return self

    def latents(self, batch: dict) -> Feedback:
        """``z_i`` of every compress token of the batch (see :func:`encoder_latents`)."""
        E = self.decoder.get_input_embeddings().weight
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.part != "decoder"):
            return encoder_latents(
                self.encoder,
                E,
                batch["enc_input_ids"],
                batch["enc_attention_mask"],
                self.sp.latent,
                self.top_k,
                self.temperature,
            )

    def decoder_logits(self, batch: dict, z: torch.Tensor) -> torch.Tensor:
        """Decoder logits [B, T, V] with ``z`` [M, d] scattered into the ``L`` slots (batch
        order)."""
        role = batch["role"]
        emb = self.decoder.get_input_embeddings()(batch["input_ids"])
        x = scatter_latents(emb, role == LATENT, z)
        mask4 = supervision_mask(role, batch["segment"], dtype=emb.dtype)
        pos = dual_track_positions(role)
        return self.decoder(
            inputs_embeds=x, attention_mask=mask4, position_ids=pos, use_cache=False
        ).logits

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        fb = self.latents(batch)
        logits = self.decoder_logits(batch, fb.embeds)
        loss = shifted_ce(logits, batch["labels"])
        with torch.no_grad():
            top1 = fb.probs[:, 0].mean() if fb.probs.numel() else torch.tensor(0.0)
        return loss, {"ce": loss.detach(), "latent_top1_prob": top1}


def _call_module(model, batch):
    return model(batch)


@torch.no_grad()
def stage1_teacher_forced_metrics(
    stage1: LatentSFTStage1,
    tokenizer: PreTrainedTokenizerBase,
    texs: list[TokenizedExample],
    r: int,
    batch_size: int = 256,
) -> dict[str, float]:
    """Stage-1 CE and teacher-forced answer accuracy on ``texs`` (the answer span after ``<eot>``).

    ``answer_exact``: every answer token and ``<eos>`` is the decoder's argmax given the encoder's
    latents (the decoder sees only the prefix and the latents there, never the explicit text).
    """
    sp = special_ids(tokenizer)
    dev = next(stage1.parameters()).device
    was = stage1.training
    stage1.eval()
    ce_sum, n_tok, exact, total = 0.0, 0, 0, 0
    for s in range(0, len(texs), batch_size):
        items = texs[s : s + batch_size]
        batch = {
            k: v.to(dev)
            for k, v in stage1_batch(items, sp, [cot_segments(t, r) for t in items]).items()
        }
        fb = stage1.latents(batch)
        logits = stage1.decoder_logits(batch, fb.embeds)
        labels = batch["labels"][:, 1:]
        lg = logits[:, :-1].float()
        valid = labels != IGNORE
        ce = F.cross_entropy(
            lg.reshape(-1, lg.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        ce_sum += float(ce)
        n_tok += int(valid.sum())
        # answer span: TAIL labels after <eot> (targets at positions whose role is TAIL,
        # excluding <eot> itself)
        role = batch["role"][:, 1:]
        ans = (role == TAIL) & valid & (labels != sp.eot)
        ok = (lg.argmax(-1) == labels) | ~ans
        exact += int(ok.all(1).sum())
        total += len(items)
    stage1.train(was)
    return {"stage1_ce": ce_sum / max(1, n_tok), "answer_exact_tf": exact / max(1, total)}


# --------------------------------------------------------------------------------------------
# Soft-label cache
# --------------------------------------------------------------------------------------------


@dataclass
class SoftLabels:
    """Top-k teacher labels of every latent of every example, flattened (RESEARCH 1.2 cache)."""

    ids: torch.Tensor
    """[M, k] token ids (long), all latents of all examples, example-major."""
    probs: torch.Tensor
    """[M, k] their renormalised top-k weights (fp32)."""
    offsets: torch.Tensor
    """[n + 1] example ``i`` owns rows ``offsets[i]:offsets[i+1]``."""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.ids[a:b], self.probs[a:b]

    def n_latent(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])


class SoftLabelCacheMismatch(ValueError):
    """A soft-label cache on disk was built for other examples, tokenizer or config."""


def examples_fingerprint(texs: list[TokenizedExample]) -> str:
    """SHA-1 of the token ids of every example (question, steps, answer), to tie a cache to its
    data."""
    h = hashlib.sha1()
    for t in texs:
        h.update(json.dumps([t.question, t.steps, t.answer, t.sep]).encode())
    return h.hexdigest()


def soft_label_meta(config: LatentSFTConfig, vocab_size: int, texs: list[TokenizedExample]) -> dict:
    """The meta a cache for ``texs`` under ``config`` must carry (the keys
    :func:`load_soft_labels` checks)."""
    return {
        "format": SOFT_LABEL_FORMAT,
        "version": SOFT_LABEL_VERSION,
        "n_examples": len(texs),
        "vocab_size": int(vocab_size),
        "top_k": config.top_k,
        "compression_rate": config.compression_rate,
        "temperature": config.temperature,
        "teacher": config.teacher,
        "examples_sha1": examples_fingerprint(texs),
    }


@torch.no_grad()
def encode_examples(
    encoder: PreTrainedModel,
    embedding: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    texs: list[TokenizedExample],
    *,
    top_k: int,
    temperature: float = 1.0,
    compression_rate: int | None = None,
    segments: list[list[list[int]]] | None = None,
    batch_size: int = 256,
) -> list[Feedback]:
    """Run the stage-1 encoder over ``texs``; per example a :class:`Feedback` of its N latents.

    Segments are ``compression_rate``-token chunks of each CoT, or given explicitly (``segments``,
    e.g. T equal parts of another solution path for N_eff). Embeddings, ids and probs are on CPU.
    """
    if segments is None:
        if compression_rate is None:
            raise ValueError("encode_examples needs compression_rate or segments")
        segments = [cot_segments(t, compression_rate) for t in texs]
    if len(segments) != len(texs):
        raise ValueError(f"{len(segments)} segment lists for {len(texs)} examples")
    sp = special_ids(tokenizer)
    was = encoder.training
    encoder.eval()
    dev = embedding.device
    out: list[Feedback] = []
    for s in range(0, len(texs), batch_size):
        items, segs = texs[s : s + batch_size], segments[s : s + batch_size]
        enc = [encoder_sequence(t, sp, g) for t, g in zip(items, segs, strict=True)]
        fb = encoder_latents(
            encoder,
            embedding,
            _pad(enc, sp.pad).to(dev),
            _mask(enc).to(dev),
            sp.latent,
            top_k,
            temperature,
        )
        a = 0
        for g in segs:
            n = len(g)
            out.append(
                Feedback(
                    fb.embeds[a : a + n].float().cpu(),
                    fb.ids[a : a + n].cpu(),
                    fb.probs[a : a + n].float().cpu(),
                )
            )
            a += n
    encoder.train(was)
    return out


def build_soft_labels(
    encoder: PreTrainedModel,
    decoder: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texs: list[TokenizedExample],
    config: LatentSFTConfig,
) -> SoftLabels:
    """Soft labels of the (union) encoder over ``texs``: top-k ``(ids, probs)`` per latent."""
    E = decoder.get_input_embeddings().weight
    fbs = encode_examples(
        encoder,
        E,
        tokenizer,
        texs,
        top_k=config.top_k,
        temperature=config.temperature,
        compression_rate=config.compression_rate,
        batch_size=config.cache_batch_size,
    )
    k = min(config.top_k, E.shape[0])
    ids = torch.cat([f.ids for f in fbs]) if fbs else torch.zeros(0, k, dtype=torch.long)
    probs = torch.cat([f.probs for f in fbs]) if fbs else torch.zeros(0, k)
    offsets = torch.tensor([0] + [f.ids.shape[0] for f in fbs]).cumsum(0)
    meta = soft_label_meta(config, E.shape[0], texs)
    meta.update({"n_latents": int(ids.shape[0]), "config": dataclasses.asdict(config)})
    return SoftLabels(ids.long(), probs.float(), offsets.long(), meta)


def cot_soft_labels(
    texs: list[TokenizedExample], config: LatentSFTConfig, vocab_size: int
) -> SoftLabels:
    """CoT2-style teachers: each latent's target is the token histogram of its ``r``-token CoT
    segment (most frequent first, at most ``top_k`` tokens, renormalised; unused slots have
    weight 0). At ``r = 1`` every target is one-hot on the CoT token it replaces."""
    r, k = config.compression_rate, min(config.top_k, config.compression_rate, vocab_size)
    ids, probs, counts = [], [], [0]
    for tex in texs:
        segments = cot_segments(tex, r)
        for seg in segments:
            hist: dict[int, int] = {}
            for t in seg:  # insertion order breaks ties: the earlier token first
                hist[t] = hist.get(t, 0) + 1
            top = sorted(hist.items(), key=lambda kv: -kv[1])[:k]
            row_ids = [t for t, _ in top] + [top[0][0]] * (k - len(top))
            row_w = [float(c) for _, c in top] + [0.0] * (k - len(top))
            total = sum(row_w)
            ids.append(row_ids)
            probs.append([w / total for w in row_w])
        counts.append(len(segments))
    meta = soft_label_meta(config, vocab_size, texs)
    meta.update({"n_latents": len(ids), "config": dataclasses.asdict(config)})
    return SoftLabels(
        torch.tensor(ids, dtype=torch.long).reshape(-1, k),
        torch.tensor(probs, dtype=torch.float).reshape(-1, k),
        torch.tensor(counts).cumsum(0),
        meta,
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_soft_labels(labels: SoftLabels, path: str | os.PathLike) -> Path:
    """Write ``labels`` into folder ``path`` atomically: safetensors (ids, probs, offsets) + meta.

    Each file is written with :mod:`workbench.io` (temporary name, fsync, ``os.replace``); the
    JSON meta goes last and records the tensor file's SHA-256, so a crash between the two leaves
    a detectable mismatch.
    """
    from safetensors.torch import save

    from workbench.io import atomic_write_bytes, atomic_write_json

    folder = Path(path)
    tensors = {
        "ids": labels.ids.contiguous().long(),
        "probs": labels.probs.contiguous().float(),
        "offsets": labels.offsets.contiguous().long(),
    }
    data = save(tensors, metadata={"format": SOFT_LABEL_FORMAT})
    meta = dict(labels.meta)
    meta["tensors_sha256"] = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(folder / SOFT_LABEL_TENSORS, data)
    atomic_write_json(folder / SOFT_LABEL_META, meta, indent=1, default=str)  # last: holds the hash
    return folder


def load_soft_labels(path: str | os.PathLike, expected: dict | None = None) -> SoftLabels:
    """Load a cache written by :func:`save_soft_labels`; with ``expected`` (see
    :func:`soft_label_meta`) raise :class:`SoftLabelCacheMismatch` naming every key that
    differs."""
    from safetensors.torch import load_file

    folder = Path(path)
    meta_file, tensor_file = folder / SOFT_LABEL_META, folder / SOFT_LABEL_TENSORS
    if not meta_file.is_file() or not tensor_file.is_file():
        raise FileNotFoundError(
            f"{folder} holds no complete soft-label cache "
            f"({SOFT_LABEL_META} + {SOFT_LABEL_TENSORS})"
        )
    with open(meta_file) as f:
        meta = json.load(f)
    if meta.get("format") != SOFT_LABEL_FORMAT:
        raise SoftLabelCacheMismatch(
            f"{meta_file} is not a Latent-SFT soft-label cache (format {meta.get('format')!r})"
        )
    if meta.get("tensors_sha256") and meta["tensors_sha256"] != _sha256(tensor_file):
        raise SoftLabelCacheMismatch(
            f"{tensor_file} does not match the SHA-256 recorded in {meta_file}; the cache "
            "was interrupted while being written: rebuild it"
        )
    if expected is not None:
        diffs = [
            f"{k}: cache {meta.get(k, '<absent>')!r}, expected {expected[k]!r}"
            for k in _CACHE_KEYS
            if k in expected and meta.get(k, "<absent>") != expected[k]
        ]
        if diffs:
            raise SoftLabelCacheMismatch(
                f"soft-label cache {folder} does not fit this run ({'; '.join(diffs)}). "
                "It was built for other examples, tokenizer or Latent-SFT config: "
                "delete the folder or point to a fresh one to rebuild it."
            )
    t = load_file(str(tensor_file))
    labels = SoftLabels(t["ids"].long(), t["probs"].float(), t["offsets"].long(), meta)
    if (
        labels.offsets.numel() != meta.get("n_examples", len(labels)) + 1
        or int(labels.offsets[-1]) != labels.ids.shape[0]
    ):
        raise SoftLabelCacheMismatch(
            f"{tensor_file}: offsets do not match the tensors or the meta's n_examples"
        )
    return labels


# --------------------------------------------------------------------------------------------
# Stage 2
# --------------------------------------------------------------------------------------------


def perturb_soft_labels(
    probs: torch.Tensor,
    ids: torch.Tensor,
    reject_id: int | None,
    *,
    noise_scale: float = 1.0,
    clamp: tuple[float, float] = (-1.5, 3.0),
    tau: float = 1.0,
    max_rejections: int = 100,
    valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """Gumbel-perturbed teachers ``softmax((log(alpha + 1e-10) + clamp(s g, lo, hi)) / tau_g)``
    (RESEARCH 1.3).

    ``probs``/``ids`` [..., k]. Latents whose perturbed top-1 id is ``reject_id`` are redrawn
    (only those, vectorised) up to ``max_rejections`` times; any still rejected fall back to the
    unperturbed teacher. ``valid`` [...] excludes padding rows from the rule. Returns the
    perturbed weights (fp32) and the number of redraws made.
    """
    logp = torch.log(probs.float() + 1e-10)
    lo, hi = clamp

    def draw():
        g = gumbel_noise(probs.shape, generator, probs.device)
        return torch.softmax((logp + (noise_scale * g).clamp(lo, hi)) / tau, dim=-1)

    def rejected(a):
        if reject_id is None:
            return torch.zeros(a.shape[:-1], dtype=torch.bool, device=a.device)
        top = ids.gather(-1, a.argmax(-1, keepdim=True)).squeeze(-1)
        bad = top == reject_id
        return bad & valid if valid is not None else bad

    alpha = draw()
    bad = rejected(alpha)
    redraws = 0
    for _ in range(max_rejections):
        if not bool(bad.any()):
            break
        alpha = torch.where(bad[..., None], draw(), alpha)
        redraws += int(bad.sum())
        bad = rejected(alpha)
    if bool(bad.any()):
        base = probs.float() / probs.float().sum(-1, keepdim=True).clamp_min(1e-12)
        alpha = torch.where(bad[..., None], base, alpha)
    return alpha, redraws


@dataclass
class Stage2Item:
    """One stage-2 training item: the example and its cached teacher labels [N, k]."""

    tex: TokenizedExample
    ids: torch.Tensor
    probs: torch.Tensor


class Stage2Collator:
    """``collate_fn`` of stage 2: the shared layout with N latent slots (``build_sequence``,
    ``<bot>`` aligned) plus ``soft_ids``/``soft_probs`` [B, Nmax, k] and ``soft_valid``
    [B, Nmax]."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.sp = special_ids(tokenizer)

    def __call__(self, items: list[Stage2Item]) -> dict[str, torch.Tensor]:
        seqs = [
            build_sequence(it.tex, self.sp, n_latent=it.ids.shape[0], with_steps=False)
            for it in items
        ]
        batch = collate(seqs, self.sp.pad)
        n = max(it.ids.shape[0] for it in items)
        k = max(
            (it.ids.shape[1] for it in items if it.ids.dim() == 2 and it.ids.numel()), default=1
        )
        ids = torch.zeros(len(items), n, k, dtype=torch.long)
        probs = torch.zeros(len(items), n, k)
        valid = torch.zeros(len(items), n, dtype=torch.bool)
        for b, it in enumerate(items):
            m = it.ids.shape[0]
            if m:
                ids[b, :m], probs[b, :m], valid[b, :m] = it.ids, it.probs, True
        batch.update(soft_ids=ids, soft_probs=probs, soft_valid=valid)
        return batch


class Stage2Loss:
    """``loss_fn(model, batch)`` of stage 2 (RESEARCH 1.3): one teacher-forced pass, CE + top-k KL.

    Holds the Gumbel generator (seeded from ``config.seed``) so perturbations are reproducible.
    """

    def __init__(self, config: LatentSFTConfig, special: SpecialIds):
        self.config, self.sp = config, special
        self.generator = torch.Generator().manual_seed(config.seed)

    def teachers(self, batch: dict) -> tuple[torch.Tensor, int]:
        cfg = self.config
        probs, ids, valid = batch["soft_probs"], batch["soft_ids"], batch["soft_valid"]
        if not cfg.gumbel:
            return probs.float() / probs.float().sum(-1, keepdim=True).clamp_min(1e-12), 0
        if self.generator.device != probs.device:
            self.generator = torch.Generator(device=probs.device).manual_seed(self.config.seed)
        return perturb_soft_labels(
            probs,
            ids,
            self.sp.eot,
            noise_scale=cfg.gumbel_noise_scale,
            clamp=cfg.gumbel_clamp,
            tau=cfg.gumbel_tau,
            max_rejections=cfg.gumbel_max_rejections,
            valid=valid,
            generator=self.generator,
        )

    def __call__(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        lm = getattr(model, "module", model)
        emb_layer = lm.get_input_embeddings()
        ids, valid = batch["soft_ids"], batch["soft_valid"]
        alpha, redraws = self.teachers(batch)
        alpha = alpha * valid[..., None]
        E = emb_layer.weight
        z = torch.einsum(
            "bnk,bnkd->bnd", alpha.to(E.dtype), E[ids]
        )  # current E, gradients flow into it
        emb = emb_layer(batch["input_ids"])
        B, T, _ = emb.shape
        n = z.shape[1]
        c0 = int(batch["latent_start"])
        lat = batch["latent_mask"]
        if n:
            zf = F.pad(z, (0, 0, c0, T - c0 - n))
            emb = torch.where(lat[..., None], zf, emb)
        logits = model(
            inputs_embeds=emb,
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            use_cache=False,
        ).logits
        ce = shifted_ce(logits, batch["labels"])
        if n:
            pred = logits[:, c0 - 1 : c0 - 1 + n].float()  # position preceding slot i
            logq = torch.log_softmax(pred, -1).gather(-1, ids)
            kl_slot = (alpha * (torch.log(alpha.clamp_min(1e-10)) - logq)).sum(-1) * valid
            per_ex = kl_slot.sum(1) / valid.sum(1).clamp_min(1)
            has = valid.any(1)
            kl = per_ex[has].mean() if bool(has.any()) else ce.new_zeros(())
        else:
            kl = ce.new_zeros(())
        loss = cfg.ce_weight * ce + cfg.kl_weight * kl
        return loss, {"ce": ce.detach(), "kl": kl.detach(), "gumbel_redraws": float(redraws)}


# --------------------------------------------------------------------------------------------
# Inference and the entry point
# --------------------------------------------------------------------------------------------


def latent_sft_spec(
    tokenizer: PreTrainedTokenizerBase, config: LatentSFTConfig | None = None
) -> LatentSpec:
    """Inference of a stage-2 model (RESEARCH 1.4): top-k superposition of the LM-head logits fed
    back, stop when ``argmax == <eot>``, at most ``max_latent_steps``, then ``<eot>`` and the
    answer."""
    config = config or LatentSFTConfig()
    sp = special_ids(tokenizer)
    return LatentSpec(
        feedback=SuperpositionFeedback(config.top_k, config.temperature),
        stop=ArgmaxToken(sp.eot),
        max_latent_steps=config.max_latent_steps,
        append_eot=True,
    )


@dataclass
class LatentSFTResult:
    """What :func:`train_latent_sft` returns."""

    model: PreTrainedModel
    """The stage-2 model (autonomous latent generation); evaluate it with ``spec``."""
    encoder: PreTrainedModel
    """The stage-1 (union) encoder: reference latents for analysis (N_eff)."""
    tokenizer: PreTrainedTokenizerBase
    config: LatentSFTConfig
    histories: dict[str, pd.DataFrame]
    """Trainer log history per sub-stage: ``encoder``, ``decoder``, ``union``, ``stage2``."""
    soft_label_path: Path
    """Folder of the soft-label cache."""
    spec: LatentSpec
    """Inference spec (:func:`latent_sft_spec`)."""
    final_eval: dict = field(default_factory=dict)
    """Summary of the evaluation on ``eval_examples`` after stage 2 (empty without them)."""

    @property
    def history(self) -> pd.DataFrame:
        """All sub-stages' log rows in one frame with a ``stage`` column."""
        frames = [df.assign(stage=k) for k, df in self.histories.items() if len(df)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def evaluate(self, examples, **kwargs) -> EvalResult:
        """:func:`workbench.eval.evaluator.evaluate` of the stage-2 model with the Latent-SFT
        spec."""
        kwargs.setdefault("method", "latent-sft")
        return evaluate(self.model, self.tokenizer, examples, spec=self.spec, **kwargs)


def _train_config(config: LatentSFTConfig, steps: int, lr: float, batch_size: int):
    from workbench.train import TrainConfig

    return TrainConfig(
        max_steps=steps,
        lr=lr,
        batch_size=batch_size,
        warmup_steps=min(config.warmup_steps, steps),
        weight_decay=config.weight_decay,
        log_every=config.log_every,
        eval_every=config.eval_every,
        seed=config.seed,
        progress=config.progress,
        max_time_s=config.max_time_s,
    )


def _evaluated_last(trainer) -> bool:
    return (
        bool(trainer.log_history)
        and any(k.startswith("eval/") for k in trainer.log_history[-1])
        and trainer.log_history[-1].get("step") == trainer.step
    )


def _last_eval(trainer) -> dict:
    return {k: v for k, v in trainer.log_history[-1].items() if k.startswith("eval/")}


def train_latent_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_examples,
    config: LatentSFTConfig | None = None,
    *,
    eval_examples=None,
    output_dir: str | os.PathLike | None = None,
    callbacks=None,
) -> LatentSFTResult:
    """The whole Latent-SFT pipeline from a (CoT-trained) ``model``: stage 1 (encoder, decoder,
    union), the soft-label cache, stage 2; returns the stage-2 model and its inference spec.

    ``model`` is not modified (encoder and decoder are deep copies). ``output_dir`` receives the
    soft-label cache (``soft_labels/``), ``encoder/`` and ``stage2/`` (``save_pretrained``), the
    config and the histories; without it the cache goes to a temporary folder. ``callbacks`` are
    passed to every Trainer. The cache is always rebuilt from this run's union encoder (use
    :func:`load_soft_labels` with :func:`soft_label_meta` to reuse one elsewhere).
    """
    from workbench.train import Trainer

    config = config or LatentSFTConfig()
    sp = special_ids(tokenizer)
    texs = tokenize_examples([dict(e) for e in train_examples], tokenizer)
    if not texs:
        raise ValueError("train_latent_sft got no training examples")
    eval_list = (
        [dict(e) for e in eval_examples][: config.eval_size] if eval_examples is not None else None
    )
    eval_texs = tokenize_examples(eval_list, tokenizer) if eval_list else None
    callbacks = list(callbacks or [])

    decoder = copy.deepcopy(model)
    encoder = copy.deepcopy(model)
    stage1 = LatentSFTStage1(encoder, decoder, sp, config.top_k, config.temperature)
    histories: dict[str, pd.DataFrame] = {}

    stage1_eval = None
    if eval_texs:

        def stage1_eval(trainer):
            return stage1_teacher_forced_metrics(
                trainer.unwrapped_model,
                tokenizer,
                eval_texs,
                config.compression_rate,
                config.cache_batch_size,
            )

    collator = Stage1Collator(tokenizer, config.compression_rate)
    for part, steps, lr in (
        ("encoder", config.encoder_steps, config.encoder_lr),
        ("decoder", config.decoder_steps, config.decoder_lr),
        ("union", config.union_steps, config.union_lr),
    ):
        if steps == 0 or config.teacher == "cot":  # CoT2 teachers need no encoder
            continue
        stage1.set_trainable(part)
        trainer = Trainer(
            stage1,
            texs,
            collator,
            _train_config(config, steps, lr, config.batch_size),
            loss_fn=_call_module,
            eval_fn=stage1_eval,
            callbacks=callbacks,
        )
        trainer.train()
        if stage1_eval is not None and not _evaluated_last(trainer):
            trainer.evaluate()
        histories[part] = trainer.log_history.to_pandas()
    stage1.set_trainable("union")
    stage1.eval()

    cache_dir = (
        Path(output_dir) / "soft_labels"
        if output_dir is not None
        else Path(tempfile.mkdtemp(prefix="latent-sft-soft-labels-"))
    )
    vocab = decoder.get_input_embeddings().weight.shape[0]
    expected = soft_label_meta(config, vocab, texs)
    if config.teacher == "cot":
        labels = cot_soft_labels(texs, config, vocab)
    else:
        labels = build_soft_labels(encoder, decoder, tokenizer, texs, config)
    save_soft_labels(labels, cache_dir)
    labels = load_soft_labels(cache_dir, expected)  # what stage 2 trains on is what is on disk

    decoder.requires_grad_(True)
    encoder.requires_grad_(False)
    spec = latent_sft_spec(tokenizer, config)
    items = [Stage2Item(t, *labels[i]) for i, t in enumerate(texs)]

    stage2_eval = None
    if eval_list:

        def stage2_eval(trainer):
            res = evaluate(
                trainer.unwrapped_model,
                tokenizer,
                eval_list,
                spec=spec,
                batch_size=config.cache_batch_size,
            )
            return {
                "accuracy": res.summary["accuracy"],
                "latent_steps": res.summary["latent_steps"],
            }

    final_eval: dict[str, Any] = {}
    if config.stage2_steps:
        trainer = Trainer(
            decoder,
            items,
            Stage2Collator(tokenizer),
            _train_config(config, config.stage2_steps, config.stage2_lr, config.stage2_bs),
            loss_fn=Stage2Loss(config, sp),
            eval_fn=stage2_eval,
            callbacks=callbacks,
        )
        trainer.train()
        if stage2_eval is not None:
            final_eval = _last_eval(trainer) if _evaluated_last(trainer) else trainer.evaluate()
        histories["stage2"] = trainer.log_history.to_pandas()
    decoder.eval()

    result = LatentSFTResult(
        decoder, encoder, tokenizer, config, histories, cache_dir, spec, final_eval
    )
    if output_dir is not None:
        out = Path(output_dir)
        decoder.save_pretrained(out / "stage2")
        encoder.save_pretrained(out / "encoder")
        tokenizer.save_pretrained(out / "stage2")
        atomic_write_json(out / "latent_sft_config.json", dataclasses.asdict(config), indent=1)
        if len(result.history):
            result.history.to_csv(out / "history.csv", index=False)
    return result


# ----- registry record -----------------------------------------------------------------------

NAME = "latent_sft"


def train(
    data,
    base=None,
    *,
    config: LatentSFTConfig | None = None,
    train_config=None,
    model_config=None,
    callbacks=None,
    seed: int = 0,
    time_budget_s: float | None = None,
    output_dir: str | os.PathLike | None = None,
):
    """Latent-SFT from a CoT-trained ``base``: stage 1, soft labels, stage 2 (a ``TrainedModel``).

    ``base`` is not modified. The pipeline's own optimizer settings live in
    :class:`LatentSFTConfig`, so ``train_config`` and ``model_config`` must be ``None``. Without
    ``output_dir`` the soft-label cache lives in a temporary folder removed at the end.
    """
    import tempfile

    from workbench.models.build import count_parameters
    from workbench.trained import TrainedModel

    if base is None:
        raise ConfigError("latent_sft starts from a CoT-trained model: pass base=")
    if train_config is not None or model_config is not None or time_budget_s is not None:
        raise ConfigError(
            "latent_sft takes its steps and learning rates from LatentSFTConfig "
            "(encoder_steps, stage2_lr, ...): leave train_config/model_config/time_budget_s unset"
        )
    cfg = config or LatentSFTConfig(seed=seed)
    model = getattr(base, "model", base)
    check_fits(cfg, data)
    with tempfile.TemporaryDirectory(prefix="latent_sft-") as tmp:
        res = train_latent_sft(
            model,
            data.tokenizer,
            data.train,
            cfg,
            eval_examples=data.val or None,
            output_dir=output_dir or tmp,
            callbacks=callbacks,
        )
    meta = {
        "config": dataclasses.asdict(cfg),
        "params": count_parameters(res.model),
        "seed": cfg.seed,
        "data": data.describe(),
        "train_steps": int(
            cfg.encoder_steps + cfg.decoder_steps + cfg.union_steps + cfg.stage2_steps
        ),
    }
    if output_dir is not None:
        meta["soft_labels"] = str(res.soft_label_path)
    return TrainedModel(
        NAME, res.model, data.tokenizer, res.spec, res.history, data.task, data.test, meta
    )


def check_fits(cfg: LatentSFTConfig, data) -> None:
    """Refuse, naming the field, a config that cannot work on ``data``'s chains of thought."""
    from workbench.config import ConfigError

    texs = tokenize_examples(data.train[:512], data.tokenizer)
    lengths = [len(t.reasoning()) for t in texs]
    if not lengths or min(lengths) == 0:
        raise ConfigError(
            f"LatentSFTConfig: {data.task!r} has examples without a chain of thought; Latent-SFT "
            "compresses CoT segments into latents, so every example needs steps"
        )
    if cfg.compression_rate > min(lengths):
        raise ConfigError(
            f"LatentSFTConfig.compression_rate = {cfg.compression_rate}: expected at most the "
            f"shortest CoT ({min(lengths)} tokens), or that example would get no latent to stand "
            "for its segments"
        )


def alignment(meta: dict):
    """Latent ``i`` stands for the i-th ``r``-token CoT segment (older checkpoints keep the config
    under ``meta["latent_sft"]``)."""
    cfg = meta.get("config") or meta.get(NAME) or {}
    return Alignment(
        tokens_per_latent=int(cfg.get("compression_rate", LatentSFTConfig.compression_rate))
    )


def quick_config(seed: int = 0) -> dict:
    """A short run for looking at trajectories (not for headline numbers)."""
    return {
        "config": LatentSFTConfig(
            encoder_steps=10,
            decoder_steps=10,
            union_steps=10,
            stage2_steps=30,
            batch_size=16,
            seed=seed,
        )
    }


def recipe(seed: int = 0) -> dict:
    """The shipped checkpoint's settings (trained on the first 20k problems: the soft-label cache
    covers the whole training set)."""
    return {
        "config": LatentSFTConfig(
            compression_rate=4,
            encoder_steps=50,
            decoder_steps=300,
            union_steps=300,
            stage2_steps=500,
            batch_size=32,
            encoder_lr=1e-3,
            decoder_lr=1e-3,
            union_lr=6e-4,
            stage2_lr=1e-3,
            seed=seed,
        ),
        "train_size": 20_000,
    }


RECORD = MethodRecord(
    name=NAME,
    summary="latents as top-k vocabulary superpositions p @ E (stage 1 encoder, stage 2 KL + CE)",
    train=train,
    config_cls=LatentSFTConfig,
    inference_spec=lambda cfg, tokenizer, feedback=None: latent_sft_spec(tokenizer, cfg),
    alignment=alignment,
    quick_config=quick_config,
    needs_base=True,
    takes_train_config=False,
    notebook="02_latent_sft.ipynb",
    recipe=recipe,
)
