"""LaTRO: the rationale as a latent variable, with the model's own answer likelihood as reward.

RESEARCH Part B 3 (arXiv 2411.04282, ``SalesforceAIResearch/LaTRO``): from a CoT model, ``K``
rationales ``z ~ pi(. | x)`` are sampled per question (up to ``<eot>``); each earns
``r = log pi(y | x + z) - beta_z * (log pi(z | x) - log pi_0(z | x))`` with ``y`` the gold answer
and ``pi_0`` a frozen copy of the start; advantages are leave-one-out (RLOO); the loss is
``-A * log pi(z | x)`` on the rationale tokens, plus ``sft_weight * -log pi(y | x + z)`` (LaTRO's
``sft_penalty``, 0 by default there: pitfall 1). The self-reward rises as the model learns to
write rationales that make the gold answer likely.

Deliberate deviations:

* the rationale log-prob is a token mean (``loss_type="grpo"``), not a sequence sum (pitfall 2:
  no length normalisation in LaTRO); with ``num_iterations = 1`` the ratio is 1, so the
  gradient is LaTRO's REINFORCE term;
* the stop sequence is the workbench's single ``<eot>`` token; a rationale that never writes it
  is scored with ``<eot>`` appended (LaTRO replaces its reward by ``2 * mean(r)``);
* ``log pi_0(z | x)`` is the prior's full softmax at temperature 1, while ``log pi(z | x)`` is
  the filtered distribution the rollout sampled from: under the prior's own top-k, a token the
  moved policy samples outside it scored ``-inf`` and stopped training (seen on a tiny model
  after a few updates at lr 1e-3);
* ``kl_coef`` 0.05 as LaTRO, ``num_generations`` 8 (LaTRO: 16), ``learning_rate`` 1e-5 (LaTRO:
  5e-7 on 8B models).

Inference is the CoT model's own: it writes its rationale, ``<eot>`` and the answer.

Measured (arithmetic, from the 68.6% ``cot_1500`` row, 16 questions x 8 rollouts, 500 held-out
problems, ``benchmarks/rl.py``): lr 1e-5, temperature 0.7, 300 steps: 68.6% -> 71.6%, the
self-likelihood -5.12 -> -5.08; lr 5e-5 with ``num_iterations`` 2, 100 steps: 68.6% -> 60.8%.
Stop 24, the same settings from another host's ``cot_1500`` (80.7%), on 2,000 held-out problems:
80.7% -> 83.7% (109 problems fixed, 49 broken, McNemar z = 4.8); on a second set of 2,000, 79.4%
-> 83.4% (131 / 51, z = 5.9); the self-likelihood's 50-step means rise from -3.60 to -3.30.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from workbench.config import check_range
from workbench.data.layout import prompt_ids, tokenize_examples
from workbench.data.tokenizer import special_ids
from workbench.methods.base import MethodRecord, lm_of
from workbench.rl import token_policy
from workbench.rl.config import GroupPolicyConfig
from workbench.rl.rewards import RewardConfig
from workbench.rl.trainer import (
    GroupPolicyTrainer,
    frozen_copy,
    refuse_trainer_settings,
    require_cot_start,
)

NAME = "latro"


def _self_reward() -> RewardConfig:
    return RewardConfig(weights={"self_likelihood": 1.0})


@dataclass
class LaTROConfig(GroupPolicyConfig):
    """:class:`~workbench.rl.config.GroupPolicyConfig` with LaTRO's estimator and reward."""

    advantage: str = "rloo"
    """Leave-one-out baseline (LaTRO's RLOO)."""
    rewards: RewardConfig = field(default_factory=_self_reward)
    """``self_likelihood``: ``log pi(y | x, z)`` minus the rationale's KL term."""
    kl_coef: float = 0.05
    """Weight of ``log pi(z|x) - log pi_0(z|x)`` in the reward (LaTRO: 0.05)."""
    sft_weight: float = 0.0
    """Weight of ``-log pi(y | x, z)`` in the loss (LaTRO's ``sft_penalty``; 0 there)."""
    max_completion_length: int = 48
    """Tokens sampled per rationale (scored up to its ``<eot>``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "kl_coef", ge=0)
        check_range(self, "sft_weight", ge=0)


class LaTROPolicy:
    """Rationale rollouts scored by the model's own likelihood of the gold answer."""

    def __init__(self, tokenizer, cfg: LaTROConfig, reference):
        self.tok, self.cfg, self.ref = tokenizer, cfg, reference
        self.sp = special_ids(tokenizer)
        self._answers: list[list[int]] = []

    def _kw(self) -> dict:
        return {"temperature": self.cfg.temperature, "top_k": self.cfg.top_k}

    def _y_inputs(self, ro):
        """Prompts ``x <bot> z <eot>`` and continuations ``y <eos>`` of every rollout."""
        eot, eos = self.sp.eot, self.sp.eos
        prompts = []
        for p, row, e in zip(ro.prompts, ro.tokens.tolist(), ro.eot_at.tolist(), strict=True):
            prompts.append(p + row[:e] + [eot])
        return prompts, [a + [eos] for a in self._answers]

    def rollout(self, model, examples: list, seed: int):
        texs = tokenize_examples(examples, self.tok)
        prompts = [prompt_ids(t, self.sp) for t in texs]
        lm = lm_of(model)
        ro = token_policy.rollout(
            lm,
            self.tok,
            prompts,
            soft_tokens=0,
            seed=seed,
            max_completion_length=self.cfg.max_completion_length,
            **self._kw(),
        )
        # score only the rationale: the tokens up to and including its <eot>
        A = ro.tokens.shape[1]
        ro.masks["answer"] = ro.masks["answer"] & (torch.arange(A)[None] <= ro.eot_at[:, None])
        ro.logp["answer"] = ro.logp["answer"] * ro.masks["answer"]
        self._answers = [t.answer for t in texs]
        with torch.no_grad():
            xz, y = self._y_inputs(ro)
            log_py = token_policy.sequence_log_prob(lm, xz, y, self.sp.pad).cpu()
            # the prior's full softmax: under its top-k, a token the moved policy samples
            # outside that top-k would have log-probability -inf and the reward would be -inf
            ref = token_policy.log_probs(self.ref, ro, soft_top_k=1)["answer"]
        kl = (ro.logp["answer"] - ref.cpu() * ro.masks["answer"]).sum(1)
        reward = log_py - self.cfg.kl_coef * kl
        return ro, {
            "answer_logprob": reward.tolist(),
            "answers": [e["answer"] for e in examples],
            "finished": ro.finished,
        }

    def log_probs(self, model, ro):
        return token_policy.log_probs(lm_of(model), ro, soft_top_k=1, **self._kw())

    def extra_loss(self, model, ro):
        if not self.cfg.sft_weight:
            return torch.zeros(()), {}
        xz, y = self._y_inputs(ro)
        nll = -token_policy.sequence_log_prob(lm_of(model), xz, y, self.sp.pad).mean()
        return self.cfg.sft_weight * nll, {"loss/sft": float(nll.detach())}


def train(
    data,
    base=None,
    *,
    config: LaTROConfig | None = None,
    train_config=None,
    model_config=None,
    callbacks=None,
    seed: int = 0,
    time_budget_s: float | None = None,
):
    """LaTRO from a CoT model ``base`` (copied, never modified; a frozen copy is the prior)."""
    from workbench.trained import TrainedModel

    refuse_trainer_settings(NAME, "LaTROConfig", train_config, time_budget_s)
    require_cot_start(NAME, base)
    cfg = config or LaTROConfig(seed=seed)
    model = copy.deepcopy(base.model)
    policy = LaTROPolicy(data.tokenizer, cfg, frozen_copy(base.model))
    hist, meta = GroupPolicyTrainer(model, data.train, policy, cfg, callbacks=callbacks).fit(data)
    return TrainedModel(NAME, model, data.tokenizer, None, hist, data.task, data.test, meta)


RECORD = MethodRecord(
    name=NAME,
    summary="LaTRO: sampled rationales, RLOO on the model's own answer log-likelihood",
    train=train,
    config_cls=LaTROConfig,
    needs_base=True,
    takes_train_config=False,
    notebook="04_rl.ipynb",
)
