"""Tests for workbench.methods.masks: Latent-SFT's 4-D masks and dual-track positions
(RESEARCH 1.2)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from workbench.methods.masks import (
    LATENT,
    PAD,
    PREFIX,
    TAIL,
    TEXT,
    additive_mask,
    causal_mask,
    dual_track_positions,
    induction_keep,
    induction_mask,
    require_mask_capable_attention,
    supervision_keep,
    supervision_mask,
)

pytestmark = pytest.mark.usefixtures("one_thread")

C = 9  # compress token id in the hand-made encoder example
VOCAB = 32


def encoder_example():
    # [p p <bot> s s C s s C s C <eot>] then 2 pads (right) ; second row left-padded by 1
    row = [1, 2, 3, 10, 11, C, 12, 13, C, 14, C, 4]
    ids = torch.tensor([row + [0, 0], [0] + row + [0]])
    mask = torch.tensor([[1] * 12 + [0, 0], [0] + [1] * 12 + [0]])
    return ids, mask


def test_induction_mask_rules():
    ids, mask = encoder_example()
    keep = induction_keep(ids, mask, C)
    B, T = ids.shape
    for b in range(B):
        real = mask[b].bool()
        is_c = (ids[b] == C) & real
        c_pos = is_c.nonzero().flatten().tolist()
        for i in range(T):
            for j in range(T):
                k = bool(keep[b, i, j])
                if not (real[i] and real[j]) or j > i:
                    assert not k, (b, i, j)  # padding and the future are masked
                    continue
                if is_c[j] and j < i:
                    assert not k, f"position {i} sees the earlier compress token {j}"
                elif not is_c[i] and is_c[j]:
                    assert not k  # explicit tokens never see a C
                else:
                    assert k, (b, i, j)  # everything else causal is visible
        # the i-th C sees the prompt, S_1..S_i and itself: every real non-C token before it
        for ci in c_pos:
            seen = keep[b, ci].nonzero().flatten().tolist()
            expect = [j for j in range(ci) if real[j] and not is_c[j]] + [ci]
            assert seen == expect


def test_additive_values_shape_dtype():
    ids, mask = encoder_example()
    for dtype in (torch.float32, torch.bfloat16):
        m = induction_mask(ids, mask, C, dtype=dtype)
        assert m.shape == (2, 1, ids.shape[1], ids.shape[1]) and m.dtype == dtype
        keep = induction_keep(ids, mask, C)[:, None]
        assert torch.all(m[keep] == 0)
        assert torch.all(m[~keep] == torch.finfo(dtype).min)
    with pytest.raises(ValueError):
        additive_mask(torch.ones(2, 3, 3, dtype=torch.bool), torch.long)


def decoder_example():
    """[P0 P1 <bot> L1 t t L2 t t L3 <eot> A1 A2] + 1 pad."""
    P, L, X, A = PREFIX, LATENT, TEXT, TAIL
    role = torch.tensor([[P, P, P, L, X, X, L, X, X, L, A, A, A, PAD]])
    seg = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 0, 0, 0, 0]])
    return role, seg


def test_supervision_mask_rules():
    role, seg = decoder_example()
    keep = supervision_keep(role, seg)[0]
    r, s = role[0].tolist(), seg[0].tolist()
    T = len(r)
    for i in range(T):
        visible = set(keep[i].nonzero().flatten().tolist())
        if r[i] == PAD:
            assert not visible
            continue
        assert PAD not in {r[j] for j in visible}
        assert all(j <= i for j in visible)
        if r[i] == PREFIX:  # causal within the prefix
            assert visible == set(range(i + 1))
        elif r[i] == LATENT:  # prefix and L_1..L_i
            assert visible == {j for j in range(i + 1) if r[j] in (PREFIX, LATENT)}
        elif r[i] == TEXT:  # only its latent L_seg and its own segment, causally
            assert visible == {j for j in range(i + 1) if r[j] in (LATENT, TEXT) and s[j] == s[i]}
            assert any(r[j] == LATENT for j in visible) and not any(r[j] == PREFIX for j in visible)
        elif r[i] == TAIL:  # prefix, all L, tail causally; no explicit segment
            assert visible == {j for j in range(i + 1) if r[j] in (PREFIX, LATENT, TAIL)}
            assert {j for j in range(T) if r[j] == LATENT} <= visible
    m = supervision_mask(role, seg, torch.float32)
    assert m.shape == (1, 1, T, T)
    # no position sees a segment other than its own (text is visible only inside the segment)
    for i in range(T):
        for j in range(T):
            if r[j] == TEXT and keep[i, j]:
                assert r[i] == TEXT and s[i] == s[j]


def test_dual_track_positions_docstring_example():
    role, _ = decoder_example()
    pos = dual_track_positions(role)
    assert pos[0, :13].tolist() == [0, 1, 2, 3, 4, 5, 4, 5, 6, 5, 6, 7, 8]
    assert pos[0, 13] == 0  # pad


def _models():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=64,
            n_head=2,
            vocab_size=VOCAB,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    )
    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=VOCAB,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    )
    return {"gpt2": gpt2.eval(), "llama": llama.eval()}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_4d_causal_mask_equals_2d_path(impl):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (3, 9), generator=g)
    am = torch.ones(3, 9, dtype=torch.long)
    am[1, :3] = 0  # left padding
    am[2, -2:] = 0  # right padding
    pos = (am.cumsum(1) - 1).clamp(min=0)
    real = am.bool()
    for name, model in _models().items():
        model.set_attn_implementation(impl)
        with torch.no_grad():
            a = model(input_ids=ids, attention_mask=am, position_ids=pos).logits
            b = model(
                input_ids=ids, attention_mask=causal_mask(am, model.dtype), position_ids=pos
            ).logits
            # the 4-D mask is really used: hiding token 0 from everyone else changes the logits
            keep = causal_mask(am, model.dtype).clone()
            keep[0, 0, 1:, 0] = torch.finfo(model.dtype).min
            c = model(input_ids=ids, attention_mask=keep, position_ids=pos).logits
        assert torch.isfinite(b).all(), name
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5, msg=f"{name} {impl}")
        assert (a[0, 1:] - c[0, 1:]).abs().max() > 1e-4, name


def test_require_mask_capable_attention():
    model = _models()["gpt2"]
    model.set_attn_implementation("eager")
    assert require_mask_capable_attention(model) == "eager"
    model.set_attn_implementation("sdpa")
    assert require_mask_capable_attention(model, switch=False) == "sdpa"

    class Cfg:
        _attn_implementation = "flash_attention_2"

    class Stub:
        config = Cfg()

        def set_attn_implementation(self, impl):
            self.config._attn_implementation = impl

    with pytest.raises(ValueError, match="sdpa"):
        require_mask_capable_attention(Stub(), switch=False)
    stub = Stub()
    assert require_mask_capable_attention(stub) == "sdpa"
