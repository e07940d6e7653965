"""workbench.lens.alignment: the one answer to "which CoT tokens does latent j stand for"."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.data.layout import TokenizedExample, tokenize_examples
from workbench.data.tasks import generate
from workbench.data.tokenizer import build_char_tokenizer
from workbench.eval import chain_metrics
from workbench.lens import alignment as alignment_module
from workbench.lens import trajectory as trajectory_module
from workbench.lens.alignment import (
    Alignment,
    default_alignment,
    split_segments,
    targets_by_step,
    targets_fixed_rate,
)
from workbench.methods import latent_sft

pytestmark = pytest.mark.usefixtures("one_thread")

# reasoning = steps joined by the separator 0: 10 11 0 12 0 13 14 15
TEX = TokenizedExample(question=[1, 2], steps=[[10, 11], [12], [13, 14, 15]], answer=[9], sep=[0])


# ----- the two kinds on a hand-built example ---------------------------------------------------


def test_by_step_hand_built():
    a = Alignment(latents_per_step=2)
    assert a.kind == "by_step"
    six = [[10, 11], [10, 11], [12], [12], [13, 14, 15], [13, 14, 15]]
    assert a.targets(TEX) == six  # default: c latents per step
    assert a.targets(TEX, 6) == six
    assert a.targets(TEX, 3) == six[:3]
    assert a.targets(TEX, 8) == six + [[], []]  # past the last step: nothing
    assert a.targets(TEX, 0) == []
    assert Alignment(latents_per_step=1).targets(TEX, 4) == [[10, 11], [12], [13, 14, 15], []]
    assert targets_by_step(TEX, 6, 2) == six


def test_fixed_rate_hand_built():
    a = Alignment(tokens_per_latent=3)
    assert a.kind == "fixed_rate"
    segs = [[10, 11, 0], [12, 0, 13], [14, 15]]  # the separator is part of a segment
    assert a.targets(TEX) == segs  # default: one per latent of the training layout
    assert a.targets(TEX, 2) == segs[:2]
    assert a.targets(TEX, 5) == segs + [[], []]
    assert Alignment(tokens_per_latent=8).targets(TEX) == [[10, 11, 0, 12, 0, 13, 14, 15]]
    assert Alignment(tokens_per_latent=20).targets(TEX) == [[10, 11, 0, 12, 0, 13, 14, 15]]
    assert targets_fixed_rate(TEX, 3) == segs
    assert split_segments(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert split_segments([], 3) == []


def test_targets_are_fresh_lists():
    a = Alignment(latents_per_step=1)
    t = a.targets(TEX)
    t[0].append(99)
    assert TEX.steps[0] == [10, 11]  # the example is never aliased


def test_validation():
    for bad in ({}, {"latents_per_step": 1, "tokens_per_latent": 2}):
        with pytest.raises(ValueError, match="exactly one"):
            Alignment(**bad)
    for bad in ({"latents_per_step": 0}, {"tokens_per_latent": 0}, {"tokens_per_latent": -2}):
        with pytest.raises(ValueError, match=">= 1"):
            Alignment(**bad)
    with pytest.raises(ValueError):
        targets_by_step(TEX, 2, 0)
    with pytest.raises(ValueError):
        targets_fixed_rate(TEX, 0)
    with pytest.raises(ValueError):
        split_segments([1, 2], 0)
    assert Alignment(latents_per_step=2) == Alignment(latents_per_step=2)  # frozen, hashable
    assert len({Alignment(latents_per_step=2), Alignment(latents_per_step=2)}) == 1


def test_default_alignment():
    assert default_alignment(TEX, 6) == Alignment(latents_per_step=2)
    assert default_alignment(TEX, 2) == Alignment(latents_per_step=1)  # at least one per step
    empty = TokenizedExample(question=[1], steps=[], answer=[9], sep=[0])
    assert default_alignment(empty, 3) == Alignment(latents_per_step=3)
    assert default_alignment(empty, 3).targets(empty, 3) == [[], [], []]


# ----- invariants on real tokenized examples ---------------------------------------------------


@pytest.fixture(scope="module")
def texs():
    tok = build_char_tokenizer()
    examples = generate("multiplication", 6, 0, digits_a=2) + generate("arithmetic", 4, 1)
    return tokenize_examples(examples, tok)


@pytest.mark.parametrize("r", [1, 2, 3, 4, 7, 50])
def test_fixed_rate_segments_concatenate_back(texs, r):
    for tex in texs:
        segs = Alignment(tokens_per_latent=r).targets(tex)
        reasoning = tex.reasoning()
        assert [t for s in segs for t in s] == reasoning
        assert len(segs) == math.ceil(len(reasoning) / r)
        assert all(len(s) == r for s in segs[:-1]) and 1 <= len(segs[-1]) <= r
        assert segs == latent_sft.cot_segments(tex, r)  # exactly the stage-1 segments


@pytest.mark.parametrize("c", [1, 2, 3])
def test_by_step_latent_j_is_step_j_div_c(texs, c):
    for tex in texs:
        n = c * len(tex.steps) + 2
        segs = Alignment(latents_per_step=c).targets(tex, n)
        assert len(segs) == n
        for j, s in enumerate(segs):
            assert s == (tex.steps[j // c] if j // c < len(tex.steps) else [])
        assert Alignment(latents_per_step=c).targets(tex) == segs[: c * len(tex.steps)]


# ----- no second implementation ------------------------------------------------------------------


def test_reexports_are_the_same_functions():
    assert latent_sft.split_segments is alignment_module.split_segments
    assert trajectory_module.targets_by_step is alignment_module.targets_by_step
    assert trajectory_module.targets_fixed_rate is alignment_module.targets_fixed_rate
    assert trajectory_module.Alignment is Alignment


@pytest.fixture
def spy(monkeypatch):
    """Alignment.targets replaced by a recorder returning one marker object per call."""
    calls = []

    def fake(self, tokenized_example, n_latent=None):
        marker = [[1000 + len(calls)]]
        calls.append((self, tokenized_example, n_latent, marker))
        return marker

    monkeypatch.setattr(Alignment, "targets", fake)
    return calls


def test_latent_sft_and_chain_metrics_call_alignment_targets(spy):
    out = latent_sft.cot_segments(TEX, 4)
    assert out is spy[-1][3] and spy[-1][:3] == (Alignment(tokens_per_latent=4), TEX, None)
    out = chain_metrics.aligned_segments_fixed_rate(TEX, 4)
    assert out is spy[-1][3] and spy[-1][:3] == (Alignment(tokens_per_latent=4), TEX, None)
    out = chain_metrics.aligned_segments_by_step(TEX, 2)
    assert out is spy[-1][3] and spy[-1][:3] == (Alignment(latents_per_step=2), TEX, None)


def test_ecr_from_trace_uses_alignment_targets(spy):
    class _Trace:  # the two fields ecr_from_trace reads
        topk_ids = torch.zeros(2, 3, 2, dtype=torch.long)
        fed = torch.ones(2, 3, dtype=torch.bool)
        weight_ids = None
        meta = {"example_index": [1, 0]}

    for kw, expected in (
        ({"mode": "fixed_rate"}, Alignment(tokens_per_latent=2)),
        ({"mode": "by_step", "c": 3}, Alignment(latents_per_step=3)),
        ({"alignment": Alignment(latents_per_step=5)}, Alignment(latents_per_step=5)),
    ):
        spy.clear()
        chain_metrics.ecr_from_trace(_Trace(), [TEX, TEX], K=1, r=2, **kw)
        assert [c[0] for c in spy] == [expected, expected]


def test_lens_from_trace_uses_alignment_targets(spy):
    from workbench.eval.evaluator import LatentSpec, evaluate
    from workbench.models.build import ModelConfig, build_model

    tok = build_char_tokenizer()
    ex = generate("multiplication", 2, 0, digits_a=2)
    model = build_model(ModelConfig(n_layer=1, d_model=16, n_head=2), tok, seed=0).float()
    res = evaluate(model, tok, ex, spec=LatentSpec(None, None, 2), record_trace=True)
    tr = trajectory_module.LatentTrajectory.from_eval(
        res, model, tok, ex, layers=False, alignment=Alignment(tokens_per_latent=3)
    )
    assert [c[0] for c in spy] == [Alignment(tokens_per_latent=3)] * 2
    assert [c[2] for c in spy] == [2, 2]  # n_latent of each example
    assert [t[0] for t in tr.aligned_targets] == [c[3][0] for c in spy]
