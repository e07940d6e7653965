"""Latent-usage ablations: zeroed, swapped and constant latents, batched on the engine.

RESEARCH Part A 7: trained latents are often bypassed; zeroing them, swapping them with another
example's, or feeding the pause embedding at inference tells. The replay rule behind the swap
must reproduce a run exactly from its own recorded embeddings, and the swap must really give
each example another example's latents (across the evaluator's batches too).
"""

from __future__ import annotations

import math

import pytest
import torch

from workbench.config import ConfigError
from workbench.data.layout import pad_prompts, prompt_ids, tokenize_examples
from workbench.data.tasks import generate
from workbench.data.tokenizer import build_char_tokenizer, special_ids
from workbench.engine.feedback import (
    FEEDBACK_RULES,
    ConstantFeedback,
    HiddenFeedback,
    PauseFeedback,
    ReplayFeedback,
    ZeroFeedback,
)
from workbench.engine.loop import run_latent
from workbench.engine.spec import LatentSpec, spec_to_dict
from workbench.engine.stop import FixedSteps, LearnedStopHead
from workbench.eval.ablations import (
    CONDITIONS,
    NORMAL,
    PAUSE_EMBEDDING,
    SWAPPED,
    ZEROED,
    latent_usage,
    run_ablations,
    usage_drop,
    usage_frame,
    usage_summary,
)
from workbench.eval.evaluator import evaluate
from workbench.models.build import ModelConfig, build_model

D = 32
MAX_LATENT = 4


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def model(tok, one_thread):
    return build_model(ModelConfig(arch="gpt2", n_layer=1, d_model=D, n_head=2), tok, seed=3).eval()


def _examples():
    # different sizes -> left padding and different question lengths
    return (
        generate("multiplication", 3, 0, digits_a=2)
        + generate("multiplication", 2, 1, digits_a=3, digits_b=2)
        + generate("multiplication", 2, 2, digits_a=2, digits_b=1)
    )


def _stop_head(seed: int = 12) -> LearnedStopHead:
    """A stop head with random weights; the seed is picked so that samples stop after 1, 3 or
    4 latents on this tiny model."""
    head = LearnedStopHead(D, threshold=0.5, min_steps=1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.head.weight.copy_(torch.randn(1, D, generator=g) / math.sqrt(D))
        head.head.bias.copy_(torch.randn(1, generator=g) * 0.1)
    return head


def _spec() -> LatentSpec:
    return LatentSpec(HiddenFeedback(), _stop_head(), MAX_LATENT, True)


def _batch(tok):
    sp = special_ids(tok)
    prompts = [prompt_ids(t, sp) for t in tokenize_examples(_examples(), tok)]
    return sp, pad_prompts(prompts, sp.pad)


def _run(model, sp, batch, feedback, stop):
    return run_latent(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        sp,
        feedback=feedback,
        stop=stop,
        max_latent_steps=MAX_LATENT,
        max_new_tokens=6,
        record_logits=True,
    )


def test_replay_of_own_embeds_reproduces_the_run(model, tok):
    sp, batch = _batch(tok)
    spec = _spec()
    normal = _run(model, sp, batch, spec.feedback, spec.stop)
    counts = normal.trace.n_latent
    assert len(set(counts.tolist())) > 1, "the stop head should stop samples at different steps"
    for stop in (FixedSteps(counts.clone()), _stop_head()):
        replay = ReplayFeedback(normal.trace.embeds)
        again = _run(model, sp, batch, replay, stop)
        assert torch.equal(again.generated, normal.generated)
        assert torch.equal(again.trace.n_latent, counts)
        assert torch.equal(again.trace.embeds, normal.trace.embeds)
        assert torch.equal(again.trace.logits, normal.trace.logits)
        # run_latent resets the rule: a second run replays from step 0 again
        twice = _run(model, sp, batch, replay, FixedSteps(counts.clone()))
        assert torch.equal(twice.generated, normal.generated)


def test_replay_checks_batch_and_steps(model, tok):
    sp, batch = _batch(tok)
    B = batch["input_ids"].shape[0]
    with pytest.raises(ValueError, match="holds embeddings of 2 samples"):
        _run(model, sp, batch, ReplayFeedback(torch.zeros(2, 3, D)), FixedSteps(1))
    with pytest.raises(ValueError, match="holds 2 steps"):
        _run(model, sp, batch, ReplayFeedback(torch.zeros(B, 2, D)), FixedSteps(3))
    with pytest.raises(ConfigError, match=r"ReplayFeedback.embeds"):
        ReplayFeedback(torch.zeros(3, D))


def test_zero_and_constant_feed_what_they_say(model, tok):
    sp, batch = _batch(tok)
    out = _run(model, sp, batch, ZeroFeedback(), FixedSteps(3))
    assert (out.trace.n_latent == 3).all()
    assert out.trace.fed[:, :3].all() and (out.trace.embeds == 0).all()
    v = torch.randn(D)
    out = _run(model, sp, batch, ConstantFeedback(v), FixedSteps(2))
    fed = out.trace.fed
    assert fed.sum() == 2 * len(fed)
    assert torch.equal(out.trace.embeds[fed], v.expand(int(fed.sum()), D))


def test_ablation_rules_are_inference_only():
    for rule in (
        ZeroFeedback(),
        ConstantFeedback(torch.zeros(D)),
        ReplayFeedback(torch.zeros(1, 1, D)),
    ):
        assert rule.name not in FEEDBACK_RULES
    assert ZeroFeedback().config() == {}
    for rule in (ConstantFeedback(torch.zeros(D)), ReplayFeedback(torch.zeros(1, 1, D))):
        with pytest.raises(ConfigError, match="inference-only ablation"):
            spec_to_dict(LatentSpec(rule, FixedSteps(1), 1, True))


def test_swap_gives_each_example_another_examples_latents(model, tok):
    spec = _spec()
    examples = _examples()
    # batch 3 over 7 examples: the swap must cross the evaluator's batches
    res = run_ablations(model, tok, examples, spec, batch_size=3)
    normal, swapped = res[NORMAL], res[SWAPPED]
    order = normal.trace.meta["example_index"]
    assert swapped.trace.meta["example_index"] == order
    assert sorted(order) == list(range(len(examples)))
    # every example keeps its own number of latent steps from the normal run
    assert torch.equal(swapped.trace.n_latent, normal.trace.n_latent)
    assert (
        swapped.per_example["latent_steps"].tolist() == normal.per_example["latent_steps"].tolist()
    )
    n, E, S = normal.trace.n_latent, normal.trace.embeds, swapped.trace.embeds
    B = len(order)
    for p in range(B):
        donor = (p - 1) % B
        k = int(n[p])
        # example p is fed example p-1's latents (zeros where the donor fed fewer)
        assert torch.equal(S[p, :k], E[donor, :k]), p
        assert (S[p, k:] == 0).all()
    # not a no-op: the fed latents and what the model reads after them differ
    fed = normal.trace.fed
    assert not torch.equal(S[fed], E[fed])
    assert not torch.allclose(swapped.trace.topk_probs, normal.trace.topk_probs)


def test_zeroed_and_pause_embedding_conditions(model, tok):
    sp = special_ids(tok)
    spec = _spec()
    res = run_ablations(model, tok, _examples(), spec, batch_size=4)
    zeroed, pause = res[ZEROED], res[PAUSE_EMBEDDING]
    assert (zeroed.trace.embeds == 0).all() and zeroed.trace.fed.any()
    fed = pause.trace.fed
    assert fed.any()
    latent_emb = model.get_input_embeddings().weight[sp.latent].detach()
    assert torch.equal(pause.trace.embeds[fed], latent_emb.expand(int(fed.sum()), D))
    # the normal run is the evaluator's run (same batches)
    plain = evaluate(model, tok, _examples(), spec=spec, batch_size=4)
    assert res[NORMAL].per_example["generated"].tolist() == plain.per_example["generated"].tolist()


def test_pause_model_pause_embedding_is_its_learned_vector(model, tok):
    fb = PauseFeedback(D, init_std=1.0, seed=5)
    spec = LatentSpec(fb, FixedSteps(3), 3, True)
    res = run_ablations(model, tok, _examples(), spec, batch_size=8)
    fed = res[PAUSE_EMBEDDING].trace.fed
    assert torch.equal(
        res[PAUSE_EMBEDDING].trace.embeds[fed], fb.vector.detach().expand(int(fed.sum()), D)
    )
    assert torch.equal(res[PAUSE_EMBEDDING].trace.embeds, res[NORMAL].trace.embeds)
    frame = usage_frame(res)
    assert frame.set_index("condition").loc[PAUSE_EMBEDDING, "drop"] == 0.0


@pytest.fixture(scope="module")
def sharp_model(tok, one_thread):
    """A random model with its weight matrices x10: its greedy answers are varied strings that
    depend on the latents (the plain random model answers nothing whatever it is fed)."""
    m = build_model(ModelConfig(arch="gpt2", n_layer=1, d_model=D, n_head=2), tok, seed=3).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2:
                p.mul_(10.0)
    return m


def test_drops_are_normal_minus_ablated(sharp_model, tok):
    spec, kw = _spec(), {"batch_size": 3, "max_new_tokens": 12}
    # gold = the model's own normal answer: normal accuracy is 1, every ablation can only lose
    first = run_ablations(sharp_model, tok, _examples(), spec, **kw)[NORMAL].per_example
    examples = [
        {**e, "answer": pred} for e, pred in zip(_examples(), first["prediction"], strict=True)
    ]
    res = run_ablations(sharp_model, tok, examples, spec, **kw)
    frame = latent_usage(sharp_model, tok, examples, spec, **kw)
    assert frame["condition"].tolist() == list(CONDITIONS)
    assert set(frame.columns) >= {"condition", "accuracy", "drop", "latent_steps"}
    by = frame.set_index("condition")
    assert by.loc[NORMAL, "accuracy"] == 1.0
    for cond in CONDITIONS:
        acc = float(res[cond].per_example["correct"].mean())
        assert by.loc[cond, "accuracy"] == pytest.approx(acc)
        assert by.loc[cond, "drop"] == pytest.approx(1.0 - acc)
        assert by.loc[cond, "latent_steps"] == pytest.approx(
            res[cond].per_example["latent_steps"].mean()
        )
    # the swap changes answers (a no-op swap would leave accuracy at 1)
    assert by.loc[SWAPPED, "drop"] > 0 and by.loc[ZEROED, "drop"] > 0
    summary = usage_summary(frame)
    assert summary == usage_drop(sharp_model, tok, examples, spec, **kw)
    expect = {
        "drop_zero": by.loc[ZEROED, "drop"],
        "drop_swap": by.loc[SWAPPED, "drop"],
        "drop_pause": by.loc[PAUSE_EMBEDDING, "drop"],
    }
    assert summary == pytest.approx({**expect, "usage_drop": min(expect.values())})


def test_no_latents_gives_nan_drops(model, tok):
    examples = _examples()[:3]
    frame = latent_usage(model, tok, examples, None)
    by = frame.set_index("condition")
    assert not math.isnan(by.loc[NORMAL, "accuracy"]) and by.loc[NORMAL, "drop"] == 0.0
    for cond in (ZEROED, SWAPPED, PAUSE_EMBEDDING):
        assert math.isnan(by.loc[cond, "accuracy"]) and math.isnan(by.loc[cond, "drop"])
    summary = usage_summary(frame)
    assert set(summary) == {"drop_zero", "drop_swap", "drop_pause", "usage_drop"}
    assert all(math.isnan(v) for v in summary.values())
