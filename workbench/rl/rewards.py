"""Rewards of completed rollouts: a registry of functions and their weighted, gated sum.

Each reward follows TRL's convention (ECOSYSTEM 7): ``fn(completions, **kwargs) -> list[float]``,
one value per completion, reading what it needs from keyword arguments and ignoring the rest:
``answers`` (gold answers), ``finished`` (the completion ended with ``<eos>``), ``step_texts``
(per completion, the decoded text of each latent group), ``n_latent``, ``max_latents`` and
``answer_logprob`` (LaTRO's ``log p(y | x, z)``, computed by the rollout).

* ``accuracy``: exact answer after normalisation (RESEARCH Part B 1(b), ATP's float compare);
* ``format``: the completion ended with ``<eos>`` and holds a non-empty answer;
* ``coherence``: ATP's coherence (``compute_explain_logprob``) by **number-token matching**: the
  result of decoded step ``i`` (the number after its last ``=``) must reappear as a whole number
  in a later step, the last step's result in the answer; ``coh = matched / K``. Deviations that
  close ATP's loopholes (pitfall 2): a step with no result earns nothing (ATP: the empty string
  matches everything), ``"4"`` does not match inside ``"14"``, and ``K = 0`` scores 0 (ATP: 1,
  which rewards stopping before any latent);
* ``length``: ``-n_latent / max_latents`` (fewer latents, ATP's token claim);
* ``self_likelihood``: LaTRO's self-reward ``log p(y | x, z)`` (RESEARCH Part B 3).

:class:`RewardConfig` weighs them (``weights``) and gates them (``gates``: ``{"coherence":
"accuracy"}`` multiplies coherence by accuracy, ATP's ``0.1 * coh * acc``). A reward that raises,
returns the wrong number of values or a NaN stops training with a :class:`RewardError` naming the
reward and the example.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from workbench.config import ConfigError, check_that
from workbench.errors import WorkbenchError
from workbench.eval.answers import normalize_answer

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
STEP_RESULT = re.compile(r"=\s*(-?\d+(?:\.\d+)?)")


class RewardError(WorkbenchError):
    """A reward function failed or returned an unusable value (names the reward and example)."""


def accuracy(completions, answers, **_) -> list[float]:
    return [
        float(normalize_answer(c) == normalize_answer(a))
        for c, a in zip(completions, answers, strict=True)
    ]


def format_reward(completions, finished, **_) -> list[float]:
    return [float(bool(f) and bool(c.strip())) for c, f in zip(completions, finished, strict=True)]


def numbers(text: str) -> set[str]:
    """The whole numbers in ``text`` (``"14"`` holds ``14``, not ``4``), normalised."""
    return {_norm_number(n) for n in NUMBER.findall(text)}


def _norm_number(n: str) -> str:
    v = float(n)
    return str(int(v)) if v.is_integer() else str(v)


def step_result(text: str) -> str | None:
    """The number after the last ``=`` of a step (``None``: the step states no result)."""
    found = STEP_RESULT.findall(text)
    return _norm_number(found[-1]) if found else None


def coherence_score(steps: list[str], answer: str) -> float:
    """ATP's coherence of one completion by number-token matching (module docstring)."""
    K = len(steps)
    if K == 0:
        return 0.0
    later = [numbers(t) for t in steps] + [numbers(answer)]
    matched = 0
    for i, text in enumerate(steps):
        r = step_result(text)
        if r is None:
            continue
        targets = later[K] if i == K - 1 else set().union(*later[i + 1 : K])
        matched += r in targets
    return matched / K


def coherence(completions, step_texts, **_) -> list[float]:
    return [coherence_score(s, c) for c, s in zip(completions, step_texts, strict=True)]


def length_penalty(completions, n_latent, max_latents, **_) -> list[float]:
    return [-float(n) / max(1, int(max_latents)) for n in n_latent]


def self_likelihood(completions, answer_logprob, **_) -> list[float]:
    return [float(v) for v in answer_logprob]


REWARDS: dict[str, Callable[..., list[float]]] = {
    "accuracy": accuracy,
    "format": format_reward,
    "coherence": coherence,
    "length": length_penalty,
    "self_likelihood": self_likelihood,
}
"""Reward functions by name (add one: a function of ``(completions, **kwargs)``)."""


@dataclass
class RewardConfig:
    """Which rewards, with what weight, gated by which."""

    weights: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0})
    """Reward name -> weight (ATP: accuracy 1.0, format 0.5, coherence 0.1)."""
    gates: dict[str, str] = field(default_factory=dict)
    """Reward name -> the reward whose value multiplies it (ATP: ``{"coherence": "accuracy"}``)."""

    def __post_init__(self) -> None:
        for name in (*self.weights, *self.gates, *self.gates.values()):
            check_that(self, "weights", name in REWARDS,
                       f"reward names from {sorted(REWARDS)} (got {name!r})")  # fmt: skip
        for name, w in self.weights.items():
            if not isinstance(w, int | float) or not math.isfinite(w):
                raise ConfigError(f"RewardConfig.weights[{name!r}] = {w!r}: expected a number")
        check_that(self, "weights", bool(self.weights), "at least one reward")


def _call(name: str, fn, completions, kwargs) -> list[float]:
    n = len(completions)
    try:
        values = list(fn(completions, **kwargs))
    except Exception as err:  # find the example that breaks it, then say so
        for i in range(n):
            one = {k: (v[i : i + 1] if isinstance(v, list | tuple) and len(v) == n else v)
                   for k, v in kwargs.items()}  # fmt: skip
            try:
                fn(completions[i : i + 1], **one)
            except Exception as inner:
                raise RewardError(
                    f"reward {name!r} raised {type(inner).__name__}: {inner} on example {i} "
                    f"(completion {completions[i]!r})"
                ) from inner
        raise RewardError(f"reward {name!r} raised {type(err).__name__}: {err}") from err
    if len(values) != n:
        raise RewardError(f"reward {name!r} returned {len(values)} values for {n} completions")
    for i, v in enumerate(values):
        if v is None or not math.isfinite(float(v)):
            raise RewardError(
                f"reward {name!r} returned {v!r} on example {i} (completion {completions[i]!r}); "
                "rewards must be finite numbers"
            )
    return [float(v) for v in values]


def compute_rewards(
    cfg: RewardConfig, completions: list[str], **kwargs
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(total [N], {name: values [N]})`` of ``completions`` under ``cfg``."""
    names = list(dict.fromkeys([*cfg.weights, *cfg.gates.values()]))
    parts = {n: torch.tensor(_call(n, REWARDS[n], completions, kwargs)) for n in names}
    total = torch.zeros(len(completions))
    for name, w in cfg.weights.items():
        value = parts[name]
        if name in cfg.gates:
            value = value * parts[cfg.gates[name]]
        total = total + w * value
    return total, parts
