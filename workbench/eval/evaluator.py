"""The shared evaluator: batched greedy generation on the engine, exact-match and length metrics.

Every method is scored the same way: prompts ``question <bot>`` are left-padded into batches
and run through :func:`workbench.engine.loop.run_latent` (KV cache, no per-example loop) with the
method's :class:`LatentSpec` (none for CoT / no-CoT). The generated tokens are split at
``<eot>``: what comes before is explicit reasoning, what comes after (up to ``<eos>``) the answer.

Reasoning length is generic (RESEARCH "Definitions": report latent steps and explicit
tokens separately, and their sum):

* ``latent_steps``: latent positions fed by the engine;
* ``reasoning_tokens``: explicit tokens written before ``<eot>``;
* ``reasoning_positions`` = latent_steps + reasoning_tokens;
* ``answer_tokens``: tokens after ``<eot>`` up to and including ``<eos>``;
* ``forward_passes``: model calls the example took part in (prefill counts one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workbench.data.layout import pad_prompts, prompt_ids, tokenize_examples
from workbench.data.tokenizer import special_ids
from workbench.engine.loop import run_latent
from workbench.engine.spec import LatentSpec
from workbench.engine.trace import Trace
from workbench.eval.answers import extract_fallback, normalize_answer


@dataclass
class EvalResult:
    """Per-example rows, a one-row summary, and optionally the engine traces."""

    per_example: pd.DataFrame
    summary: dict
    trace: Trace | None = None
    extra: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """The summary as a one-row DataFrame (concatenate several for a comparison table)."""
        return pd.DataFrame([self.summary])


def _split_generated(ids: list[int], sp, tokenizer, append_eot: bool):
    """(reasoning ids, answer ids, answer text) of one generated sequence."""
    if sp.eos in ids:
        ids = ids[: ids.index(sp.eos)]
        eos = 1
    else:
        eos = 0
    if append_eot:
        reasoning, answer = [], ids
    elif sp.eot in ids:
        k = ids.index(sp.eot)
        reasoning, answer = ids[:k], ids[k + 1 :]
    else:  # no <eot>: everything is reasoning, try the explicit formats
        text = tokenizer.decode(ids, skip_special_tokens=True)
        return ids, [], extract_fallback(text) or "", eos
    return reasoning, answer, tokenizer.decode(answer, skip_special_tokens=True), eos


@torch.no_grad()
def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples,
    *,
    spec: LatentSpec | None = None,
    method: str = "",
    batch_size: int = 256,
    max_new_tokens: int | None = None,
    record_trace: bool = False,
    record_hidden: bool = False,
    top_k: int = 10,
    seed: int = 0,
    compile_layers: bool = False,
) -> EvalResult:
    """Exact-match accuracy and reasoning lengths of ``model`` on ``examples`` (list or HF Dataset).

    ``max_new_tokens`` defaults to the longest gold continuation + 8: the answer, plus the explicit
    reasoning unless the spec appends ``<eot>`` after its latents (a spec that does not, such as
    LEPO's soft prefix, lets the model write the rest of its rationale). Stochastic feedback rules
    draw from a generator seeded with ``seed``. ``compile_layers`` runs the model's layers
    compiled (:func:`~workbench.engine.loop.run_latent`): on 2 CPU cores it saves 0.4-0.7 ms per
    example at batch 256 against a one-off 10-90 s, so it pays from tens of thousands of examples
    (or many models of one class) in a process.
    """
    examples = [dict(e) for e in examples]
    if not examples:
        raise ValueError("evaluate() got no examples")
    sp = special_ids(tokenizer)
    texs = tokenize_examples(examples, tokenizer)
    append_eot = spec.append_eot if spec is not None else False
    if max_new_tokens is None:
        longest = max(len(t.answer) + (0 if append_eot else len(t.reasoning()) + 1) for t in texs)
        max_new_tokens = longest + 8
    was_training = model.training
    model.eval()
    if spec is not None and spec.feedback is not None:
        spec.feedback.eval()
    dev = model.get_input_embeddings().weight.device
    gen = torch.Generator(device=dev).manual_seed(seed)
    order = sorted(range(len(texs)), key=lambda i: len(texs[i].question))
    rows: list[dict] = [None] * len(texs)  # type: ignore[list-item]
    traces, seconds = [], 0.0
    t_start = time.perf_counter()
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = pad_prompts([prompt_ids(texs[i], sp) for i in idx], sp.pad)
        out = run_latent(
            model,
            batch["input_ids"].to(dev),
            batch["attention_mask"].to(dev),
            sp,
            feedback=spec.feedback if spec else None,
            stop=spec.stop if spec else None,
            max_latent_steps=spec.max_latent_steps if spec else 0,
            max_new_tokens=max_new_tokens,
            append_eot=append_eot,
            top_k=top_k,
            record_hidden=record_hidden,
            generator=gen,
            compile_layers=compile_layers,
        )
        seconds += out.seconds
        if record_trace:
            tr = out.trace
            tr.meta["example_index"] = idx
            traces.append(tr)
        for j, i in enumerate(idx):
            ids = out.generated[j, : out.n_generated[j]].tolist()
            reasoning, answer, answer_text, eos = _split_generated(ids, sp, tokenizer, append_eot)
            gold = normalize_answer(tokenizer.decode(texs[i].answer, skip_special_tokens=True))
            pred = normalize_answer(answer_text)
            latent = int(out.trace.n_latent[j])
            rows[i] = {
                "index": i,
                "question": examples[i]["question"],
                "gold": gold,
                "prediction": pred,
                "correct": pred == gold,
                "latent_steps": latent,
                "reasoning_tokens": len(reasoning),
                "reasoning_positions": latent + len(reasoning),
                "answer_tokens": len(answer) + eos,
                "gold_reasoning_tokens": len(texs[i].reasoning()),
                "forward_passes": int(out.forward_passes[j]),
                "generated": tokenizer.decode(ids, skip_special_tokens=False),
            }
    wall = time.perf_counter() - t_start
    if was_training:
        model.train()
    df = pd.DataFrame(rows)
    trace = None
    if traces:
        trace = Trace.concat(traces, sp.pad)
        trace.meta["example_index"] = [i for t in traces for i in t.meta["example_index"]]
    summary = {
        "method": method,
        "n": len(df),
        "accuracy": float(df["correct"].mean()),
        "latent_steps": float(df["latent_steps"].mean()),
        "reasoning_tokens": float(df["reasoning_tokens"].mean()),
        "reasoning_positions": float(df["reasoning_positions"].mean()),
        "answer_tokens": float(df["answer_tokens"].mean()),
        "total_positions": float((df["reasoning_positions"] + df["answer_tokens"]).mean()),
        "forward_passes": float(df["forward_passes"].mean()),
        "gold_reasoning_tokens": float(df["gold_reasoning_tokens"].mean()),
        "ms_per_example": 1000.0 * wall / len(df),
        "engine_seconds": seconds,
    }
    return EvalResult(df, summary, trace, {"max_new_tokens": max_new_tokens})
