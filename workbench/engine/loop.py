"""The latent engine: one batched, KV-cached loop of prefill -> latent steps -> answer decode.

Every method is a choice of feedback rule (how a latent input embedding is made) and stop
rule (when the latent phase ends) on this one loop (RESEARCH Part A section 6, "LatentLoop";
Part B section 5, "LatentRollout engine"):

1. Prefill the left-padded prompts ``question <bot>`` with an explicit attention mask and
   per-sample position ids into a KV cache (current transformers cache API: the model takes it
   as ``cache=``, which transformers accepts from 5.24 on; ``past_key_values=`` is deprecated
   there). The cache is a :class:`~workbench.engine.cache.PreallocatedCache` sized for the
   whole run: ``DynamicCache`` copies itself at every step.
2. Latent steps: read the LM-head distribution at the last position, ask the stop rule,
   feed the feedback embedding ``[B, 1, d]`` as ``inputs_embeds``. Samples that stopped keep
   stepping with the batch but their slot is masked out (attention mask 0) and their position
   does not advance, so every sample sees exactly its own sequence: a per-sample ``finished``
   mask and per-sample latent counts in one batch, and no per-example Python loop.
3. Optionally append ``<eot>`` (Coconut and Latent-SFT force it after the latents), then
   decode greedily on the same cache until ``<eos>``.

Deviation from the reference codes: Coconut's and Latent-SFT's generators run batch 1 and
recompute or re-prefill (RESEARCH 2.1 "Generation", 1.4 step 3); here the answer continues on
the cache, which is equivalent for greedy decoding and is tested against a full recompute.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass

import torch
import transformers
from transformers import PreTrainedModel

from workbench.data.tokenizer import SpecialIds
from workbench.engine.cache import PreallocatedCache
from workbench.engine.compiled import compiled_layers
from workbench.engine.feedback import FeedbackRule, HiddenFeedback
from workbench.engine.stop import FixedSteps, StopRule
from workbench.engine.trace import Trace


@dataclass
class EngineOutput:
    """A run's trace plus the generated tokens."""

    trace: Trace
    generated: torch.Tensor
    """[B, G] greedy tokens after the latent phase (and forced ``<eot>``); ``pad`` after
    ``<eos>``."""
    n_generated: torch.Tensor
    """[B] generated tokens per example, ``<eos>`` included when it was produced."""
    forward_passes: torch.Tensor
    """[B] model calls each example took part in (prefill counts one)."""
    seconds: float
    """Wall time of the run."""
    token_logprobs: torch.Tensor | None = None
    """[B, G] log-probability of each sampled token (``sample_tokens=True``; 0 after ``<eos>``)."""


CACHE_KWARG_SINCE = "5.24.0"
"""First transformers release whose models take the KV cache as ``cache=`` (older ones would
swallow it in ``**kwargs`` and silently build a cache of their own)."""


@functools.cache
def require_cache_api() -> None:
    """Raise ``ImportError`` unless the installed transformers takes ``cache=``."""
    from packaging.version import Version

    if Version(transformers.__version__) < Version(CACHE_KWARG_SINCE):
        raise ImportError(
            f"the latent engine needs transformers >= {CACHE_KWARG_SINCE} (models take the KV "
            f"cache as `cache=`); found {transformers.__version__}: "
            f"pip install 'transformers>={CACHE_KWARG_SINCE}'"
        )


INFERENCE_ATTENTION = {"cpu": "eager"}
"""The attention kernel :func:`run_latent` uses per device type (``attention="auto"``); a device
type not listed keeps the model's own (on CUDA, SDPA's fused kernels). On CPU, at the one query
position of a decode step, SDPA cost 33% of a bf16 batch-256 run on an AMD EPYC host, and plain
matmuls and a softmax take 13% less time per example there (1.34 against 1.54 ms at batch 256,
2.04 against 2.26 at 64; six alternating rounds, each one faster); on a Xeon with AMX units a
matmul decode attention measured the same as SDPA (docs/results.md, engine speed). Training
(``latent_forward``) is not affected: it runs the model as built."""


@contextlib.contextmanager
def attention_kernel(model: PreTrainedModel, implementation: str | None):
    """Run ``model`` with attention ``implementation`` (``"sdpa"``, ``"eager"``; ``None``: its
    own) inside the block and restore the model's own after it, even on an error. Transformers
    reads the choice from the config at every forward, the attention mask's form included."""
    own = model.config._attn_implementation
    if implementation is None or implementation == own:
        yield
        return
    model.config._attn_implementation = implementation
    try:
        yield
    finally:
        model.config._attn_implementation = own


def base_and_head(model: PreTrainedModel):
    """The transformer body (returns hidden states) and the LM head of an HF causal LM."""
    base = model.base_model
    head = model.get_output_embeddings()
    if base is model or head is None:
        raise TypeError(
            f"{type(model).__name__} does not look like an HF causal LM with a base model "
            "and LM head"
        )
    return base, head


def entropy_and_topk(logits: torch.Tensor, k: int):
    """Full-vocabulary entropy (nats) and top-k (ids, probs) of ``softmax(logits)``, in fp32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    vals, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return ent, ids, vals.exp()


@torch.no_grad()
def run_latent(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special: SpecialIds,
    *,
    feedback: FeedbackRule | None = None,
    stop: StopRule | None = None,
    max_latent_steps: int = 0,
    max_new_tokens: int = 64,
    append_eot: bool = True,
    top_k: int = 10,
    record_hidden: bool = False,
    record_logits: bool = False,
    generator: torch.Generator | None = None,
    sample_tokens: bool = False,
    temperature: float = 1.0,
    token_top_k: int | None = None,
    attention: str = "auto",
    compile_layers: bool = False,
) -> EngineOutput:
    """Run prefill, up to ``max_latent_steps`` latent steps and greedy decoding on one cache.

    ``input_ids``/``attention_mask`` are left-padded prompts ending in ``<bot>``. With
    ``max_latent_steps=0`` this is plain batched greedy generation (CoT / no-CoT, where the
    model writes its own ``<eot>``: pass ``append_eot=False``). ``sample_tokens`` samples the
    decoded tokens from ``softmax(top-k(logits) / temperature)`` with ``generator`` instead
    (RL rollouts) and records each token's log-probability under that distribution.
    ``attention``: the attention kernel of the run: ``"auto"`` (:data:`INFERENCE_ATTENTION` for
    the device), ``"model"`` (the model's own), ``"sdpa"`` or ``"eager"``.
    ``compile_layers``: run the decoder layers through ``torch.compile``
    (:mod:`workbench.engine.compiled`): 1.4-1.6x faster at batch 256 in bf16 on CPU, after a
    one-off compile of 10-90 s per process: for runs of tens of thousands of examples.
    """
    if attention not in ("auto", "model", "sdpa", "eager"):
        raise ValueError(f"attention={attention!r}: use 'auto', 'model', 'sdpa' or 'eager'")
    kernel = {"auto": INFERENCE_ATTENTION.get(input_ids.device.type), "model": None}
    with (
        attention_kernel(model, kernel.get(attention, attention)),
        compiled_layers(model, compile_layers),
    ):
        return _run_latent(
            model, input_ids, attention_mask, special, feedback=feedback, stop=stop,
            max_latent_steps=max_latent_steps, max_new_tokens=max_new_tokens,
            append_eot=append_eot, top_k=top_k, record_hidden=record_hidden,
            record_logits=record_logits, generator=generator, sample_tokens=sample_tokens,
            temperature=temperature, token_top_k=token_top_k,
        )  # fmt: skip


def _run_latent(
    model, input_ids, attention_mask, special, *, feedback, stop, max_latent_steps,
    max_new_tokens, append_eot, top_k, record_hidden, record_logits, generator, sample_tokens,
    temperature, token_top_k,
) -> EngineOutput:  # fmt: skip
    t0 = time.perf_counter()
    require_cache_api()
    base, head = base_and_head(model)
    emb_w = model.get_input_embeddings().weight
    feedback = feedback or HiddenFeedback()
    stop = stop or FixedSteps(max_latent_steps)
    dev = input_ids.device
    B = input_ids.shape[0]
    mask = attention_mask.long()
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    limit = getattr(model.config, "n_positions", None) or getattr(
        model.config, "max_position_embeddings", None
    )
    if limit is not None and int(pos.max()) + 2 + max_latent_steps + max_new_tokens > limit:
        raise ValueError(
            f"prompt ({int(pos.max()) + 1}) + max_latent_steps ({max_latent_steps}) + "
            f"max_new_tokens ({max_new_tokens}) exceeds the model's {limit} positions; "
            "shorten them or use a larger max_positions"
        )
    # the cache and the attention mask fill buffers sized for the longest run: growing them by
    # concatenation would copy all of them at every step
    capacity = input_ids.shape[1] + max_latent_steps + 1 + max_new_tokens
    cache = PreallocatedCache(capacity)
    mask_buffer = mask.new_zeros(B, capacity)
    mask_buffer[:, : mask.shape[1]] = mask
    nfp = torch.ones(B, dtype=torch.long, device=dev)

    def step(embeds=None, ids=None, active=None):
        nonlocal mask
        n = mask.shape[1]
        mask_buffer[:, n] = 1 if active is None else active
        mask = mask_buffer[:, : n + 1]
        out = base(
            input_ids=ids,
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=next_pos[:, None],
            cache=cache,
            use_cache=True,
            output_hidden_states=record_hidden,
        )
        return out

    out = base(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=pos,
        cache=cache,
        use_cache=True,
        output_hidden_states=record_hidden,
    )
    h = out.last_hidden_state[:, -1]
    hs = torch.stack([x[:, -1] for x in out.hidden_states], 1) if record_hidden else None
    next_pos = pos[:, -1] + 1

    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    n_latent = torch.zeros(B, dtype=torch.long, device=dev)
    rec: dict[str, list] = {
        k: [] for k in ("ids", "probs", "ent", "stop", "fed", "emb", "wid", "wp", "hs", "logits")
    }
    stats: dict[str, list] = {}
    stop.reset(B, dev)
    feedback.reset(B, dev)  # rules that replay recorded steps count their calls from here
    for t in range(max_latent_steps + 1):
        logits = head(h).float()
        ent, ids, probs = entropy_and_topk(logits, top_k)
        rec["ids"].append(ids), rec["probs"].append(probs), rec["ent"].append(ent)
        if record_hidden:
            rec["hs"].append(hs)
        if record_logits:
            rec["logits"].append(logits)
        halt = stop(t, h, logits, ent) | (t >= max_latent_steps)
        rec["stop"].append(halt & ~finished)
        finished |= halt
        if bool(finished.all()):
            rec["fed"].append(torch.zeros_like(finished))
            rec["emb"].append(torch.zeros_like(h))
            for v in stats.values():
                v.append(torch.zeros_like(v[-1]))
            if rec["wid"]:
                (
                    rec["wid"].append(torch.zeros_like(rec["wid"][-1])),
                    rec["wp"].append(torch.zeros_like(rec["wp"][-1])),
                )
            break
        active = ~finished
        fb = feedback(h, logits if feedback.needs_logits else None, emb_w, generator)
        e = fb.embeds.to(emb_w.dtype) * active[:, None]
        rec["fed"].append(active), rec["emb"].append(e)
        if fb.ids is not None:
            rec["wid"].append(fb.ids), rec["wp"].append(fb.probs.float())
        for k, v in (fb.stats or {}).items():
            stats.setdefault(k, []).append(v.float() * active.view(-1, *[1] * (v.ndim - 1)))
        out = step(embeds=e[:, None], active=active)
        h = torch.where(active[:, None], out.last_hidden_state[:, -1], h)
        if record_hidden:
            hs = torch.where(
                active[:, None, None], torch.stack([x[:, -1] for x in out.hidden_states], 1), hs
            )
        next_pos = next_pos + active
        n_latent += active
        nfp += active

    if append_eot:
        out = step(ids=torch.full((B, 1), special.eot, dtype=torch.long, device=dev))
        h = out.last_hidden_state[:, -1]
        next_pos = next_pos + 1
        nfp += 1

    done = torch.zeros(B, dtype=torch.bool, device=dev)
    n_gen = torch.zeros(B, dtype=torch.long, device=dev)
    gen, gen_logp = [], []
    for i in range(max_new_tokens):
        if sample_tokens:
            lp = token_log_probs(head(h), temperature, token_top_k)
            tok = torch.multinomial(lp.exp(), 1, generator=generator).squeeze(-1)
            gen_logp.append(lp.gather(-1, tok[:, None]).squeeze(-1) * ~done)
        else:
            tok = head(h).argmax(-1)
        tok = torch.where(done, torch.full_like(tok, special.pad), tok)
        gen.append(tok)
        n_gen += ~done
        done = done | (tok == special.eos)
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        live = ~done
        out = step(ids=tok[:, None], active=live)
        h = torch.where(live[:, None], out.last_hidden_state[:, -1], h)
        next_pos = next_pos + live
        nfp += live
    generated = torch.stack(gen, 1) if gen else torch.zeros(B, 0, dtype=torch.long, device=dev)

    st = lambda k: torch.stack(rec[k], 1).cpu() if rec[k] else None  # noqa: E731
    trace = Trace(
        prompt_ids=input_ids.cpu(),
        prompt_mask=attention_mask.cpu(),
        fed=st("fed"),
        embeds=st("emb").float(),
        topk_ids=st("ids"),
        topk_probs=st("probs"),
        entropy=st("ent"),
        stop=st("stop"),
        n_latent=n_latent.cpu(),
        weight_ids=st("wid"),
        weight_probs=st("wp"),
        hidden_states=st("hs"),
        logits=st("logits"),
        latent_stats={k: torch.stack(v, 1).cpu() for k, v in stats.items()},
        feedback=feedback.describe(),
        stop_rule=stop.describe(),
    )
    token_logp = torch.stack(gen_logp, 1).cpu() if gen_logp else None
    return EngineOutput(
        trace, generated.cpu(), n_gen.cpu(), nfp.cpu(), time.perf_counter() - t0, token_logp
    )


def token_log_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None):
    """``log softmax(logits / temperature)`` restricted to the top-``k`` (``-inf`` elsewhere),
    in fp32: the distribution sampled tokens are drawn from, and scored by in training."""
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    return torch.log_softmax(scores, dim=-1)
