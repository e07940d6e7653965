"""Step supervision of Coconut's latents: per-latent LM-head targets and the step decoder."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from workbench.config import ConfigError
from workbench.data.layout import tokenize_examples
from workbench.engine.feedback import ProjectedFeedback
from workbench.engine.forward import latent_forward
from workbench.experiment import default_train_config, prepare_data, train_coconut
from workbench.methods.coconut import (
    CoconutCollator,
    CoconutConfig,
    CoconutLoss,
    latent_step_nll,
    make_step_decoder,
    step_decoder_nll,
)
from workbench.models.build import ModelConfig, build_model


@pytest.fixture(scope="module")
def data():
    return prepare_data(
        "multiplication", train_size=32, val_size=4, test_size=4, seed=0, digits_a=2
    )


@pytest.fixture(scope="module")
def model(data):
    return build_model(ModelConfig(n_layer=1, d_model=32, n_head=2), data.tokenizer, seed=0)


def _batch(data, cfg, stage):
    texs = tokenize_examples(data.train[:4], data.tokenizer)
    return texs, CoconutCollator(data.tokenizer, cfg, stage=stage)(texs)


def test_collator_carries_the_replaced_steps(data):
    cfg = CoconutConfig(c_thought=2, max_latent_stage=2, latent_ce_weight=1.0)
    texs, batch = _batch(data, cfg, stage=1)
    for b, t in enumerate(texs):
        assert batch["step_len"][b, 0] == len(t.steps[0])
        assert batch["step_ids"][b, 0, : len(t.steps[0])].tolist() == t.steps[0]
    plain = CoconutCollator(data.tokenizer, CoconutConfig(c_thought=2), stage=1)(texs)
    assert "step_ids" not in plain  # unsupervised Coconut pays nothing


def test_latent_step_nll_is_the_bag_of_step_tokens_under_the_head(data, model):
    cfg = CoconutConfig(c_thought=2, max_latent_stage=2, latent_ce_weight=1.0)
    texs, batch = _batch(data, cfg, stage=2)
    out = latent_forward(model, batch, ProjectedFeedback(32))
    got = latent_step_nll(out.logits, batch, c=2)
    c0 = int(batch["latent_start"])
    total, count = 0.0, 0
    for b, t in enumerate(texs):
        for j in range(int(batch["n_latent"][b])):
            step = t.steps[j // 2]  # latent j stands for step j // c
            logp = torch.log_softmax(out.logits[b, c0 + j].detach().float(), -1)
            total += float(-logp[step].sum())
            count += len(step)
    assert got.item() == pytest.approx(total / count, rel=1e-5)


def test_step_decoder_reads_the_latents(data, model):
    cfg = CoconutConfig(c_thought=1, max_latent_stage=2, step_decoder="small")
    _, batch = _batch(data, cfg, stage=2)
    fb = ProjectedFeedback(32)
    decoder = make_step_decoder(cfg, model, data.tokenizer, seed=0)
    out = latent_forward(model, batch, fb)
    loss = step_decoder_nll(decoder, out.latent_embeds, batch, c=1)
    loss.backward()
    # the gradient reaches the rule that makes the latents: the decoder supervises them
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fb.parameters())
    z = out.latent_embeds.detach()
    same = step_decoder_nll(decoder, z, batch, c=1)
    other = step_decoder_nll(decoder, torch.zeros_like(z), batch, c=1)
    assert not torch.isclose(same, other)  # the decoder's CE depends on the latents


def test_loss_parts_are_logged_separately(data, model):
    cfg = CoconutConfig(c_thought=1, max_latent_stage=2, latent_ce_weight=0.5, step_decoder="copy")
    _, batch = _batch(data, cfg, stage=2)
    fb = ProjectedFeedback(32)
    decoder = make_step_decoder(cfg, model, data.tokenizer)
    loss, metrics = CoconutLoss(fb, cfg, decoder)(model, batch)
    assert {"loss_lm", "loss_latent", "loss_decoder"} <= set(metrics)
    expected = metrics["loss_lm"] + 0.5 * metrics["loss_latent"] + metrics["loss_decoder"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_supervised_coconut_trains_end_to_end(data, model):
    cc = CoconutConfig(c_thought=1, max_latent_stage=2, steps_per_stage=2, latent_ce_weight=1.0,
                       step_decoder="small")  # fmt: skip
    tc = default_train_config(batch_size=4, progress=False, warmup_steps=1, log_every=1)
    tm = train_coconut(data, model, coconut=cc, train_config=tc)
    assert {"loss_latent", "loss_decoder"} <= set(tm.history.columns)
    assert tm.evaluate().summary["latent_steps"] == 2  # the decoder is dropped at inference


def test_configs_that_cannot_work_fail_naming_the_field(data, model):
    no_steps = dataclasses.replace(data, train=[{**e, "steps": []} for e in data.train],
                                   test=[{**e, "steps": []} for e in data.test])  # fmt: skip
    with pytest.raises(ConfigError, match="latent_ce_weight.*steps"):
        train_coconut(no_steps, model, coconut=CoconutConfig(latent_ce_weight=1.0))
    short = build_model(ModelConfig(n_layer=1, d_model=32, n_head=2, max_positions=24),
                        data.tokenizer)  # fmt: skip
    with pytest.raises(ConfigError, match="max_latent_stage.*positions"):
        train_coconut(data, short, coconut=CoconutConfig(c_thought=2))
