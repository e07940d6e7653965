"""The record of one engine run: everything the lens draws and RL needs to recompute.

Step ``t`` of the latent phase reads the distribution at the current last position (for
``t = 0`` the ``<bot>`` position, then latent ``t``), decides whether to stop, and, if not,
feeds latent ``t + 1``. So a trace has ``S = max latents + 1`` steps: the last one is the
read at the position where ``<eot>`` goes. Tensors are on CPU; probabilities are fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Trace:
    """Per example ``b`` and latent step ``t`` (shapes [B, S, ...])."""

    prompt_ids: torch.Tensor
    """[B, P] left-padded prompts (``question <bot>``)."""
    prompt_mask: torch.Tensor
    """[B, P] 1 on real prompt tokens."""
    fed: torch.Tensor
    """[B, S] bool: a latent was fed after the read at step t."""
    embeds: torch.Tensor
    """[B, S, d] the input embedding fed after step t (zeros where not fed)."""
    topk_ids: torch.Tensor
    """[B, S, k] top-k token ids of the LM-head distribution read at step t."""
    topk_probs: torch.Tensor
    """[B, S, k] their probabilities (fp32, full-vocabulary softmax)."""
    entropy: torch.Tensor
    """[B, S] entropy (nats) of that full distribution."""
    stop: torch.Tensor
    """[B, S] bool: the stop rule fired at step t (the sample's latent phase ended there)."""
    n_latent: torch.Tensor
    """[B] latents fed per example."""
    weight_ids: torch.Tensor | None = None
    """[B, S, kf] tokens mixed into the fed embedding (vocabulary rules only)."""
    weight_probs: torch.Tensor | None = None
    """[B, S, kf] their mixing weights (fp32)."""
    hidden_states: torch.Tensor | None = None
    """[B, S, L+1, d] every layer's state at the read position (``record_hidden=True``); the last
    layer entry is after the final norm, as HF returns it."""
    logits: torch.Tensor | None = None
    """[B, S, V] full logits at each read (``record_logits=True``), for exact lens statistics."""
    latent_stats: dict[str, torch.Tensor] = field(default_factory=dict)
    """The feedback rule's per-latent statistics, each [B, S, ...] (zeros where not fed), e.g. a
    Gaussian rule's ``mu`` and ``logvar`` (fp32)."""
    feedback: str = ""
    stop_rule: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return self.fed.shape[1]

    def select(self, index) -> Trace:
        """The trace of a subset of examples (an index, slice, list or bool mask)."""
        if isinstance(index, int):
            index = [index]
        pick = lambda x: None if x is None else x[index]  # noqa: E731
        return Trace(
            prompt_ids=pick(self.prompt_ids),
            prompt_mask=pick(self.prompt_mask),
            fed=pick(self.fed),
            embeds=pick(self.embeds),
            topk_ids=pick(self.topk_ids),
            topk_probs=pick(self.topk_probs),
            entropy=pick(self.entropy),
            stop=pick(self.stop),
            n_latent=pick(self.n_latent),
            weight_ids=pick(self.weight_ids),
            weight_probs=pick(self.weight_probs),
            hidden_states=pick(self.hidden_states),
            logits=pick(self.logits),
            latent_stats={k: v[index] for k, v in self.latent_stats.items()},
            feedback=self.feedback,
            stop_rule=self.stop_rule,
            meta=dict(self.meta),
        )

    def topk_table(self, tokenizer, example: int = 0, k: int = 5):
        """A quick look at one example: per step, entropy and the top-k tokens with their
        probabilities."""
        import pandas as pd

        rows = []
        for t in range(self.num_steps):
            ids, ps = (
                self.topk_ids[example, t, :k].tolist(),
                self.topk_probs[example, t, :k].tolist(),
            )
            rows.append(
                {
                    "step": t,
                    "fed_latent": bool(self.fed[example, t]),
                    "entropy": float(self.entropy[example, t]),
                    "top_tokens": "  ".join(
                        f"{tokenizer.convert_ids_to_tokens(i)!s}:{p:.2f}"
                        for i, p in zip(ids, ps, strict=True)
                    ),
                }
            )
        return pd.DataFrame(rows)

    @staticmethod
    def concat(traces: list[Trace], pad_id: int = 0) -> Trace:
        """Join traces of several batches (steps and prompt widths padded)."""
        S = max(t.num_steps for t in traces)
        P = max(t.prompt_ids.shape[1] for t in traces)

        def cat(name, fill=0, left=False, width=None, xs=None):
            xs = [getattr(t, name) for t in traces] if xs is None else xs
            if any(x is None for x in xs):
                return None
            out = []
            for x in xs:
                w = width if width is not None else S
                if x.dim() >= 2 and x.shape[1] < w:
                    pad_shape = list(x.shape)
                    pad_shape[1] = w - x.shape[1]
                    pad = torch.full(pad_shape, fill, dtype=x.dtype)
                    x = torch.cat([pad, x] if left else [x, pad], 1)
                out.append(x)
            return torch.cat(out, 0)

        return Trace(
            prompt_ids=cat("prompt_ids", pad_id, left=True, width=P),
            prompt_mask=cat("prompt_mask", 0, True, P),
            fed=cat("fed", False),
            embeds=cat("embeds"),
            topk_ids=cat("topk_ids"),
            topk_probs=cat("topk_probs"),
            entropy=cat("entropy"),
            stop=cat("stop", False),
            n_latent=torch.cat([t.n_latent for t in traces]),
            weight_ids=cat("weight_ids"),
            weight_probs=cat("weight_probs"),
            hidden_states=cat("hidden_states"),
            logits=cat("logits"),
            latent_stats={
                k: cat(k, xs=[t.latent_stats.get(k) for t in traces])
                for k in traces[0].latent_stats
            },
            feedback=traces[0].feedback,
            stop_rule=traces[0].stop_rule,
            meta=dict(traces[0].meta),
        )
