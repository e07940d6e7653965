"""Coconut: continuous thoughts fed back as input embeddings, learned by a curriculum.

Follows RESEARCH Part A section 2 (2.1 algorithm, 2.2 configs, 2.4 pitfalls):

* at stage k the first k reasoning steps are replaced by ``k * c`` latent positions whose
  input embedding is the last hidden state (after the final norm) of the position before;
* training is the multi-pass teacher-forced forward of :mod:`workbench.engine.forward`
  (gradients through every thought), loss = CE on the remaining steps, ``<eot>`` and answer;
* past ``max_latent_stage`` every step is removed and ``max_latent_stage * c`` latents kept
  (``pad_latent_to_max``); ``uniform_prob`` mixes in other stages; the optimizer can be reset
  at each stage;
* evaluation is pinned to the final stage (the reference code's ``resume`` trap, where eval ran
  with fewer latents, cannot happen: :meth:`CoconutConfig.inference_spec` has no stage input).

Deliberate deviations:

* stages are counted in optimizer steps (``steps_per_stage``), not epochs: our synthetic data
  is unbounded, so "epochs" carry no meaning; the schedule restarts (warm-up + cosine) per stage;
* ``<eot>`` is a label (the workbench layout) instead of never being predicted; inference still
  forces it after the latents, as Coconut does;
* any feedback rule of the engine can replace ``hidden`` (``feedback="projected"`` gives a
  CODI-style projection, ``"superposition"`` a vocabulary-space thought), for ablations;
* step supervision (RESEARCH Part A 7, SIM-CoT / LOTUS / CoT2) is an option, off by default:
  ``latent_ce_weight`` scores the LM head at latent ``j`` against the *bag* of step ``j // c``'s
  tokens (LOTUS uses one gold token per latent), ``step_decoder`` trains a separate decoder
  (``small``: 1 fresh layer; ``copy``: the starting model) on the fed latents.

Measured (``benchmarks/compare_methods.py``, d=128 from a CoT model, 300 held-out problems, 2
CPU cores): arithmetic chains (single-digit operands, 2-4 steps; CoT 64.3% with 29.4 tokens,
no-CoT 33.3%), c=1, 4 stages, lr 1e-3, batch 32:

* 200 steps per stage + 400: plain Coconut 28.3%, latent-usage drop ~0 (bypassed; the pause
  control: 27.0%); with ``latent_ce_weight=1, step_decoder="small"`` 35.0%, drops 19-23 points;
* 400 steps per stage + 800, step-supervised: 55.3% with 4 latents, drops 40-47 points;
* 600 steps per stage + 1200 (3,000 steps, 18 min), step-supervised: **77.0%** with 4 latents
  (above the 15-minute CoT model it started from, no-CoT + 44 points), drops 60-68 points: the
  latents carry the chain. (The CoT model is itself undertrained; it got no extra steps.)

From the 100% CoT model (5,000 steps; 500 held-out problems), the same step-supervised recipe
reaches 71.2% with 4 latents (drops 61-67 points); continued 3,000 more steps at the last stage
(lr 5e-4, recipe row ``coconut_sup_long``) **87.4%**, drops 80-84.5 points: budgets, not the
feedback rule, were the limit.

3x3 multiplication (CoT 100%), c=2, 300/300/500 steps: 0% with or without step supervision (the
4-6 digit partial products do not fit one thought at this budget; RESEARCH Part A 7 item 5). At
the arithmetic budget (c=2, 1,000 steps per stage + 1,000, lr 1e-3, step-supervised, 10 minutes
on one thread) still 0.0% on 500 problems, usage drop 0: the last stage ends at 1.21 nats per
target token, the no-CoT level; stage 1 (step 1 latent) already ends at 0.68. The paper's
effective batch 128 and 10-100x longer stages were not tried on CPU.

3x2 multiplication (2 steps, CoT 17 tokens; recipe row ``coconut_sup_slow``), step-supervised,
c=2, 1,500 steps for stage 1 and 18,000 at the last, lr 5e-4, 51 minutes on one thread: 70.0% on
500 held-out problems with 4 latents, usage drop 67.8 points, validation still climbing (64.5% at
19,000). ATP with the same budget and supervision reaches 100% (:mod:`workbench.methods.atp`).

Graph reachability (the graph recipe: symbolic near-chains, 2 steps, Llama d=128), from the CoT
trained 44,000 steps (recipe row ``cot_long2``, 97.4%), c=1, 1,000 + 2,000 steps, lr 1e-3, 500
held-out problems (chance 50%, no-CoT 63.6%): plain Coconut 69.0%, usage drop 11.0 (the pause
control 66.0%); step-supervised (``coconut_sup_l2``) **89.6%** with 2 latents against the CoT's
6 tokens, usage drop 30.5. The lens reads its second latent as the first lookup's result (top-5
100%), never the answer: the second lookup happens while decoding. docs/results.md, graph.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace

import torch

from workbench.config import ConfigError, check_choice, check_range
from workbench.data.layout import TokenizedExample, build_sequence, collate, tokenize_examples
from workbench.data.tokenizer import special_ids
from workbench.engine.feedback import FEEDBACK_RULES, FeedbackRule, make_feedback
from workbench.engine.forward import latent_forward, shifted_ce
from workbench.engine.spec import LatentSpec
from workbench.engine.stop import FixedSteps
from workbench.lens.alignment import Alignment
from workbench.methods.base import (
    MethodRecord,
    default_train_config,
    lm_of,
    run_curriculum,
    starting_model,
    trainable_net,
    val_accuracy_fn,
)

NAME = "coconut"
STEP_DECODERS = ("none", "small", "copy")


@dataclass
class CoconutConfig:
    """Curriculum and thought settings (defaults fit 3x3 multiplication: 3 steps)."""

    c_thought: int = 2
    """Latent thoughts per replaced reasoning step (ProsQA/ProntoQA use 1, GSM8k 2)."""
    max_latent_stage: int = 3
    """Last stage; past it all steps are latent. 3 covers every step of 3x3 multiplication."""
    steps_per_stage: int = 400
    """Optimizer steps spent in each stage >= 1 (the reference counts epochs)."""
    cot_steps: int = 0
    """Stage-0 (explicit CoT) steps; 0 when starting from a CoT-trained model (the GSM config)."""
    final_stage_steps: int | None = None
    """Extra steps at the final stage (defaults to ``steps_per_stage``)."""
    reset_optimizer: bool = True
    """Fresh optimizer and schedule at each stage (reference: ``reset_optimizer``)."""
    pad_latent_to_max: bool = True
    """Past the last stage every example gets ``max_latent_stage * c`` latents (any step count)."""
    uniform_prob: float = 0.0
    """Chance of training an example at a random other stage (reference: 0; 0.05 for analyses)."""
    feedback: str = "hidden"
    """Engine feedback rule: ``hidden`` is Coconut; ``projected``/``superposition``: ablations."""
    latent_ce_weight: float = 0.0
    """Step supervision through the LM head (LOTUS / CoT2, RESEARCH Part A 7): weight of the
    mean NLL, read at latent ``j``'s position, of the tokens of the step it replaced
    (``j // c``). 0 is plain Coconut."""
    step_decoder: str = "none"
    """Step supervision by an auxiliary decoder (SIM-CoT, RESEARCH Part A 7): ``small`` (a fresh
    1-layer model of the same width) or ``copy`` (a copy of the starting model) reads a step's
    ``c`` fed latents as a prefix and is trained to write that step's text; dropped at
    inference. ``none`` disables it."""
    step_decoder_weight: float = 1.0
    """Weight of the step decoder's CE (used when ``step_decoder`` is not ``none``)."""
    seed: int = 0
    """Seed of the stage-mixing draws and of new modules' init."""

    def __post_init__(self) -> None:
        check_range(self, "c_thought", ge=1)
        check_range(self, "max_latent_stage", ge=1)
        check_range(self, "steps_per_stage", ge=0)
        check_range(self, "cot_steps", ge=0)
        check_range(self, "final_stage_steps", ge=0, allow_none=True)
        check_range(self, "uniform_prob", ge=0.0, le=1.0)
        check_choice(self, "feedback", FEEDBACK_RULES)
        check_range(self, "latent_ce_weight", ge=0.0)
        check_choice(self, "step_decoder", STEP_DECODERS)
        check_range(self, "step_decoder_weight", ge=0.0)

    @property
    def step_supervised(self) -> bool:
        """Whether any loss reads the replaced steps' text."""
        return self.latent_ce_weight > 0 or self.step_decoder != "none"

    @property
    def n_latent(self) -> int:
        """Latents at the final stage, used for every evaluation."""
        return self.max_latent_stage * self.c_thought

    def make_feedback(self, d_model: int) -> FeedbackRule:
        """The configured rule; rules with weights of the model's width get ``d_model``."""
        cls = FEEDBACK_RULES[self.feedback]
        kw = {"d_model": d_model} if "d_model" in cls.config_keys() else {}
        return make_feedback(self.feedback, **kw)

    def inference_spec(self, feedback: FeedbackRule | None = None) -> LatentSpec:
        """The final-stage spec: ``max_latent_stage * c`` thoughts, then a forced ``<eot>``."""
        return LatentSpec(
            feedback=feedback,
            stop=FixedSteps(self.n_latent),
            max_latent_steps=self.n_latent,
            append_eot=True,
        )


def stage_layout(tex: TokenizedExample, stage: int, cfg: CoconutConfig) -> tuple[int, int]:
    """``(n_latent, first_explicit_step)`` of one example at ``stage``."""
    k = min(stage, len(tex.steps))
    if stage >= cfg.max_latent_stage and cfg.pad_latent_to_max:
        return cfg.n_latent, len(tex.steps)
    return k * cfg.c_thought, k


class CoconutCollator:
    """Batches at the current curriculum stage (set ``.stage`` between stages)."""

    def __init__(self, tokenizer, cfg: CoconutConfig, stage: int = 0):
        self.sp, self.cfg, self.stage = special_ids(tokenizer), cfg, stage
        self.rng = random.Random(cfg.seed)

    def __call__(self, items: list[TokenizedExample]) -> dict[str, torch.Tensor]:
        seqs, replaced = [], []
        for t in items:
            stage = self.stage
            if self.cfg.uniform_prob and self.rng.random() < self.cfg.uniform_prob:
                stage = self.rng.randint(0, self.cfg.max_latent_stage)
            n, first = stage_layout(t, stage, self.cfg)
            seqs.append(build_sequence(t, self.sp, n_latent=n, first_step=first))
            replaced.append(t.steps[:first])
        batch = collate(seqs, self.sp.pad)
        if self.cfg.step_supervised:
            batch.update(replaced_steps(replaced, self.sp.pad))
        return batch


def replaced_steps(steps: list[list[list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Per sample, the token ids of the steps its latents replaced, padded to one tensor.

    ``step_ids`` [B, S, L] (``pad_id`` fill) and ``step_len`` [B, S] (0: no such step).
    """
    B = len(steps)
    S = max((len(s) for s in steps), default=0)
    L = max((len(x) for s in steps for x in s), default=0)
    ids = torch.full((B, max(S, 1), max(L, 1)), pad_id, dtype=torch.long)
    lens = torch.zeros((B, max(S, 1)), dtype=torch.long)
    for b, sample in enumerate(steps):
        for j, step in enumerate(sample):
            ids[b, j, : len(step)] = torch.tensor(step, dtype=torch.long)
            lens[b, j] = len(step)
    return {"step_ids": ids, "step_len": lens}


class CoconutLoss:
    """``loss_fn`` for the trainer: multi-pass latent forward + shifted CE (+ step supervision).

    With step supervision the metrics log each part: ``loss_lm`` (the answer/remaining-steps
    CE), ``loss_latent`` (the LM head at each latent vs its step's tokens) and
    ``loss_decoder`` (the step decoder's CE).
    """

    def __init__(self, feedback: FeedbackRule, cfg: CoconutConfig | None = None, decoder=None):
        self.feedback, self.cfg, self.decoder = feedback, cfg or CoconutConfig(), decoder

    def __call__(self, model, batch):
        lm = lm_of(model)
        out = latent_forward(lm, batch, self.feedback)
        loss = shifted_ce(out.logits, batch["labels"])
        metrics = {"latents": float(batch["n_latent"].float().mean())}
        if "step_ids" not in batch or out.latent_embeds is None:
            return loss, metrics
        metrics["loss_lm"] = float(loss.detach())
        cfg = self.cfg
        if cfg.latent_ce_weight > 0:
            part = latent_step_nll(out.logits, batch, cfg.c_thought)
            metrics["loss_latent"] = float(part.detach())
            loss = loss + cfg.latent_ce_weight * part
        if self.decoder is not None:
            part = step_decoder_nll(self.decoder, out.latent_embeds, batch, cfg.c_thought)
            metrics["loss_decoder"] = float(part.detach())
            loss = loss + cfg.step_decoder_weight * part
        return loss, metrics


def _latent_targets(batch, c: int):
    """For each latent column ``j``: its step's ids [B, n, L] and a validity mask [B, n, L]."""
    n = int(batch["n_latent"].max())
    step_of = torch.arange(n) // c  # [n]
    ids, lens = batch["step_ids"], batch["step_len"]
    S = ids.shape[1]
    valid_step = step_of < S
    idx = step_of.clamp(max=S - 1)
    tgt = ids[:, idx]  # [B, n, L]
    tlen = lens[:, idx] * valid_step  # [B, n]
    has_latent = torch.arange(n)[None, :] < batch["n_latent"][:, None]  # [B, n]
    tok_mask = torch.arange(ids.shape[2])[None, None, :] < (tlen * has_latent)[:, :, None]
    return tgt, tok_mask


def latent_step_nll(logits: torch.Tensor, batch: dict, c: int) -> torch.Tensor:
    """Mean NLL, under the LM head at latent ``j``'s position, of the tokens of step ``j // c``
    (a bag of tokens: the latent stands for the whole step, not one position of it)."""
    n = int(batch["n_latent"].max())
    c0 = int(batch["latent_start"])
    logp = torch.log_softmax(logits[:, c0 : c0 + n].float(), dim=-1)  # [B, n, V]
    tgt, tok_mask = _latent_targets(batch, c)
    nll = -logp.gather(-1, tgt.to(logp.device))  # [B, n, L]
    m = tok_mask.to(nll.device)
    return (nll * m).sum() / m.sum().clamp(min=1)


def step_decoder_nll(
    decoder, latent_embeds: torch.Tensor, batch: dict, c: int, end_id: int | None = None
) -> torch.Tensor:
    """CE of ``decoder`` writing each replaced step from that step's ``c`` fed latents.

    One batched teacher-forced pass over every (sample, step) pair: inputs are
    ``[z_1..z_c, step tokens]`` (``inputs_embeds``), labels the step tokens, followed by
    ``end_id`` when given (so a greedy decode knows where the step ends).
    """
    ids, lens = batch["step_ids"], batch["step_len"]
    if end_id is not None:
        ids, lens = _append_end(ids, lens, end_id)
    B, S, L = ids.shape
    n = latent_embeds.shape[1]
    n_steps = min(S, n // c)
    if n_steps == 0:
        return latent_embeds.sum() * 0.0
    has = (torch.arange(n_steps)[None, :] * c + c <= batch["n_latent"][:, None]) & (
        lens[:, :n_steps] > 0
    )
    if not bool(has.any()):
        return latent_embeds.sum() * 0.0
    z = latent_embeds[:, : n_steps * c].reshape(B, n_steps, c, -1)[has]  # [P, c, d]
    tok = ids[:, :n_steps][has].to(z.device)  # [P, L]
    tl = lens[:, :n_steps][has].to(z.device)  # [P]
    emb = decoder.get_input_embeddings()
    x = torch.cat([z.to(emb.weight.dtype), emb(tok)], 1)  # [P, c + L, d]
    mask = torch.cat(
        [torch.ones(len(tok), c, dtype=torch.long, device=z.device),
         (torch.arange(L, device=z.device)[None] < tl[:, None]).long()], 1
    )  # fmt: skip
    logits = decoder(inputs_embeds=x, attention_mask=mask).logits
    pred = logits[:, c - 1 : c - 1 + L].float()  # position c-1+i predicts token i
    labels = tok.masked_fill(mask[:, c:] == 0, -100)
    return torch.nn.functional.cross_entropy(
        pred.reshape(-1, pred.shape[-1]), labels.reshape(-1), ignore_index=-100
    )


def _append_end(ids: torch.Tensor, lens: torch.Tensor, end_id: int):
    """``step_ids``/``step_len`` with ``end_id`` written after every non-empty step."""
    B, S, L = ids.shape
    out = torch.cat([ids, ids.new_zeros(B, S, 1)], 2)
    at_end = (torch.arange(L + 1)[None, None, :] == lens[:, :, None]) & (lens[:, :, None] > 0)
    return out.masked_fill(at_end, end_id), torch.where(lens > 0, lens + 1, lens)


def make_step_decoder(cfg, model, tokenizer, seed: int = 0, max_positions: int = 256):
    """The auxiliary step decoder of ``cfg.step_decoder``: ``copy`` (of ``model``), ``small`` (a
    fresh 1-layer LM of its width), else ``None``."""
    import copy

    from workbench.models.build import ModelConfig, build_model

    if cfg.step_decoder == "copy":
        return copy.deepcopy(model)
    if cfg.step_decoder != "small":
        return None
    d = model.config.hidden_size
    heads = next(h for h in (4, 2, 1) if d % h == 0)
    small = ModelConfig(n_layer=1, d_model=d, n_head=heads, max_positions=max_positions)
    return build_model(small, tokenizer, seed=seed)


def train(
    data,
    base=None,
    *,
    config: CoconutConfig | None = None,
    train_config=None,
    model_config=None,
    callbacks=None,
    seed: int = 0,
    time_budget_s: float | None = None,
):
    """Coconut's curriculum (RESEARCH 2.1) from a CoT-trained ``base`` (or from scratch with
    ``cot_steps``); returns a ``TrainedModel``. ``base`` is copied, never modified.

    Stages are step-bounded; ``time_budget_s`` is not supported (a curriculum cut by the clock
    would never reach its final stage) and raises.
    """

    from workbench.models.build import count_parameters
    from workbench.train import Trainer
    from workbench.trained import TrainedModel

    if time_budget_s is not None:
        raise ConfigError(
            "coconut trains a step-bounded curriculum: set CoconutConfig.steps_per_stage "
            "instead of a time budget"
        )
    cc = config or CoconutConfig(seed=seed)
    tok = data.tokenizer
    model = starting_model(base, tok, model_config, seed)
    check_fits(cc, data, model)
    with torch.random.fork_rng():  # new modules' init follows the seed, not the global RNG
        torch.manual_seed(seed)
        feedback = cc.make_feedback(model.config.hidden_size)
        decoder = make_step_decoder(cc, model, tok, seed)
    net = trainable_net(model, feedback, decoder)
    collator = CoconutCollator(tok, cc, stage=0 if cc.cot_steps else 1)
    cfg = train_config or default_train_config(seed=seed, lr=5e-4, warmup_steps=20)
    eval_fn = None
    if data.val and cfg.eval_every:
        eval_fn = val_accuracy_fn(tok, data.val, lambda: cc.inference_spec(feedback))
    stages = ([(0, cc.cot_steps)] if cc.cot_steps else []) + [
        (k, cc.steps_per_stage) for k in range(1, cc.max_latent_stage + 1)
    ]
    last = cc.final_stage_steps if cc.final_stage_steps is not None else stages[-1][1]
    stages[-1] = (stages[-1][0], last)
    trainer = Trainer(
        net,
        tokenize_examples(data.train, tok),
        collator,
        replace(cfg, max_steps=stages[0][1]),
        loss_fn=CoconutLoss(feedback, cc, decoder),
        eval_fn=eval_fn,
        callbacks=callbacks,
    )

    def set_stage(stage):
        collator.stage = stage

    hist = run_curriculum(trainer, stages, set_stage, reset_optimizer=cc.reset_optimizer)
    meta = {
        "config": asdict(cc),
        "params": count_parameters(model),
        "train_steps": trainer.step,
        "seed": seed,
        "data": data.describe(),
    }
    spec = cc.inference_spec(feedback)
    return TrainedModel(NAME, model, tok, spec, hist, data.task, data.test, meta)


def check_fits(cc: CoconutConfig, data, model) -> None:
    """Refuse, naming the field, a config that cannot work on ``data`` with ``model``."""
    from workbench.config import ConfigError

    limit = getattr(model.config, "n_positions", None) or getattr(
        model.config, "max_position_embeddings", None
    )
    texs = tokenize_examples(data.train[:256] + data.test[:256], data.tokenizer)
    if limit is not None and texs:
        longest = max(len(t.question) + 1 + len(t.reasoning()) + len(t.answer) + 2 for t in texs)
        if longest + cc.n_latent > limit:
            raise ConfigError(
                f"CoconutConfig.max_latent_stage = {cc.max_latent_stage} with c_thought = "
                f"{cc.c_thought}: {cc.n_latent} latents plus the longest sequence ({longest}) "
                f"exceed the model's {limit} positions; use fewer latents or a larger "
                "ModelConfig.max_positions"
            )
    if cc.step_supervised and texs and not any(t.steps for t in texs):
        field = "latent_ce_weight" if cc.latent_ce_weight > 0 else "step_decoder"
        raise ConfigError(
            f"CoconutConfig.{field}: step supervision needs examples with steps, but "
            f"{data.task!r} has none; set latent_ce_weight=0 and step_decoder='none'"
        )


def alignment(meta: dict) -> Alignment:
    """Latent ``j`` stands for reasoning step ``j // c`` (older checkpoints keep the config
    under ``meta["coconut"]``)."""
    cfg = meta.get("config") or meta.get(NAME) or {}
    return Alignment(latents_per_step=int(cfg.get("c_thought", CoconutConfig.c_thought)))


def quick_config(seed: int = 0) -> dict:
    """A short curriculum for looking at trajectories (not for headline numbers)."""
    return {
        "config": CoconutConfig(c_thought=2, steps_per_stage=10, final_stage_steps=20, seed=seed),
        "train_config": default_train_config(
            lr=5e-4, batch_size=16, warmup_steps=5, seed=seed, progress=False
        ),
    }


def recipe(seed: int = 0) -> dict:
    """The shipped checkpoint's settings (see docs/results.md for what they reach)."""
    return {
        "config": CoconutConfig(c_thought=2, steps_per_stage=300, final_stage_steps=500, seed=seed),
        "train_config": default_train_config(seed=seed, lr=1e-3, warmup_steps=20, eval_every=100),
    }


RECORD = MethodRecord(
    name=NAME,
    summary="continuous thoughts: the last hidden state fed back, learned by a curriculum",
    train=train,
    config_cls=CoconutConfig,
    inference_spec=lambda cfg, tokenizer, feedback=None: cfg.inference_spec(feedback),
    alignment=alignment,
    quick_config=quick_config,
    needs_base=True,
    notebook="01_coconut.ipynb",
    recipe=recipe,
)
