"""ATP-Latent's CVAE stage: the Gaussian rule, the step stop head, the loss parts, save/load."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from workbench.config import ConfigError
from workbench.data.layout import pad_prompts, prompt_ids, tokenize_examples
from workbench.data.tokenizer import special_ids
from workbench.engine.feedback import GaussianFeedback, gaussian_kl, make_feedback
from workbench.engine.loop import run_latent
from workbench.engine.stop import StepStopHead, make_stop
from workbench.experiment import default_train_config, prepare_data
from workbench.methods import atp
from workbench.methods.atp import ATPCollator, ATPConfig, decode_latents, groups_at, stop_targets
from workbench.models.build import ModelConfig, build_model
from workbench.trained import TrainedModel


@pytest.fixture(scope="module")
def data():
    return prepare_data(
        "arithmetic", train_size=64, test_size=8, seed=0,
        max_value=5, max_result=12, min_steps=2, max_steps=3,
    )  # fmt: skip


@pytest.fixture(scope="module")
def overfit(data):
    """ATP trained from scratch on 8 problems until it has learned them."""
    tiny = [e for e in data.train if len(e["steps"]) == 2][:8]
    d = dataclasses.replace(data, train=tiny, test=tiny, val=[])
    cfg = ATPConfig(max_latent_stage=2, steps_per_stage=50, final_stage_steps=150,
                    step_decoder="shared", kl_warmup_steps=20)  # fmt: skip
    tc = default_train_config(batch_size=8, max_steps=1, eval_every=None, progress=False,
                              lr=3e-3, warmup_steps=10)  # fmt: skip
    mc = ModelConfig(d_model=64, n_layer=2, n_head=2)
    return atp.train(d, None, config=cfg, train_config=tc, model_config=mc, seed=0)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    want = torch.distributions.kl_divergence(q, p)
    assert torch.allclose(gaussian_kl(mu, logvar), want, atol=1e-5)
    assert float(gaussian_kl(torch.zeros(3), torch.zeros(3)).sum()) == 0.0


def test_reparameterised_sample_has_the_heads_mean_and_variance():
    torch.manual_seed(0)
    rule = GaussianFeedback(8, mode="sample", init_logvar=-1.0)
    h = torch.randn(1, 8).expand(20_000, 8)
    fb = rule(h, None, None, torch.Generator().manual_seed(1))
    mu, logvar = fb.stats["mu"][0], fb.stats["logvar"][0]
    assert torch.allclose(fb.embeds.mean(0), mu, atol=0.02)
    assert torch.allclose(fb.embeds.var(0), logvar.exp(), rtol=0.05)
    det = rule.with_mode("mean")(h[:3], None, None)
    assert torch.equal(det.embeds, det.stats["mu"])  # the deterministic mode feeds mu
    fb.embeds.sum().backward()  # differentiable in the heads
    assert rule.logvar.weight.grad is not None and rule.mu.weight.grad is not None


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="max_latents"):
        ATPConfig(c_thought=2, max_latents=5)
    with pytest.raises(ConfigError, match="step_decoder"):
        ATPConfig(step_decoder="big")
    with pytest.raises(ConfigError, match="kl_reduction"):
        ATPConfig(kl_reduction="max")
    with pytest.raises(ConfigError, match="mode"):
        make_feedback("gaussian", d_model=8, mode="median")
    with pytest.raises(ConfigError, match="group"):
        make_stop("step_head", d_model=8, group=0)


def test_a_head_of_another_width_is_refused(data):
    model = build_model(ModelConfig(n_layer=1, d_model=32, n_head=2), data.tokenizer, seed=0)
    spec = ATPConfig().inference_spec(GaussianFeedback(16), StepStopHead(32))
    base = TrainedModel("atp", model, data.tokenizer, spec)
    with pytest.raises(ConfigError, match=r"base.spec.feedback.*d_model = 16.*32"):
        atp.heads_for(ATPConfig(), model, base)
    spec = ATPConfig().inference_spec(GaussianFeedback(32), StepStopHead(16))
    with pytest.raises(ConfigError, match=r"base.spec.stop.*d_model = 16.*32"):
        atp.heads_for(ATPConfig(), model, TrainedModel("atp", model, data.tokenizer, spec))


def test_groups_merge_the_steps_past_the_last_stage(data):
    tex = next(t for t in tokenize_examples(data.train, data.tokenizer) if len(t.steps) == 3)
    cfg = ATPConfig(max_latent_stage=2)
    groups, done = groups_at(tex, 1, cfg)
    assert groups == [tex.steps[0]] and not done  # stage 1: steps 2-3 stay explicit
    groups, done = groups_at(tex, 2, cfg)
    assert done and groups == [tex.steps[0], tex.steps[1] + tex.sep + tex.steps[2]]


def test_stop_targets_label_continue_then_stop(data):
    texs = tokenize_examples(data.train[:16], data.tokenizer)
    cfg = ATPConfig(c_thought=2, max_latent_stage=3)
    batch = ATPCollator(data.tokenizer, cfg, stage=3)(texs)
    cols, labels, valid = stop_targets(batch, 2)
    for b, t in enumerate(texs):
        k = len(t.steps)
        assert int(batch["n_latent"][b]) == 2 * k  # one group of c latents per step
        assert valid[b].tolist() == [j <= k for j in range(len(cols))]
        assert labels[b, : k + 1].tolist() == [0] * k + [1]
    assert cols.tolist() == [int(batch["latent_start"]) - 1 + 2 * j for j in range(len(cols))]
    early = ATPCollator(data.tokenizer, cfg, stage=1)(texs)  # explicit steps follow: no "stop"
    _, labels, valid = stop_targets(early, 2)
    assert not bool((valid & (labels == 1)).any())


def test_examples_stop_at_different_groups_each_on_its_own(data):
    """A batch whose examples stop after different numbers of groups gives each example what
    it gets alone (the stop mask is per example)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=2, d_model=32, n_head=2), data.tokenizer, seed=0)
    feedback = GaussianFeedback(32, mode="mean")
    stop = StepStopHead(32, group=2)
    with torch.no_grad():
        stop.net[2].weight.mul_(40.0)
    sp = special_ids(data.tokenizer)
    prompts = [prompt_ids(t, sp) for t in tokenize_examples(data.train[:24], data.tokenizer)]
    kw = dict(feedback=feedback, stop=stop, max_latent_steps=6, max_new_tokens=5)
    batch = pad_prompts(prompts, sp.pad)
    out = run_latent(model, batch["input_ids"], batch["attention_mask"], sp, **kw)
    n = out.trace.n_latent
    assert len(set(n.tolist())) >= 2, n  # the test needs examples stopping at different groups
    assert bool((n % 2 == 0).all())  # only at group boundaries
    for b, p in enumerate(prompts):
        one = pad_prompts([p], sp.pad)
        alone = run_latent(model, one["input_ids"], one["attention_mask"], sp, **kw)
        assert int(alone.trace.n_latent[0]) == int(n[b])
        assert alone.generated[0].tolist() == out.generated[b, : alone.generated.shape[1]].tolist()
        k = int(n[b])
        if k:
            got = out.trace.latent_stats["mu"][b, :k]
            assert torch.allclose(alone.trace.latent_stats["mu"][0, :k], got, atol=1e-5)


def test_a_tiny_set_is_overfit(overfit):
    h = overfit.history
    first, last = h.iloc[0], h.iloc[-1]
    for part in ("loss_lm", "loss_decoder", "loss_stop"):
        assert last[part] < 0.05 * first[part], (part, first[part], last[part])
    assert {"loss_kl", "kl_weight", "loss_stop", "loss_decoder"} <= set(h.columns)
    assert h["kl_weight"].iloc[0] < h["kl_weight"].iloc[-1] == pytest.approx(1e-3)  # warm-up
    res = overfit.evaluate()
    assert res.summary["accuracy"] == 1.0
    assert res.summary["latent_steps"] == 2.0  # the stop head ends after the 2 steps
    steps = decode_latents(overfit)
    assert len(steps) == 16 and steps["exact"].mean() >= 0.9  # the latents decode to the steps


def test_save_load_gives_identical_engine_outputs(tmp_path, overfit):
    small = dataclasses.replace(overfit, parts={})
    path = small.save(tmp_path / "atp")
    back = TrainedModel.load(path, overfit.test_examples, method="atp")
    assert isinstance(back.spec.feedback, GaussianFeedback) and back.spec.feedback.mode == "mean"
    assert isinstance(back.spec.stop, StepStopHead)
    a = overfit.evaluate(record_trace=True)
    b = back.evaluate(record_trace=True)
    assert a.per_example["prediction"].tolist() == b.per_example["prediction"].tolist()
    assert torch.equal(a.trace.n_latent, b.trace.n_latent)
    assert torch.allclose(a.trace.embeds, b.trace.embeds, atol=1e-6)
    sampled = atp.sampled_spec(back.spec)
    s1 = back.evaluate(spec=sampled, seed=3, record_trace=True).trace.embeds
    s2 = back.evaluate(spec=sampled, seed=3, record_trace=True).trace.embeds
    assert torch.equal(s1, s2) and not torch.allclose(s1, b.trace.embeds)  # seeded noise


def test_a_separate_step_decoder_saves_as_a_part(tmp_path, data):
    d = dataclasses.replace(data, train=data.train[:16], val=[])
    cfg = ATPConfig(max_latent_stage=1, steps_per_stage=2, step_decoder="small")
    tc = default_train_config(batch_size=4, max_steps=1, eval_every=None, progress=False)
    tm = atp.train(d, None, config=cfg, train_config=tc, model_config=ModelConfig(
        d_model=32, n_layer=1, n_head=2), seed=0)  # fmt: skip
    assert set(tm.parts) == {"step_decoder"}
    back = TrainedModel.load(tm.save(tmp_path / "m"), d.test)
    assert set(back.parts) == {"step_decoder"}
    pa = dict(tm.parts["step_decoder"].named_parameters())
    for name, p in back.parts["step_decoder"].named_parameters():
        assert torch.equal(p, pa[name]), name
    assert decode_latents(back).equals(decode_latents(tm))


def test_vae_diagnostics_read_the_trace(overfit):
    from workbench.viz.vae_figures import (
        kl_figure,
        kl_per_latent,
        latents_used_figure,
        loss_parts_figure,
        mu_pca,
        mu_pca_figure,
    )

    trace = overfit.evaluate(record_trace=True).trace
    table = kl_per_latent(trace)
    assert table["latent"].tolist() == [0, 1] and table["examples"].tolist() == [8, 8]
    mu, logvar = trace.latent_stats["mu"][:, 0], trace.latent_stats["logvar"][:, 0]
    want = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1).mean()
    assert table["kl"].iloc[0] == pytest.approx(float(want), rel=1e-5)
    assert table["sigma"].iloc[0] == pytest.approx(float((0.5 * logvar).exp().mean()), rel=1e-5)
    points = mu_pca(trace)
    assert len(points) == int(trace.n_latent.sum()) and set(points["step"]) == {0, 1}
    assert len(mu_pca_figure(points).data) == 2  # one trace per step
    assert list(kl_figure(table).data[0].y) == table["kl"].tolist()
    assert latents_used_figure(trace.n_latent, fixed=2).data[0].y.tolist() == [8]
    parts = {t.name for t in loss_parts_figure(overfit.history).data}
    assert {"loss_lm", "loss_kl", "loss_stop", "loss_decoder"} <= parts
    with pytest.raises(ValueError, match="gaussian"):
        kl_per_latent(dataclasses.replace(trace, latent_stats={}))


def test_the_lens_and_inspector_show_the_decoded_steps(overfit):
    from workbench.lens.views import trajectory_of
    from workbench.viz.inspector import LatentInspector

    examples = overfit.test_examples[:4]
    traj = trajectory_of(overfit, examples)
    steps = decode_latents(overfit, examples)
    for row, ex in enumerate(traj.example_index):
        want = steps[steps.example == ex].sort_values("group")["decoded"].tolist()
        assert traj.decoded_steps[row][:2] == want and want[0]  # one text per latent (c = 1)
        assert set(traj.decoded_steps[row][2:]) <= {""}  # no text past the latents
    insp = LatentInspector({"atp": traj}, examples, top_k=3, use_figure_widget=False)
    insp.step_slider.value = 1
    insp.step_slider.value = 0
    text = traj.decoded_steps[insp.trajectory()[1]][0].replace("<", "&lt;").replace(">", "&gt;")
    assert f"step decoder <code>{text}</code>" in insp.status.value
