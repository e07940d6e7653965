"""Latent trajectories decoded into the vocabulary: what each latent step "says".

A :class:`LatentTrajectory` holds, for one or many examples and every latent step of an
engine run (a :class:`~workbench.engine.trace.Trace`), the LM-head distribution read at that
step, the superposition weights actually fed (vocabulary feedback rules only), the per-layer
logit lens, and the alignment targets: the CoT tokens the latent replaced. It follows
tuned-lens's ``PredictionTrajectory``: a dataclass whose shapes are checked in
``__post_init__``, one constructor from a run, and statistic methods that each return a small
object whose ``.figure()`` is a :class:`plotly.graph_objects.Figure`.

The lens is split along its ideas, one module each:

* :mod:`workbench.lens.alignment`: which CoT tokens latent ``j`` stands for (:class:`Alignment`);
* :mod:`workbench.lens.logit_lens`: final norm, logit lens, token display text;
* :mod:`workbench.lens.statistics`: the statistic dataclasses (data, tables, aggregates);
* :mod:`workbench.viz.trajectory_figures` and :mod:`workbench.viz.theme`: their figures;
* this module: :class:`LatentTrajectory` and :func:`compare_trajectories`. It re-exports the
  names it always exported (``targets_by_step``, ``final_norm``, ``WHITE``...), so older
  imports keep working.

Steps (as in the trace). Read ``t = 0`` is at the ``<bot>`` position, read ``t`` (``t >= 1``)
at latent ``t``'s position. The distribution (and hidden state) of read ``t`` is what latent
``t + 1`` is made of: Coconut feeds that hidden state, Latent-SFT feeds the top-k
superposition of that distribution. So read ``t`` is labelled ``z{t+1}`` in figures, and
example ``b`` has ``n_latent[b] + 1`` valid reads: its last read (labelled ``end``) is at the
position where ``<eot>`` goes. Statistics are ``NaN`` on a padded (invalid) step.

Definitions used throughout:

* ranks are 1-based: rank 1 is the argmax; the rank of token ``y`` is ``1 + #{v: p(v) > p(y)}``;
* a step with several target tokens reduces them: ``target_rank`` takes the best (``min``)
  rank by default, ``target_probability`` the summed probability of the distinct target
  tokens (the mass the distribution puts on the step's tokens);
* the logit lens of layer ``l`` is ``head(final_norm(h_l))`` for ``l < L`` and
  ``head(h_L)`` for the last entry, which HF already returns after the final norm (so the
  norm is never applied twice; tested);
* **collapse step**: the first valid read ``t`` whose distribution has collapsed onto the
  answer, i.e. the first answer token ``a_0`` satisfies the criterion: ``"prob"`` (default)
  ``p_t(a_0) >= threshold`` (default 0.5); ``"argmax"``: ``a_0`` is the argmax;
  ``"top_p"``: ``a_0`` lies in the smallest set of tokens whose mass reaches ``top_p``
  (nucleus). ``-1`` when no read qualifies.

Without full logits (neither ``logits`` nor hidden states recorded) only the trace's top-k is
known: probabilities of tokens outside it count as 0 (a lower bound) and their rank is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from workbench.lens.alignment import (
    Alignment,
    default_alignment,
    targets_by_step,
    targets_fixed_rate,
)
from workbench.lens.logit_lens import (
    final_norm,
    join_tokens,
    lm_head_log_probs,
    logit_lens,
    token_strings,
)
from workbench.lens.statistics import (
    LayerStatistic,
    StepStatistic,
    Superposition,
    TopKTokens,
    quiet_nan,
    read_labels,
)
from workbench.viz.theme import WHITE

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

    from workbench.engine.trace import Trace

__all__ = [
    "LatentTrajectory",
    "StepStatistic",
    "LayerStatistic",
    "TopKTokens",
    "Superposition",
    "compare_trajectories",
    "targets_by_step",
    "targets_fixed_rate",
    "final_norm",
    "logit_lens",
    "token_strings",
    "COLLAPSE_CRITERIA",
    "WHITE",
    "join_tokens",
    "Alignment",
    "resolve_alignment",
]

COLLAPSE_CRITERIA = ("prob", "argmax", "top_p")

# ----- the trajectory ----------------------------------------------------------------------------


def resolve_alignment(
    alignment: Alignment | None = None,
    latents_per_step: int | None = None,
    fixed_rate: int | None = None,
) -> Alignment | None:
    """The one :class:`Alignment` meant by ``alignment`` or one of its shorthands.

    ``fixed_rate`` wins over ``latents_per_step`` (as it always did); combining ``alignment``
    with a shorthand is an error. ``None``: nothing declared (the caller infers by step).
    """
    if alignment is not None:
        if latents_per_step is not None or fixed_rate is not None:
            raise ValueError(
                f"give alignment={alignment} or its shorthands latents_per_step / fixed_rate, "
                "not both"
            )
        if not isinstance(alignment, Alignment):
            raise TypeError(f"alignment must be an Alignment, got {type(alignment).__name__}")
        return alignment
    if fixed_rate is not None:
        return Alignment(tokens_per_latent=fixed_rate)
    if latents_per_step is not None:
        return Alignment(latents_per_step=latents_per_step)
    return None


def _as_batch(x: torch.Tensor | None, dims: int, name: str) -> torch.Tensor | None:
    """Add the example dimension to a single example's tensor (``dims`` = batched rank)."""
    if x is None:
        return None
    x = torch.as_tensor(x)
    if x.dim() == dims - 1:
        x = x.unsqueeze(0)
    if x.dim() != dims:
        raise ValueError(
            f"LatentTrajectory.{name} must have {dims} dims (batched) or {dims - 1}, "
            f"got {tuple(x.shape)}"
        )
    return x


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)


def _rank_of(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """1-based rank of ``ids`` [..., m] in ``logp`` [..., V]."""
    tgt = logp.gather(-1, ids)
    return 1 + (logp.unsqueeze(-2) > tgt.unsqueeze(-1)).sum(-1)


@dataclass
class LatentTrajectory:
    """Decoded latent steps of ``B`` examples (one engine run, or a synthetic distribution).

    Only ``log_probs`` or ``topk_ids``/``topk_probs`` are required; the rest is derived or
    optional. A single example may be given without the batch dimension.

    Attributes:
        log_probs: ``[B, S, V]`` log-probabilities of the LM-head read at each step, or
            ``None`` when only the trace's top-k is known.
        topk_ids: ``[B, S, k]`` top-k token ids (derived from ``log_probs`` when omitted).
        topk_probs: ``[B, S, k]`` their probabilities.
        entropies: ``[B, S]`` entropy in nats (derived from ``log_probs`` when omitted).
        valid: ``[B, S]`` bool, the reads each example really has (default: all).
        fed: ``[B, S]`` bool, a latent was fed after the read (default: every valid read but
            the last).
        weight_ids: ``[B, S, kf]`` tokens mixed into the fed embedding (vocabulary rules).
        weight_probs: ``[B, S, kf]`` their weights.
        layer_log_probs: ``[B, S, L+1, V]`` the logit lens (layer 0 = embedding output).
        hidden_states: ``[B, S, L+1, d]`` states at the read positions (projections).
        embeds: ``[B, S, d]`` the embeddings fed after each read.
        aligned_targets: per example, per step, the CoT token ids the latent fed after
            that read replaced (shorter lists are padded with ``[]``; the final read has none).
        answer_ids: per example, the gold answer's token ids (``[0]`` drives collapse).
        decoded_steps: per example, per read, the text a method's step decoder writes for the
            latent fed after that read (ATP-Latent; ``""`` where none).
        token_text: display text of every vocabulary id (``None``: the ids as text).
        questions, gold, predictions, correct: per-example metadata (tables, titles).
        example_index: per row, the index of the example in the caller's list.
        method: Method name (legends, titles); feedback: the feedback rule's description.
        meta: Anything else.
    """

    log_probs: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    topk_probs: torch.Tensor | None = None
    entropies: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    fed: torch.Tensor | None = None
    weight_ids: torch.Tensor | None = None
    weight_probs: torch.Tensor | None = None
    layer_log_probs: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    embeds: torch.Tensor | None = None
    aligned_targets: list[list[list[int]]] | None = None
    answer_ids: list[list[int]] | None = None
    decoded_steps: list[list[str]] | None = None
    token_text: list[str] | None = None
    questions: list[str] | None = None
    gold: list[str] | None = None
    predictions: list[str] | None = None
    correct: list[bool] | None = None
    example_index: list[int] | None = None
    method: str = ""
    feedback: str = ""
    meta: dict = field(default_factory=dict)

    # --- validation ---------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.log_probs = _as_batch(self.log_probs, 3, "log_probs")
        self.topk_ids = _as_batch(self.topk_ids, 3, "topk_ids")
        self.topk_probs = _as_batch(self.topk_probs, 3, "topk_probs")
        self.layer_log_probs = _as_batch(self.layer_log_probs, 4, "layer_log_probs")
        if self.log_probs is None and self.layer_log_probs is not None:
            self.log_probs = self.layer_log_probs[:, :, -1]
        if self.log_probs is not None:
            self.log_probs = self.log_probs.float()
            B, S, V = self.log_probs.shape
            if self.topk_ids is None:
                vals, ids = self.log_probs.topk(min(10, V), -1)
                self.topk_ids, self.topk_probs = ids, vals.exp()
        elif self.topk_ids is None or self.topk_probs is None:
            raise ValueError(
                "LatentTrajectory needs log_probs [B, S, V] or topk_ids and topk_probs [B, S, k]"
            )
        B, S, k = self.topk_ids.shape
        if self.topk_probs.shape != self.topk_ids.shape:
            raise ValueError(
                f"topk_probs {tuple(self.topk_probs.shape)} != "
                f"topk_ids {tuple(self.topk_ids.shape)}"
            )
        if self.log_probs is not None and self.log_probs.shape[:2] != (B, S):
            raise ValueError(
                f"log_probs {tuple(self.log_probs.shape)} and "
                f"topk_ids {tuple(self.topk_ids.shape)} "
                "disagree on [B, S]"
            )
        self.topk_ids, self.topk_probs = self.topk_ids.long(), self.topk_probs.float()
        self.entropies = _as_batch(self.entropies, 2, "entropies")
        if self.entropies is None:
            if self.log_probs is None:
                raise ValueError("entropies [B, S] are needed when log_probs is None")
            self.entropies = _entropy(self.log_probs)
        self.valid = (
            torch.ones(B, S, dtype=torch.bool)
            if self.valid is None
            else _as_batch(self.valid, 2, "valid").bool()
        )
        if self.fed is None:
            last = self.valid.long().cumsum(1) == self.valid.long().sum(1, keepdim=True)
            self.fed = self.valid & ~last
        self.fed = _as_batch(self.fed, 2, "fed").bool()
        for name in ("entropies", "valid", "fed"):
            if tuple(getattr(self, name).shape) != (B, S):
                raise ValueError(
                    f"{name} must be [B, S] = {(B, S)}, got {tuple(getattr(self, name).shape)}"
                )
        if bool((self.fed & ~self.valid).any()):
            raise ValueError("fed marks a step that is not valid")
        self.weight_ids = _as_batch(self.weight_ids, 3, "weight_ids")
        self.weight_probs = _as_batch(self.weight_probs, 3, "weight_probs")
        if (self.weight_ids is None) != (self.weight_probs is None):
            raise ValueError("give both weight_ids and weight_probs, or neither")
        if self.weight_ids is not None:
            if self.weight_ids.shape != self.weight_probs.shape or self.weight_ids.shape[:2] != (
                B,
                S,
            ):
                raise ValueError(
                    f"weight_ids/weight_probs must be [B, S, kf] with [B, S] = {(B, S)}, got "
                    f"{tuple(self.weight_ids.shape)} and {tuple(self.weight_probs.shape)}"
                )
            self.weight_ids, self.weight_probs = self.weight_ids.long(), self.weight_probs.float()
        if self.layer_log_probs is not None:
            self.layer_log_probs = self.layer_log_probs.float()
            if self.layer_log_probs.shape[:2] != (B, S) or (
                self.log_probs is not None
                and self.layer_log_probs.shape[-1] != self.log_probs.shape[-1]
            ):
                raise ValueError(
                    f"layer_log_probs must be [B, S, L+1, V] with [B, S] = {(B, S)}, got "
                    f"{tuple(self.layer_log_probs.shape)}"
                )
        self.hidden_states = _as_batch(self.hidden_states, 4, "hidden_states")
        if self.hidden_states is not None and self.hidden_states.shape[:2] != (B, S):
            raise ValueError(
                f"hidden_states must be [B, S, L+1, d], got {tuple(self.hidden_states.shape)}"
            )
        self.embeds = _as_batch(self.embeds, 3, "embeds")
        if self.embeds is not None and self.embeds.shape[:2] != (B, S):
            raise ValueError(f"embeds must be [B, S, d], got {tuple(self.embeds.shape)}")
        if self.aligned_targets is not None:
            if len(self.aligned_targets) != B:
                raise ValueError(
                    f"aligned_targets has {len(self.aligned_targets)} examples, expected {B}"
                )
            fixed = []
            for b, per in enumerate(self.aligned_targets):
                per = [list(map(int, x)) for x in per]
                if len(per) > S:
                    raise ValueError(
                        f"aligned_targets[{b}] has {len(per)} steps; the trajectory has {S}"
                    )
                fixed.append(per + [[] for _ in range(S - len(per))])
            self.aligned_targets = fixed
        if self.decoded_steps is not None:
            if len(self.decoded_steps) != B:
                raise ValueError(
                    f"decoded_steps has {len(self.decoded_steps)} examples, expected {B}"
                )
            self.decoded_steps = [
                [str(x) for x in per][:S] + [""] * (S - len(per)) for per in self.decoded_steps
            ]
        for name in ("answer_ids", "questions", "gold", "predictions", "correct", "example_index"):
            val = getattr(self, name)
            if val is not None:
                if len(val) != B:
                    raise ValueError(
                        f"{name} has {len(val)} entries, expected one per example ({B})"
                    )
                setattr(self, name, list(val))
        if self.token_text is not None and len(self.token_text) < self.vocab_size:
            self.token_text = list(self.token_text) + [
                f"<{i}>" for i in range(len(self.token_text), self.vocab_size)
            ]

    # --- shape ----------------------------------------------------------------------------------
    @property
    def num_examples(self) -> int:
        """``B``."""
        return self.topk_ids.shape[0]

    @property
    def num_steps(self) -> int:
        """``S``, the longest example's reads."""
        return self.topk_ids.shape[1]

    @property
    def num_layers(self) -> int | None:
        """``L`` (transformer blocks) when the logit lens or hidden states are present."""
        for x in (self.layer_log_probs, self.hidden_states):
            if x is not None:
                return x.shape[2] - 1
        return None

    @property
    def vocab_size(self) -> int:
        """``V`` (or the largest top-k id + 1 when only the top-k is known)."""
        if self.log_probs is not None:
            return self.log_probs.shape[-1]
        return int(self.topk_ids.max()) + 1 if self.topk_ids.numel() else 0

    def steps_of(self, b: int) -> int:
        """Valid reads of example ``b`` (its latents + 1)."""
        return int(self.valid[b].sum())

    def __len__(self) -> int:
        return self.num_examples

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_trace(
        cls,
        trace: Trace,
        model: torch.nn.Module | None = None,
        tokenizer=None,
        *,
        examples: Sequence[Mapping[str, Any]] | None = None,
        aligned_targets: list[list[list[int]]] | None = None,
        layers: bool = True,
        alignment: Alignment | None = None,
        latents_per_step: int | None = None,
        fixed_rate: int | None = None,
        correct: Sequence[bool] | None = None,
        predictions: Sequence[str] | None = None,
        method: str = "",
        norm: torch.nn.Module | None = None,
        keep_hidden: bool = True,
        max_layer_elements: int = 200_000_000,
    ) -> LatentTrajectory:
        """Decode an engine trace in one call.

        Rows come back in the caller's order: a trace from :func:`workbench.eval.evaluator.evaluate`
        (sorted by question length, ``meta["example_index"]``) is reordered so that row ``b``
        is ``examples[b]``.

        Args:
            trace: The engine's record (``record_hidden=True`` for the logit lens).
            model: The model that ran (LM head and final norm); needed for ``layers`` and to
                recover full distributions from hidden states when logits were not recorded.
            tokenizer: For token text and, with ``examples``, alignment targets and answers.
            examples: Schema dicts ``{question, steps, answer}``, one per trace row (or
                indexed by ``trace.meta["example_index"]``).
            aligned_targets: Explicit targets (per example, per step, token ids); overrides
                the ones built from ``examples``.
            layers: Compute the per-layer logit lens (needs hidden states and ``model``).
            alignment: Which CoT tokens each latent stands for (the method's
                :class:`~workbench.lens.alignment.Alignment`, e.g. from
                :func:`workbench.methods.lens_alignment`). ``None`` (and no shorthand below)
                infers a by-step alignment with ``c = max(1, n_latent // n_steps)`` per example
                (:func:`~workbench.lens.alignment.default_alignment`).
            latents_per_step: Shorthand for ``alignment=Alignment(latents_per_step=c)``.
            fixed_rate: Shorthand for ``alignment=Alignment(tokens_per_latent=r)``.
            correct, predictions: Per-example results (in the caller's order).
            method: Method name for legends.
            norm: The final norm module when :func:`final_norm` cannot find it.
            keep_hidden: Keep the hidden states (projections need them).
            max_layer_elements: Refuse a logit lens larger than this many floats.
        """
        order = _original_order(trace)
        if order is not None:
            trace = trace.select(order)
        B, S = trace.fed.shape
        n_latent = trace.n_latent.long()
        valid = torch.arange(S)[None, :] <= n_latent[:, None]
        log_probs = layer_lp = None
        if trace.logits is not None:
            log_probs = torch.log_softmax(trace.logits.float(), -1)
        hs = trace.hidden_states
        if layers:
            if hs is None or model is None:
                raise ValueError(
                    "layers=True needs the hidden states and the model: run the engine with "
                    "record_hidden=True (evaluate(..., record_trace=True, record_hidden=True)) "
                    "and pass "
                    "model=, or use layers=False"
                )
            V = model.get_output_embeddings().weight.shape[0]
            if B * S * hs.shape[2] * V > max_layer_elements:
                raise ValueError(
                    f"the logit lens of {B} examples x {S} steps x {hs.shape[2]} layers x "
                    f"{V} tokens "
                    f"exceeds max_layer_elements={max_layer_elements}; select fewer examples "
                    "(trace.select(...)), raise max_layer_elements, or use layers=False"
                )
            layer_lp = logit_lens(hs, model, norm=norm)
            log_probs = layer_lp[:, :, -1] if log_probs is None else log_probs
        elif log_probs is None and hs is not None and model is not None:
            log_probs = lm_head_log_probs(hs[:, :, -1], model)
        texs = None
        if examples is not None:
            examples = [dict(e) for e in examples]
            if len(examples) != B:
                raise ValueError(f"got {len(examples)} examples for a trace of {B} rows")
            if tokenizer is None:
                raise ValueError("examples= needs tokenizer= to build targets and answers")
            from workbench.data.layout import tokenize_examples

            texs = tokenize_examples(examples, tokenizer)
        alignment = resolve_alignment(alignment, latents_per_step, fixed_rate)
        if aligned_targets is None and texs is not None:
            aligned_targets = []
            for b, tex in enumerate(texs):
                n = int(n_latent[b])
                how = alignment if alignment is not None else default_alignment(tex, n)
                aligned_targets.append(how.targets(tex, n))
        token_text = None
        if tokenizer is not None:
            V = log_probs.shape[-1] if log_probs is not None else int(trace.topk_ids.max()) + 1
            token_text = token_strings(tokenizer, V)
        meta = dict(trace.meta)
        meta.pop("example_index", None)
        meta["n_latent"] = n_latent.tolist()
        meta["stop_rule"] = trace.stop_rule
        return cls(
            log_probs=log_probs,
            topk_ids=trace.topk_ids if log_probs is None else None,
            topk_probs=trace.topk_probs if log_probs is None else None,
            entropies=trace.entropy.float(),
            valid=valid,
            fed=trace.fed.bool() & valid,
            weight_ids=trace.weight_ids,
            weight_probs=trace.weight_probs,
            layer_log_probs=layer_lp,
            hidden_states=hs.float() if (hs is not None and keep_hidden) else None,
            embeds=trace.embeds,
            aligned_targets=aligned_targets,
            answer_ids=[list(t.answer) for t in texs] if texs is not None else None,
            token_text=token_text,
            questions=[e["question"] for e in examples] if examples is not None else None,
            gold=[str(e["answer"]) for e in examples] if examples is not None else None,
            predictions=list(predictions) if predictions is not None else None,
            correct=[bool(c) for c in correct] if correct is not None else None,
            example_index=list(range(B)) if order is not None else None,
            method=method,
            feedback=trace.feedback,
            meta=meta,
        )

    @classmethod
    def from_eval(cls, result, model, tokenizer, examples, **kwargs) -> LatentTrajectory:
        """From an :class:`~workbench.eval.evaluator.EvalResult` run with ``record_trace=True``.

        Takes correctness, predictions and the method name from the result.
        """
        if result.trace is None:
            raise ValueError(
                "the EvalResult has no trace: evaluate(..., record_trace=True, record_hidden=True)"
            )
        df = (
            result.per_example.sort_values("index")
            if "index" in result.per_example
            else result.per_example
        )
        kwargs.setdefault("correct", df["correct"].tolist())
        kwargs.setdefault("predictions", df["prediction"].astype(str).tolist())
        kwargs.setdefault("method", result.summary.get("method", ""))
        return cls.from_trace(result.trace, model, tokenizer, examples=examples, **kwargs)

    def select(self, index) -> LatentTrajectory:
        """The trajectory of a subset of examples (int, slice, list or bool mask)."""
        if isinstance(index, int):
            index = [index]
        rows = (
            list(range(self.num_examples))[index]
            if isinstance(index, slice)
            else (
                torch.nonzero(torch.as_tensor(index)).flatten().tolist()
                if torch.as_tensor(index).dtype == torch.bool
                else list(index)
            )
        )
        t = lambda x: None if x is None else x[rows]  # noqa: E731
        lst = lambda x: None if x is None else [x[i] for i in rows]  # noqa: E731
        return LatentTrajectory(
            log_probs=t(self.log_probs),
            topk_ids=t(self.topk_ids),
            topk_probs=t(self.topk_probs),
            entropies=t(self.entropies),
            valid=t(self.valid),
            fed=t(self.fed),
            weight_ids=t(self.weight_ids),
            weight_probs=t(self.weight_probs),
            layer_log_probs=t(self.layer_log_probs),
            hidden_states=t(self.hidden_states),
            embeds=t(self.embeds),
            aligned_targets=lst(self.aligned_targets),
            answer_ids=lst(self.answer_ids),
            decoded_steps=lst(self.decoded_steps),
            token_text=self.token_text,
            questions=lst(self.questions),
            gold=lst(self.gold),
            predictions=lst(self.predictions),
            correct=lst(self.correct),
            example_index=lst(self.example_index) if self.example_index is not None else rows,
            method=self.method,
            feedback=self.feedback,
            meta=dict(self.meta),
        )

    # --- helpers ---------------------------------------------------------------------------------
    def decode(self, ids) -> list[str]:
        """Display text of token ids."""
        ids = [int(i) for i in ids]
        if self.token_text is None:
            return [str(i) for i in ids]
        return [self.token_text[i] if 0 <= i < len(self.token_text) else f"<{i}>" for i in ids]

    def step_labels(self, b: int) -> list[str]:
        """Tick labels of example ``b``'s reads: ``z{t+1}`` when it fed latent t+1, else ``end``."""
        return read_labels(self.steps_of(b), self.fed[b].numpy()[: self.steps_of(b)])

    def _np(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()

    def _step_stat(self, name, values, units="") -> StepStatistic:
        return StepStatistic(
            name,
            self._np(values.double() if torch.is_tensor(values) else torch.as_tensor(values)),
            self._np(self.valid),
            self._np(self.fed),
            units,
            self.method,
        )

    def _need_targets(self) -> list[list[list[int]]]:
        if self.aligned_targets is None:
            raise ValueError(
                "no alignment targets: build with examples= (and tokenizer=) or aligned_targets="
            )
        return self.aligned_targets

    def _need_answer(self) -> list[list[int]]:
        if self.answer_ids is None:
            raise ValueError("no answers: build with examples= (and tokenizer=) or answer_ids=")
        return self.answer_ids

    def _need_layers(self) -> torch.Tensor:
        if self.layer_log_probs is None:
            raise ValueError(
                "no logit lens: build with LatentTrajectory.from_trace(..., layers=True) "
                "from a trace "
                "recorded with record_hidden=True"
            )
        return self.layer_log_probs

    def _target_matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded distinct targets ``[B, S, m]`` (ids, -1 padding -> 0) and their mask."""
        tg = self._need_targets()
        B, S = self.num_examples, self.num_steps
        m = max((len(set(x)) for per in tg for x in per), default=0)
        ids = torch.zeros(B, S, max(m, 1), dtype=torch.long)
        mask = torch.zeros(B, S, max(m, 1), dtype=torch.bool)
        for b, per in enumerate(tg):
            for t, x in enumerate(per):
                u = list(dict.fromkeys(x))
                if u:
                    ids[b, t, : len(u)] = torch.tensor(u)
                    mask[b, t, : len(u)] = True
        return ids, mask

    def _token_stats(self, lp: torch.Tensor | None, ids: torch.Tensor, mask: torch.Tensor):
        """(probs, ranks) of ``ids`` [B, S, (L+1,) m] under ``lp`` (the top-k when lp is None)."""
        if lp is not None:
            g = (
                ids
                if ids.dim() == lp.dim()
                else ids.unsqueeze(2).expand(*lp.shape[:3], ids.shape[-1])
            )
            probs = lp.gather(-1, g).exp()
            ranks = _rank_of(lp, g).double()
        else:
            eq = self.topk_ids.unsqueeze(-2) == ids.unsqueeze(-1)  # [B, S, m, k]
            probs = (eq * self.topk_probs.unsqueeze(-2)).sum(-1)
            pos = eq.float().argmax(-1).double() + 1
            ranks = torch.where(eq.any(-1), pos, torch.full_like(pos, math.nan))
        if mask.dim() < probs.dim():
            mask = mask.unsqueeze(2).expand_as(probs)
        return probs.masked_fill(~mask, 0.0), ranks.masked_fill(~mask, math.nan), mask

    @staticmethod
    def _reduce(values: torch.Tensor, mask: torch.Tensor, reduce: str, kind: str) -> torch.Tensor:
        any_ = mask.any(-1)
        v = values.double()
        if reduce == "sum":
            out = torch.where(mask, v, torch.zeros_like(v)).sum(-1)
        elif reduce == "mean":
            out = torch.where(mask, v, torch.zeros_like(v)).sum(-1) / mask.sum(-1).clamp(min=1)
        elif reduce == "min":
            out = (
                torch.where(mask & ~torch.isnan(v), v, torch.full_like(v, math.inf)).min(-1).values
            )
            out = torch.where(torch.isinf(out), torch.full_like(out, math.nan), out)
        elif reduce == "max":
            out = (
                torch.where(mask & ~torch.isnan(v), v, torch.full_like(v, -math.inf)).max(-1).values
            )
            out = torch.where(torch.isinf(out), torch.full_like(out, math.nan), out)
        else:
            raise ValueError(f"reduce={reduce!r} for {kind}; use 'min', 'max', 'mean' or 'sum'")
        return torch.where(any_, out, torch.full_like(out, math.nan))

    # --- statistics (LM-head read) ----------------------------------------------------------------
    def entropy(self) -> StepStatistic:
        """Entropy (nats) of each step's full distribution."""
        ent = _entropy(self.log_probs) if self.log_probs is not None else self.entropies
        return self._step_stat("entropy", ent, "nats")

    def top1_probability(self) -> StepStatistic:
        """Probability of each step's argmax token."""
        return self._step_stat("top-1 probability", self.topk_probs[..., 0])

    def top_k(self, k: int = 10, layer: int | None = None) -> TopKTokens:
        """Top-``k`` tokens of each step (``layer``: that layer of the logit lens instead)."""
        lp = self._need_layers()[:, :, layer] if layer is not None else self.log_probs
        if lp is not None:
            k = min(k, lp.shape[-1])
            vals, ids = lp.topk(k, -1)
            probs = vals.exp()
        else:
            k = min(k, self.topk_ids.shape[-1])
            ids, probs = self.topk_ids[..., :k], self.topk_probs[..., :k]
        is_t = torch.zeros_like(ids, dtype=torch.bool)
        if self.aligned_targets is not None:
            tid, tmask = self._target_matrix()
            is_t = ((ids.unsqueeze(-1) == tid.unsqueeze(-2)) & tmask.unsqueeze(-2)).any(-1)
        text = np.array(self.decode(ids.flatten().tolist()), dtype=object).reshape(tuple(ids.shape))
        return TopKTokens(
            self._np(ids),
            self._np(probs),
            text,
            self._np(is_t),
            self._np(self.valid),
            self._np(self.fed),
            layer,
            self.method,
        )

    def target_probability(self, reduce: str = "sum") -> StepStatistic:
        """Probability of the aligned CoT tokens (default: summed over the distinct tokens)."""
        ids, mask = self._target_matrix()
        probs, _, m = self._token_stats(self.log_probs, ids, mask)
        return self._step_stat(
            f"target probability ({reduce})", self._reduce(probs, m, reduce, "target_probability")
        )

    def target_rank(self, reduce: str = "min") -> StepStatistic:
        """1-based rank of the aligned CoT tokens (best rank over the step's tokens by default)."""
        ids, mask = self._target_matrix()
        _, ranks, m = self._token_stats(self.log_probs, ids, mask)
        return self._step_stat(
            f"target rank ({reduce})", self._reduce(ranks, m, reduce, "target_rank")
        )

    def _answer_matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        ans = self._need_answer()
        ids = (
            torch.tensor([a[0] if a else 0 for a in ans], dtype=torch.long)[:, None, None]
            .expand(self.num_examples, self.num_steps, 1)
            .clone()
        )
        mask = torch.tensor([bool(a) for a in ans])[:, None, None].expand_as(ids).clone()
        return ids, mask

    def answer_probability(self) -> StepStatistic:
        """Probability of the first answer token at each step."""
        ids, mask = self._answer_matrix()
        probs, _, m = self._token_stats(self.log_probs, ids, mask)
        return self._step_stat("answer-token probability", self._reduce(probs, m, "sum", "answer"))

    def answer_rank(self) -> StepStatistic:
        """1-based rank of the first answer token at each step."""
        ids, mask = self._answer_matrix()
        _, ranks, m = self._token_stats(self.log_probs, ids, mask)
        return self._step_stat("answer-token rank", self._reduce(ranks, m, "min", "answer"))

    def collapse_step(
        self, threshold: float = 0.5, criterion: str = "prob", top_p: float = 0.9
    ) -> torch.Tensor:
        """First valid read whose distribution collapsed onto the first answer token.

        Returns a ``[B]`` tensor (-1: never).

        See the module docstring for the criteria ``"prob"`` (``p >= threshold``), ``"argmax"``
        and ``"top_p"`` (the token is inside the nucleus of mass ``top_p``).
        """
        if criterion not in COLLAPSE_CRITERIA:
            raise ValueError(f"criterion={criterion!r}; choose one of {COLLAPSE_CRITERIA}")
        ids, mask = self._answer_matrix()
        probs, ranks, _ = self._token_stats(self.log_probs, ids, mask)
        p, rank = probs[..., 0], ranks[..., 0]
        if criterion == "prob":
            hit = p >= threshold
        elif criterion == "argmax":
            hit = rank == 1
        else:
            if self.log_probs is not None:
                sp = self.log_probs.exp().sort(-1, descending=True).values
            else:
                sp = self.topk_probs.sort(-1, descending=True).values
            before = sp.cumsum(-1) - sp  # mass strictly above each rank
            r = rank.nan_to_num(float(sp.shape[-1] + 1)).long().clamp(1, sp.shape[-1]) - 1
            mass_above = before.gather(-1, r[..., None])[..., 0]
            hit = (mass_above < top_p) & ~torch.isnan(rank)
        hit = hit & self.valid & mask[..., 0]
        first = torch.where(hit.any(1), hit.float().argmax(1), torch.full((self.num_examples,), -1))
        return first.long()

    def collapsed(
        self, threshold: float = 0.5, criterion: str = "prob", top_p: float = 0.9
    ) -> StepStatistic:
        """1 from the collapse step on, 0 before (NaN on padded steps)."""
        c = self.collapse_step(threshold, criterion, top_p)
        t = torch.arange(self.num_steps)[None, :]
        val = ((c[:, None] >= 0) & (t >= c[:, None])).double()
        return self._step_stat("collapsed", val)

    # --- statistics (logit lens) ------------------------------------------------------------------
    def _layer_top_tokens(self) -> np.ndarray:
        lp = self._need_layers()
        top = lp.argmax(-1)
        return np.array(self.decode(top.flatten().tolist()), dtype=object).reshape(tuple(top.shape))

    def _layer_stat(self, name, values, units="") -> LayerStatistic:
        return LayerStatistic(
            name,
            self._np(values.double()),
            self._layer_top_tokens(),
            self._np(self.valid),
            self._np(self.fed),
            units,
            self.method,
        )

    def layer_entropy(self) -> LayerStatistic:
        """Entropy (nats) of every layer's logit-lens distribution ``[B, S, L+1]``."""
        return self._layer_stat("entropy", _entropy(self._need_layers()), "nats")

    def layer_top1_probability(self) -> LayerStatistic:
        """Probability of every layer's logit-lens argmax."""
        return self._layer_stat("top-1 probability", self._need_layers().max(-1).values.exp())

    def layer_target_probability(self, reduce: str = "sum") -> LayerStatistic:
        """Aligned-target probability per layer (see :meth:`target_probability`)."""
        ids, mask = self._target_matrix()
        probs, _, m = self._token_stats(self._need_layers(), ids, mask)
        return self._layer_stat(
            f"target probability ({reduce})", self._reduce(probs, m, reduce, "target")
        )

    def layer_target_rank(self, reduce: str = "min") -> LayerStatistic:
        """Aligned-target rank per layer (see :meth:`target_rank`)."""
        ids, mask = self._target_matrix()
        _, ranks, m = self._token_stats(self._need_layers(), ids, mask)
        return self._layer_stat(f"target rank ({reduce})", self._reduce(ranks, m, reduce, "target"))

    def layer_answer_probability(self) -> LayerStatistic:
        """First-answer-token probability per layer."""
        ids, mask = self._answer_matrix()
        probs, _, m = self._token_stats(self._need_layers(), ids, mask)
        return self._layer_stat("answer-token probability", self._reduce(probs, m, "sum", "answer"))

    # --- superposition ----------------------------------------------------------------------------
    def superposition(self, source: str = "auto", k: int = 10) -> Superposition:
        """Token weights per step.

        Args:
            source: ``"fed"``: the weights the rule actually fed (vocabulary rules only);
                ``"read"``: the LM-head top-``k``; ``"auto"``: fed when available, else read.
            k: Tokens for ``"read"``.
        """
        if source not in ("auto", "fed", "read"):
            raise ValueError(f"source={source!r}; use 'auto', 'fed' or 'read'")
        if source == "fed" and self.weight_ids is None:
            raise ValueError(
                f"the feedback rule ({self.feedback or 'unknown'}) fed no superposition weights; "
                "use source='read' for the LM-head top-k"
            )
        if source != "read" and self.weight_ids is not None:
            ids, w, valid, src = self.weight_ids, self.weight_probs, self.fed, "fed"
        else:
            top = self.top_k(k)
            ids, w, valid, src = (
                torch.as_tensor(top.ids),
                torch.as_tensor(top.probs),
                self.valid,
                "read",
            )
        text = np.array(self.decode(ids.flatten().tolist()), dtype=object).reshape(tuple(ids.shape))
        return Superposition(
            self._np(ids), self._np(w), text, self._np(valid), self._np(self.fed), src, self.method
        )

    # --- tables -----------------------------------------------------------------------------------
    def summary(self, threshold: float = 0.5, criterion: str = "prob") -> pd.DataFrame:
        """One row per example and valid step: entropy, top-1 token, target rank/prob, collapse."""
        ent = self.entropy().values
        top1 = self.topk_ids[..., 0]
        p1 = self.topk_probs[..., 0]
        has_t = self.aligned_targets is not None
        has_a = self.answer_ids is not None
        t_rank = self.target_rank().values if has_t else None
        t_prob = self.target_probability().values if has_t else None
        a_prob = self.answer_probability().values if has_a else None
        coll = self.collapse_step(threshold, criterion) if has_a else None
        rows = []
        for b in range(self.num_examples):
            labels = self.step_labels(b)
            for t in range(self.steps_of(b)):
                row = {
                    "method": self.method,
                    "example": b,
                    "step": t,
                    "label": labels[t],
                    "fed": bool(self.fed[b, t]),
                    "entropy": float(ent[b, t]),
                    "top1_id": int(top1[b, t]),
                    "top1_token": self.decode([int(top1[b, t])])[0],
                    "top1_prob": float(p1[b, t]),
                }
                if has_t:
                    tg = self.aligned_targets[b][t]
                    row.update(
                        targets=join_tokens(self.decode(tg)),
                        target_rank=float(t_rank[b, t]),
                        target_prob=float(t_prob[b, t]),
                    )
                if has_a:
                    row.update(
                        answer_prob=float(a_prob[b, t]),
                        collapse_step=int(coll[b]),
                        collapsed=bool(coll[b] >= 0 and t >= coll[b]),
                    )
                if self.correct is not None:
                    row["correct"] = self.correct[b]
                rows.append(row)
        return pd.DataFrame(rows)

    def metrics(
        self, k: int = 10, threshold: float = 0.5, criterion: str = "prob"
    ) -> dict[str, Any]:
        """JSON-able aggregate numbers (per-latent means are lists indexed by read ``t``)."""

        def lst(a):
            return [None if not np.isfinite(x) else float(x) for x in a]

        out: dict[str, Any] = {
            "method": self.method,
            "n_examples": self.num_examples,
            "mean_latent_steps": float(self.fed.sum(1).double().mean()),
        }
        ent = self.entropy()
        out["entropy_by_step"] = lst(ent.mean())
        if self.correct is not None:
            out["accuracy"] = float(np.mean(self.correct)) if self.correct else None
        if self.aligned_targets is not None:
            fed = self._np(self.fed)
            rank = self.target_rank()
            prob = self.target_probability()
            r = np.where(fed, rank.values, np.nan)
            p = np.where(fed, prob.values, np.nan)
            has = fed & ~np.isnan(p)
            with quiet_nan():
                out["target_rank_by_latent"] = lst(np.nanmean(r, 0))
                out["target_prob_by_latent"] = lst(np.nanmean(p, 0))
                out[f"target_in_top{k}_by_latent"] = lst(
                    [
                        np.mean(r[has[:, t], t] <= k) if has[:, t].any() else np.nan
                        for t in range(r.shape[1])
                    ]
                )
                out["mean_target_rank"] = float(np.nanmean(r)) if np.isfinite(r).any() else None
                out["median_target_rank"] = float(np.nanmedian(r)) if np.isfinite(r).any() else None
                out["mean_target_prob"] = float(np.nanmean(p)) if has.any() else None
                out[f"target_in_top{k}"] = (
                    float(np.mean(r[has & ~np.isnan(r)] <= k)) if has.any() else None
                )
            if self.num_examples > 1:
                # control: the same latents scored against ANOTHER example's CoT segments. Digits
                # are likely in any arithmetic latent; only a gap to this control shows alignment.
                rolled = replace(
                    self, aligned_targets=self.aligned_targets[1:] + self.aligned_targets[:1]
                )
                rc = np.where(fed, rolled.target_rank().values, np.nan)
                pc = np.where(fed, rolled.target_probability().values, np.nan)
                with quiet_nan():
                    out["control_mean_target_rank"] = (
                        float(np.nanmean(rc)) if np.isfinite(rc).any() else None
                    )
                    out["control_mean_target_prob"] = (
                        float(np.nanmean(pc)) if np.isfinite(pc).any() else None
                    )
        if self.answer_ids is not None:
            c = self.collapse_step(threshold, criterion).numpy()
            out["collapse_criterion"] = (
                f"{criterion}>={threshold}" if criterion == "prob" else criterion
            )
            out["collapse_rate"] = float(np.mean(c >= 0))
            out["mean_collapse_step"] = float(c[c >= 0].mean()) if (c >= 0).any() else None
            out["answer_prob_final_read"] = float(
                np.mean(
                    [
                        self.answer_probability().values[b, self.steps_of(b) - 1]
                        for b in range(self.num_examples)
                    ]
                )
            )
        return out

    # --- figures ----------------------------------------------------------------------------------
    def figure(self, example: int = 0, k: int = 10) -> go.Figure:
        """The default view: step x top-k token heatmap of one example."""
        return self.top_k(k).figure(example)


def _original_order(trace: Trace) -> list[int] | None:
    """Rows of ``trace`` sorted back into the caller's example order (None when already so)."""
    idx = trace.meta.get("example_index")
    if idx is None:
        return None
    idx = [int(i) for i in idx]
    if sorted(idx) != list(range(len(idx))):
        raise ValueError("trace.meta['example_index'] is not a permutation of its rows")
    order = sorted(range(len(idx)), key=lambda r: idx[r])
    return None if order == list(range(len(idx))) else order


_COMPARABLE = {
    "entropy": "entropy",
    "top1_probability": "top1_probability",
    "target_probability": "target_probability",
    "target_rank": "target_rank",
    "answer_probability": "answer_probability",
    "answer_rank": "answer_rank",
}


def compare_trajectories(
    trajectories: Mapping[str, LatentTrajectory],
    example: int = 0,
    statistic: str = "entropy",
) -> go.Figure:
    """Overlay one statistic of several methods on the same example (one line per method).

    Args:
        trajectories: ``{method name: trajectory}`` built on the same examples.
        example: Row to compare (row ``b`` must be the same question in every trajectory).
        statistic: One of ``entropy``, ``top1_probability``, ``target_probability``,
            ``target_rank``, ``answer_probability``, ``answer_rank``.

    The figure is :func:`workbench.viz.trajectory_figures.comparison_figure`.
    """
    if statistic not in _COMPARABLE:
        raise ValueError(f"statistic={statistic!r}; choose one of {sorted(_COMPARABLE)}")
    if not trajectories:
        raise ValueError("compare_trajectories needs at least one trajectory")
    qs = {n: tr.questions[example] for n, tr in trajectories.items() if tr.questions is not None}
    if len(set(qs.values())) > 1:
        raise ValueError(f"example {example} is not the same question in every trajectory: {qs}")
    from workbench.viz.trajectory_figures import comparison_figure

    lines, name = [], statistic
    for method, tr in trajectories.items():
        stat = getattr(tr, _COMPARABLE[statistic])()
        name = stat.name
        lines.append((method, stat.example(example), tr.step_labels(example)))
    return comparison_figure(
        lines,
        name,
        example=example,
        question=next(iter(qs.values()), None),
        log_y=statistic.endswith("rank"),
    )
