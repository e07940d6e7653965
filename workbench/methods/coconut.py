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
from dataclasses import dataclass

import torch

from workbench.data.tokenizer import special_ids
from workbench.engine.feedback import FeedbackRule, make_feedback
from workbench.engine.forward import latent_forward, shifted_ce
from workbench.engine.stop import FixedSteps
from workbench.eval.evaluator import LatentSpec
from workbench.methods.layout import TokenizedExample, build_sequence, collate


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
    """Stage-0 (explicit CoT) steps; 0 when starting from a CoT-trained model, as the GSM config does."""
    final_stage_steps: int | None = None
    """Extra steps at the final stage (defaults to ``steps_per_stage``)."""
    reset_optimizer: bool = True
    """Fresh optimizer and schedule at each stage (reference: ``reset_optimizer``)."""
    pad_latent_to_max: bool = True
    """Examples with fewer steps than the stage still get ``max_latent_stage * c`` latents at the end."""
    uniform_prob: float = 0.0
    """Probability of training an example at a random other stage (reference: 0; 0.05 for analyses)."""
    feedback: str = "hidden"
    """Engine feedback rule: ``hidden`` is Coconut; ``projected``/``superposition`` are ablations."""
    seed: int = 0
    """Seed of the stage-mixing draws."""

    def __post_init__(self) -> None:
        if self.c_thought < 1:
            raise ValueError(f"CoconutConfig.c_thought must be >= 1, got {self.c_thought}")
        if self.max_latent_stage < 1:
            raise ValueError(
                f"CoconutConfig.max_latent_stage must be >= 1, got {self.max_latent_stage}"
            )
        if self.steps_per_stage < 0 or self.cot_steps < 0:
            raise ValueError("CoconutConfig.steps_per_stage and cot_steps must be >= 0")
        if not 0.0 <= self.uniform_prob <= 1.0:
            raise ValueError(
                f"CoconutConfig.uniform_prob must be in [0, 1], got {self.uniform_prob}"
            )

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
        """The final-stage spec: exactly ``max_latent_stage * c`` thoughts, then a forced ``<eot>``."""
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
