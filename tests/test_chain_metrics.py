"""Tests for workbench.eval.chain_metrics: ECR@K and N_eff on hand-made inputs, plus a tiny
end-to-end run."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.data.tasks import generate
from workbench.data.tokenizer import build_char_tokenizer
from workbench.eval.chain_metrics import (
    aligned_segments_by_step,
    aligned_segments_fixed_rate,
    ecr_from_trace,
    effective_compression_rate,
    effective_global_parallelism,
    equal_segments,
    greedy_assignment,
    latent_sft_parallelism,
    n_eff_from_scores,
    plain_compression_ratio,
)
from workbench.eval.evaluator import evaluate
from workbench.methods.latent_sft import LatentSFTConfig, cot_segments, latent_sft_spec
from workbench.methods.layout import TokenizedExample, tokenize_examples
from workbench.models.build import ModelConfig, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


TEX = TokenizedExample(question=[40], steps=[[10, 11, 12], [13, 14]], answer=[60], sep=[7])


def test_alignments():
    # reasoning = 10 11 12 7 13 14
    assert aligned_segments_fixed_rate(TEX, 4) == [[10, 11, 12, 7], [13, 14]]
    assert aligned_segments_fixed_rate(TEX, 4) == cot_segments(TEX, 4)
    assert aligned_segments_by_step(TEX, 2) == [[10, 11, 12], [10, 11, 12], [13, 14], [13, 14]]
    assert equal_segments(list(range(7)), 3) == [[0, 1], [2, 3, 4], [5, 6]]
    assert sum(len(s) for s in equal_segments(list(range(5)), 8)) == 5


def _trace(support_rows, fed_rows, k=3):
    ids = torch.tensor(support_rows)
    fed = torch.tensor(fed_rows, dtype=torch.bool)
    assert ids.shape[-1] == k
    return ids, fed


def test_ecr_hand_made():
    r = 2
    segs = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    # all segment tokens inside the top-K support of the aligned latent -> r
    ids, fed = _trace(
        [[[1, 2, 9], [4, 3, 9], [0, 0, 0]], [[6, 5, 9], [8, 7, 9], [0, 0, 0]]],
        [[True, True, False], [True, True, False]],
    )
    out = effective_compression_rate(ids, fed, segs, K=2, r=r)
    assert out["ecr"] == pytest.approx(r) and out["K"] == 2 and out["r"] == r and out["pairs"] == 4
    # K too small to hold both -> half of every segment
    assert effective_compression_rate(ids, fed, segs, K=1, r=r)["ecr"] == pytest.approx(r / 2)
    # none inside -> 0
    ids0 = torch.full_like(ids, 99)
    assert effective_compression_rate(ids0, fed, segs, K=3, r=r)["ecr"] == 0.0
    # a latent that was never fed is skipped (and counted in coverage)
    fed2 = fed.clone()
    fed2[1, 1] = False
    out2 = effective_compression_rate(ids, fed2, segs, K=2, r=r)
    assert (
        out2["pairs"] == 3
        and out2["segment_coverage"] == pytest.approx(0.75)
        and out2["ecr"] == pytest.approx(r)
    )
    with pytest.raises(ValueError):
        effective_compression_rate(ids, fed, segs, K=4, r=r)


def test_plain_ratio():
    assert plain_compression_ratio(32, 8) == 4.0
    assert plain_compression_ratio([30, 34], [8, 8]) == 4.0
    assert math.isinf(plain_compression_ratio(10, 0))


def test_n_eff_from_scores():
    for M in (1, 2, 5):
        assert n_eff_from_scores([-1.3] * M) == pytest.approx(M)
    assert n_eff_from_scores([0.0, -50.0]) == pytest.approx(1.0, abs=1e-6)
    assert 1.0 < n_eff_from_scores([0.0, -0.5]) < 2.0


def test_greedy_assignment_and_n_eff_hand_made():
    ref = torch.eye(3)
    cand = torch.tensor([[0.0, 1.0, 0.1], [1.0, 0.0, 0.0], [0.1, 0.2, 1.0]])
    assert greedy_assignment(cand, ref) == [1, 0, 2]
    assert greedy_assignment(torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]), ref) == [
        0,
        1,
    ]  # used ones are skipped
    segs = [[1], [2], [3]]
    cand_ids = torch.tensor([[2, 1], [1, 3], [3, 2]])
    cand_probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    # two identical paths -> equal scores -> N_eff = M = 2
    out = effective_global_parallelism(
        cand, cand_ids, cand_probs, [ref, ref.clone()], [segs, segs], n_random=8
    )
    assert out["n_eff"] == pytest.approx(2.0) and out["M"] == 2 and out["T"] == 3
    assert out["scores"][0] == pytest.approx(
        (math.log(0.9 + 1e-6) + math.log(0.8 + 1e-6) + math.log(0.7 + 1e-6)) / 3
    )
    # a second path whose segments the candidates never cover -> N_eff close to 1
    out2 = effective_global_parallelism(
        cand, cand_ids, cand_probs, [ref, ref], [segs, [[50], [51], [52]]]
    )
    assert out2["n_eff"] < 1.01 and out2["pi"][0] > 0.99
    assert out2["n_eff_naive"] > 0 and out2["ratio"] == pytest.approx(
        out2["n_eff"] / out2["n_eff_naive"]
    )


def test_end_to_end_on_tiny_model():
    tok = build_char_tokenizer()
    model = build_model(
        ModelConfig(n_layer=2, d_model=64, n_head=2, max_positions=96), tok, seed=0
    ).eval()
    encoder = build_model(
        ModelConfig(n_layer=2, d_model=64, n_head=2, max_positions=96), tok, seed=1
    ).eval()
    data = generate("multiplication", 4, seed=0, digits_a=3)
    cfg = LatentSFTConfig(max_latent_steps=4)
    res = evaluate(model, tok, data, spec=latent_sft_spec(tok, cfg), record_trace=True)
    texs = tokenize_examples(data, tok)
    out = ecr_from_trace(res.trace, texs, K=5, r=4)
    assert 0.0 <= out["ecr"] <= 4.0 or math.isnan(out["ecr"])
    fed_out = ecr_from_trace(res.trace, texs, K=5, r=4, use_fed_weights=True)
    assert fed_out["K"] == 5
    df, summary = latent_sft_parallelism(model, encoder, tok, data, cfg, n_random=4)
    assert (
        summary["M"] == 2 and len(df) == summary["questions"] == 4
    )  # the random model never stops at once
    assert ((df["n_eff"] >= 1 - 1e-9) & (df["n_eff"] <= 2 + 1e-9)).all()
    assert (df["latent_steps"] == res.per_example["latent_steps"].to_numpy()).all()
