"""A method's inference recipe, :class:`LatentSpec`, and how it is saved and loaded.

A spec is a feedback rule, a stop rule and two settings. It saves in two parts:

* a JSON description (:func:`spec_to_dict` / :func:`spec_from_dict`): each rule as
  ``{"name": rule.name, "config": rule.config()}`` (see :mod:`workbench.engine.rules`), plus
  ``max_latent_steps`` and ``append_eot``;
* the weights of every rule that has any (a CODI projection, a learned stop head, also inside an
  :class:`~workbench.engine.stop.AnyOf`) in one safetensors file, ``spec.safetensors``, with
  keys ``feedback.<param>`` and ``stop.<param>`` (:func:`save_spec_parts` /
  :func:`load_spec_parts`). Nothing is pickled.

Older checkpoints (``checkpoints/*/workbench_method.json`` before the rules described
themselves) wrote ``{"feedback": {"name", "kwargs"}, "stop": {"kind", ...}}`` and kept a
projection's weights un-prefixed in ``feedback.safetensors``; both still load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.config import ConfigError, check_that
from workbench.engine.feedback import FEEDBACK_RULES, FeedbackRule, make_feedback
from workbench.engine.rules import Rule, check_int, has_state
from workbench.engine.stop import STOP_RULES, AnyOf, StopRule, make_stop
from workbench.errors import CheckpointError
from workbench.io import atomic_write_bytes

SPEC_PARTS_FILE = "spec.safetensors"
"""Weights of the spec's rules, keys prefixed ``feedback.`` / ``stop.``."""
LEGACY_FEEDBACK_FILE = "feedback.safetensors"
"""Older checkpoints: the feedback rule's weights, un-prefixed."""
_PARTS = ("feedback", "stop")
_SPEC_KEYS = ("feedback", "stop", "max_latent_steps", "append_eot")
_LEGACY_STOP_KINDS = {"fixed": "fixed", "argmax": "argmax", "cold": "cold"}


@dataclass
class LatentSpec:
    """How a method runs its latent phase at inference (``None`` in :func:`evaluate` = no
    latents)."""

    feedback: FeedbackRule | None = None
    """Feedback rule (``None``: hidden state, Coconut)."""
    stop: StopRule | None = None
    """Stop rule (``None``: exactly ``max_latent_steps``)."""
    max_latent_steps: int = 6
    """Hard cap on latents per example."""
    append_eot: bool = True
    """Force ``<eot>`` after the latents (Coconut, Latent-SFT); ``False`` lets the model write
    it."""

    def __post_init__(self):
        check_int(self, "max_latent_steps", ge=0)
        check_that(self, "append_eot", isinstance(self.append_eot, bool), "True or False")


# ----- JSON ---------------------------------------------------------------------------------


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    """``{"name": rule.name, "config": rule.config()}`` (JSON-able)."""
    return {"name": rule.name, "config": rule.config()}


def _fill_d_model(registry: dict, name: str, config: dict, d_model: int, where: str) -> dict:
    """Give rules that take ``d_model`` the model's width (and refuse a different one)."""
    config = dict(config)
    cls = registry.get(name)
    if cls is None:
        return config  # build_rule names the unknown rule
    if cls is AnyOf and isinstance(config.get("rules"), list):
        config["rules"] = [
            {
                **r,
                "config": _fill_d_model(
                    registry, r.get("name"), r.get("config", {}), d_model, f"{where}.rules[{i}]"
                ),
            }
            if isinstance(r, dict)
            else r
            for i, r in enumerate(config["rules"])
        ]
    elif "d_model" in cls.config_keys():
        if "d_model" not in config:
            config["d_model"] = d_model
        elif config["d_model"] != d_model:
            raise ConfigError(
                f"{where}: {cls.__name__}.d_model = {config['d_model']!r}: expected the model's "
                f"hidden size {d_model}"
            )
    return config


def feedback_from_dict(d: dict, d_model: int) -> FeedbackRule:
    """A feedback rule from ``{"name", "config"}`` (or the old ``{"name", "kwargs"}``)."""
    if not isinstance(d, dict) or "name" not in d:
        raise ConfigError(f"spec.feedback = {d!r}: expected {{'name': ..., 'config': {{...}}}}")
    extra = sorted(set(d) - {"name", "config", "kwargs"})
    if extra or ("config" in d and "kwargs" in d):
        raise ConfigError(f"spec.feedback = {d!r}: expected keys 'name' and 'config'")
    config = d.get("config", d.get("kwargs")) or {}
    config = _fill_d_model(FEEDBACK_RULES, d["name"], config, d_model, "spec.feedback")
    return make_feedback(d["name"], **config)


def stop_from_dict(d: dict, d_model: int) -> StopRule:
    """A stop rule from ``{"name", "config"}`` (or the old ``{"kind": ..., <settings>}``)."""
    if not isinstance(d, dict):
        raise ConfigError(f"spec.stop = {d!r}: expected {{'name': ..., 'config': {{...}}}}")
    if "kind" in d:  # old format: {"kind": "fixed", "n": 6}, {"kind": "argmax", ...}, ...
        kind = d["kind"]
        if kind not in _LEGACY_STOP_KINDS:
            raise ConfigError(
                f"spec.stop.kind = {kind!r}: expected one of {sorted(_LEGACY_STOP_KINDS)}"
            )
        name, config = _LEGACY_STOP_KINDS[kind], {k: v for k, v in d.items() if k != "kind"}
        if kind == "fixed":
            config.setdefault("n", 0)
    elif "name" in d:
        extra = sorted(set(d) - {"name", "config"})
        if extra:
            raise ConfigError(f"spec.stop = {d!r}: unknown key(s) {extra}")
        name, config = d["name"], d.get("config") or {}
    else:
        raise ConfigError(f"spec.stop = {d!r}: expected {{'name': ..., 'config': {{...}}}}")
    config = _fill_d_model(STOP_RULES, name, config, d_model, "spec.stop")
    return make_stop(name, **config)


def spec_to_dict(spec: LatentSpec | None) -> dict | None:
    """JSON description of an inference spec: rules by name and config, and the settings.

    ``None`` rules stay ``None``. A rule that cannot describe itself (``FixedSteps`` with a
    per-sample tensor) raises :class:`~workbench.config.ConfigError`. Weights are not in here:
    see :func:`save_spec_parts`.
    """
    if spec is None:
        return None
    return {
        "feedback": None if spec.feedback is None else rule_to_dict(spec.feedback),
        "stop": None if spec.stop is None else rule_to_dict(spec.stop),
        "max_latent_steps": spec.max_latent_steps,
        "append_eot": spec.append_eot,
    }


def spec_from_dict(d: dict | None, d_model: int) -> LatentSpec | None:
    """Inverse of :func:`spec_to_dict`; also reads the old format of the shipped checkpoints.

    ``d_model`` (the model's hidden size) fills in rules that need it when the dict does not say
    (old format); a different saved value is an error. The rules come with fresh weights: load
    them with :func:`load_spec_parts`.
    """
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ConfigError(f"spec = {d!r}: expected a mapping with keys {list(_SPEC_KEYS)}")
    unknown = sorted(set(d) - set(_SPEC_KEYS))
    if unknown:
        raise ConfigError(f"spec: unknown key(s) {unknown}; known keys: {list(_SPEC_KEYS)}")
    missing = [k for k in ("max_latent_steps", "append_eot") if k not in d]
    if missing:
        raise ConfigError(f"spec: missing key(s) {missing}")
    fb = feedback_from_dict(d["feedback"], d_model) if d.get("feedback") else None
    stop = stop_from_dict(d["stop"], d_model) if d.get("stop") else None
    return LatentSpec(fb, stop, d["max_latent_steps"], d["append_eot"])


# ----- weights ------------------------------------------------------------------------------


def _rules(spec: LatentSpec) -> dict[str, Rule | None]:
    return {"feedback": spec.feedback, "stop": spec.stop}


def save_spec_parts(spec: LatentSpec, folder: str | Path) -> list[str]:
    """Write the weights of every rule of ``spec`` that has any into ``folder/spec.safetensors``.

    Keys are ``feedback.<name>`` / ``stop.<name>`` (nested rules of an ``AnyOf``:
    ``stop.rules.<i>.<name>``). Written atomically; nothing is written when no rule has
    parameters or buffers (and a stale ``spec.safetensors`` there is removed). Returns the
    names of the files written, relative to ``folder`` (``[]`` or ``["spec.safetensors"]``).
    """
    folder = Path(folder)
    tensors = {}
    for part, rule in _rules(spec).items():
        if has_state(rule):
            for k, v in rule.state_dict().items():
                # clone: safetensors refuses tensors that share memory (tied weights)
                tensors[f"{part}.{k}"] = v.detach().cpu().contiguous().clone()
    target = folder / SPEC_PARTS_FILE
    if not tensors:
        target.unlink(missing_ok=True)
        return []
    from safetensors.torch import save

    meta = {p: json.dumps(rule_to_dict(r)) for p, r in _rules(spec).items() if has_state(r)}
    atomic_write_bytes(target, save(tensors, metadata={"format": "pt", **meta}))
    return [SPEC_PARTS_FILE]


def _load_into(rule: Rule, state: dict, part: str, file: Path) -> None:
    try:
        rule.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"{file}: the weights do not fit the spec's {part} rule {rule.describe()!r} "
            f"({type(rule).__name__}): {err}; re-save the model with this workbench version"
        ) from err


def load_spec_parts(spec: LatentSpec, folder: str | Path) -> list[str]:
    """Load the weights :func:`save_spec_parts` wrote into ``spec``'s rules (in place, strict).

    Reads ``folder/spec.safetensors``, or, in an older checkpoint without one, the feedback
    rule's un-prefixed ``feedback.safetensors``. Every rule with parameters or buffers must get
    exactly its tensors: a missing file or key, an unexpected key or a shape mismatch is a
    :class:`~workbench.errors.CheckpointError` naming the file. Tensors are copied into the
    rules' existing parameters (their device and dtype are kept). Returns the files read.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    rules = _rules(spec)
    file = folder / SPEC_PARTS_FILE
    if file.exists():
        tensors = load_file(str(file), device="cpu")
        by_part: dict[str, dict] = {p: {} for p in _PARTS}
        for k, v in tensors.items():
            part, _, rest = k.partition(".")
            if part not in by_part or not rest:
                raise CheckpointError(
                    f"{file}: unexpected tensor {k!r}; expected keys starting with "
                    f"{[p + '.' for p in _PARTS]}"
                )
            by_part[part][rest] = v
        for part, rule in rules.items():
            state = by_part[part]
            if rule is None:
                if state:
                    raise CheckpointError(
                        f"{file} holds {part} weights {sorted(state)} but the spec has no "
                        f"{part} rule; re-save the model with this workbench version"
                    )
                continue
            if state or has_state(rule):
                _load_into(rule, state, part, file)
        return [SPEC_PARTS_FILE]
    legacy = folder / LEGACY_FEEDBACK_FILE
    read = []
    if legacy.exists():
        if spec.feedback is None:
            raise CheckpointError(
                f"{legacy} holds feedback weights but the spec has no feedback rule"
            )
        _load_into(spec.feedback, load_file(str(legacy), device="cpu"), "feedback", legacy)
        rules = {"stop": spec.stop}
        read.append(LEGACY_FEEDBACK_FILE)
    needing = [f"{p} ({r.describe()!r})" for p, r in rules.items() if has_state(r)]
    if needing:
        raise CheckpointError(
            f"{folder} has no {SPEC_PARTS_FILE}, but the spec's {', '.join(needing)} rule has "
            "weights; the checkpoint is incomplete: re-save it with TrainedModel.save"
        )
    return read
