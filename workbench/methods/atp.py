"""ATP-Latent, supervised stage: a conditional-VAE latent policy, a stop head, a step decoder.

Follows RESEARCH Part B section 1 ("Beyond Imitation", arXiv 2601.21598; code
``zz1358m/ATP-Latent-master``, ``methods/sim_cot_vae_end.py`` and ``modules/projector.py``):

* **latent policy** (:class:`~workbench.engine.feedback.GaussianFeedback`): the hidden state
  before latent ``t`` goes through ``Linear -> GELU -> Linear -> LayerNorm`` and two heads for
  ``mu`` and ``log sigma^2``; training feeds the reparameterised ``l_t = mu + sigma * eps``,
  evaluation ``mu`` (deterministic mode) or a sample (sampled mode: ATP's own eval, pitfall 3);
* **KL** to the prior ``N(0, I)``, ``KL_t = 1/2 sum_d (mu^2 + sigma^2 - 1 - log sigma^2)``,
  weighted by ``kl_weight`` (ATP: 1e-3 on ``kl.mean()``), with an optional linear warm-up;
  ``kl_reduction="mean"`` is ATP's per-dimension mean, ``"sum"`` the per-latent sum (pitfall 4);
* **step decoder**: step ``k`` is rebuilt from its ``c`` latents, ``[l_kc .. l_kc+c-1, step
  tokens, <eos>]`` teacher-forced (SIM-CoT's auxiliary decoder); steps past the last group are
  merged into it (ATP: past ``max_latent_stage - 1``). ``copy`` (ATP: a second copy of the LM),
  ``small`` (a fresh 1-layer LM of the same width) or ``shared`` (the backbone itself);
  :func:`decode_latents` writes each latent group's text;
* **stop head** (:class:`~workbench.engine.stop.StepStopHead`, ``Linear -> GELU -> Linear(d,2)``)
  consulted every ``c`` latents; at evaluation its argmax ends the latent phase per example, so
  an easy problem uses fewer latents (ATP's token claim);
* **curriculum**: Coconut's stages (stage ``s``: the first ``s`` steps become ``c * s`` latents),
  optimizer reset per stage; loss = CE(rest | question, latents) + ``kl_weight`` * KL +
  ``step_decoder_weight`` * decoder CE + ``stop_weight`` * stop CE (+ the optional LOTUS-style
  ``latent_ce_weight``), each part a column of ``log_history`` (``loss_lm``, ``loss_kl``,
  ``loss_decoder``, ``loss_stop``, ``loss_latent``).

Deliberate deviations:

* **padding latents.** ATP pads every example to ``2 * 10`` latents and trains the stop head on
  "this latent is padding" over the masked ones. Here each example gets exactly its own
  ``c * min(steps, max_latent_stage)`` latents (the batched forward handles per-example counts
  without padding), and the stop head is trained at every group boundary of the example: label
  *continue* before its last group, *stop* after it when no explicit step follows. The labels
  are the same decisions ATP's padding encodes, without positions that carry nothing;
* the stop head reads the hidden state after a latent, not the latent vector itself (both see the
  same history; the hidden state is where the engine reads);
* ``init_logvar = -4`` (sigma 0.14) instead of PyTorch's default init (sigma about 1), see
  :class:`~workbench.engine.feedback.GaussianFeedback`;
* the decoder CE and stop CE are token / decision means, not sums divided by the number of
  sequences;
* stages are counted in optimizer steps, not epochs (unbounded synthetic data), as in Coconut;
* ``latent_ce_weight`` (LOTUS-style bag-of-step-tokens CE through the LM head at each latent) is
  an option ATP does not have; it is what made Coconut's latents carry the chain on arithmetic
  (see :mod:`workbench.methods.coconut`).

Measured (arithmetic recipe, :mod:`workbench.recipes`: single-digit operands, 2-4 steps, d=128,
from the 100% CoT model; 500 held-out problems; ``c=1``, 4 stages, small step decoder,
``latent_ce_weight=1``, ``kl_weight=1e-3``, batch 32):

* 600 steps per stage + 1,200 (3,000 steps, lr 1e-3; row ``atp``): 74.8% deterministic / 73.8%
  sampled with 3.03 latents (CoT: 29.5 tokens), usage drops 61.5 / 64.5 / 54.0 (zero / swap /
  pause), decoded steps 46% exact;
* that model continued 3,000 more steps at the last stage (lr 5e-4, optimizer reset; row
  ``atp_long``, 19 minutes on one thread): **93.8%** with 3.03 latents, drops 80.5 / 83.0 /
  79.5, decoded steps 52% exact. The first 3,000 steps had not converged: budgets, not the
  method, held it at 75% (RESEARCH Part A 7 item 2).

3x3 multiplication from the 100% CoT (``c=2``, 3 stages, 1,000 steps per stage + 1,000, lr 1e-3,
the same supervision, 11 minutes on one thread): 0.0% on 500 problems with 6 latents, usage drop
0, decoded steps 26% exact: the latents hold part of each partial product, not enough to add.

3x2 multiplication (``--difficulty digits_b=2``: 2 steps, CoT 17 tokens; recipe row
``atp_slow``) from a 100% CoT model trained 5,000 steps: ``c=2``, 1,500 steps for stage 1 and
18,000 at the last one, lr 5e-4, the same supervision, 53 minutes on one thread: **100.0%** on
500 held-out problems (99.6% on 3,026 more, sampled mode 100.0%) with 4 latents, usage drops
99.8 / 98.6 / 100.0, decoded steps 99.4% exact. No-CoT training of the same CoT model for
20,000 steps reaches 28.4%, step-supervised Coconut at ATP's budget 70.0%. At 6,000 steps ATP was
at 14.0%: validation passed 50% only after 9,000 steps. The same budget on 3x3 (1,500 steps for
stages 1 and 2, 18,000 at the last; 6 latents; 64 minutes): 20.0%, all of it lost without the
latents; validation was below 6% for 17,000 steps and climbing at the end (18.5%). 6,000 more
steps at the last stage (optimizer reset, lr 5e-4, 16 minutes on two threads): 79.8%, usage drop
79.8; 4,000 more the same way: **95.0%**, usage drop 94.8 (31,000 steps in all). Rerun end to end
as the recipe rows ``atp_slow3`` -> ``atp_slow3_long`` -> ``atp_slow3_long2`` (one thread,
``compare_methods.py``): 1.6%, 27.2%, then **93.2%** (usage drop 93.2, sampled 93.4%). The
two runs differ by the middle (the phase change falls near the end of a leg, so small numeric
differences move it), not by the end.

Graph reachability (the graph recipe; recipe row ``atp_l2``, from the 97.4% CoT ``cot_long2``):
c=1, 1,000 + 2,000 steps, lr 1e-3: 87.8% with 2 latents (sampled 88.0%), usage drop 37.5, but
decoded steps 0.25% exact; step-supervised Coconut at the same budget 89.6%.

The RL stage (Gaussian + Bernoulli-stop GRPO with a coherence reward) is a separate method.
"""

from __future__ import annotations

import copy
import random
from dataclasses import asdict, dataclass, replace

import pandas as pd
import torch

from workbench.config import ConfigError, check_choice, check_range, check_that
from workbench.data.layout import TokenizedExample, build_sequence, collate, tokenize_examples
from workbench.data.tokenizer import special_ids
from workbench.engine.cache import PreallocatedCache
from workbench.engine.feedback import GaussianFeedback, gaussian_kl
from workbench.engine.forward import latent_forward, shifted_ce
from workbench.engine.spec import LatentSpec
from workbench.engine.stop import StepStopHead
from workbench.lens.alignment import Alignment
from workbench.lens.logit_lens import join_tokens
from workbench.methods.base import (
    MethodRecord,
    default_train_config,
    lm_of,
    run_curriculum,
    starting_model,
    trainable_net,
    val_accuracy_fn,
)
from workbench.methods.coconut import (
    latent_step_nll,
    make_step_decoder,
    replaced_steps,
    step_decoder_nll,
)

NAME = "atp"
DECODERS = ("copy", "small", "shared")
KL_REDUCTIONS = ("mean", "sum")
DECODER_PART = "step_decoder"
"""Name of the step decoder in ``TrainedModel.parts``."""


@dataclass
class ATPConfig:
    """Curriculum, CVAE and head settings (ATP-Latent-SFT.yaml where it has a value)."""

    c_thought: int = 1
    """Latents per reasoning step (ATP: 2 on GSM8k; 1 fits our one-operation steps)."""
    max_latent_stage: int = 4
    """Last stage; past it every step is latent (steps beyond it merge into the last group)."""
    max_latents: int | None = None
    """Latent budget at inference; default ``max_latent_stage * c_thought``. Must be a multiple
    of ``c_thought`` (the stop head decides per group)."""
    steps_per_stage: int = 400
    """Optimizer steps per curriculum stage (ATP: 2 epochs per stage)."""
    final_stage_steps: int | None = None
    """Steps at the final stage (default ``steps_per_stage``)."""
    reset_optimizer: bool = True
    """Fresh optimizer and schedule at each stage."""
    uniform_prob: float = 0.0
    """Chance of training an example at a random earlier stage."""
    kl_weight: float = 1e-3
    """Weight of the KL to N(0, I) (ATP: ``kl_factor = 1e-3``)."""
    kl_warmup_steps: int = 0
    """Linear warm-up of ``kl_weight`` from 0 over this many optimizer steps (0: none)."""
    kl_reduction: str = "mean"
    """``mean``: per-dimension mean (ATP's ``kl.mean()``); ``sum``: summed over dimensions,
    averaged over latents (the textbook ELBO term)."""
    init_logvar: float = -4.0
    """Initial log sigma^2 of the latent head (0 is PyTorch's default scale)."""
    step_decoder: str = "copy"
    """``copy`` (ATP: a separate copy of the starting LM), ``small`` (a fresh 1-layer LM) or
    ``shared`` (the backbone decodes its own latents)."""
    step_decoder_weight: float = 1.0
    """Weight of the step decoder's CE."""
    stop_weight: float = 1.0
    """Weight of the stop head's CE."""
    latent_ce_weight: float = 0.0
    """Optional LOTUS-style CE of each latent's LM-head read against its step's tokens (not in
    ATP; 0 disables it)."""
    seed: int = 0
    """Seeds new heads' init, the stage mixing and the reparameterisation noise."""

    def __post_init__(self) -> None:
        check_range(self, "c_thought", ge=1)
        check_range(self, "max_latent_stage", ge=1)
        check_range(self, "max_latents", ge=1, allow_none=True)
        if self.max_latents is not None:
            check_that(
                self,
                "max_latents",
                self.max_latents % self.c_thought == 0,
                f"a multiple of c_thought = {self.c_thought} (the stop head decides per group "
                f"of c_thought latents), e.g. {self.max_latent_stage * self.c_thought}",
            )
        check_range(self, "steps_per_stage", ge=0)
        check_range(self, "final_stage_steps", ge=0, allow_none=True)
        check_range(self, "uniform_prob", ge=0.0, le=1.0)
        check_range(self, "kl_weight", ge=0.0)
        check_range(self, "kl_warmup_steps", ge=0)
        check_choice(self, "kl_reduction", KL_REDUCTIONS)
        check_range(self, "init_logvar", ge=-20.0, le=5.0)
        check_choice(self, "step_decoder", DECODERS)
        check_range(self, "step_decoder_weight", ge=0.0)
        check_range(self, "stop_weight", ge=0.0)
        check_range(self, "latent_ce_weight", ge=0.0)

    @property
    def n_latent(self) -> int:
        """The inference latent budget."""
        return self.max_latents or self.max_latent_stage * self.c_thought

    def inference_spec(self, feedback: GaussianFeedback, stop: StepStopHead) -> LatentSpec:
        """Deterministic-mode spec: ``mu`` fed, the stop head's argmax every ``c`` latents."""
        return LatentSpec(
            feedback=feedback.with_mode("mean"),
            stop=stop.with_mode("argmax"),
            max_latent_steps=self.n_latent,
            append_eot=True,
        )


def sampled_spec(spec: LatentSpec, seed: int = 0) -> LatentSpec:
    """``spec`` in the sampled mode: latents ``mu + sigma * eps`` (noise from the evaluator's
    seeded generator), the stop head still argmax (ATP's evaluation)."""
    if not isinstance(spec.feedback, GaussianFeedback):
        raise ValueError(f"sampled_spec needs an ATP spec (a gaussian rule), got {spec.feedback}")
    return replace(spec, feedback=spec.feedback.with_mode("sample"))


def groups_at(tex: TokenizedExample, stage: int, cfg: ATPConfig) -> tuple[list, bool]:
    """The step groups the latents replace at ``stage`` and whether no explicit step follows.

    Returns ``(groups, done)``: ``groups[k]`` is the token list latent group ``k`` stands for; at
    the final stage the steps past ``max_latent_stage`` are merged into the last group.
    """
    S = len(tex.steps)
    final = stage >= cfg.max_latent_stage
    k = min(stage, S, cfg.max_latent_stage)
    groups = [list(s) for s in tex.steps[:k]]
    done = final or k == S
    if done and 0 < k < S:
        for step in tex.steps[k:]:
            groups[-1] += tex.sep + step
    return groups, done


class ATPCollator:
    """Batches at the current stage (``.stage``): layout, step groups and stop targets."""

    def __init__(self, tokenizer, cfg: ATPConfig, stage: int = 1):
        self.sp, self.cfg, self.stage = special_ids(tokenizer), cfg, stage
        self.rng = random.Random(cfg.seed)

    def __call__(self, items: list[TokenizedExample]) -> dict[str, torch.Tensor]:
        seqs, groups, done = [], [], []
        for t in items:
            stage = self.stage
            if self.cfg.uniform_prob and self.rng.random() < self.cfg.uniform_prob:
                stage = self.rng.randint(1, self.cfg.max_latent_stage)
            g, d = groups_at(t, stage, self.cfg)
            first = len(t.steps) if d else len(g)
            seqs.append(build_sequence(t, self.sp, n_latent=len(g) * self.cfg.c_thought,
                                       first_step=first))  # fmt: skip
            groups.append(g), done.append(d)
        batch = collate(seqs, self.sp.pad)
        batch.update(replaced_steps(groups, self.sp.pad))
        batch["stop_done"] = torch.tensor(done)
        return batch


def kl_term(stats: dict, n_latent: torch.Tensor, reduction: str) -> torch.Tensor:
    """Mean KL over the latents each example really has (``mean``: per dimension too)."""
    kl = gaussian_kl(stats["mu"], stats["logvar"])  # [B, n, d]
    kl = kl.mean(-1) if reduction == "mean" else kl.sum(-1)
    n = kl.shape[1]
    valid = (torch.arange(n, device=kl.device)[None] < n_latent.to(kl.device)[:, None]).float()
    return (kl * valid).sum() / valid.sum().clamp(min=1)


def stop_targets(batch: dict, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boundary reads and their labels: ``(columns [G+1], labels [B, G+1], valid [B, G+1])``.

    Read ``j`` (after ``j * c`` latents, hidden state at column ``latent_start - 1 + j * c``)
    is labelled *continue* (0) while the example has more groups, *stop* (1) after its last
    group when no explicit step follows; other reads are not labelled.
    """
    n_groups = batch["n_latent"] // c  # [B]
    G = int(n_groups.max())
    j = torch.arange(G + 1)
    cols = int(batch["latent_start"]) - 1 + j * c
    labels = (j[None] >= n_groups[:, None]).long()
    valid = (j[None] < n_groups[:, None]) | (
        (j[None] == n_groups[:, None]) & batch["stop_done"][:, None]
    )
    return cols, labels, valid


class ATPLoss:
    """``loss_fn``: multi-pass forward with sampled latents, then the four parts of ATP's loss."""

    def __init__(self, feedback, stop, decoder, cfg: ATPConfig, end_id: int):
        self.feedback, self.stop, self.decoder, self.cfg = feedback, stop, decoder, cfg
        self.end_id = end_id
        self.trainer = None
        """Set after the trainer is built: the KL warm-up reads ``trainer.step``."""

    def kl_weight(self) -> float:
        cfg = self.cfg
        if not cfg.kl_warmup_steps or self.trainer is None:
            return cfg.kl_weight
        return cfg.kl_weight * min(1.0, self.trainer.step / cfg.kl_warmup_steps)

    def __call__(self, model, batch):
        lm = lm_of(model)
        cfg = self.cfg
        out = latent_forward(lm, batch, self.feedback)
        loss_lm = shifted_ce(out.logits, batch["labels"])
        metrics = {
            "loss_lm": float(loss_lm.detach()),
            "latents": float(batch["n_latent"].float().mean()),
        }
        loss = loss_lm
        if out.stats is None:  # a batch without latents (no example has a step)
            return loss, metrics
        kl = kl_term(out.stats, batch["n_latent"], cfg.kl_reduction)
        w = self.kl_weight()
        metrics.update(loss_kl=float(kl.detach()), kl_weight=w)
        loss = loss + w * kl
        cols, labels, valid = stop_targets(batch, cfg.c_thought)
        lg = self.stop.stop_logits(out.hidden[:, cols.to(out.hidden.device)]).float()
        ce = torch.nn.functional.cross_entropy(
            lg.reshape(-1, 2), labels.to(lg.device).reshape(-1), reduction="none"
        )
        m = valid.to(lg.device).reshape(-1).float()
        loss_stop = (ce * m).sum() / m.sum().clamp(min=1)
        metrics["loss_stop"] = float(loss_stop.detach())
        loss = loss + cfg.stop_weight * loss_stop
        if cfg.step_decoder_weight > 0:
            dec = lm if self.decoder is None else self.decoder
            part = step_decoder_nll(dec, out.latent_embeds, batch, cfg.c_thought, self.end_id)
            metrics["loss_decoder"] = float(part.detach())
            loss = loss + cfg.step_decoder_weight * part
        if cfg.latent_ce_weight > 0:
            part = latent_step_nll(out.logits, batch, cfg.c_thought)
            metrics["loss_latent"] = float(part.detach())
            loss = loss + cfg.latent_ce_weight * part
        return loss, metrics


def make_decoder(cfg: ATPConfig, model, tokenizer, seed: int = 0):
    """The step decoder (Coconut's ``copy`` / ``small``; ``None`` for ``shared``: the backbone
    decodes)."""
    return make_step_decoder(cfg, model, tokenizer, seed, max_positions=128)


def check_width(rule, d_model: int, where: str) -> None:
    """A head built for another hidden size is refused, naming the field."""
    if rule.d_model != d_model:
        raise ConfigError(
            f"{where}: {type(rule).__name__}.d_model = {rule.d_model}: expected the model's "
            f"hidden size {d_model} (build the head for this model, or start from a model of "
            f"width {rule.d_model})"
        )


def heads_for(cfg: ATPConfig, model, base=None) -> tuple[GaussianFeedback, StepStopHead]:
    """Fresh heads, or copies of ``base``'s when it is an ATP model (continued training)."""
    d = model.config.hidden_size
    spec = getattr(base, "spec", None)
    if spec is not None and isinstance(spec.feedback, GaussianFeedback):
        fb, stop = spec.feedback.with_mode("sample"), spec.stop
        check_width(fb, d, "base.spec.feedback")
        if not isinstance(stop, StepStopHead):
            raise ConfigError(f"base.spec.stop = {stop}: an ATP model needs a StepStopHead")
        check_width(stop, d, "base.spec.stop")
        check_that(
            stop, "group", stop.group == cfg.c_thought, f"ATPConfig.c_thought = {cfg.c_thought}"
        )
        return copy.deepcopy(fb), copy.deepcopy(stop)
    return (
        GaussianFeedback(d, mode="sample", init_logvar=cfg.init_logvar),
        StepStopHead(d, group=cfg.c_thought),
    )


def train(
    data,
    base=None,
    *,
    config: ATPConfig | None = None,
    train_config=None,
    model_config=None,
    callbacks=None,
    seed: int = 0,
    time_budget_s: float | None = None,
):
    """ATP's supervised CVAE stage from a CoT-trained ``base`` (copied, never modified).

    Step-bounded like Coconut: ``time_budget_s`` raises. Returns a ``TrainedModel`` whose spec
    is the deterministic mode and whose ``parts["step_decoder"]`` is the decoder (absent for
    ``shared``).
    """
    from workbench.methods.coconut import check_fits
    from workbench.models.build import count_parameters
    from workbench.train import Trainer
    from workbench.trained import TrainedModel

    if time_budget_s is not None:
        raise ConfigError(
            "atp trains a step-bounded curriculum: set ATPConfig.steps_per_stage instead of a "
            "time budget"
        )
    cfg = config or ATPConfig(seed=seed)
    tok = data.tokenizer
    model = starting_model(base, tok, model_config, seed)
    check_fits(_as_coconut(cfg), data, model)
    if not any(e["steps"] for e in data.train[:256]):
        raise ConfigError(
            f"ATPConfig: the CVAE's latents stand for reasoning steps, but {data.task!r} "
            "examples have none; use a task with steps (e.g. arithmetic)"
        )
    with torch.random.fork_rng():  # new modules' init follows the seed, not the global RNG
        torch.manual_seed(seed)
        feedback, stop = heads_for(cfg, model, base)
        decoder = make_decoder(cfg, model, tok, seed)
        if base is not None and getattr(base, "parts", {}).get(DECODER_PART) is not None:
            decoder = copy.deepcopy(base.parts[DECODER_PART])
    net = trainable_net(model, feedback, stop, decoder)
    collator = ATPCollator(tok, cfg, stage=1)
    tc = train_config or default_train_config(seed=seed, lr=1e-3, warmup_steps=20)
    eval_fn = None
    if data.val and tc.eval_every:
        eval_fn = val_accuracy_fn(tok, data.val, lambda: cfg.inference_spec(feedback, stop))
    stages = [(k, cfg.steps_per_stage) for k in range(1, cfg.max_latent_stage + 1)]
    if cfg.final_stage_steps is not None:
        stages[-1] = (stages[-1][0], cfg.final_stage_steps)
    loss_fn = ATPLoss(feedback, stop, decoder, cfg, special_ids(tok).eos)
    trainer = Trainer(net, tokenize_examples(data.train, tok), collator,
                      replace(tc, max_steps=stages[0][1]), loss_fn=loss_fn, eval_fn=eval_fn,
                      callbacks=callbacks)  # fmt: skip
    loss_fn.trainer = trainer

    def set_stage(stage):
        collator.stage = stage

    hist = run_curriculum(trainer, stages, set_stage, reset_optimizer=cfg.reset_optimizer)
    meta = {
        "config": asdict(cfg),
        "params": count_parameters(model),
        "train_steps": trainer.step,
        "seed": seed,
        "data": data.describe(),
    }
    parts = {DECODER_PART: decoder} if decoder is not None else {}
    spec = cfg.inference_spec(feedback, stop)
    return TrainedModel(NAME, model, tok, spec, hist, data.task, data.test, meta, parts)


def _as_coconut(cfg: ATPConfig):
    """The Coconut config with the same latent budget (for :func:`coconut.check_fits`)."""
    from workbench.methods.coconut import CoconutConfig

    stage = -(-cfg.n_latent // cfg.c_thought)
    return CoconutConfig(c_thought=cfg.c_thought, max_latent_stage=stage)


# ----- reading the latents back ---------------------------------------------------------------


@torch.no_grad()
def greedy_decode(decoder, prefix: torch.Tensor, end_id: int, max_tokens: int) -> list[list[int]]:
    """Greedy tokens of ``decoder`` after the ``[P, c, d]`` embedding prefixes, on one KV cache,
    each cut before ``end_id``."""
    P = prefix.shape[0]
    if P == 0:
        return []
    cache = PreallocatedCache(prefix.shape[1] + max_tokens)
    mask = torch.ones(P, prefix.shape[1], dtype=torch.long, device=prefix.device)
    out = decoder(inputs_embeds=prefix, attention_mask=mask, cache=cache, use_cache=True)
    done = torch.zeros(P, dtype=torch.bool)
    toks = []
    for _ in range(max_tokens):
        nxt = out.logits[:, -1].argmax(-1)
        toks.append(nxt.cpu())
        done |= nxt.cpu() == end_id
        if bool(done.all()):
            break
        mask = torch.cat([mask, mask[:, :1]], 1)  # every row is real: no padding to mask
        out = decoder(input_ids=nxt[:, None], attention_mask=mask, cache=cache, use_cache=True)
    ids = torch.stack(toks, 1).tolist()
    return [row[: row.index(end_id)] if end_id in row else row for row in ids]


def decode_latents(tm, examples=None, *, max_tokens: int | None = None, sampled: bool = False,
                   seed: int = 0, top_k: int = 5) -> pd.DataFrame:  # fmt: skip
    """The text each latent group of ``tm`` stands for, next to the gold step it replaced.

    Runs ``tm``'s spec on ``examples`` (default its test split; ``sampled`` uses the sampled
    mode), cuts each example's fed latents into groups of ``c``, and decodes every group with
    the step decoder in one batched greedy run. One row per (example, group): ``example``,
    ``group``, ``latents`` (``c``), ``n_latent`` (latents the example used), ``decoded``, ``gold``
    (the step text;
    the merged rest for the last group), ``exact`` (token-exact match) and ``top_k`` (the LM
    head's top tokens read after the group's last latent, the logit-lens view of the same latent).
    """
    from workbench.eval.evaluator import evaluate

    examples = list(examples if examples is not None else tm.test_examples)
    cfg = ATPConfig(**(tm.meta.get("atp_config") or tm.meta.get("config") or {}))
    c = cfg.c_thought
    decoder = tm.parts.get(DECODER_PART, tm.model)
    spec = sampled_spec(tm.spec) if sampled else tm.spec
    res = evaluate(tm.model, tm.tokenizer, examples, spec=spec, record_trace=True, seed=seed)
    tr = res.trace
    order = tr.meta["example_index"]
    texs = tokenize_examples(examples, tm.tokenizer)
    sp = special_ids(tm.tokenizer)
    rows, prefixes = [], []
    for row, ex_i in enumerate(order):
        n = int(tr.n_latent[row])
        gold, _ = groups_at(texs[ex_i], cfg.max_latent_stage, cfg)
        for g in range(n // c):
            prefixes.append(tr.embeds[row, g * c : (g + 1) * c])
            # the LM head's read after the group's last latent: its vocabulary top-k
            top = tm.tokenizer.convert_ids_to_tokens(tr.topk_ids[row, (g + 1) * c, :top_k])
            rows.append((ex_i, g, n, gold[g] if g < len(gold) else [], " ".join(top)))
    longest = max((len(s) for t in texs for s in t.steps), default=8)
    limit = max_tokens or 2 * longest + 4
    param = next(decoder.parameters())
    prefix = (torch.stack(prefixes) if prefixes else torch.zeros(0, c, param.shape[-1])).to(
        device=param.device, dtype=param.dtype
    )
    was = decoder.training
    decoder.eval()
    decoded = greedy_decode(decoder, prefix, sp.eos, limit)
    decoder.train(was)
    text = lambda ids: join_tokens(tm.tokenizer.convert_ids_to_tokens(ids))  # noqa: E731
    out = [
        {"example": e, "group": g, "latents": c, "n_latent": n, "decoded": text(d),
         "gold": text(gold), "exact": d == gold, "top_k": top}
        for (e, g, n, gold, top), d in zip(rows, decoded, strict=True)
    ]  # fmt: skip
    cols = ["example", "group", "latents", "n_latent", "decoded", "gold", "exact", "top_k"]
    return pd.DataFrame(out, columns=cols).sort_values(["example", "group"], ignore_index=True)


def alignment(meta: dict) -> Alignment:
    """Latent ``j`` stands for reasoning step ``j // c``."""
    cfg = meta.get("config") or {}
    return Alignment(latents_per_step=int(cfg.get("c_thought", ATPConfig.c_thought)))


def quick_config(seed: int = 0) -> dict:
    """A short curriculum for looking at the heads (not for headline numbers)."""
    return {
        "config": ATPConfig(
            steps_per_stage=10, final_stage_steps=20, step_decoder="small", seed=seed
        ),  # fmt: skip
        "train_config": default_train_config(
            lr=1e-3, batch_size=16, warmup_steps=5, seed=seed, progress=False
        ),
    }


RECORD = MethodRecord(
    name=NAME,
    summary="ATP-Latent (SFT): a conditional-VAE latent policy with a stop head and step decoder",
    train=train,
    config_cls=ATPConfig,
    inference_spec=None,
    alignment=alignment,
    quick_config=quick_config,
    needs_base=True,
    notebook="03_vae.ipynb",
    decode_steps=decode_latents,
)
