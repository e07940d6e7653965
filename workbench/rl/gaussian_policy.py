"""ATP-Latent's RL policy: Gaussian latents, a Bernoulli stop every ``c`` latents, sampled answer.

RESEARCH Part B 1(b), RL stage: per question ``G`` rollouts, each drawing latents
``l_t ~ N(mu, sigma^2)``, a stop action at every step-group boundary and answer tokens at
temperature ``T``; then the log-probabilities of the whole trajectory are recomputed in **one**
teacher-forced forward over ``[question <bot>, l_1..l_n, <eot>, answer]`` (the latents are fixed
inputs, so no multi-pass is needed) and scored by the group-policy loss.

* :func:`rollout` runs all ``B x G`` trajectories in one batched, KV-cached engine run
  (:func:`~workbench.engine.loop.run_latent` with the Gaussian rule in ``sample`` mode, the stop
  head in ``sample`` mode and ``sample_tokens``), seeded, and stores per latent the action (the
  fed vector), per boundary the stop action, per answer token its id, with the log-probabilities
  the rollout sampled them with;
* :func:`log_probs` recomputes those log-probabilities on the training path (with gradients);
  with the policy unchanged they equal the rollout's (tested to 1e-5).

A stop forced by the latent budget is not an action of the policy and is not scored.

``latent_gradient`` chooses how the Gaussian latents get their gradient:

* ``"score"`` (ATP's): each latent is an action; its Gaussian log-probability is the ``latent``
  segment (score-function gradient), and the answer and stop log-probabilities are recomputed
  with the sampled latents as fixed inputs;
* ``"pathwise"``: the rollout stores each latent's noise ``eps = (l - mu) / sigma``, and
  :func:`log_probs` rebuilds the latents as ``mu_theta + sigma_theta * eps`` in the multi-pass
  training forward (:func:`~workbench.engine.forward.latent_forward`), so the answer and stop
  log-probabilities differentiate through every latent (the reparameterisation gradient of the
  same objective). There is no ``latent`` segment then. With the policy unchanged the latents,
  and so the log-probabilities, are the rollout's.

``noise_scale`` multiplies sigma in the rollout and in the scoring (:class:`ScaledGaussian`): the
trained model's sigma can be too small for its samples to ever change an answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from workbench.data.layout import pad_prompts
from workbench.data.tokenizer import special_ids
from workbench.engine.feedback import Feedback, FeedbackRule, GaussianFeedback
from workbench.engine.forward import latent_forward
from workbench.engine.loop import base_and_head, run_latent, token_log_probs
from workbench.engine.stop import StepStopHead
from workbench.rl.distributions import BernoulliStop, GaussianLatent


@dataclass
class Rollouts:
    """``N = B x G`` trajectories (row ``i`` answers question ``i // G``)."""

    prompts: list[list[int]]
    """Per rollout, the prompt ids ``question <bot>``."""
    latents: torch.Tensor
    """[N, n, d] the latent vectors fed (zeros past ``n_latent``)."""
    n_latent: torch.Tensor
    """[N] latents fed."""
    answer: torch.Tensor
    """[N, A] sampled answer tokens (pad after ``<eos>``)."""
    answer_len: torch.Tensor
    """[N] answer tokens, ``<eos>`` included when produced."""
    masks: dict[str, torch.Tensor]
    """``latent`` [N, n], ``stop`` [N, R], ``answer`` [N, A]: the actions that count."""
    stop_actions: torch.Tensor
    """[N, R] the stop action at boundary read ``r * c`` (True: stop)."""
    logp: dict[str, torch.Tensor]
    """The rollout's log-probabilities of its actions, same keys and shapes as ``masks``."""
    eot_id: int = 0
    """The ``<eot>`` token that follows the latents."""
    pad_id: int = 0
    """Padding id of the prompts and answers."""
    completions: list[str] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)
    """The answer ended with ``<eos>``."""
    noise: torch.Tensor | None = None
    """[N, n, d] each latent's ``eps = (l - mu) / sigma`` (zeros past ``n_latent``)."""


LATENT_GRADIENTS = ("score", "pathwise")


class ScaledGaussian(FeedbackRule):
    """A Gaussian rule whose sigma is multiplied by ``scale`` (``logvar + 2 log scale``): the
    rollouts' exploration noise, and the distribution their latents are scored under.

    With ``noise`` ([N, n, d], stored by a rollout) its ``t``-th call since :meth:`reset` feeds
    ``mu + scale * sigma * noise[:, t]`` instead of a fresh sample: the rollout's latents as a
    differentiable function of the current parameters (``latent_gradient="pathwise"``).
    """

    name = "gaussian_scaled"
    stochastic = True

    def __init__(self, gaussian: GaussianFeedback, scale: float = 1.0,
                 noise: torch.Tensor | None = None):  # fmt: skip
        super().__init__()
        if not scale > 0:
            raise ValueError(f"latent noise scale = {scale!r}: expected > 0")
        self.gaussian, self.noise, self.t = gaussian, noise, 0
        self.log_var_shift = 2 * math.log(scale)

    def reset(self, batch_size: int, device) -> None:
        self.t = 0

    def distribution(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.gaussian.distribution(hidden)
        return mu, logvar + self.log_var_shift

    def forward(self, hidden, logits, embedding, generator=None) -> Feedback:
        mu, logvar = self.distribution(hidden)
        if self.noise is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        else:
            eps = self.noise[:, self.t].to(device=mu.device, dtype=mu.dtype)
        self.t += 1
        return Feedback(mu + torch.exp(0.5 * logvar) * eps, stats={"mu": mu, "logvar": logvar})


def _boundaries(stop: StepStopHead, n_max: int) -> torch.Tensor:
    """Reads at which the head decides (a multiple of its group, below the budget)."""
    return torch.tensor([t for t in range(n_max) if stop.is_boundary(t)], dtype=torch.long)


@torch.no_grad()
def rollout(model, tokenizer, prompts: list[list[int]], feedback: GaussianFeedback,
            stop: StepStopHead, *, max_latents: int, max_completion_length: int,
            temperature: float = 1.0, top_k: int | None = None, reduction: str = "mean",
            noise_scale: float = 1.0, seed: int = 0) -> Rollouts:  # fmt: skip
    """Sample one trajectory per prompt in one engine run (seeded by ``seed``)."""
    sp = special_ids(tokenizer)
    batch = pad_prompts(prompts, sp.pad)
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    out = run_latent(
        model, batch["input_ids"].to(dev), batch["attention_mask"].to(dev), sp,
        feedback=ScaledGaussian(feedback, noise_scale),
        stop=stop.with_mode("sample", seed=seed + 1),
        max_latent_steps=max_latents, max_new_tokens=max_completion_length, append_eot=True,
        record_hidden=True, generator=gen, sample_tokens=True, temperature=temperature,
        token_top_k=top_k,
    )  # fmt: skip
    tr = out.trace
    N, n = len(prompts), max_latents
    d = tr.embeds.shape[-1]
    latents = torch.zeros(N, n, d)
    k = min(n, tr.embeds.shape[1])
    latents[:, :k] = tr.embeds[:, :k]
    n_lat = tr.n_latent
    lat_mask = torch.arange(n)[None] < n_lat[:, None]
    lat_logp = torch.zeros(N, n)
    noise = torch.zeros(N, n, d)
    if tr.latent_stats:
        mu = torch.zeros(N, n, d)
        lv = torch.zeros(N, n, d)
        mu[:, :k], lv[:, :k] = tr.latent_stats["mu"][:, :k], tr.latent_stats["logvar"][:, :k]
        lat_logp = GaussianLatent(mu, lv, reduction).log_prob(latents) * lat_mask
        noise = (latents - mu) * torch.exp(-0.5 * lv) * lat_mask[..., None]
    reads = _boundaries(stop, n)
    stop_act = reads[None] == n_lat[:, None]  # [N, R]: stopped at that read
    stop_mask = reads[None] <= n_lat[:, None]
    stop_mask &= ~((n_lat == n)[:, None] & (reads[None] == n))  # budget stops are no action
    hidden = tr.hidden_states[:, :, -1]  # [N, S, d] the read states the head saw
    r_idx = reads.clamp(max=hidden.shape[1] - 1)
    h_reads = hidden[:, r_idx].to(dev)
    stop_logp = BernoulliStop(stop.stop_logits(h_reads)).log_prob(stop_act.to(dev)).cpu()
    stop_logp = stop_logp * stop_mask
    A = out.generated.shape[1]
    ans_mask = torch.arange(A)[None] < out.n_generated[:, None]
    ans_logp = out.token_logprobs * ans_mask
    texts, finished = [], []
    for row, length in zip(out.generated.tolist(), out.n_generated.tolist(), strict=True):
        ids = row[:length]
        finished.append(bool(ids) and ids[-1] == sp.eos)
        texts.append(tokenizer.decode([i for i in ids if i != sp.eos], skip_special_tokens=True))
    return Rollouts(
        prompts=[list(p) for p in prompts], latents=latents, n_latent=n_lat, answer=out.generated,
        answer_len=out.n_generated,
        masks={"latent": lat_mask, "stop": stop_mask, "answer": ans_mask},
        stop_actions=stop_act, logp={"latent": lat_logp, "stop": stop_logp, "answer": ans_logp},
        eot_id=sp.eot, pad_id=sp.pad, completions=texts, finished=finished, noise=noise,
    )  # fmt: skip


def log_probs(model, feedback: GaussianFeedback, stop: StepStopHead, ro: Rollouts, *,
              temperature: float = 1.0, top_k: int | None = None,
              reduction: str = "mean", latent_gradient: str = "score",
              noise_scale: float = 1.0) -> dict[str, torch.Tensor]:  # fmt: skip
    """The rollouts' log-probabilities under the current policy (with grads): one forward with
    the latents as fixed inputs (``"score"``), or the multi-pass forward that rebuilds them from
    the stored noise (``"pathwise"``, no ``latent`` key in the result).

    Sequence ``b``: its prompt (left-padded so that ``<bot>`` shares column ``c0 - 1``), its
    ``n_b`` latents as input embeddings at columns ``c0 .. c0 + n_b - 1``, ``<eot>``, its answer.
    """
    if latent_gradient not in LATENT_GRADIENTS:
        raise ValueError(f"latent_gradient = {latent_gradient!r}: expected one of "
                         f"{list(LATENT_GRADIENTS)}")  # fmt: skip
    if latent_gradient == "pathwise" and ro.noise is None:
        raise ValueError("latent_gradient='pathwise' needs rollouts that stored their noise")
    base, head = base_and_head(model)
    emb = model.get_input_embeddings()
    dev = emb.weight.device
    N, n, _ = ro.latents.shape
    A = ro.answer.shape[1]
    prompt = pad_prompts(ro.prompts, ro.pad_id)
    plen = prompt["input_ids"].shape[1]
    T = plen + n + 1 + A
    ids = torch.cat([prompt["input_ids"], torch.full((N, n + 1 + A), ro.pad_id)], 1)
    mask = torch.cat([prompt["attention_mask"], torch.zeros(N, n + 1 + A, dtype=torch.long)], 1)
    nb = ro.n_latent
    lat_cols = torch.zeros(N, T, dtype=torch.bool)
    lat_cols[:, plen : plen + n] = torch.arange(n)[None] < nb[:, None]
    # <eot> and the answer follow each sequence's own latents: scatter them to their columns
    tail = torch.cat([torch.full((N, 1), ro.eot_id), ro.answer.clamp(min=0)], 1)
    tail_mask = (torch.arange(1 + A)[None] < 1 + ro.answer_len[:, None]).long()
    where = plen + nb[:, None] + torch.arange(1 + A)[None]
    ids = ids.scatter(1, where, tail)
    mask = mask.scatter(1, where, tail_mask) | lat_cols.long()
    ids, mask, lat_cols = ids.to(dev), mask.to(dev), lat_cols.to(dev)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    cols = torch.arange(n, device=dev)
    if latent_gradient == "pathwise":
        batch = {"input_ids": ids, "attention_mask": mask, "position_ids": pos,
                 "latent_mask": lat_cols, "n_latent": nb.to(dev),
                 "latent_start": torch.tensor(plen)}  # fmt: skip
        h = latent_forward(model, batch, ScaledGaussian(feedback, noise_scale, ro.noise)).hidden
        lat = None
    else:
        x = emb(ids)
        z = torch.zeros_like(x)
        z[:, plen : plen + n] = ro.latents.to(device=dev, dtype=x.dtype)
        x = torch.where(lat_cols[..., None], z, x)
        h = base(inputs_embeds=x, attention_mask=mask, position_ids=pos).last_hidden_state
        # latents: the head reads the state before each latent column
        mu, lv = ScaledGaussian(feedback, noise_scale).distribution(h[:, plen - 1 + cols])
        lat = GaussianLatent(mu, lv, reduction).log_prob(ro.latents.to(dev))
    # stop decisions at the boundary reads
    reads = _boundaries(stop, n).to(dev)
    st = BernoulliStop(stop.stop_logits(h[:, plen - 1 + reads])).log_prob(ro.stop_actions.to(dev))
    # answer tokens: token i of b sits at column plen + n_b + 1 + i, predicted one column before
    nb = nb.to(dev)
    at = plen + nb[:, None] + torch.arange(A, device=dev)[None]  # [N, A] predicting columns
    at = at.clamp(max=T - 1)
    hh = h.gather(1, at[..., None].expand(-1, -1, h.shape[-1]))
    lp = token_log_probs(head(hh), temperature, top_k)
    ans = lp.gather(-1, ro.answer.to(dev).clamp(min=0)[..., None]).squeeze(-1)
    m = {k: v.to(dev) for k, v in ro.masks.items()}
    out = {
        "stop": st * m["stop"],
        "answer": torch.where(m["answer"], ans, torch.zeros_like(ans)),
    }
    if lat is not None:
        out["latent"] = lat * m["latent"]
    return out
