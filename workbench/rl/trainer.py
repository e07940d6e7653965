"""``GroupPolicyTrainer``: group-policy RL on the shared :class:`~workbench.train.Trainer`.

Nothing of the supervised trainer is copied: accelerate, the optimizer and schedule, callbacks,
``log_history``, checkpoint/resume come from :class:`~workbench.train.Trainer`; this module adds a
collator and a ``loss_fn``:

* :class:`RolloutBatches` hands the loss each batch of questions;
* :class:`GroupPolicyLoss` samples ``G`` rollouts per question every ``num_iterations`` optimizer
  steps (one batched engine run through the ``policy``, seeded by the rollout's number and the
  process, so two processes sample different noise), scores them with the reward registry, turns
  the rewards into group advantages and caches the rollouts' log-probabilities under the sampling
  policy (**the explicit old-policy cache**); every call then recomputes the log-probabilities on
  the training path and returns the clipped-ratio loss of each action segment (latent, stop,
  answer) with its weight, plus ``beta`` times the KL to a frozen reference when ``beta > 0``. On
  the second pass over a batch the policy has moved, so the ratio differs from 1 and clipping
  fires. Rollouts are keyed on the trainer's step, so a run resumed from a checkpoint at a rollout
  boundary (``save_every`` a multiple of ``num_iterations``) continues exactly; one resumed
  between two iterations samples afresh.

A ``policy`` has ``rollout(model, examples, seed) -> (Rollouts, reward_kwargs)`` and
``log_probs(model, rollouts) -> {segment: [N, T]}`` (see :mod:`workbench.rl.gaussian_policy`,
:mod:`workbench.rl.token_policy`); optionally ``score_function_segments`` (segments trained by
``-A * score`` without a ratio: LEPO's soft tokens, whose score is ``-soft_ce``) and
``extra_loss(model, rollouts) -> (loss, metrics)`` (LaTRO's SFT term). Logged keys follow TRL
(ECOSYSTEM 7): ``reward``, ``reward_std``, ``rewards/<name>/mean``, ``frac_reward_zero_std``,
``kl``, ``clip_ratio/*``, ``completions/mean_length``, plus ``latents/mean``,
``distinct_per_group`` (distinct trajectories among a question's ``G``) and ``loss/<segment>``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict

import torch

from workbench.config import ConfigError
from workbench.rl.advantages import group_advantages
from workbench.rl.config import GroupPolicyConfig
from workbench.rl.diagnostics import distinct_per_group
from workbench.rl.loss import clipped_policy_loss
from workbench.rl.rewards import RewardError, compute_rewards


class RolloutBatches:
    """Collator: ``{"examples": [...]}``, a batch of questions (the loss samples rollouts)."""

    def __call__(self, items: list) -> dict:
        return {"examples": list(items)}


class GroupPolicyLoss:
    """``loss_fn(model, batch)`` of group-policy RL (module docstring)."""

    def __init__(self, policy, cfg: GroupPolicyConfig, reference=None):
        self.policy, self.cfg, self.reference = policy, cfg, reference
        self._id = None
        self._cache: dict = {}
        self.trainer = None  # set by GroupPolicyTrainer: rollouts are keyed on its step

    def _new_rollouts(self, model, examples: list, rollout_id: int) -> None:
        cfg, G = self.cfg, self.cfg.num_generations
        group = [e for e in examples for _ in range(G)]
        was = model.training
        model.eval()
        # each process samples its own questions with its own noise (one process: as before)
        acc = self.trainer.accelerator
        seed = (cfg.seed * 100_003 + rollout_id) * acc.num_processes + acc.process_index
        ro, reward_kwargs = self.policy.rollout(model, group, seed=seed)
        with torch.no_grad():
            old = self.policy.log_probs(model, ro)  # the old-policy log-prob cache
            ref = self.policy.log_probs(self.reference, ro) if self.reference is not None else None
        model.train(was)
        total, parts = compute_rewards(cfg.rewards, ro.completions, **reward_kwargs)
        if not torch.isfinite(total).all():  # weights are finite, so a part overflowed
            raise RewardError(f"the weighted reward is not finite: {total.tolist()}")
        adv = group_advantages(total, G, cfg.advantage, cfg.scale_rewards)
        grouped = total.view(-1, G)
        stds = grouped.std(1)
        lengths = ro.answer_len.float()
        metrics = {
            "reward": float(total.mean()),
            "reward_std": float(stds.mean()),
            "frac_reward_zero_std": float((stds == 0).float().mean()),
            "completions/mean_length": float(lengths.mean()),
            "latents/mean": float(ro.n_latent.float().mean()),
            "distinct_per_group": float(distinct_per_group(ro, G)["distinct"].mean()),
            **{f"rewards/{k}/mean": float(v.mean()) for k, v in parts.items()},
        }
        self._id = rollout_id
        self._cache = {"ro": ro, "old": old, "ref": ref, "adv": adv, "metrics": metrics}

    def __call__(self, model, batch):
        # rollout ``k`` serves optimizer steps k*I+1 .. (k+1)*I (I = num_iterations); keyed on the
        # trainer's step, so a run resumed from a checkpoint at a rollout boundary samples
        # exactly what the uninterrupted run sampled
        rollout_id = self.trainer.step // self.cfg.num_iterations
        if rollout_id != self._id:
            self._new_rollouts(model, batch["examples"], rollout_id)
        c, cfg = self._cache, self.cfg
        ro, adv = c["ro"], c["adv"]
        logp = self.policy.log_probs(model, ro)
        dev = next(iter(logp.values())).device
        loss = torch.zeros((), device=dev)
        metrics = dict(c["metrics"])
        clip = {}
        score_segments = getattr(self.policy, "score_function_segments", ())
        for seg, w in cfg.segment_weights.items():
            if seg not in ro.masks or seg not in logp:  # e.g. pathwise latents: no latent actions
                continue
            mask = ro.masks[seg].to(dev)
            if not w or not bool(mask.any()):
                continue
            if seg in score_segments:  # LEPO's soft tokens: A * soft CE, no ratio, no clip
                m = mask.float()
                part = -(adv.to(dev)[:, None] * logp[seg] * m).sum() / m.sum()
                loss = loss + w * part
                metrics[f"loss/{seg}"] = float(part.detach())
                continue
            part, stats = clipped_policy_loss(
                logp[seg], c["old"][seg].to(dev), adv.to(dev), mask,
                epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                log_ratio_clamp=cfg.log_ratio_clamp, loss_type=cfg.loss_type,
            )  # fmt: skip
            loss = loss + w * part
            metrics[f"loss/{seg}"] = float(part.detach())
            for k, v in stats.items():
                clip[k] = clip.get(k, 0.0) + v * float(mask.sum())
            clip["_n"] = clip.get("_n", 0.0) + float(mask.sum())
        n = clip.pop("_n", 0.0)
        metrics.update({k: v / max(n, 1.0) for k, v in clip.items()})
        extra = getattr(self.policy, "extra_loss", None)
        if extra is not None:  # e.g. LaTRO's SFT term on log p(y | x, z)
            part, more = extra(model, ro)
            loss = loss + part
            metrics.update(more)
        if cfg.beta > 0 and c["ref"] is not None:
            kl_terms, count = 0.0, 0.0
            for seg in cfg.segment_weights:
                if seg not in ro.masks or seg not in logp or seg in score_segments:
                    continue
                m = ro.masks[seg].to(dev).float()
                d = c["ref"][seg].to(dev) - logp[seg]  # k3 estimator of KL(pi || ref)
                kl_terms = kl_terms + ((d.exp() - d - 1) * m).sum()
                count += float(m.sum())
            kl = kl_terms / max(count, 1.0)
            loss = loss + cfg.beta * kl
            metrics["kl"] = float(kl.detach())
        if not math.isfinite(float(loss.detach())):
            raise RewardError(f"the policy loss is not finite ({float(loss)}); metrics {metrics}")
        return loss, metrics


def frozen_copy(module):
    """A copy of ``module`` in eval mode with no trainable parameters (a reference, a prior)."""
    frozen = copy.deepcopy(module).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


def refuse_trainer_settings(method: str, config_name: str, train_config, time_budget_s) -> None:
    """RL methods take their optimizer settings from their config: refuse the supervised ones."""
    if time_budget_s is not None or train_config is not None:
        raise ConfigError(
            f"{method} takes its optimizer settings from {config_name} (learning_rate, "
            f"max_steps); pass config={config_name}(...) instead of train_config / time_budget_s"
        )


def require_cot_start(method: str, base) -> None:
    """Token-policy methods start from an explicit-CoT model (no latent spec), or continue a
    model of their own method (its spec is rebuilt from the config)."""
    if base is not None and getattr(base, "method", None) == method:
        return
    if base is None or getattr(base, "spec", None) is not None:
        raise ConfigError(
            f"{method} starts from an explicit-CoT model (method 'cot', no latent spec); got "
            f"{getattr(base, 'method', base)!r}"
        )


class GroupPolicyTrainer:
    """Group-policy RL of ``net`` (the model and its heads) on ``examples`` with ``policy``."""

    def __init__(self, net, examples: list, policy, cfg: GroupPolicyConfig, *, callbacks=None,
                 output_dir: str | None = None, resume: bool = False,
                 progress: bool = False):  # fmt: skip
        from workbench.train import TrainConfig, Trainer

        reference = frozen_copy(net) if cfg.beta > 0 else None
        self.loss_fn = GroupPolicyLoss(policy, cfg, reference)
        tc = TrainConfig(
            batch_size=cfg.per_device_train_batch_size,
            lr=cfg.learning_rate,
            weight_decay=0.0,
            warmup_steps=0,
            max_steps=cfg.max_steps,
            lr_schedule="constant",
            max_grad_norm=cfg.max_grad_norm,
            log_every=1,
            seed=cfg.seed,
            progress=progress,
            output_dir=output_dir,
            resume=resume,
        )
        self.trainer = Trainer(net, list(examples), RolloutBatches(), tc, loss_fn=self.loss_fn,
                               callbacks=callbacks)  # fmt: skip
        self.loss_fn.trainer = self.trainer

    @property
    def log_history(self):
        return self.trainer.log_history

    def train(self):
        """Run ``max_steps`` optimizer steps; returns the log history."""
        return self.trainer.train()

    def fit(self, data) -> tuple:
        """Train, then ``(history DataFrame, meta)`` for the ``TrainedModel``."""
        self.train()
        cfg = self.loss_fn.cfg
        meta = {"config": asdict(cfg), "train_steps": self.trainer.step, "seed": cfg.seed,
                "data": data.describe()}  # fmt: skip
        return self.log_history.to_pandas(), meta
