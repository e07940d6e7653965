"""ATP-Latent, RL stage: GRPO on Gaussian latents, stop decisions and answer tokens.

RESEARCH Part B 1(b), "RL stage" (``methods/sim_cot_rl_vae_end.py``, ``modules/grpo.py``): from
the supervised CVAE model (:mod:`workbench.methods.atp`), ``G`` rollouts per question sample
latents ``l_t ~ N(mu, sigma^2)``, Bernoulli stop actions at step boundaries and answer tokens at
``T = 1``; the reward is ``1.0 * accuracy + 0.5 * format + 0.1 * coherence * accuracy``, the
coherence read from the **frozen** step decoder's text of each latent group
(:func:`workbench.rl.rewards.coherence_score`); advantages are group-normalised; the loss is the
clipped ratio on the latent and answer segments (and the stop decisions), no KL, no reference.
Rollouts and the one-forward recomputation are :mod:`workbench.rl.gaussian_policy`, the loop the
shared :class:`~workbench.rl.trainer.GroupPolicyTrainer`.

Deliberate deviations:

* the Gaussian log-prob averages the dimensions by default (``gaussian_reduction="mean"``);
  ATP sums 2048 of them and guards only with the clamp (pitfall 4); ``"sum"`` is ATP's;
* the stop decisions are their own segment with their own weight (ATP folds the stop log-prob
  into the latent and answer slots);
* coherence matches parsed number tokens, not substrings, and a step without a result earns
  nothing (pitfall 2); ``K = 0`` scores 0;
* ATP's old policy is the rollout policy of the current batch; here it is an explicit cache,
  so ``num_iterations > 1`` really clips (ATP: 8 minibatches per rollout batch);
* ``learning_rate`` 1e-5 (ATP: 1e-6 on a 1B model), ``max_completion_length`` 16 as ATP.

Two options that are not ATP's (defaults: ATP's behaviour):

* ``latent_gradient="pathwise"``: the rollouts keep each latent's noise ``eps`` and the training
  forward rebuilds the latents as ``mu + sigma * eps`` over the multi-pass forward, so the answer
  and stop log-probs differentiate through the latent chain (reparameterisation) instead of
  scoring each latent as an action; there is no latent segment then;
* ``latent_noise_scale``: sigma multiplied in the rollouts and in their scoring. The shipped
  model's sigma is so small that its sampled latents rarely change an answer, so the latent
  segment has little to learn from: at temperature 0.7, 50% of the groups have zero reward
  spread at scale 1 and 38% at scale 4 (``frac_reward_zero_std``).

Measured (arithmetic, from the shipped ``atp`` model, 16 questions x 8 rollouts, lr 1e-5,
temperature 0.7, 300 steps, 500 held-out problems, ``benchmarks/rl.py``): greedy 74.8% -> 76.0%,
sampled 73.8% -> 75.8%, latents used 3.03 -> 3.03, coherence 0.506 -> 0.521; at lr 3e-5 for 400
steps of 8 questions the greedy accuracy fell to 72.6%. Neither a longer run (500 steps: 75.8%),
temperature 1.0 (74.6%) nor 8 questions x 16 rollouts (75.2%) reached +2 points: 42-49% of the
groups have zero reward spread and carry no advantage.
Stop 24, on 2,000 held-out problems (``benchmarks/rl.py --config``): the default setting 76.75% ->
77.45%; ``gaussian_reduction="sum"`` 76.5%; latents only (answer weight 0, T 0.3) 75.6% (80 problems
fixed, 103 broken); no latent gradient (latent weight 0) 77.65% (66 / 48), the same at lr 3e-5 77.7%
(89 / 70). In none of them does the rollout accuracy rise from the first to the last quarter of the
run (0.715 -> 0.712 by default), unlike LEPO's and LaTRO's, which gain 2-4 points from the same lr
and budget.
Stop 25 (docs/results.md, "why ATP-RL does not move"): pathwise gradients, noise scales 2-8,
32 questions per step, a KL to the start, more passes per batch and longer runs all end between
-2.1 and +1.2 points on 1,000-2,000 held-out problems (best paired z 1.29). The trainer does
learn what it samples: on a pool of 128 training problems seen 15 times each the pool's greedy
accuracy goes 79.7% -> 94.5% (pathwise 96.9%) while the held-out one falls 75.8% -> 71.6%.
Stop 26: the budget was what was missing. With the pathwise gradient, 32 questions x 8 rollouts,
T 0.7 and lr 3e-5, the gain grows with the trajectories sampled: 200 / 400 / 700 steps give
+0.9 / +1.3 / **+2.85** points on 2,000 held-out problems (76.75% -> 79.60%, paired z 4.06) and
+2.05 on another 2,000 (76.30% -> 78.35%, z 2.70), latents used 3.012 -> 3.012 (179,200
trajectories, 42 minutes on one thread); 64 x 8 for 400 steps: +2.55 / +2.50 (z 3.42 / 3.43).
ATP's score-function gradient was not run at that budget.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch

from workbench.config import ConfigError
from workbench.data.layout import prompt_ids, tokenize_examples
from workbench.data.tokenizer import special_ids
from workbench.engine.feedback import GaussianFeedback
from workbench.engine.stop import StepStopHead
from workbench.lens.logit_lens import join_tokens
from workbench.methods.atp import DECODER_PART, ATPConfig, decode_latents, greedy_decode
from workbench.methods.base import MethodRecord, lm_of, trainable_net
from workbench.rl import gaussian_policy
from workbench.rl.config import GroupPolicyConfig
from workbench.rl.rewards import RewardConfig
from workbench.rl.trainer import GroupPolicyTrainer, frozen_copy, refuse_trainer_settings

NAME = "atp_rl"


def _atp_rewards() -> RewardConfig:
    return RewardConfig(
        weights={"accuracy": 1.0, "format": 0.5, "coherence": 0.1}, gates={"coherence": "accuracy"}
    )


@dataclass
class ATPRLConfig(GroupPolicyConfig):
    """:class:`~workbench.rl.config.GroupPolicyConfig` with ATP's reward (ATP-Latent-RL.yaml)."""

    rewards: RewardConfig = field(default_factory=_atp_rewards)
    """ATP: ``1.0 * acc + 0.5 * format + 0.1 * coherence * acc``."""


class ATPPolicy:
    """Rollouts and log-probs of a CVAE model's Gaussian latents, stop head and answers."""

    def __init__(self, tokenizer, feedback: GaussianFeedback, stop: StepStopHead, decoder,
                 atp: ATPConfig, cfg: ATPRLConfig):  # fmt: skip
        self.tok, self.feedback, self.stop, self.decoder = tokenizer, feedback, stop, decoder
        self.atp, self.cfg = atp, cfg
        self.sp = special_ids(tokenizer)

    def _kw(self) -> dict:
        return {"temperature": self.cfg.temperature, "top_k": self.cfg.top_k,
                "reduction": self.cfg.gaussian_reduction,
                "noise_scale": self.cfg.latent_noise_scale}  # fmt: skip

    def log_probs(self, net, ro):
        return gaussian_policy.log_probs(lm_of(net), self.feedback, self.stop, ro, **self._kw(),
                                         latent_gradient=self.cfg.latent_gradient)  # fmt: skip

    def rollout(self, net, examples: list, seed: int):
        texs = tokenize_examples(examples, self.tok)
        prompts = [prompt_ids(t, self.sp) for t in texs]
        ro = gaussian_policy.rollout(
            lm_of(net), self.tok, prompts, self.feedback, self.stop, max_latents=self.atp.n_latent,
            max_completion_length=self.cfg.max_completion_length, seed=seed, **self._kw(),
        )  # fmt: skip
        return ro, {
            "answers": [e["answer"] for e in examples],
            "finished": ro.finished,
            "step_texts": self.step_texts(ro),
            "n_latent": ro.n_latent.tolist(),
            "max_latents": self.atp.n_latent,
        }

    @torch.no_grad()
    def step_texts(self, ro) -> list[list[str]]:
        """The frozen decoder's text of every latent group of every rollout (one batched run)."""
        c = self.atp.c_thought
        groups = [(b, g) for b, n in enumerate(ro.n_latent.tolist()) for g in range(n // c)]
        out: list[list[str]] = [[] for _ in range(len(ro.prompts))]
        if not groups:
            return out
        p = next(self.decoder.parameters())
        prefix = torch.stack([ro.latents[b, g * c : (g + 1) * c] for b, g in groups])
        ids = greedy_decode(self.decoder, prefix.to(p.device, p.dtype), self.sp.eos, 24)
        for (b, _), toks in zip(groups, ids, strict=True):
            out[b].append(join_tokens(self.tok.convert_ids_to_tokens(toks)))
        return out


def train(
    data,
    base=None,
    *,
    config: ATPRLConfig | None = None,
    train_config=None,
    model_config=None,
    callbacks=None,
    seed: int = 0,
    time_budget_s: float | None = None,
):
    """GRPO from an ATP-Latent CVAE model ``base`` (copied, never modified)."""
    from workbench.trained import TrainedModel

    refuse_trainer_settings(NAME, "ATPRLConfig", train_config, time_budget_s)
    spec = getattr(base, "spec", None)
    if spec is None or not isinstance(spec.feedback, GaussianFeedback):
        raise ConfigError(
            "atp_rl starts from an ATP-Latent model (method 'atp', a gaussian latent rule and a "
            f"step stop head); got {getattr(base, 'method', type(base).__name__)!r}"
        )
    cfg = config or ATPRLConfig(seed=seed)
    atp_cfg = ATPConfig(**(base.meta.get("atp_config") or base.meta.get("config") or {}))
    model = copy.deepcopy(base.model)
    feedback = copy.deepcopy(spec.feedback).with_mode("sample")
    stop = copy.deepcopy(spec.stop)
    decoder = frozen_copy(base.parts.get(DECODER_PART, base.model))
    net = trainable_net(model, feedback, stop)
    policy = ATPPolicy(data.tokenizer, feedback, stop, decoder, atp_cfg, cfg)
    hist, meta = GroupPolicyTrainer(net, data.train, policy, cfg, callbacks=callbacks).fit(data)
    meta.update(atp_config=asdict(atp_cfg), base=base.meta.get("recipe_row", base.method))
    parts = {DECODER_PART: decoder} if DECODER_PART in base.parts else {}
    out_spec = atp_cfg.inference_spec(feedback, stop)
    return TrainedModel(NAME, model, data.tokenizer, out_spec, hist, data.task, data.test, meta,
                        parts)  # fmt: skip


def alignment(meta: dict):
    from workbench.lens.alignment import Alignment

    cfg = meta.get("atp_config") or {}
    return Alignment(latents_per_step=int(cfg.get("c_thought", ATPConfig.c_thought)))


RECORD = MethodRecord(
    name=NAME,
    summary="ATP-Latent RL: GRPO on Gaussian latents, stop decisions and answers, coherence reward",
    train=train,
    config_cls=ATPRLConfig,
    alignment=alignment,
    needs_base=True,
    takes_train_config=False,
    notebook="04_rl.ipynb",
    decode_steps=decode_latents,
)
