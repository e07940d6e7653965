"""Reading hidden states in the vocabulary: the final norm, the logit lens, token display text.

The logit lens of layer ``l`` is ``head(final_norm(h_l))`` for ``l < L`` and ``head(h_L)`` for
the last entry, which HF already returns after the final norm (so the norm is never applied
twice; tested).
"""

from __future__ import annotations

import torch

__all__ = ["final_norm", "logit_lens", "token_strings", "join_tokens", "NORM_NAMES"]

NORM_NAMES = ("ln_f", "norm", "final_layer_norm", "norm_f", "final_layernorm", "final_norm")
"""Attribute names :func:`final_norm` looks for (GPT-2, Llama, OPT, ...)."""
_SPACE_MARKS = {" ": "␣", "Ġ": "␣", "▁": "␣", "\n": "↵", "Ċ": "↵", "\t": "⇥"}


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The final norm of an HF causal LM (``ln_f`` for GPT-2, ``norm`` for Llama...)."""
    base = getattr(model, "base_model", model)
    for owner in (base, getattr(base, "decoder", None), model):
        if owner is None:
            continue
        for name in NORM_NAMES:
            mod = getattr(owner, name, None)
            if isinstance(mod, torch.nn.Module):
                return mod
    raise TypeError(
        f"cannot find the final norm of {type(model).__name__} "
        f"(looked for {', '.join(NORM_NAMES)}); "
        "pass final_norm=<module> to LatentTrajectory.from_trace / logit_lens"
    )


@torch.no_grad()
def logit_lens(
    hidden_states: torch.Tensor,
    model: torch.nn.Module,
    *,
    norm: torch.nn.Module | None = None,
    chunk: int = 4096,
) -> torch.Tensor:
    """Per-layer log-probabilities ``[..., L+1, V]`` of hidden states ``[..., L+1, d]``.

    Entry ``l < L`` goes through the final norm and the LM head; the last entry is already
    normed (HF returns it after the final norm), so it only goes through the head.
    """
    from workbench.engine.loop import base_and_head

    _, head = base_and_head(model)
    norm = norm if norm is not None else final_norm(model)
    w = head.weight
    lead, (n_layers, d) = hidden_states.shape[:-2], hidden_states.shape[-2:]
    flat = hidden_states.reshape(-1, n_layers, d)
    out = torch.empty(flat.shape[0], n_layers, w.shape[0], dtype=torch.float32)
    for s in range(0, flat.shape[0], max(1, chunk // n_layers)):
        h = flat[s : s + max(1, chunk // n_layers)].to(device=w.device, dtype=w.dtype)
        normed = torch.cat([norm(h[:, :-1]), h[:, -1:]], 1)
        out[s : s + h.shape[0]] = torch.log_softmax(head(normed).float(), -1).cpu()
    return out.reshape(*lead, n_layers, w.shape[0])


def lm_head_log_probs(hidden: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """``log_softmax(head(hidden))`` of final-layer states ``[..., d]`` (already normed), on CPU."""
    from workbench.engine.loop import base_and_head

    _, head = base_and_head(model)
    with torch.no_grad():
        w = head.weight
        return torch.log_softmax(head(hidden.to(w.device, w.dtype)).float(), -1).cpu()


def token_strings(tokenizer, vocab_size: int | None = None) -> list[str]:
    """Display text of every token id (spaces and newlines made visible: ``␣``, ``↵``)."""
    n = len(tokenizer)
    vocab_size = max(n, vocab_size or 0)
    toks = tokenizer.convert_ids_to_tokens(list(range(n)))
    out = []
    for t in toks:
        t = "" if t is None else str(t)
        for k, v in _SPACE_MARKS.items():
            t = t.replace(k, v)
        out.append(t)
    return out + [f"<{i}>" for i in range(n, vocab_size)]


def join_tokens(tokens: list[str]) -> str:
    """Token texts as one string: concatenated for single characters, space-separated otherwise."""
    return "".join(tokens) if all(len(t) == 1 for t in tokens) else " ".join(tokens)
