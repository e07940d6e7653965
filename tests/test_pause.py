"""The pause control: Coconut's curriculum with one learned vector at every latent slot.

RESEARCH Part A 7 (item 3): pause tokens under the same curriculum tell whether the fed hidden
state carries information. The vector must train, save with the spec and load back; the engine
must feed exactly it at every latent.
"""

from __future__ import annotations

import json

import pytest
import torch

from workbench.config import ConfigError, config_from_dict
from workbench.data.layout import build_sequence, collate, tokenize_examples
from workbench.data.prepare import prepare_data
from workbench.data.tasks import generate
from workbench.data.tokenizer import build_char_tokenizer, special_ids
from workbench.engine.feedback import FEEDBACK_RULES, PauseFeedback, make_feedback
from workbench.engine.forward import latent_forward, naive_latent_forward, shifted_ce
from workbench.engine.spec import SPEC_PARTS_FILE, spec_from_dict, spec_to_dict
from workbench.eval.ablations import NORMAL, PAUSE_EMBEDDING, latent_usage
from workbench.lens.alignment import Alignment
from workbench.methods import pause
from workbench.methods.base import default_train_config
from workbench.methods.pause import PauseConfig
from workbench.models.build import ModelConfig, build_model
from workbench.trained import TrainedModel

D = 32


@pytest.fixture(scope="module")
def trained(one_thread):
    torch.manual_seed(0)
    data = prepare_data(
        "multiplication", train_size=64, val_size=4, test_size=6, seed=0, digits_a=2
    )
    base = build_model(ModelConfig(n_layer=1, d_model=D, n_head=2), data.tokenizer)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    pc = PauseConfig(c_thought=1, max_latent_stage=2, steps_per_stage=2, seed=1)
    tm = pause.train(
        data,
        base,
        config=pc,
        train_config=default_train_config(batch_size=4, progress=False, warmup_steps=1),
        seed=1,
    )
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items()), (
        "the base model must not change"
    )
    return data, pc, tm


def test_pause_rule_is_registered_and_deterministic():
    assert FEEDBACK_RULES[PauseFeedback.name] is PauseFeedback
    a, b = make_feedback(PauseFeedback.name, d_model=D, seed=3), PauseFeedback(D, seed=3)
    assert torch.equal(a.vector, b.vector) and not torch.equal(a.vector, PauseFeedback(D).vector)
    assert torch.equal(PauseFeedback(D, init_std=0.0).vector, torch.zeros(D))
    assert a.config() == {"d_model": D, "init_std": 0.02, "seed": 3}
    # the hidden state is ignored: every row gets the vector
    out = a(torch.randn(5, D), None, torch.randn(7, D))
    assert torch.equal(out.embeds, a.vector.detach().expand(5, D))
    with pytest.raises(ConfigError, match=r"needs \['d_model'\]"):
        make_feedback(PauseFeedback.name)  # d_model missing
    with pytest.raises(ConfigError, match=r"PauseFeedback\.init_std"):
        PauseFeedback(D, init_std=-1.0)


def test_pause_config_is_checked():
    with pytest.raises(ConfigError, match=r"PauseConfig\.feedback = 'hidden'"):
        PauseConfig(feedback="hidden")
    with pytest.raises(ConfigError, match=r"PauseConfig\.pause_init_std"):
        PauseConfig(pause_init_std=-0.1)
    with pytest.raises(ConfigError, match=r"PauseConfig\.c_thought"):
        PauseConfig(c_thought=0)
    cfg = config_from_dict(PauseConfig, {"c_thought": "1", "steps_per_stage": 3})
    assert cfg.c_thought == 1 and cfg.feedback == PauseFeedback.name
    with pytest.raises(ValueError, match="trained PauseFeedback"):
        cfg.inference_spec(None)
    with pytest.raises(ValueError, match="step-bounded"):
        pause.train(None, time_budget_s=5.0)


def test_record():
    rec = pause.RECORD
    assert rec.name == pause.NAME and rec.config_cls is PauseConfig and rec.needs_base
    assert rec.notebook == "01_coconut.ipynb"
    assert rec.alignment({"config": {"c_thought": 3}}) == Alignment(latents_per_step=3)
    quick = rec.quick_config(2)
    assert isinstance(quick["config"], PauseConfig) and quick["config"].seed == 2
    spec = rec.inference_spec(quick["config"], None, PauseFeedback(D))
    assert isinstance(spec.feedback, PauseFeedback)
    assert spec.max_latent_steps == quick["config"].n_latent and spec.append_eot


def test_trains_feeds_its_vector_saves_and_loads(trained, tmp_path):
    data, pc, tm = trained
    assert tm.method == pause.NAME
    assert tm.meta["config"]["feedback"] == PauseFeedback.name
    assert sorted(tm.history["stage"].unique()) == [1, 2]
    fb = tm.spec.feedback
    assert isinstance(fb, PauseFeedback) and fb.config() == {
        "d_model": D,
        "init_std": pc.pause_init_std,
        "seed": pc.seed,
    }
    init = PauseFeedback(**fb.config()).vector
    # moved by the optimizer's steps (weight decay alone would move it by ~1e-7)
    assert (fb.vector.detach() - init).abs().max() > 1e-3, "the pause vector did not train"

    res = tm.evaluate(record_trace=True)
    tr = res.trace
    assert (res.per_example["latent_steps"] == pc.n_latent).all()
    fed = tr.fed
    assert int(fed.sum()) == pc.n_latent * len(data.test)
    assert torch.equal(tr.embeds[fed], fb.vector.detach().expand(int(fed.sum()), D))

    tm.save(tmp_path / "m")
    desc = json.loads((tmp_path / "m" / "workbench_method.json").read_text())
    assert desc["method"] == pause.NAME
    assert desc["spec"]["feedback"] == {"name": PauseFeedback.name, "config": fb.config()}
    assert (tmp_path / "m" / SPEC_PARTS_FILE).exists()
    back = TrainedModel.load(tmp_path / "m", data.test)
    assert back.method == pause.NAME and back.spec.max_latent_steps == pc.n_latent
    assert torch.equal(back.spec.feedback.vector, fb.vector)
    again = back.evaluate(record_trace=True)
    assert again.per_example["generated"].tolist() == res.per_example["generated"].tolist()
    assert torch.equal(again.trace.embeds, tr.embeds)
    assert torch.equal(again.trace.topk_probs, tr.topk_probs)
    # the JSON alone rebuilds the rule with its init; the weights come from spec.safetensors
    fresh = spec_from_dict(spec_to_dict(tm.spec), d_model=D)
    assert torch.equal(fresh.feedback.vector, init)


def test_pause_embedding_ablation_of_a_pause_model_is_its_normal_run(trained):
    data, _, tm = trained
    frame = latent_usage(tm.model, tm.tokenizer, data.test, tm.spec).set_index("condition")
    assert frame.loc[PAUSE_EMBEDDING, "accuracy"] == frame.loc[NORMAL, "accuracy"]
    assert frame.loc[PAUSE_EMBEDDING, "drop"] == 0.0


def test_training_path_matches_naive_recompute_and_reaches_the_vector(one_thread):
    tok = build_char_tokenizer()
    sp = special_ids(tok)
    model = build_model(ModelConfig(n_layer=1, d_model=D, n_head=2), tok, seed=3).float()
    fb = PauseFeedback(D, init_std=0.5, seed=1)
    texs = tokenize_examples(generate("multiplication", 3, 0, digits_a=2), tok)
    seqs = [
        build_sequence(t, sp, n_latent=n, first_step=min(n, 1))
        for t, n in zip(texs, [1, 2, 0], strict=True)
    ]
    batch = collate(seqs, sp.pad)
    grads = []
    for fn in (latent_forward, naive_latent_forward):
        model.zero_grad(), fb.zero_grad()
        shifted_ce(fn(model, batch, fb).logits, batch["labels"]).backward()
        grads.append(fb.vector.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
