"""Token policies: optional Gumbel soft tokens, then sampled discrete tokens (LEPO, LaTRO).

RESEARCH Part B 2(b) (LEPO) and 3(b) (LaTRO). One trajectory is ``question <bot>``, ``L`` soft
tokens ``p~_t @ E`` with ``p~_t = softmax((top-k(l_t / T) + g) / tau_g)`` (LEPO; ``L = 0`` for
LaTRO), then discrete tokens sampled from ``softmax(top-k(l / T))`` until ``<eos>``: the CoT
model's rationale, ``<eot>`` and its answer.

* :func:`rollout` runs all trajectories in one batched, KV-cached, seeded engine run (the
  ``gumbel`` feedback rule for the soft tokens, ``sample_tokens`` after them) and stores each soft
  token's top-k ids and fp32 probabilities, the fed embeddings, each discrete token's id, and
  the log-scores the rollout drew them with;
* :func:`log_probs` recomputes them in **one** teacher-forced forward with the stored
  embeddings (detached, as LEPO) at the soft positions: ``latent`` holds ``-soft_ce`` of each
  soft token under the same filtered distribution it was drawn from (pitfall 3), ``answer`` the
  log-probability of each discrete token; with the policy unchanged both equal the rollout's.
* :func:`sequence_log_prob` scores a given continuation (LaTRO's ``log p(y | x, z)``).

``masks["answer"]`` covers every discrete token up to ``<eos>``; :attr:`TokenRollouts.eot_at`
says where each rationale ends, for methods that score only the rationale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench.data.layout import pad_prompts
from workbench.data.tokenizer import special_ids
from workbench.engine.feedback import GumbelFeedback
from workbench.engine.loop import base_and_head, run_latent, token_log_probs
from workbench.engine.stop import FixedSteps
from workbench.rl.distributions import GumbelSoftToken


@dataclass
class TokenRollouts:
    """``N`` trajectories of soft tokens then discrete tokens."""

    prompts: list[list[int]]
    soft_ids: torch.Tensor
    """[N, L, k] top-k ids of each soft token."""
    soft_probs: torch.Tensor
    """[N, L, k] their Gumbel-softmax weights (fp32)."""
    soft_embeds: torch.Tensor
    """[N, L, d] the embeddings fed (``p~ @ E``), reused detached in the recomputation."""
    tokens: torch.Tensor
    """[N, A] sampled discrete tokens (pad after ``<eos>``)."""
    n_tokens: torch.Tensor
    """[N] discrete tokens, ``<eos>`` included when produced."""
    eot_at: torch.Tensor
    """[N] index in ``tokens`` of the first ``<eot>`` (``n_tokens`` when there is none)."""
    masks: dict[str, torch.Tensor]
    logp: dict[str, torch.Tensor]
    pad_id: int = 0
    completions: list[str] = field(default_factory=list)
    """The answer text after ``<eot>`` (empty when the model wrote none)."""
    finished: list[bool] = field(default_factory=list)
    """``<eot>`` then ``<eos>`` were written."""

    @property
    def n_latent(self) -> torch.Tensor:
        return torch.full((len(self.prompts),), self.soft_ids.shape[1])

    @property
    def answer_len(self) -> torch.Tensor:
        return self.n_tokens


@torch.no_grad()
def rollout(model, tokenizer, prompts: list[list[int]], *, soft_tokens: int = 0,
            soft_top_k: int = 30, gumbel_tau: float = 0.5, temperature: float = 1.0,
            top_k: int | None = None, max_completion_length: int = 48,
            seed: int = 0) -> TokenRollouts:  # fmt: skip
    """Sample one trajectory per prompt in one engine run (seeded by ``seed``)."""
    sp = special_ids(tokenizer)
    batch = pad_prompts(prompts, sp.pad)
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    L = soft_tokens
    rule = GumbelFeedback(top_k=soft_top_k, temperature=temperature, gumbel_tau=gumbel_tau)
    out = run_latent(
        model, batch["input_ids"].to(dev), batch["attention_mask"].to(dev), sp, feedback=rule,
        stop=FixedSteps(L), max_latent_steps=L, max_new_tokens=max_completion_length,
        append_eot=False, record_logits=L > 0, generator=gen, sample_tokens=True,
        temperature=temperature, token_top_k=top_k,
    )  # fmt: skip
    tr, N = out.trace, len(prompts)
    d = model.get_input_embeddings().weight.shape[1]
    k = min(soft_top_k, tr.topk_ids.shape[-1] if L == 0 else tr.weight_ids.shape[-1])
    soft_ids = tr.weight_ids[:, :L] if L else torch.zeros(N, 0, k, dtype=torch.long)
    soft_probs = tr.weight_probs[:, :L] if L else torch.zeros(N, 0, k)
    soft_embeds = tr.embeds[:, :L] if L else torch.zeros(N, 0, d)
    lat_logp = torch.zeros(N, L)
    if L:
        dist = GumbelSoftToken(tr.logits[:, :L], soft_top_k, temperature, gumbel_tau)
        lat_logp = -dist.soft_ce(soft_ids, soft_probs)
    A = out.generated.shape[1]
    tok_mask = torch.arange(A)[None] < out.n_generated[:, None]
    is_eot = (out.generated == sp.eot) & tok_mask
    eot_at = torch.where(is_eot.any(1), is_eot.float().argmax(1), out.n_generated)
    texts, finished = [], []
    for row, n, e in zip(out.generated.tolist(), out.n_generated.tolist(), eot_at.tolist(),
                         strict=True):  # fmt: skip
        ids = row[:n]
        answer = [i for i in ids[e + 1 :] if i != sp.eos] if e < n else []
        finished.append(e < n and bool(ids) and ids[-1] == sp.eos)
        texts.append(tokenizer.decode(answer, skip_special_tokens=True))
    return TokenRollouts(
        prompts=[list(p) for p in prompts], soft_ids=soft_ids, soft_probs=soft_probs.float(),
        soft_embeds=soft_embeds, tokens=out.generated, n_tokens=out.n_generated, eot_at=eot_at,
        masks={"latent": torch.ones(N, L, dtype=torch.bool), "answer": tok_mask},
        logp={"latent": lat_logp, "answer": out.token_logprobs * tok_mask}, pad_id=sp.pad,
        completions=texts, finished=finished,
    )  # fmt: skip


def _forward(model, prompts, soft_embeds, tokens, tok_mask, pad_id):
    """Hidden states [N, T, d] of ``prompt, soft tokens, tokens`` (``tok_mask``: the real ones)
    and the column of the first soft token."""
    base, _ = base_and_head(model)
    emb = model.get_input_embeddings()
    dev = emb.weight.device
    p = pad_prompts(prompts, pad_id)
    N, plen = p["input_ids"].shape
    L = soft_embeds.shape[1]
    ids = torch.cat([p["input_ids"], torch.full((N, L), pad_id), tokens.clamp(min=0)], 1).to(dev)
    mask = torch.cat([p["attention_mask"], torch.ones(N, L, dtype=torch.long),
                      tok_mask.long()], 1).to(dev)  # fmt: skip
    x = emb(ids)
    if L:
        x = torch.cat([x[:, :plen], soft_embeds.to(dev, x.dtype).detach(), x[:, plen + L :]], 1)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    h = base(inputs_embeds=x, attention_mask=mask, position_ids=pos).last_hidden_state
    return h, plen


def log_probs(model, ro: TokenRollouts, *, soft_top_k: int = 30, gumbel_tau: float = 0.5,
              temperature: float = 1.0, top_k: int | None = None) -> dict:  # fmt: skip
    """The rollouts' scores under the current policy, in one forward (with gradients)."""
    _, head = base_and_head(model)
    L = ro.soft_ids.shape[1]
    mask_tok = ro.masks["answer"]
    tokens = torch.where(mask_tok, ro.tokens, torch.full_like(ro.tokens, ro.pad_id))
    h, plen = _forward(model, ro.prompts, ro.soft_embeds, tokens, mask_tok, ro.pad_id)
    dev = h.device
    out = {}
    if L:
        reads = head(h[:, plen - 1 : plen - 1 + L])  # the read before each soft token
        dist = GumbelSoftToken(reads, soft_top_k, temperature, gumbel_tau)
        out["latent"] = -dist.soft_ce(ro.soft_ids.to(dev), ro.soft_probs.to(dev))
    else:
        out["latent"] = torch.zeros(len(ro.prompts), 0, device=dev)
    A = ro.tokens.shape[1]
    pred = head(h[:, plen + L - 1 : plen + L - 1 + A])  # column before each discrete token
    lp = token_log_probs(pred, temperature, top_k)
    tok = lp.gather(-1, ro.tokens.to(dev).clamp(min=0)[..., None]).squeeze(-1)
    out["answer"] = torch.where(mask_tok.to(dev), tok, torch.zeros_like(tok))
    return out


def sequence_log_prob(model, prompts, continuations: list[list[int]], pad_id: int) -> torch.Tensor:
    """``log p(continuation | prompt)`` summed over tokens, per sequence [N] (with gradients)."""
    _, head = base_and_head(model)
    N = len(prompts)
    C = max(len(c) for c in continuations)
    toks = torch.full((N, C), pad_id, dtype=torch.long)
    for b, c in enumerate(continuations):  # layout only
        toks[b, : len(c)] = torch.tensor(c)
    m = torch.arange(C)[None] < torch.tensor([len(c) for c in continuations])[:, None]
    h, plen = _forward(model, prompts, torch.zeros(N, 0, 1), toks, m, pad_id)
    lp = torch.log_softmax(head(h[:, plen - 1 : plen - 1 + C]).float(), -1)
    got = lp.gather(-1, toks.to(h.device)[..., None]).squeeze(-1)
    return (got * m.to(h.device)).sum(1)
