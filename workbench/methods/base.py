"""What a method file exports (:class:`MethodRecord`) and the training helpers methods share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


def _no_alignment(meta: dict) -> None:
    return None


@dataclass(frozen=True)
class MethodRecord:
    """One method, as the rest of the workbench sees it.

    ``train(data, base=None, *, config=None, train_config=None, model_config=None,
    callbacks=None, seed=0, time_budget_s=None) -> TrainedModel`` is the one entry point;
    ``base`` is the CoT model a latent method starts from (copied, never modified).
    """

    name: str
    """Registry key; also the CLI's ``--method`` value and the config section name."""
    summary: str
    """One line for ``--help`` and tables."""
    train: Callable[..., Any]
    """The training entry point (signature above)."""
    config_cls: type | None = None
    """The method's own config dataclass (``None``: the method has no settings of its own)."""
    inference_spec: Callable[..., Any] | None = None
    """``(config, tokenizer, feedback=None) -> LatentSpec`` for evaluation (``None``: plain
    decoding); ``feedback`` is the trained rule when it has parameters."""
    alignment: Callable[[dict], Any] = _no_alignment
    """``meta -> Alignment | None``: which CoT tokens each latent stands for, for the lens."""
    quick_config: Callable[[int], Any] | None = None
    """``seed -> config`` of a short run (``load_or_train`` when nothing is shipped)."""
    needs_base: bool = False
    """Starts from a trained CoT model (``--init``; see ``experiment.cot_starting_point``)."""
    notebook: str | None = None
    """The notebook that trains it (``notebooks/<file>``)."""
    takes_train_config: bool = True
    """``train`` accepts ``train_config``/``model_config`` (a method whose optimizer settings
    live in its own config, like Latent-SFT's sub-stages, says ``False``)."""
    recipe: Callable[[int], dict] | None = None
    """``seed -> train kwargs`` of the shipped checkpoint (``make checkpoints``); ``None``: none."""
    decode_steps: Callable[..., Any] | None = None
    """``(trained_model, examples) -> DataFrame`` for methods with a step decoder (ATP-Latent):
    one row per (``example``, ``group``) with ``latents`` (latents in the group), ``decoded``,
    ``gold`` and ``exact``; the lens, the inspector and the demo show it."""


# ----- helpers every train function uses ------------------------------------------------------


def default_train_config(**overrides):
    """The baseline recipe: batch 32, lr 2e-3, 30 warm-up steps, cosine to 5% (betas 0.9/0.98).

    Measured on 3x3 multiplication with the default d=256 model on 2 CPU threads
    (``benchmarks/baselines.py``): the CoT loss sits on a plateau near 0.07 until the run has
    accumulated enough learning rate, then drops sharply; lr 1e-3 reached the drop only at the
    very end of a 10-minute budget (92%), lr 2e-3 reached it at ~5 minutes (97.9% at 10).
    """
    from workbench.train import TrainConfig

    base = dict(
        batch_size=32,
        lr=2e-3,
        weight_decay=0.01,
        warmup_steps=30,
        max_steps=3000,
        lr_schedule="cosine",
        min_lr_ratio=0.05,
        max_grad_norm=1.0,
        log_every=25,
        betas=(0.9, 0.98),
    )
    base.update(overrides)
    return TrainConfig(**base)


def with_time_budget(cfg, time_budget_s: float | None):
    """``cfg`` running for ``time_budget_s`` of wall time, its schedule following the clock."""
    if time_budget_s is None:
        return cfg
    from dataclasses import replace

    return replace(cfg, max_steps=10**9, max_time_s=time_budget_s, schedule_by_time=True)


def val_accuracy_fn(tokenizer, examples, spec_fn):
    """A trainer ``eval_fn``: greedy accuracy and reasoning positions on ``examples``."""
    from workbench.eval.evaluator import evaluate

    def eval_fn(trainer):
        model = trainer.unwrapped_model
        lm = lm_of(model)
        res = evaluate(lm, tokenizer, examples, spec=spec_fn())
        return {
            "accuracy": res.summary["accuracy"],
            "reasoning_positions": res.summary["reasoning_positions"],
        }

    return eval_fn


def starting_model(base, tokenizer, model_config=None, seed: int = 0):
    """A private copy of ``base`` (a TrainedModel or a model), or a new model when ``None``."""
    import copy

    from workbench.models.build import ModelConfig, build_model

    if base is None:
        return build_model(model_config or ModelConfig(), tokenizer, seed=seed)
    return copy.deepcopy(getattr(base, "model", base))


def trainable_net(model, *parts):
    """``model`` alone, or a module holding it (``.lm``) and the trainable rules it feeds through.

    The trainer optimizes one module; a projection or a learned stop head that lives outside
    the LM must be inside it to be trained and checkpointed.
    """
    parts = [p for p in parts if p is not None and any(True for _ in p.parameters())]
    return LatentLM(model, *parts) if parts else model


def lm_of(net):
    """The LM inside ``net`` (a :class:`LatentLM`), or ``net`` itself."""
    return net.lm if isinstance(net, LatentLM) else net


class LatentLM(torch.nn.Module):
    """An LM (``.lm``) plus the trainable rules it feeds back through (``.parts``)."""

    def __init__(self, lm, *parts):
        super().__init__()
        self.lm = lm
        self.parts = torch.nn.ModuleList(parts)


def run_curriculum(trainer, stages, set_stage, *, reset_optimizer: bool = True):
    """Train ``stages`` (``[(stage, steps), ...]``) in order; returns the log as one DataFrame.

    Stage ``i`` ends at a fixed optimizer step (the cumulative sum), so a run resumed from a
    checkpoint (``TrainConfig.resume``) re-enters the curriculum where it was killed: finished
    stages are skipped, and the optimizer is reset only when a stage starts, never in the middle
    of one (its state then comes from the checkpoint). ``set_stage(stage)`` switches the layout
    (the collator) and may return extra columns for that stage's log rows.
    """
    import pandas as pd

    from workbench.train import latest_checkpoint

    cfg = trainer.config
    ends = [sum(n for _, n in stages[: i + 1]) for i in range(len(stages))]
    resume_from = latest_checkpoint(cfg.output_dir) if cfg.resume and cfg.output_dir else None
    if resume_from is not None:
        trainer.resume_from_checkpoint(resume_from)
    frames = []
    for i, (stage, _) in enumerate(stages):
        if trainer.step >= ends[i]:
            continue
        columns = set_stage(stage) or {}
        trainer.config.max_steps = ends[i]
        if i > 0 and reset_optimizer and trainer.step == ends[i - 1]:
            trainer.reset_optimizer()
        n_before = len(trainer.log_history)
        trainer.train()
        part = pd.DataFrame(trainer.log_history[n_before:]).assign(stage=stage, **columns)
        frames.append(part)
    return pd.concat(frames, ignore_index=True) if frames else None
