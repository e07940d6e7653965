"""Are the latents used? Accuracy with the latents zeroed, swapped, or replaced by a constant.

RESEARCH Part A 7: studies of latent shortcuts find trained latents often bypassed, "check by
zeroing or swapping them at inference"; item 3 of what follows: "latents zeroed, swapped with
another example's, or replaced by the pause embedding at inference" are the controls that make
a latent result interpretable. Every condition runs batched on the engine
(:func:`workbench.engine.loop.run_latent` through :func:`workbench.eval.evaluator.evaluate`),
with the model's own spec except for the feedback rule:

* ``normal``: the spec as trained;
* ``zeroed``: :class:`~workbench.engine.feedback.ZeroFeedback`, the spec's stop rule;
* ``swapped``: :class:`~workbench.engine.feedback.ReplayFeedback` of the normal run's recorded
  embeddings (``trace.embeds``), rolled by one example: in the evaluator's order (questions
  sorted by length, so neighbours are of the same size) example ``p`` gets example ``p - 1``'s
  latents (the first gets the last's). Each example keeps its own number of latent steps from
  the normal run (a per-sample ``FixedSteps``); where the donor fed fewer, the rest are zeros;
* ``pause_embedding``: one constant vector at every latent slot, the spec's stop rule: the
  trained pause vector for a model fed by
  :class:`~workbench.engine.feedback.PauseFeedback` (so this condition *is* its normal run),
  otherwise the input embedding of the ``<latent>`` token.

``drop = accuracy(normal) - accuracy(condition)``; the latents count as used only if every
ablation hurts, so :func:`usage_summary` reports ``usage_drop`` = the smallest of the three drops.
Without latents (spec ``None``: CoT / no-CoT, or ``max_latent_steps = 0``) the ablated rows and
every drop are NaN.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd
import torch

from workbench.data.layout import tokenize_examples
from workbench.data.tokenizer import special_ids
from workbench.engine.feedback import (
    ConstantFeedback,
    PauseFeedback,
    ReplayFeedback,
    ZeroFeedback,
)
from workbench.engine.spec import LatentSpec
from workbench.engine.stop import FixedSteps
from workbench.engine.trace import Trace
from workbench.eval.evaluator import EvalResult, evaluate

NORMAL, ZEROED, SWAPPED, PAUSE_EMBEDDING = "normal", "zeroed", "swapped", "pause_embedding"
CONDITIONS = (NORMAL, ZEROED, SWAPPED, PAUSE_EMBEDDING)
"""Rows of :func:`latent_usage`, in order."""
DROP_KEYS = {ZEROED: "drop_zero", SWAPPED: "drop_swap", PAUSE_EMBEDDING: "drop_pause"}
"""Condition -> its key in :func:`usage_summary`."""


def _chunks(texs, batch_size: int) -> list[list[int]]:
    """The evaluator's batches: indices sorted (stably) by question length, cut every
    ``batch_size``; evaluating one chunk at a time keeps its row order."""
    order = sorted(range(len(texs)), key=lambda i: len(texs[i].question))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def _merge(parts: list[tuple[list[int], EvalResult]], condition: str, pad_id: int) -> EvalResult:
    """One result from per-chunk results (``index`` and ``example_index`` made global)."""
    frames, traces = [], []
    for idx, res in parts:
        df = res.per_example.copy()
        df["index"] = [idx[i] for i in df["index"]]
        frames.append(df)
        if res.trace is not None:
            res.trace.meta["example_index"] = [idx[i] for i in res.trace.meta["example_index"]]
            traces.append(res.trace)
    df = pd.concat(frames, ignore_index=True).sort_values("index", ignore_index=True)
    trace = None
    if traces:
        trace = Trace.concat(traces, pad_id)
        trace.meta["example_index"] = [i for t in traces for i in t.meta["example_index"]]
    summary = {
        "condition": condition,
        "n": len(df),
        "accuracy": float(df["correct"].mean()),
        "latent_steps": float(df["latent_steps"].mean()),
        "engine_seconds": sum(r.summary["engine_seconds"] for _, r in parts),
    }
    return EvalResult(df, summary, trace)


def pause_vector(model, tokenizer, spec: LatentSpec) -> torch.Tensor:
    """The constant of the ``pause_embedding`` condition: the trained pause vector of a
    :class:`PauseFeedback` spec, otherwise the input embedding of ``<latent>``."""
    if isinstance(spec.feedback, PauseFeedback):
        return spec.feedback.vector.detach().clone()
    latent = special_ids(tokenizer).latent
    return model.get_input_embeddings().weight[latent].detach().clone()


@torch.no_grad()
def run_ablations(
    model,
    tokenizer,
    examples,
    spec: LatentSpec | None,
    *,
    batch_size: int = 256,
    seed: int = 0,
    max_new_tokens: int | None = None,
) -> dict[str, EvalResult | None]:
    """The evaluation of every condition (:data:`CONDITIONS`), each with its engine trace.

    Results are per example (``per_example`` in input order; ``trace`` rows in the evaluator's
    order, ``trace.meta["example_index"]``). Ablated conditions are ``None`` without latents;
    ``swapped`` is ``None`` for fewer than two examples.
    """
    examples = [dict(e) for e in examples]
    if not examples:
        raise ValueError("run_ablations() got no examples")
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size}: expected an integer >= 1")
    sp = special_ids(tokenizer)
    texs = tokenize_examples(examples, tokenizer)
    if max_new_tokens is None:  # the evaluator's default, over all examples
        explicit = spec is None  # CoT writes its reasoning and <eot> before the answer
        longest = max(len(t.answer) + (len(t.reasoning()) + 1 if explicit else 0) for t in texs)
        max_new_tokens = longest + 8
    chunks = _chunks(texs, batch_size)

    def run(condition: str, spec_for) -> EvalResult:
        parts = []
        for c, idx in enumerate(chunks):
            res = evaluate(
                model,
                tokenizer,
                [examples[i] for i in idx],
                spec=spec_for(c, idx),
                method=condition,
                batch_size=len(idx),
                max_new_tokens=max_new_tokens,
                record_trace=True,
                seed=seed + c,
            )
            parts.append((idx, res))
        return _merge(parts, condition, sp.pad)

    normal = run(NORMAL, lambda c, idx: spec)
    out: dict[str, EvalResult | None] = dict.fromkeys(CONDITIONS)
    out[NORMAL] = normal
    if spec is None or spec.max_latent_steps == 0:
        return out
    out[ZEROED] = run(ZEROED, lambda c, idx: replace(spec, feedback=ZeroFeedback()))
    constant = ConstantFeedback(pause_vector(model, tokenizer, spec))
    out[PAUSE_EMBEDDING] = run(PAUSE_EMBEDDING, lambda c, idx: replace(spec, feedback=constant))
    if len(examples) >= 2:
        # the normal trace's rows are in evaluation order, chunk after chunk
        donors = normal.trace.embeds.roll(1, dims=0)
        steps = normal.trace.n_latent
        starts = [sum(len(x) for x in chunks[:c]) for c in range(len(chunks))]

        def swapped(c, idx):
            rows = slice(starts[c], starts[c] + len(idx))
            return replace(
                spec, feedback=ReplayFeedback(donors[rows]), stop=FixedSteps(steps[rows].clone())
            )

        out[SWAPPED] = run(SWAPPED, swapped)
    return out


def usage_frame(results: dict[str, EvalResult | None]) -> pd.DataFrame:
    """One row per condition: ``condition, accuracy, drop, latent_steps, n`` (NaN where a
    condition did not run); ``drop = normal - condition``."""
    base = results[NORMAL].summary["accuracy"]
    rows = []
    for cond in CONDITIONS:
        res = results.get(cond)
        acc = math.nan if res is None else res.summary["accuracy"]
        rows.append(
            {
                "condition": cond,
                "accuracy": acc,
                "drop": base - acc,
                "latent_steps": math.nan if res is None else res.summary["latent_steps"],
                "n": results[NORMAL].summary["n"] if res is None else res.summary["n"],
            }
        )
    return pd.DataFrame(rows)


def latent_usage(
    model,
    tokenizer,
    examples,
    spec: LatentSpec | None,
    *,
    batch_size: int = 256,
    seed: int = 0,
    max_new_tokens: int | None = None,
) -> pd.DataFrame:
    """Accuracy under each condition and its drop from normal (see the module docstring).

    ``latent_usage(tm.model, tm.tokenizer, examples, tm.spec)`` for a ``TrainedModel``.
    """
    results = run_ablations(
        model,
        tokenizer,
        examples,
        spec,
        batch_size=batch_size,
        seed=seed,
        max_new_tokens=max_new_tokens,
    )
    return usage_frame(results)


def usage_summary(frame: pd.DataFrame) -> dict[str, float]:
    """``drop_zero``, ``drop_swap``, ``drop_pause`` and ``usage_drop`` (the smallest of the drops
    that ran: the latents are used only if every ablation hurts; NaN if none ran)."""
    drops = dict(zip(frame["condition"], frame["drop"], strict=True))
    out = {key: float(drops[cond]) for cond, key in DROP_KEYS.items()}
    ran = [v for v in out.values() if not math.isnan(v)]
    out["usage_drop"] = min(ran) if ran else math.nan
    return out


def usage_drop(
    model,
    tokenizer,
    examples,
    spec: LatentSpec | None,
    *,
    batch_size: int = 256,
    seed: int = 0,
    max_new_tokens: int | None = None,
) -> dict[str, float]:
    """:func:`usage_summary` of :func:`latent_usage`: ``{"drop_zero", "drop_swap",
    "drop_pause", "usage_drop"}`` (NaN without latents)."""
    frame = latent_usage(
        model,
        tokenizer,
        examples,
        spec,
        batch_size=batch_size,
        seed=seed,
        max_new_tokens=max_new_tokens,
    )
    return usage_summary(frame)
