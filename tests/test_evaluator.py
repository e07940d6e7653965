"""The batched evaluator agrees with a slow per-example reference, and its metrics are right."""

from __future__ import annotations

import torch

from workbench.data.tasks import generate
from workbench.data.tokenizer import build_char_tokenizer, special_ids
from workbench.engine.reference import reference_generate
from workbench.engine.stop import FixedSteps
from workbench.eval.answers import extract_fallback, normalize_answer
from workbench.eval.evaluator import LatentSpec, evaluate
from workbench.methods.layout import SequenceCollator, prompt_ids, tokenize_examples
from workbench.models.build import ModelConfig, build_model


def _overfit_model(tok, examples, steps=150):
    """A tiny model that memorises a few CoT sequences, so some answers are right and some wrong."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=2, d_model=64, n_head=2), tok, seed=0)
    batch = SequenceCollator(tok)(tokenize_examples(examples, tok))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            labels=batch["labels"],
        ).loss
        opt.zero_grad(), loss.backward(), opt.step()
    return model.eval()


def test_evaluator_matches_slow_reference():
    tok = build_char_tokenizer()
    sp = special_ids(tok)
    train = generate("multiplication", 6, 0, digits_a=2)
    model = _overfit_model(tok, train)
    examples = train[:4] + generate("multiplication", 4, 5, digits_a=2, digits_b=1)  # seen + unseen
    res = evaluate(model, tok, examples, batch_size=3)
    texs = tokenize_examples(examples, tok)
    for i, tex in enumerate(texs):
        ref = reference_generate(
            model,
            prompt_ids(tex, sp),
            sp,
            max_new_tokens=res.extra.get("max_new_tokens", 64),
            append_eot=False,
        )
        ids = ref.generated[:-1] if ref.generated and ref.generated[-1] == sp.eos else ref.generated
        if sp.eot in ids:
            k = ids.index(sp.eot)
            reasoning, answer = ids[:k], tok.decode(ids[k + 1 :], skip_special_tokens=True)
        else:
            reasoning, answer = (
                ids,
                extract_fallback(tok.decode(ids, skip_special_tokens=True)) or "",
            )
        row = res.per_example.iloc[i]
        assert row["prediction"] == normalize_answer(answer)
        assert row["correct"] == (
            normalize_answer(answer) == normalize_answer(examples[i]["answer"])
        )
        assert row["reasoning_tokens"] == len(reasoning)
    # the memorised training examples are answered correctly: the metric can be 1, not only 0
    assert res.per_example["correct"][:4].mean() >= 0.75
    assert 0 <= res.summary["accuracy"] <= 1


def test_latent_spec_metrics_count_latents():
    tok = build_char_tokenizer()
    model = build_model(ModelConfig(n_layer=1, d_model=32, n_head=2), tok).eval()
    exs = generate("multiplication", 5, 1, digits_a=2)
    res = evaluate(
        model,
        tok,
        exs,
        spec=LatentSpec(stop=FixedSteps(3), max_latent_steps=3),
        max_new_tokens=4,
        record_trace=True,
    )
    df = res.per_example
    assert (df["latent_steps"] == 3).all() and (df["reasoning_tokens"] == 0).all()
    assert (df["reasoning_positions"] == 3).all()
    # prefill + 3 latents + forced <eot> + generated tokens that were fed back
    assert (df["forward_passes"] >= 5).all()
    assert res.trace.num_steps == 4 and res.trace.fed[:, :3].all() and not res.trace.fed[:, 3].any()


def test_answer_normalisation_and_fallbacks():
    assert normalize_answer(" 1 2 3 ") == "123"
    assert normalize_answer("Tom is a wumpus .") == "Tom is a wumpus."
    assert extract_fallback("<<3*4=12>> ### 12") == "12"
    assert extract_fallback("so The answer is: 42.") == "42"
    assert extract_fallback(r"hence \boxed{7}") == "7"
    assert extract_fallback("no answer here") is None


def test_a_spec_without_forced_eot_leaves_room_for_the_rationale():
    """LEPO-style specs (soft prefix, then the model's own text): the budget covers the CoT."""
    tok = build_char_tokenizer()
    train = generate("multiplication", 6, 0, digits_a=2)
    model = _overfit_model(tok, train)
    soft_prefix = LatentSpec(stop=FixedSteps(1), max_latent_steps=1, append_eot=False)
    res = evaluate(model, tok, train[:4], spec=soft_prefix)
    longest_answer = max(len(tok(e["answer"])["input_ids"]) for e in train[:4])
    assert res.per_example["reasoning_tokens"].max() > longest_answer + 8  # not cut at the answer
    forced_eot = LatentSpec(stop=FixedSteps(1), max_latent_steps=1)
    forced = evaluate(model, tok, train[:4], spec=forced_eot)
    assert (forced.per_example["reasoning_tokens"] == 0).all()  # <eot> appended: answer only


def test_evaluate_hands_compile_layers_to_the_engine(monkeypatch):
    import workbench.eval.evaluator as evaluator

    seen = []
    real = evaluator.run_latent

    def spy(*args, **kwargs):
        seen.append(kwargs["compile_layers"])
        return real(*args, **{**kwargs, "compile_layers": False})  # compiling: tests/test_engine

    monkeypatch.setattr(evaluator, "run_latent", spy)
    tok = build_char_tokenizer()
    model = build_model(ModelConfig(n_layer=1, d_model=32, n_head=2), tok, seed=0)
    examples = generate("multiplication", 3, 0, digits_a=2)
    evaluate(model, tok, examples, batch_size=2)
    evaluate(model, tok, examples, batch_size=2, compile_layers=True)
    assert seen == [False, False, True, True]
