"""Chain-length metrics of latent reasoning: effective compression rate and global parallelism.

Definitions (RESEARCH "Definitions the workbench adopts" and Part A 1.5):

* **Effective compression rate, ECR@K** (:func:`effective_compression_rate`). The Latent-SFT
  formula could not be recovered, so the workbench defines it: for latent step ``i`` aligned with
  the explicit CoT segment ``S_i`` of ``r`` tokens, the fraction of ``S_i``'s tokens (counted with
  multiplicity, one per position) inside the top-K support of latent ``i``'s distribution, averaged
  over the steps of an example, then over examples, times ``r``. All segment tokens in the top-K
  give ``r``; none gives 0. Always report K and r with it (the returned dict carries both).
  :func:`plain_compression_ratio` is the plain (explicit CoT tokens) / (latent steps).
* **Alignments** (:mod:`workbench.lens.alignment`, the one implementation):
  :func:`aligned_segments_fixed_rate` (Latent-SFT: consecutive ``r``-token segments of the CoT,
  exactly the stage-1 segments) and :func:`aligned_segments_by_step` (Coconut: ``c`` latents per
  reasoning step, latent ``j`` <-> step ``j // c``, ``c * len(steps)`` segments) are
  ``Alignment(...).targets(tex)``; :func:`ecr_from_trace` also takes any ``alignment=``.
* **Which distribution belongs to latent i.** In the engine's
  :class:`~workbench.engine.trace.Trace`, step ``t`` reads the distribution at the current last
  position (``t = 0``: ``<bot>``) and, if the sample continues, feeds latent ``t + 1``. So latent
  ``i`` (1-based) belongs to step ``t = i - 1``: ``trace.topk_ids[:, i-1]`` is the top of the
  LM-head distribution it was made from, ``trace.fed[:, i-1]`` says it exists, and for vocabulary
  feedback rules ``trace.weight_ids/weight_probs[:, i-1]`` are the tokens and weights actually
  mixed into it (the top-k of the same distribution at the rule's temperature; pass them instead
  of ``topk_ids`` to score exactly what was fed).
* **Effective global parallelism, N_eff** (:func:`effective_global_parallelism`, RESEARCH 1.5
  steps 1-8, from the reference's ``parallelism.py``): for one question with M explicit solution
  paths, reference latents ``z_{m,s}`` of each path (stage-1 encoder), each path split into T
  equal segments, candidate latents ``z^_t`` with distributions ``p_t`` (top-100), greedy
  assignment of each ``t`` (in order) to the nearest unused ``s`` by cosine distance,
  ``score_m = (1/T) sum_t log(sum_{v in S_{m,sigma(t)} cap Top100(p_t)} p_t(v) + eps)``
  (``S`` as a token set), ``pi = softmax(score / tau)``, ``N_eff = exp(H(pi))``;
  ``N_eff_naive`` is the same with uniformly random assignments averaged over 64 trials; report
  both and their ratio.
* **Multiplication paths** (:func:`latent_sft_parallelism`): M = 2 explicit solution paths per
  question, the CoT of ``a*b`` (the example's own) and the CoT of ``b*a``
  (``multiplication.make_example(b, a)``), both read by the stage-1 encoder after the *same*
  question prompt ``a*b`` (they are two solutions of one question). Each path is split into T
  equal parts (T = the stage-2 model's latent steps on that question) and the encoder places a
  compress token after each part, so there is exactly one reference latent per segment.
  Reference latents are the encoder's superpositions ``softmax(topk(E h)) @ E``, the same space as
  the candidates ``z^_t`` (the embeddings the engine fed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from workbench.data.layout import TokenizedExample
from workbench.lens.alignment import Alignment

# --------------------------------------------------------------------------------------------
# Alignments
# --------------------------------------------------------------------------------------------


def aligned_segments_fixed_rate(tex: TokenizedExample, r: int) -> list[list[int]]:
    """Latent-SFT alignment: latent ``i`` <-> the i-th ``r``-token segment of the CoT.

    Exactly the stage-1 segments: ``Alignment(tokens_per_latent=r).targets(tex)``.
    """
    return Alignment(tokens_per_latent=r).targets(tex)


def aligned_segments_by_step(tex: TokenizedExample, c: int) -> list[list[int]]:
    """Coconut alignment: ``c`` latents per step, latent ``j`` (0-based) <-> ``tex.steps[j // c]``.

    ``c * len(tex.steps)`` segments: ``Alignment(latents_per_step=c).targets(tex)``.
    """
    return Alignment(latents_per_step=c).targets(tex)


def equal_segments(ids: Sequence[int], T: int) -> list[list[int]]:
    """``ids`` cut into ``T`` contiguous, nearly equal parts (sizes differ by at most 1; some may be
    empty when ``len(ids) < T``)."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    n = len(ids)
    bounds = [round(i * n / T) for i in range(T + 1)]
    return [list(ids[bounds[i] : bounds[i + 1]]) for i in range(T)]


# --------------------------------------------------------------------------------------------
# Effective compression rate
# --------------------------------------------------------------------------------------------


def effective_compression_rate(
    trace_topk_ids: torch.Tensor,
    trace_fed: torch.Tensor,
    aligned_segments: Sequence[Sequence[Sequence[int]]],
    K: int,
    r: float,
) -> dict:
    """ECR@K (module docstring): ``r`` x the mean fraction of aligned-segment tokens in latent
    i's top-K.

    ``trace_topk_ids`` [B, S, k>=K] (sorted by probability, as the engine records them) and
    ``trace_fed`` [B, S] in the trace's row order; ``aligned_segments[b][i-1]`` is the segment
    aligned with latent ``i`` of row ``b``. Latent ``i`` exists when ``trace_fed[b, i-1]``; pairs
    where either the latent or the segment is missing (or the segment is empty) are skipped.

    Returns ``ecr``, ``K``, ``r``, ``hit_fraction`` (the mean fraction), ``pairs`` (scored
    latent/segment pairs), ``examples`` (rows with >= 1 pair), ``segment_coverage`` (fraction of
    segments that had a latent), ``per_example`` (mean fraction per row, NaN if none).
    """
    ids = torch.as_tensor(trace_topk_ids)
    fed = torch.as_tensor(trace_fed).bool()
    if ids.dim() != 3 or fed.shape != ids.shape[:2]:
        raise ValueError(
            f"trace_topk_ids must be [B, S, k] and trace_fed [B, S]; got {tuple(ids.shape)}, "
            f"{tuple(fed.shape)}"
        )
    if not 1 <= K <= ids.shape[2]:
        raise ValueError(f"K={K} must be in [1, {ids.shape[2]}] (the recorded top-k)")
    if len(aligned_segments) != ids.shape[0]:
        raise ValueError(f"{len(aligned_segments)} segment lists for {ids.shape[0]} trace rows")
    per_example, pairs, total_segments, covered = [], 0, 0, 0
    for b, segs in enumerate(aligned_segments):
        fracs = []
        for i, seg in enumerate(segs):
            if len(seg) == 0:
                continue
            total_segments += 1
            if i >= ids.shape[1] or not bool(fed[b, i]):
                continue
            covered += 1
            support = set(ids[b, i, :K].tolist())
            fracs.append(sum(tok in support for tok in seg) / len(seg))
        pairs += len(fracs)
        per_example.append(float(np.mean(fracs)) if fracs else float("nan"))
    scored = [f for f in per_example if not math.isnan(f)]
    hit = float(np.mean(scored)) if scored else float("nan")
    return {
        "ecr": hit * r,
        "K": K,
        "r": r,
        "hit_fraction": hit,
        "pairs": pairs,
        "examples": len(scored),
        "segment_coverage": covered / total_segments if total_segments else float("nan"),
        "per_example": per_example,
    }


def trace_rows_to_examples(trace) -> list[int]:
    """Example index of every trace row (the evaluator sorts prompts by length and records the order
    in ``trace.meta['example_index']``; identity when absent)."""
    return list(trace.meta.get("example_index", range(trace.fed.shape[0])))


def ecr_from_trace(
    trace,
    texs: Sequence[TokenizedExample],
    *,
    K: int,
    r: int,
    mode: str = "fixed_rate",
    c: int = 1,
    use_fed_weights: bool = False,
    alignment: Alignment | None = None,
) -> dict:
    """ECR@K of an engine trace (``evaluate(..., record_trace=True)``) against ``texs``.

    ``texs`` are in example order. ``mode='fixed_rate'`` aligns with ``r``-token CoT segments
    (Latent-SFT); ``mode='by_step'`` with Coconut's steps (``c`` latents per step; ``r`` is then
    the mean step length you report). ``alignment`` (a method's
    :class:`~workbench.lens.alignment.Alignment`) replaces ``mode``/``c``: its segments are
    ``alignment.targets(tex)``. ``use_fed_weights`` scores ``trace.weight_ids`` (what was mixed
    in) instead of ``trace.topk_ids``.
    """
    order = trace_rows_to_examples(trace)
    if alignment is None:
        if mode == "fixed_rate":
            alignment = Alignment(tokens_per_latent=r)
        elif mode == "by_step":
            alignment = Alignment(latents_per_step=c)
        else:
            raise ValueError(f"mode must be 'fixed_rate' or 'by_step', got {mode!r}")
    segs = [alignment.targets(texs[i]) for i in order]
    ids = trace.weight_ids if use_fed_weights else trace.topk_ids
    if ids is None:
        raise ValueError(
            "the trace has no weight_ids (not a vocabulary feedback rule); "
            "use use_fed_weights=False"
        )
    return effective_compression_rate(ids, trace.fed, segs, K, r)


def plain_compression_ratio(cot_tokens, latent_steps) -> float:
    """(explicit CoT tokens) / (latent steps), as a ratio of means when given sequences."""
    cot = float(np.mean(np.asarray(cot_tokens, dtype=float)))
    lat = float(np.mean(np.asarray(latent_steps, dtype=float)))
    if lat <= 0:
        return float("inf") if cot > 0 else float("nan")
    return cot / lat


# --------------------------------------------------------------------------------------------
# Effective global parallelism
# --------------------------------------------------------------------------------------------


def n_eff_from_scores(scores, tau: float = 1.0) -> float:
    """``exp(H(softmax(scores / tau)))``: M for equal scores, 1 when one path dominates."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    logp = torch.log_softmax(s / tau, dim=-1)
    return float(torch.exp(-(logp.exp() * logp).sum()))


def greedy_assignment(candidates: torch.Tensor, references: torch.Tensor) -> list[int]:
    """Assign each candidate ``t`` (in order) to the nearest unused reference ``s``.

    Distance: cosine distance.
    """
    c = torch.nn.functional.normalize(candidates.double(), dim=-1)
    r = torch.nn.functional.normalize(references.double(), dim=-1)
    dist = 1.0 - c @ r.T  # [T, S]
    used = torch.zeros(r.shape[0], dtype=torch.bool)
    out = []
    for t in range(c.shape[0]):
        d = dist[t].masked_fill(used, float("inf"))
        s = int(d.argmin())
        if torch.isinf(d[s]):
            raise ValueError(
                f"more candidates ({c.shape[0]}) than reference latents ({r.shape[0]})"
            )
        used[s] = True
        out.append(s)
    return out


def path_score(
    cand_ids: torch.Tensor,
    cand_probs: torch.Tensor,
    segments: Sequence[Sequence[int]],
    assignment: Sequence[int],
    eps: float = 1e-6,
) -> float:
    """``(1/T) sum_t log(sum_{v in S_{sigma(t)} cap Top(p_t)} p_t(v) + eps)``.

    RESEARCH 1.5 step 5.
    """
    total = 0.0
    T = cand_ids.shape[0]
    for t in range(T):
        seg = set(segments[assignment[t]])
        mass = sum(
            float(p)
            for v, p in zip(cand_ids[t].tolist(), cand_probs[t].tolist(), strict=True)
            if v in seg
        )
        total += math.log(mass + eps)
    return total / T


def effective_global_parallelism(
    candidate_embeds: torch.Tensor,
    candidate_ids: torch.Tensor,
    candidate_probs: torch.Tensor,
    reference_embeds: Sequence[torch.Tensor],
    path_segments: Sequence[Sequence[Sequence[int]]],
    *,
    tau: float = 1.0,
    eps: float = 1e-6,
    n_random: int = 64,
    seed: int = 0,
) -> dict:
    """N_eff of one question (RESEARCH 1.5 steps 3-8).

    ``candidate_embeds`` [T, d], ``candidate_ids``/``candidate_probs`` [T, k] (top-100 of p_t);
    per path m: ``reference_embeds[m]`` [T, d] and ``path_segments[m]`` (T token lists, segment s
    aligned with reference latent s). Returns ``n_eff``, ``n_eff_naive``, ``ratio``
    (n_eff / n_eff_naive), ``scores`` and ``pi`` (per path), ``assignments`` (sigma_m).
    """
    T = candidate_embeds.shape[0]
    M = len(reference_embeds)
    if M == 0 or len(path_segments) != M:
        raise ValueError(
            f"need >= 1 path with as many segment lists as reference latents; got {M} and "
            f"{len(path_segments)}"
        )
    if T == 0:
        raise ValueError("no candidate latents (T = 0): N_eff is undefined")
    for m in range(M):
        if reference_embeds[m].shape[0] != len(path_segments[m]) or len(path_segments[m]) < T:
            raise ValueError(
                f"path {m}: {reference_embeds[m].shape[0]} reference latents, "
                f"{len(path_segments[m])} segments, {T} candidates; need equal counts >= T"
            )
    assignments = [greedy_assignment(candidate_embeds, reference_embeds[m]) for m in range(M)]
    scores = [
        path_score(candidate_ids, candidate_probs, path_segments[m], assignments[m], eps)
        for m in range(M)
    ]
    n_eff = n_eff_from_scores(scores, tau)
    g = torch.Generator().manual_seed(seed)
    naive = []
    for _ in range(n_random):
        rs = [
            path_score(
                candidate_ids,
                candidate_probs,
                path_segments[m],
                torch.randperm(len(path_segments[m]), generator=g)[:T].tolist(),
                eps,
            )
            for m in range(M)
        ]
        naive.append(n_eff_from_scores(rs, tau))
    n_naive = float(np.mean(naive))
    pi = torch.softmax(torch.tensor(scores, dtype=torch.float64) / tau, 0).tolist()
    return {
        "n_eff": n_eff,
        "n_eff_naive": n_naive,
        "ratio": n_eff / n_naive,
        "scores": scores,
        "pi": pi,
        "assignments": assignments,
        "M": M,
        "T": T,
    }


def latent_sft_parallelism(
    model,
    encoder,
    tokenizer,
    examples,
    config=None,
    *,
    tau: float = 1.0,
    eps: float = 1e-6,
    n_random: int = 64,
    top_k: int = 100,
    seed: int = 0,
    batch_size: int = 256,
) -> tuple[pd.DataFrame, dict]:
    """N_eff of a Latent-SFT stage-2 ``model`` on multiplication ``examples``.

    M = 2 paths per question: a*b and b*a.

    Runs the model with the Latent-SFT spec (recording the top-``top_k`` read distributions and
    the fed embeddings), builds the two paths per question, encodes them with the stage-1
    ``encoder`` (module docstring) and returns a per-question DataFrame plus the means
    (``n_eff``, ``n_eff_naive``, ``ratio``, ``questions``). Questions with 0 latents are skipped.
    """
    from workbench.data.layout import tokenize_examples
    from workbench.data.tasks import multiplication
    from workbench.eval.evaluator import evaluate
    from workbench.methods.latent_sft import LatentSFTConfig, encode_examples, latent_sft_spec

    config = config or LatentSFTConfig()
    examples = [dict(e) for e in examples]
    res = evaluate(
        model,
        tokenizer,
        examples,
        spec=latent_sft_spec(tokenizer, config),
        record_trace=True,
        top_k=top_k,
        batch_size=batch_size,
    )
    trace = res.trace
    order = trace_rows_to_examples(trace)
    swapped = []
    for e in examples:
        a, b = multiplication.parse_question(e["question"])
        swapped.append(
            {
                "question": e["question"],
                "steps": multiplication.make_example(b, a)["steps"],
                "answer": e["answer"],
            }
        )
    texs = tokenize_examples(examples, tokenizer)
    texs_sw = tokenize_examples(swapped, tokenizer)
    rows, jobs = [], []
    for row, i in enumerate(order):
        T = int(trace.n_latent[row])
        if T > 0:
            jobs.append((row, i, T))
    E = model.get_input_embeddings().weight
    refs = []
    for path_texs in (texs, texs_sw):
        sel = [path_texs[i] for _, i, _ in jobs]
        segs = [equal_segments(t.reasoning(), T) for t, (_, _, T) in zip(sel, jobs, strict=True)]
        fbs = encode_examples(
            encoder,
            E,
            tokenizer,
            sel,
            top_k=config.top_k,
            temperature=config.temperature,
            segments=segs,
            batch_size=batch_size,
        )
        refs.append((segs, fbs))
    for j, (row, i, T) in enumerate(jobs):
        cand = trace.embeds[row, :T]
        out = effective_global_parallelism(
            cand,
            trace.topk_ids[row, :T],
            trace.topk_probs[row, :T],
            [refs[m][1][j].embeds for m in range(2)],
            [refs[m][0][j] for m in range(2)],
            tau=tau,
            eps=eps,
            n_random=n_random,
            seed=seed + j,
        )
        rows.append(
            {
                "index": i,
                "question": examples[i]["question"],
                "latent_steps": T,
                "n_eff": out["n_eff"],
                "n_eff_naive": out["n_eff_naive"],
                "ratio": out["ratio"],
                "score_ab": out["scores"][0],
                "score_ba": out["scores"][1],
            }
        )
    df = pd.DataFrame(rows)
    summary = {
        "n_eff": float(df["n_eff"].mean()) if len(df) else float("nan"),
        "n_eff_naive": float(df["n_eff_naive"].mean()) if len(df) else float("nan"),
        "ratio": float(df["ratio"].mean()) if len(df) else float("nan"),
        "questions": len(df),
        "M": 2,
        "tau": tau,
        "top_k": top_k,
    }
    return df, summary
