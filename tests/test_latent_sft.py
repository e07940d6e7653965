"""Tests for workbench.methods.latent_sft (RESEARCH Part A 1): tiny GPT-2s (2 layers, d=64), CPU."""

from __future__ import annotations

import json

import pytest
import torch

from workbench.config import ConfigError
from workbench.data.tasks import generate
from workbench.data.tokenizer import build_char_tokenizer, special_ids
from workbench.engine.feedback import SuperpositionFeedback
from workbench.engine.stop import ArgmaxToken
from workbench.methods.latent_sft import (
    LatentSFTConfig,
    LatentSFTStage1,
    SoftLabelCacheMismatch,
    SoftLabels,
    Stage1Collator,
    Stage2Collator,
    Stage2Item,
    Stage2Loss,
    build_soft_labels,
    cot_segments,
    cot_soft_labels,
    decoder_sequence,
    encoder_latents,
    encoder_sequence,
    latent_sft_spec,
    load_soft_labels,
    perturb_soft_labels,
    save_soft_labels,
    scatter_latents,
    soft_label_meta,
    split_segments,
    train_latent_sft,
)
from workbench.methods.layout import IGNORE, TokenizedExample, tokenize_examples
from workbench.methods.masks import LATENT, PREFIX, TAIL, TEXT
from workbench.models.build import ModelConfig, build_model

pytestmark = pytest.mark.usefixtures("one_thread", "quiet")


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def sp(tok):
    return special_ids(tok)


def tiny_model(tok, seed=0):
    return build_model(
        ModelConfig(n_layer=2, d_model=64, n_head=2, max_positions=96), tok, seed=seed
    )


def examples(n=8, seed=1, digits=2):
    return generate("multiplication", n, seed=seed, digits_a=digits)


# ------------------------------------------------------------------------------------------------
# config and layouts
# ------------------------------------------------------------------------------------------------


def test_config_validation():
    cfg = LatentSFTConfig()
    assert cfg.compression_rate == 4 and cfg.top_k == 10 and cfg.gumbel_clamp == (-1.5, 3.0)
    for bad in (
        {"compression_rate": 0},
        {"top_k": 0},
        {"temperature": 0},
        {"gumbel_clamp": (3, -1)},
        {"kl_weight": 0, "ce_weight": 0},
        {"stage2_steps": -1},
        {"gumbel": "yes"},
        {"encoder_lr": 0},
        {"stage2_batch_size": 0},
        {"max_time_s": 0},
        {"teacher": "oracle"},
        {"teacher": "cot", "gumbel": True},
    ):
        with pytest.raises(ConfigError):
            LatentSFTConfig(**bad)
    assert LatentSFTConfig(batch_size=8).stage2_bs == 8


def test_segments_and_sequences(sp):
    assert split_segments(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    tex = TokenizedExample(question=[40, 41], steps=[[50, 51, 52], [53, 54]], answer=[60], sep=[7])
    segs = cot_segments(tex, 2)  # reasoning = 50 51 52 7 53 54
    assert segs == [[50, 51], [52, 7], [53, 54]]
    enc = encoder_sequence(tex, sp, segs)
    C = sp.latent
    assert enc == [40, 41, sp.bot, 50, 51, C, 52, 7, C, 53, 54, C, sp.eot]
    dec = decoder_sequence(tex, sp, segs)
    # [q, <bot>, L1, S2, L2, S3, L3, <eot>, A, <eos>]; S1 dropped
    assert dec["input_ids"] == [40, 41, sp.bot, C, 52, 7, C, 53, 54, C, sp.eot, 60, sp.eos]
    assert dec["labels"] == [IGNORE] * 4 + [52, 7, IGNORE, 53, 54, IGNORE, sp.eot, 60, sp.eos]
    assert (
        dec["role"] == [PREFIX] * 3 + [LATENT, TEXT, TEXT, LATENT, TEXT, TEXT, LATENT] + [TAIL] * 3
    )
    assert dec["segment"] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 0, 0, 0]


def test_scatter_latents_matches_per_sample_loop(tok, sp):
    texs = tokenize_examples(examples(3, digits=2) + examples(2, seed=5, digits=3), tok)
    batch = Stage1Collator(tok, 3)(texs)
    enc_c = (batch["enc_input_ids"] == sp.latent) & batch["enc_attention_mask"].bool()
    slots = batch["role"] == LATENT
    assert torch.equal(enc_c.sum(1), slots.sum(1))
    M, d = int(slots.sum()), 8
    z = torch.randn(M, d, requires_grad=True)
    emb = torch.randn(*slots.shape, d)
    out = scatter_latents(emb, slots, z)
    # reference: per sample, the i-th C of the encoder row goes to the i-th L slot of the
    # decoder row
    ref, m = emb.clone(), 0
    for b in range(slots.shape[0]):
        for t in slots[b].nonzero().flatten().tolist():
            ref[b, t] = z[m].detach()
            m += 1
    torch.testing.assert_close(out.detach(), ref)
    out.sum().backward()
    assert torch.all(z.grad == 1)
    with pytest.raises(ValueError, match="slots"):
        scatter_latents(emb, slots, z[:-1])


def test_encoder_latent_i_depends_only_on_prefix_and_first_i_segments(tok, sp):
    enc = tiny_model(tok)
    E = enc.get_input_embeddings().weight
    tex = tokenize_examples(examples(1, digits=3), tok)[0]
    segs = cot_segments(tex, 4)
    changed = [list(s) for s in segs]
    changed[2] = [tok.convert_tokens_to_ids("9")] * len(changed[2])  # alter S_3
    ids = torch.tensor([encoder_sequence(tex, sp, segs), encoder_sequence(tex, sp, changed)])
    mask = torch.ones_like(ids)
    fb = encoder_latents(enc, E, ids, mask, sp.latent, top_k=5)
    N = len(segs)
    a, b = fb.embeds[:N], fb.embeds[N:]
    torch.testing.assert_close(a[:2], b[:2])  # z_1, z_2 never see S_3
    assert (a[2] - b[2]).abs().max() > 1e-6  # z_3 does
    assert fb.ids.shape == (2 * N, 5) and torch.allclose(fb.probs.sum(-1), torch.ones(2 * N))


def test_stage1_forward_and_decoder_isolation(tok, sp):
    texs = tokenize_examples(examples(4, digits=2), tok)
    stage1 = LatentSFTStage1(tiny_model(tok), tiny_model(tok, seed=1), sp, top_k=5)
    batch = Stage1Collator(tok, 2)(texs)
    loss, metrics = stage1(batch)
    assert torch.isfinite(loss) and "ce" in metrics
    stage1.set_trainable("encoder")
    loss, _ = stage1(batch)
    loss.backward()
    assert all(p.grad is None for p in stage1.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage1.encoder.parameters())
    assert not stage1.decoder.training
    stage1.zero_grad(set_to_none=True)
    stage1.set_trainable("decoder")
    loss, _ = stage1(batch)
    loss.backward()
    assert all(p.grad is None for p in stage1.encoder.parameters())
    # supervision mask end to end: the tail's logits do not depend on the explicit text tokens
    stage1.eval()
    with torch.no_grad():
        z = stage1.latents(batch).embeds
        base = stage1.decoder_logits(batch, z)
        b2 = dict(batch)
        ids = batch["input_ids"].clone()
        text = batch["role"] == TEXT
        ids[text] = tok.convert_tokens_to_ids("7")
        b2["input_ids"] = ids
        other = stage1.decoder_logits(b2, z)
    tail = batch["role"] == TAIL
    torch.testing.assert_close(base[tail], other[tail])


# ------------------------------------------------------------------------------------------------
# soft-label cache
# ------------------------------------------------------------------------------------------------


def test_soft_label_cache_round_trip_and_mismatch(tok, tmp_path):
    cfg = LatentSFTConfig(compression_rate=4, top_k=6)
    texs = tokenize_examples(examples(5, digits=2) + examples(2, seed=3, digits=3), tok)
    enc, dec = tiny_model(tok), tiny_model(tok, seed=1)
    labels = build_soft_labels(enc, dec, tok, texs, cfg)
    assert len(labels) == 7
    assert [labels.n_latent(i) for i in range(7)] == [len(cot_segments(t, 4)) for t in texs]
    save_soft_labels(labels, tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]
    expected = soft_label_meta(cfg, len(tok), texs)
    back = load_soft_labels(tmp_path / "cache", expected)
    assert torch.equal(back.ids, labels.ids) and torch.equal(back.probs, labels.probs)
    assert torch.equal(back.offsets, labels.offsets)
    for i in range(7):
        assert torch.equal(back[i][0], labels[i][0])
    # mismatches: other examples, other config, other vocabulary
    with pytest.raises(SoftLabelCacheMismatch, match="examples_sha1"):
        load_soft_labels(tmp_path / "cache", soft_label_meta(cfg, len(tok), texs[:-1] + texs[:1]))
    with pytest.raises(SoftLabelCacheMismatch, match="top_k"):
        load_soft_labels(
            tmp_path / "cache", soft_label_meta(LatentSFTConfig(top_k=10), len(tok), texs)
        )
    with pytest.raises(SoftLabelCacheMismatch, match="vocab_size"):
        load_soft_labels(tmp_path / "cache", soft_label_meta(cfg, len(tok) + 1, texs))
    # a tensor file that does not match its meta (interrupted write) is refused
    meta = json.loads((tmp_path / "cache" / "soft_labels.json").read_text())
    meta["tensors_sha256"] = "0" * 64
    (tmp_path / "cache" / "soft_labels.json").write_text(json.dumps(meta))
    with pytest.raises(SoftLabelCacheMismatch, match="SHA-256"):
        load_soft_labels(tmp_path / "cache")
    with pytest.raises(FileNotFoundError):
        load_soft_labels(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------
# stage 2
# ------------------------------------------------------------------------------------------------


def test_gumbel_rejection_never_puts_eot_on_top(sp):
    g = torch.Generator().manual_seed(0)
    n, k = 4000, 4
    ids = torch.tensor([sp.eot, 20, 21, 22]).expand(n, k).clone()
    probs = torch.tensor([0.45, 0.5, 0.03, 0.02]).expand(n, k).clone()  # <eot> close to the top
    alpha, redraws = perturb_soft_labels(probs, ids, sp.eot, generator=g)
    top = ids.gather(-1, alpha.argmax(-1, keepdim=True)).squeeze(-1)
    assert redraws > 0 and not bool((top == sp.eot).any())
    assert torch.allclose(alpha.sum(-1), torch.ones(n))
    # without rejection the same noise does put <eot> on top sometimes
    alpha0, _ = perturb_soft_labels(probs, ids, None, generator=torch.Generator().manual_seed(0))
    assert bool((ids.gather(-1, alpha0.argmax(-1, keepdim=True)) == sp.eot).any())
    # after max_rejections the unperturbed teacher is kept
    probs2 = torch.tensor([[0.999, 0.0005, 0.0003, 0.0002]])
    alpha2, _ = perturb_soft_labels(probs2, ids[:1], sp.eot, max_rejections=0, noise_scale=0.0)
    torch.testing.assert_close(alpha2, probs2 / probs2.sum())


def _stage2_items(tok, texs, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for t in texs:
        n = len(cot_segments(t, 4))
        ids = torch.randint(10, len(tok), (n, k), generator=g)
        probs = torch.softmax(torch.randn(n, k, generator=g) * 2, -1)
        items.append(Stage2Item(t, ids, probs))
    return items


def test_stage2_loss_matches_naive_per_example(tok, sp):
    torch.manual_seed(0)
    model = tiny_model(tok).eval()
    texs = tokenize_examples(examples(2, digits=2) + examples(1, seed=4, digits=3), tok)
    items = _stage2_items(tok, texs)
    batch = Stage2Collator(tok)(items)
    cfg = LatentSFTConfig(gumbel=False)
    loss, m = Stage2Loss(cfg, sp)(model, batch)
    E = model.get_input_embeddings().weight.detach()
    ce_num, ce_den, kls = 0.0, 0, []
    for it in items:  # naive: one example at a time, no padding
        t = it.tex
        ids = t.question + [sp.bot]
        n = it.ids.shape[0]
        z = torch.einsum("nk,nkd->nd", it.probs, E[it.ids])  # each row of probs sums to 1
        tail = [sp.eot] + t.answer + [sp.eos]
        x = torch.cat([E[torch.tensor(ids)], z, E[torch.tensor(tail)]])[None]
        with torch.no_grad():
            logits = model(inputs_embeds=x).logits[0]
        s = len(ids)
        tgt = torch.tensor(tail)
        ce_num += float(
            torch.nn.functional.cross_entropy(logits[s + n - 1 : -1], tgt, reduction="sum")
        )
        ce_den += len(tail)
        logq = torch.log_softmax(logits[s - 1 : s - 1 + n], -1).gather(-1, it.ids)
        kls.append(float((it.probs * (it.probs.log() - logq)).sum(-1).mean()))
    ref = ce_num / ce_den + sum(kls) / len(kls)
    assert abs(float(loss.detach()) - ref) < 1e-4
    assert abs(float(m["kl"]) - sum(kls) / len(kls)) < 1e-4


def test_stage2_loss_decreases_on_tiny_set(tok, sp):
    from workbench.train import TrainConfig, Trainer

    torch.manual_seed(0)
    model = tiny_model(tok)
    texs = tokenize_examples(examples(6, digits=2), tok)
    items = _stage2_items(tok, texs)
    cfg = LatentSFTConfig(seed=0)
    trainer = Trainer(
        model,
        items,
        Stage2Collator(tok),
        TrainConfig(max_steps=40, lr=3e-3, batch_size=6, log_every=1, progress=False),
        loss_fn=Stage2Loss(cfg, sp),
    )
    trainer.train()
    hist = trainer.log_history.to_pandas()
    assert hist["loss"].iloc[-3:].mean() < 0.6 * hist["loss"].iloc[:3].mean()
    assert hist["ce"].iloc[-1] < hist["ce"].iloc[0] and hist["kl"].iloc[-1] < hist["kl"].iloc[0]


def test_spec(tok, sp):
    spec = latent_sft_spec(tok, LatentSFTConfig(top_k=7, max_latent_steps=5))
    assert isinstance(spec.feedback, SuperpositionFeedback) and spec.feedback.top_k == 7
    assert isinstance(spec.stop, ArgmaxToken) and spec.stop.token_id == sp.eot
    assert spec.max_latent_steps == 5 and spec.append_eot


def test_train_latent_sft_end_to_end(tok, tmp_path):
    model = tiny_model(tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LatentSFTConfig(
        encoder_steps=2,
        decoder_steps=2,
        union_steps=1,
        stage2_steps=2,
        batch_size=4,
        max_latent_steps=4,
        log_every=1,
    )
    data = examples(6, digits=2)
    res = train_latent_sft(
        model, tok, data, cfg, eval_examples=data[:3], output_dir=tmp_path / "run"
    )
    assert set(res.histories) == {"encoder", "decoder", "union", "stage2"}
    assert "eval/answer_exact_tf" in res.histories["union"].columns
    assert {"ce", "kl"} <= set(res.histories["stage2"].columns)
    assert set(res.history["stage"]) == {"encoder", "decoder", "union", "stage2"}
    assert "eval/accuracy" in res.final_eval
    labels = load_soft_labels(res.soft_label_path)
    assert isinstance(labels, SoftLabels) and len(labels) == 6
    for name in ("stage2", "encoder", "soft_labels"):
        assert (tmp_path / "run" / name).is_dir()
    ev = res.evaluate(data[:3])
    assert ev.summary["latent_steps"] <= 4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched


def test_cot_teachers_are_the_segment_histograms(tok):
    texs = tokenize_examples(examples(3, digits=3), tok)
    cfg = LatentSFTConfig(teacher="cot", gumbel=False, compression_rate=4, top_k=3)
    labels = cot_soft_labels(texs, cfg, len(tok))
    for i, tex in enumerate(texs):
        ids, probs = labels[i]
        segments = cot_segments(tex, 4)
        assert ids.shape == (len(segments), 3)
        for seg, row_ids, row_p in zip(segments, ids, probs, strict=True):
            kept = [int(t) for t, p in zip(row_ids, row_p, strict=True) if p > 0]
            counts = torch.tensor([float(seg.count(t)) for t in kept])
            assert torch.allclose(row_p[: len(kept)], counts / counts.sum())  # shares of the kept
            assert seg.count(kept[0]) == max(seg.count(t) for t in seg)  # most frequent first
    one_hot = cot_soft_labels(texs, LatentSFTConfig(teacher="cot", gumbel=False,
                                                    compression_rate=1), len(tok))  # fmt: skip
    ids, probs = one_hot[0]
    assert ids[:, 0].tolist() == [s[0] for s in cot_segments(texs[0], 1)]
    assert torch.equal(probs, torch.ones_like(probs))


def test_train_with_cot_teachers_skips_stage_1_and_learns(tok, tmp_path):
    model = tiny_model(tok)
    cfg = LatentSFTConfig(teacher="cot", gumbel=False, compression_rate=2, encoder_steps=5,
                          stage2_steps=30, stage2_lr=3e-3, batch_size=6, log_every=1)  # fmt: skip
    data = examples(6, digits=2)
    res = train_latent_sft(model, tok, data, cfg, output_dir=tmp_path / "run")
    assert set(res.histories) == {"stage2"}  # no encoder, decoder or union sub-stage ran
    h = res.histories["stage2"]
    assert h["kl"].iloc[-3:].mean() < 0.5 * h["kl"].iloc[:3].mean()
    labels = load_soft_labels(res.soft_label_path)
    texs = tokenize_examples(data, tok)
    assert labels.n_latent(0) == len(cot_segments(texs[0], 2))
    with pytest.raises(SoftLabelCacheMismatch, match="teacher"):  # not an encoder's cache
        load_soft_labels(res.soft_label_path, soft_label_meta(LatentSFTConfig(compression_rate=2),
                                                              len(tok), texs))  # fmt: skip
