"""4-D additive attention masks and dual-track positions for Latent-SFT stage 1
(RESEARCH Part A 1.2).

How transformers (5.x) takes a custom mask, checked in ``masking_utils.py`` and the GPT-2 / Llama
model files: ``create_causal_mask`` -> ``_preprocess_mask_arguments`` returns any 4-D
``attention_mask`` **as is** (no causal or padding logic is added on top), and the ``sdpa`` and
``eager`` attention functions add it to the attention scores (``attn_mask=`` of
``scaled_dot_product_attention``; ``scores + attention_mask`` in eager). So a mask built here must
already contain causality and padding, be additive (0 kept, ``finfo(dtype).min`` masked, the
reference code's convention, never ``-inf``: fully masked pad rows then give a uniform softmax
instead of NaN) and have the model's dtype, shape ``[B, 1, T, T]``. Flash-attention kernels take
no 4-D mask, hence :func:`require_mask_capable_attention`. Position ids are passed explicitly
(``position_ids=``); with a 4-D mask HF infers nothing from the mask.

Masks
-----
* :func:`induction_mask` (encoder, "Latent Token Induction Mask"):
  ``keep[i, j] = (j <= i) and not (x_j == C and j < i) and nonpad(i) and nonpad(j)``: no position
  sees an *earlier* compress token ``C``; the i-th ``C`` sees the prompt, ``S_1..S_i`` and itself;
  explicit tokens never see a ``C``.
* :func:`supervision_mask` (decoder, "Latent Token Supervision Mask"), from a per-token role
  (:data:`PREFIX`, :data:`LATENT`, :data:`TEXT`, :data:`TAIL`, :data:`PAD`) and a segment index:
  the prefix ``[P, <bot>]`` is causal; ``L_i`` sees the prefix and ``L_1..L_i``; the tokens of
  ``S_{i+1}`` (segment index ``i``) see only ``L_i`` and themselves causally; the tail
  ``[<eot>, A, <eos>]`` sees the prefix, every ``L`` and itself causally, no explicit segment;
  pad rows and columns are fully masked.
* :func:`dual_track_positions` (v2 positions): latents get consecutive positions as if the text
  segments were absent, the text after ``L_i`` continues from ``pos(L_i)``, the tail from
  ``pos(L_N)``.

Deviation from the reference: padding is read from the 2-D attention mask, not from the pad id
(the reference masks every pad-id token, which also masks a real EOS when pad == eos,
RESEARCH 1.8). Everything is vectorised over the batch (the reference loops per sample).
"""

from __future__ import annotations

import torch

PAD, PREFIX, LATENT, TEXT, TAIL = 0, 1, 2, 3, 4
"""Token roles of a decoder (supervision-mask) sequence."""

MASK_CAPABLE_ATTENTION = ("sdpa", "eager")


def additive_mask(keep: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, T, T]`` bool "may attend" -> ``[B, 1, T, T]`` additive mask (0 kept, ``finfo.min``
    masked)."""
    if keep.dim() != 3 or keep.shape[-1] != keep.shape[-2]:
        raise ValueError(f"keep must be [B, T, T], got {tuple(keep.shape)}")
    if not dtype.is_floating_point:
        raise ValueError(f"an additive mask needs a floating dtype, got {dtype}")
    out = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    out.masked_fill_(~keep, torch.finfo(dtype).min)
    return out[:, None]


def _causal(T: int, device) -> torch.Tensor:
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()[None]


def causal_keep(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T, T]`` bool of a plain causal mask with padding (rows and columns of pads masked)."""
    nonpad = attention_mask.bool()
    return _causal(nonpad.shape[1], nonpad.device) & nonpad[:, :, None] & nonpad[:, None, :]


def causal_mask(attention_mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The plain causal + padding mask as a 4-D additive mask (the reference point for
    4-D == 2-D tests)."""
    return additive_mask(causal_keep(attention_mask), dtype)


def induction_keep(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, compress_id: int
) -> torch.Tensor:
    """``[B, T, T]`` bool of the Latent Token Induction Mask (RESEARCH 1.2, encoder)."""
    B, T = input_ids.shape
    is_c = (input_ids == compress_id) & attention_mask.bool()
    idx = torch.arange(T, device=input_ids.device)
    earlier = idx[None, :] < idx[:, None]  # [T, T]: j < i
    hide = is_c[:, None, :] & earlier[None]  # column j is a C strictly before row i
    return causal_keep(attention_mask) & ~hide


def induction_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    compress_id: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The Latent Token Induction Mask as ``[B, 1, T, T]`` additive ``dtype`` (encoder input)."""
    return additive_mask(induction_keep(input_ids, attention_mask, compress_id), dtype)


def supervision_keep(role: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """``[B, T, T]`` bool of the Latent Token Supervision Mask (RESEARCH 1.2, decoder).

    ``role`` [B, T] holds :data:`PREFIX`/:data:`LATENT`/:data:`TEXT`/:data:`TAIL`/:data:`PAD`;
    ``segment`` [B, T] is ``i`` on ``L_i`` and on the tokens of ``S_{i+1}`` (the text that follows
    ``L_i``), anything elsewhere. Sequences must be ordered prefix, latents/text, tail.
    """
    if role.shape != segment.shape or role.dim() != 2:
        raise ValueError(
            f"role and segment must both be [B, T], got {tuple(role.shape)}, {tuple(segment.shape)}"
        )
    T = role.shape[1]
    r_i, r_j = role[:, :, None], role[:, None, :]
    same_seg = segment[:, :, None] == segment[:, None, :]
    pre_j, lat_j, txt_j, tail_j = r_j == PREFIX, r_j == LATENT, r_j == TEXT, r_j == TAIL
    rule = (
        ((r_i == PREFIX) & pre_j)
        | ((r_i == LATENT) & (pre_j | lat_j))
        | ((r_i == TEXT) & (lat_j | txt_j) & same_seg)
        | ((r_i == TAIL) & (pre_j | lat_j | tail_j))
    )
    nonpad = role != PAD
    return rule & _causal(T, role.device) & nonpad[:, :, None] & nonpad[:, None, :]


def supervision_mask(
    role: torch.Tensor, segment: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The Latent Token Supervision Mask as ``[B, 1, T, T]`` additive ``dtype`` (decoder input)."""
    return additive_mask(supervision_keep(role, segment), dtype)


def dual_track_positions(role: torch.Tensor) -> torch.Tensor:
    """v2 dual-track position ids [B, T] from the token roles (RESEARCH 1.2).

    Prefix, latents and tail form the main track (consecutive positions, as if the text were
    absent); a text token sits ``k`` places after the latent it follows. Pads get 0.

    >>> P, L, X, A = PREFIX, LATENT, TEXT, TAIL
    >>> # [P0, P1, <t>, L1, t1, t2, L2, t3, t4, L3, </t>, A1, A2]
    >>> role = torch.tensor([[P, P, P, L, X, X, L, X, X, L, A, A, A]])
    >>> dual_track_positions(role).tolist()
    [[0, 1, 2, 3, 4, 5, 4, 5, 6, 5, 6, 7, 8]]
    """
    main = (role == PREFIX) | (role == LATENT) | (role == TAIL)
    text = role == TEXT
    main_pos = main.long().cumsum(1) - 1  # position of the latest main-track token
    text_count = text.long().cumsum(1)
    at_last_main = torch.cummax(
        torch.where(main, text_count, torch.zeros_like(text_count)), dim=1
    ).values
    pos = main_pos + torch.where(text, text_count - at_last_main, torch.zeros_like(text_count))
    return torch.where(role == PAD, torch.zeros_like(pos), pos.clamp(min=0))


def require_mask_capable_attention(model, *, switch: bool = True) -> str:
    """Make sure ``model`` runs ``sdpa`` or ``eager`` attention before it gets a custom 4-D mask.

    Flash-attention kernels silently ignore (or reject) a 4-D additive mask, which would turn
    the induction / supervision masks into plain causal attention (RESEARCH 1.2: "the 4-D custom
    masks rule out FlashAttention-2"). With ``switch=True`` any other implementation is switched
    to ``sdpa`` (``model.set_attn_implementation``); with ``switch=False`` it raises. Returns the
    implementation in use.
    """
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl in MASK_CAPABLE_ATTENTION:
        return impl
    if not switch:
        raise ValueError(
            f"{type(model).__name__} uses attn_implementation={impl!r}; custom 4-D attention masks "
            f"need one of {MASK_CAPABLE_ATTENTION} (call model.set_attn_implementation('sdpa'))"
        )
    if not hasattr(model, "set_attn_implementation"):
        raise TypeError(
            f"{type(model).__name__} cannot switch its attention implementation; build it with "
            "attn_implementation='sdpa' to use custom 4-D masks"
        )
    model.set_attn_implementation("sdpa")
    impl = model.config._attn_implementation
    if impl not in MASK_CAPABLE_ATTENTION:  # pragma: no cover - transformers refused the switch
        raise RuntimeError(
            f"could not switch {type(model).__name__} to sdpa attention (still {impl!r})"
        )
    return impl
