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
  CODI-style projection, ``"superposition"`` a vocabulary-space thought), for ablations.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace

import torch

from workbench.config import check_choice, check_range
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
    starting_model,
    trainable_net,
    val_accuracy_fn,
)

NAME = "coconut"


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
    seed: int = 0
    """Seed of the stage-mixing draws."""

    def __post_init__(self) -> None:
        check_range(self, "c_thought", ge=1)
        check_range(self, "max_latent_stage", ge=1)
        check_range(self, "steps_per_stage", ge=0)
        check_range(self, "cot_steps", ge=0)
        check_range(self, "final_stage_steps", ge=0, allow_none=True)
        check_range(self, "uniform_prob", ge=0.0, le=1.0)
        check_choice(self, "feedback", FEEDBACK_RULES)

    @property
    def n_latent(self) -> int:
        """Latents at the final stage, used for every evaluation."""
        return self.max_latent_stage * self.c_thought

    def make_feedback(self, d_model: int) -> FeedbackRule:
        return (
            make_feedback(self.feedback, d_model=d_model)
            if self.feedback == "projected"
            else make_feedback(self.feedback)
        )

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
        seqs = []
        for t in items:
            stage = self.stage
            if self.cfg.uniform_prob and self.rng.random() < self.cfg.uniform_prob:
                stage = self.rng.randint(0, self.cfg.max_latent_stage)
            n, first = stage_layout(t, stage, self.cfg)
            seqs.append(build_sequence(t, self.sp, n_latent=n, first_step=first))
        return collate(seqs, self.sp.pad)


class CoconutLoss:
    """``loss_fn`` for the trainer: multi-pass latent forward + shifted CE."""

    def __init__(self, feedback: FeedbackRule):
        self.feedback = feedback

    def __call__(self, model, batch):
        lm = model.lm if hasattr(model, "lm") else model
        out = latent_forward(lm, batch, self.feedback)
        loss = shifted_ce(out.logits, batch["labels"])
        return loss, {"latents": float(batch["n_latent"].float().mean())}


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
    import pandas as pd

    from workbench.models.build import count_parameters
    from workbench.train import Trainer, latest_checkpoint
    from workbench.trained import TrainedModel

    if time_budget_s is not None:
        raise ValueError(
            "coconut trains a step-bounded curriculum: set CoconutConfig.steps_per_stage "
            "instead of a time budget"
        )
    cc = config or CoconutConfig(seed=seed)
    tok = data.tokenizer
    model = starting_model(base, tok, model_config, seed)
    with torch.random.fork_rng():  # the rule's init follows the seed, not the global RNG
        torch.manual_seed(seed)
        feedback = cc.make_feedback(model.config.hidden_size)
    net = trainable_net(model, feedback)
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
        loss_fn=CoconutLoss(feedback),
        eval_fn=eval_fn,
        callbacks=callbacks,
    )
    # Stage i ends at a fixed optimizer step, so a resumed run (TrainConfig.resume) re-enters
    # the curriculum where it was killed: finished stages are skipped, and the optimizer is only
    # reset when a stage starts, never in the middle of one (its state comes from the checkpoint).
    ends = [sum(n for _, n in stages[: i + 1]) for i in range(len(stages))]
    resume_from = latest_checkpoint(cfg.output_dir) if cfg.resume and cfg.output_dir else None
    if resume_from is not None:
        trainer.resume_from_checkpoint(resume_from)
    frames = []
    for i, (stage, _) in enumerate(stages):
        if trainer.step >= ends[i]:
            continue
        collator.stage = stage
        trainer.config.max_steps = ends[i]
        if i > 0 and cc.reset_optimizer and trainer.step == ends[i - 1]:
            trainer.reset_optimizer()
        n_before = len(trainer.log_history)
        trainer.train()
        part = pd.DataFrame(trainer.log_history[n_before:])
        part["stage"] = stage
        frames.append(part)
    hist = pd.concat(frames, ignore_index=True) if frames else None
    meta = {
        "config": asdict(cc),
        "params": count_parameters(model),
        "train_steps": trainer.step,
        "seed": seed,
        "data": data.describe(),
    }
    spec = cc.inference_spec(feedback)
    return TrainedModel(NAME, model, tok, spec, hist, data.task, data.test, meta)


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
    """The shipped checkpoint's settings (see README Results for what they reach)."""
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
