"""The engine's cached loop and training path equal naive full-recompute references."""

from __future__ import annotations

import pytest
import torch

from workbench.data.layout import (
    build_sequence,
    collate,
    pad_prompts,
    prompt_ids,
    tokenize_examples,
)
from workbench.data.tasks import generate
from workbench.data.tokenizer import build_char_tokenizer, special_ids
from workbench.engine.feedback import make_feedback
from workbench.engine.forward import latent_forward, naive_latent_forward, shifted_ce
from workbench.engine.loop import INFERENCE_ATTENTION, run_latent
from workbench.engine.reference import reference_generate
from workbench.engine.stop import ArgmaxToken, EntropyColdStop, FixedSteps
from workbench.models.build import ModelConfig, build_model

RULES = ["hidden", "projected", "superposition", "gumbel"]


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _model(tok, arch, seed=3):
    return build_model(
        ModelConfig(arch=arch, n_layer=2, d_model=64, n_head=2), tok, seed=seed
    ).float()


def _rule(name):
    torch.manual_seed(0)
    return make_feedback(name, d_model=64) if name == "projected" else make_feedback(name)


def _examples():
    # different question lengths -> left padding; different digits -> different step counts
    return generate("multiplication", 2, 0, digits_a=2) + generate(
        "multiplication", 3, 1, digits_a=3, digits_b=2
    )


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("rule", RULES)
def test_training_path_matches_naive_recompute(tok, arch, rule):
    sp = special_ids(tok)
    model, fb = _model(tok, arch), _rule(rule)
    texs = tokenize_examples(_examples(), tok)
    n_lat = [0, 2, 3, 1, 3]
    batch = collate(
        [
            build_sequence(t, sp, n_latent=n, first_step=min(n, len(t.steps)))
            for t, n in zip(texs, n_lat, strict=True)
        ],
        sp.pad,
    )
    results = []
    for fn in (latent_forward, naive_latent_forward):
        model.zero_grad(), fb.zero_grad()
        out = fn(model, batch, fb, torch.Generator().manual_seed(1))
        shifted_ce(out.logits, batch["labels"]).backward()
        params = list(model.named_parameters()) + list(fb.named_parameters())
        results.append(
            (out.logits.detach(), {k: p.grad.clone() for k, p in params if p.grad is not None})
        )
    (l1, g1), (l2, g2) = results
    real = batch["attention_mask"].bool()
    assert torch.allclose(l1[real], l2[real], atol=1e-4)
    assert g1.keys() == g2.keys() and len(g1) > 0
    for k in g1:
        assert torch.allclose(g1[k], g2[k], atol=1e-4), k
    # gradients really flow through the latents: the loss depends on the fed thoughts
    assert g1["lm_head.weight" if "lm_head.weight" in g1 else next(iter(g1))].abs().sum() > 0


@pytest.mark.parametrize("attention", ["auto", "sdpa"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("rule", ["hidden", "projected", "superposition"])
def test_cached_loop_matches_batch1_full_recompute(tok, arch, rule, attention):
    sp = special_ids(tok)
    model, fb = _model(tok, arch).eval(), _rule(rule).eval()
    prompts = [prompt_ids(t, sp) for t in tokenize_examples(_examples(), tok)]
    batch = pad_prompts(prompts, sp.pad)
    K = torch.tensor([0, 3, 1, 4, 2])
    out = run_latent(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        sp,
        feedback=fb,
        stop=FixedSteps(K),
        max_latent_steps=5,
        max_new_tokens=10,
        record_logits=True,
        attention=attention,  # auto: eager on CPU; the reference runs the model's SDPA
    )
    assert out.trace.n_latent.tolist() == K.tolist()
    for b, p in enumerate(prompts):
        ref = reference_generate(
            model,
            p,
            sp,
            feedback=fb,
            stop=FixedSteps(int(K[b])),
            max_latent_steps=5,
            max_new_tokens=10,
        )
        assert len(ref.latent_embeds) == int(K[b])
        for t, e in enumerate(ref.latent_embeds):
            assert torch.allclose(out.trace.embeds[b, t], e, atol=1e-4)
        for t, logits in enumerate(ref.read_logits):
            assert torch.allclose(out.trace.logits[b, t], logits, atol=1e-4)
        assert out.generated[b, : out.n_generated[b]].tolist() == ref.generated
        assert int(out.forward_passes[b]) == ref.forward_passes


def test_gumbel_rollouts_reproducible_and_diverse(tok):
    sp = special_ids(tok)
    model = _model(tok, "gpt2").eval()
    prompts = [prompt_ids(t, sp) for t in tokenize_examples(_examples(), tok)]
    batch = pad_prompts(prompts, sp.pad)
    fb = make_feedback("gumbel", top_k=8, gumbel_tau=0.5)
    run = lambda seed: run_latent(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        sp,
        feedback=fb,  # noqa: E731
        max_latent_steps=3,
        max_new_tokens=4,
        generator=torch.Generator().manual_seed(seed),
    )
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.trace.embeds, b.trace.embeds)
    assert not torch.allclose(a.trace.embeds, c.trace.embeds)
    w = a.trace.weight_probs
    assert w.dtype == torch.float32 and torch.allclose(
        w[a.trace.fed].sum(-1), torch.ones(()), atol=1e-5
    )


@pytest.mark.parametrize("rule", ["superposition", "gumbel"])
def test_bf16_autocast_keeps_rule_probabilities_fp32(tok, rule):
    """The GPU path (bf16 autocast) runs the same loop; the mixing weights stay fp32."""
    sp = special_ids(tok)
    model = _model(tok, "gpt2").eval()
    prompts = [prompt_ids(t, sp) for t in tokenize_examples(_examples(), tok)]
    batch = pad_prompts(prompts, sp.pad)
    args = dict(feedback=make_feedback(rule, top_k=8), max_latent_steps=3, max_new_tokens=4)
    with torch.autocast("cpu", torch.bfloat16):
        half = run_latent(model, batch["input_ids"], batch["attention_mask"], sp, **args,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    full = run_latent(model, batch["input_ids"], batch["attention_mask"], sp, **args,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    w = half.trace.weight_probs
    assert w.dtype == torch.float32
    assert torch.allclose(w[half.trace.fed].sum(-1), torch.ones(()), atol=1e-6)
    fw = full.trace.weight_probs
    assert not torch.equal(w, fw)  # the autocast really ran the model in bf16
    # the same tokens win in the first latent step's top-k (bf16 moves values, not the ranking)
    assert (half.trace.weight_ids[:, 0, 0] == full.trace.weight_ids[:, 0, 0]).float().mean() > 0.7


def test_stop_rules_per_sample(tok):
    sp = special_ids(tok)
    model = _model(tok, "gpt2").eval()
    prompts = [prompt_ids(t, sp) for t in tokenize_examples(_examples(), tok)]
    batch = pad_prompts(prompts, sp.pad)
    # argmax stop on the token the untrained model prefers at <bot>: stops at step 0 for every
    # sample
    out0 = run_latent(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        sp,
        max_latent_steps=4,
        max_new_tokens=2,
        record_logits=True,
    )
    first = out0.trace.topk_ids[:, 0, 0]
    out = run_latent(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        sp,
        stop=ArgmaxToken(int(first[0])),
        max_latent_steps=4,
        max_new_tokens=2,
    )
    assert out.trace.n_latent[first == first[0]].eq(0).all()
    assert out.trace.stop[:, 0].eq(first == first[0]).all()
    # cold stop with a huge tau fires after exactly k steps
    out = run_latent(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        sp,
        stop=EntropyColdStop(tau=100.0, k=2),
        max_latent_steps=6,
        max_new_tokens=2,
    )
    assert out.trace.n_latent.tolist() == [1] * len(prompts)
    # entropy of the read distribution is consistent with its top-k
    assert (out.trace.entropy >= 0).all() and (out.trace.topk_probs <= 1).all()


def test_position_limit_error(tok):
    sp = special_ids(tok)
    model = build_model(ModelConfig(n_layer=1, d_model=32, n_head=2, max_positions=16), tok)
    batch = pad_prompts([[5] * 10 + [sp.bot]], sp.pad)
    with pytest.raises(ValueError, match="max_positions"):
        run_latent(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            sp,
            max_latent_steps=4,
            max_new_tokens=8,
        )


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_engine_runs_the_attention_kernel_asked_for_and_restores_the_models(tok, arch):
    sp = special_ids(tok)
    model = _model(tok, arch).eval()
    seen = []
    model.base_model.register_forward_pre_hook(
        lambda *_: seen.append(model.config._attn_implementation)
    )
    batch = pad_prompts([prompt_ids(t, sp) for t in tokenize_examples(_examples(), tok)], sp.pad)

    def run(**kw):
        seen.clear()
        out = run_latent(model, batch["input_ids"], batch["attention_mask"], sp,
                         max_latent_steps=2, max_new_tokens=4, **kw)  # fmt: skip
        return set(seen), out

    assert model.config._attn_implementation == "sdpa"
    used, auto = run()
    assert used == {INFERENCE_ATTENTION["cpu"]} == {"eager"}
    used, own = run(attention="model")
    assert used == {"sdpa"}
    assert torch.equal(auto.generated, own.generated)
    assert torch.allclose(auto.trace.embeds, own.trace.embeds, atol=1e-4)
    assert model.config._attn_implementation == "sdpa"  # restored after each run
    with pytest.raises(ValueError, match="attention='flash'"):
        run(attention="flash")
    model.base_model.register_forward_pre_hook(lambda *_: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run()
    assert model.config._attn_implementation == "sdpa"  # restored after an error too


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_compiled_layers_match_the_batch1_reference_and_are_given_back(tok, arch):
    import functools

    from torch._dynamo.utils import counters

    from workbench.engine.compiled import compiled_layers, transformer_layers

    sp = special_ids(tok)
    model, fb = _model(tok, arch).eval(), _rule("hidden").eval()
    layers = transformer_layers(model)
    assert len(layers) == 2
    ran_compiled = []
    layers[0].register_forward_pre_hook(
        lambda m, *_: ran_compiled.append(isinstance(m.__dict__.get("forward"), functools.partial))
    )
    prompts = [prompt_ids(t, sp) for t in tokenize_examples(_examples(), tok)]
    batch = pad_prompts(prompts, sp.pad)
    K = torch.tensor([0, 3, 1, 4, 2])
    graphs = counters["stats"]["unique_graphs"]
    out = run_latent(model, batch["input_ids"], batch["attention_mask"], sp, feedback=fb,
                     stop=FixedSteps(K), max_latent_steps=5, max_new_tokens=10,
                     record_logits=True, compile_layers=True)  # fmt: skip
    assert ran_compiled and all(ran_compiled)
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo compiled the layers
    assert not any("forward" in layer.__dict__ for layer in layers)  # given back
    assert out.trace.n_latent.tolist() == K.tolist()
    for b, p in enumerate(prompts):
        ref = reference_generate(model, p, sp, feedback=fb, stop=FixedSteps(int(K[b])),
                                 max_latent_steps=5, max_new_tokens=10)  # fmt: skip
        for t, e in enumerate(ref.latent_embeds):
            assert torch.allclose(out.trace.embeds[b, t], e, atol=1e-4)
        for t, logits in enumerate(ref.read_logits):
            assert torch.allclose(out.trace.logits[b, t], logits, atol=1e-4)
        assert out.generated[b, : out.n_generated[b]].tolist() == ref.generated
    ran_compiled.clear()
    run_latent(model, batch["input_ids"], batch["attention_mask"], sp, max_new_tokens=2)
    assert ran_compiled and not any(ran_compiled)  # not compiled unless asked
    with (
        pytest.raises(TypeError, match="no transformers decoder layers"),
        compiled_layers(torch.nn.Linear(2, 2)),
    ):
        pass
