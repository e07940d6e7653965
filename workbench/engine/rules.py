"""What every feedback and stop rule shares: a name, a JSON config, and checked settings.

A rule is an ``nn.Module`` (so a rule with parameters, such as CODI's projection or a learned
stop head, saves and loads through its ``state_dict``) that also describes itself:

* the class attribute ``name`` is its key in a registry (``FEEDBACK_RULES``, ``STOP_RULES``);
* :meth:`Rule.config` returns the JSON-able constructor keyword arguments that rebuild it, so
  ``registry[rule.name].from_config(rule.config())`` is an equal rule (up to its weights,
  which :func:`workbench.engine.spec.save_spec_parts` stores).

:func:`build_rule` is the one way from ``(name, config)`` to a rule: an unknown name, an unknown
or a missing key is a :class:`~workbench.config.ConfigError` naming it and the accepted values.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any, ClassVar

from torch import nn

from workbench.config import ConfigError, check_range, check_that


class Rule(nn.Module):
    """Base of feedback and stop rules: ``name``, :meth:`config`, :meth:`from_config`."""

    name: ClassVar[str] = "base"
    """Registry key; saved with the config."""

    def config(self) -> dict[str, Any]:
        """JSON-able constructor keyword arguments that rebuild this rule.

        The default serves rules whose constructor takes no arguments; any rule with settings
        overrides it (a rule that forgets to is an error here, not a silently lost setting).
        """
        keys = self.config_keys()
        if keys:
            raise NotImplementedError(
                f"{type(self).__name__} takes {list(keys)} but defines no config(); add one"
            )
        return {}

    @classmethod
    def config_keys(cls) -> tuple[str, ...]:
        """Names of the constructor's keyword arguments (the keys :meth:`config` may hold)."""
        sig = inspect.signature(cls.__init__)
        return tuple(
            p.name
            for p in list(sig.parameters.values())[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )

    @classmethod
    def required_keys(cls) -> tuple[str, ...]:
        """Constructor arguments without a default (a config must give them)."""
        sig = inspect.signature(cls.__init__)
        return tuple(
            p.name
            for p in list(sig.parameters.values())[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Rule:
        """Inverse of :meth:`config`."""
        return cls(**config)

    def describe(self) -> str:
        """Short human-readable description for tables and traces."""
        return self.name


def has_state(module: nn.Module | None) -> bool:
    """Whether ``module`` holds parameters or buffers (anything :func:`save_spec_parts` saves)."""
    return module is not None and len(module.state_dict()) > 0


def build_rule(registry: dict[str, type[Rule]], kind: str, name: str, config: dict) -> Rule:
    """``registry[name].from_config(config)``, with unknown names and keys reported by name.

    ``kind`` (``"feedback"`` / ``"stop"``) only words the errors.
    """
    if name not in registry:
        raise ConfigError(f"unknown {kind} rule {name!r}: expected one of {sorted(registry)}")
    cls = registry[name]
    if not isinstance(config, dict):
        raise ConfigError(
            f"{cls.__name__} config = {config!r}: expected a mapping of {list(cls.config_keys())}"
        )
    known = cls.config_keys()
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown key(s) {unknown} for {kind} rule {name!r}; "
            f"known keys: {list(known)}"
        )
    missing = [k for k in cls.required_keys() if k not in config]
    if missing:
        raise ConfigError(f"{cls.__name__}: {kind} rule {name!r} needs {missing}")
    return cls.from_config(dict(config))


def check_int(owner: object, name: str, *, ge: int) -> None:
    """``owner.name`` is an integer ``>= ge`` (stored back as a plain ``int``), else ConfigError.

    The bound is checked first, so ``top_k = 0`` reads ``... = 0: expected a number >= 1``.
    """
    check_range(owner, name, ge=ge)
    value = getattr(owner, name)
    check_that(owner, name, isinstance(value, numbers.Integral), f"an integer >= {ge}")
    setattr(owner, name, int(value))


def check_float(owner: object, name: str, **bounds: float) -> None:
    """``owner.name`` is a number within ``bounds`` (stored back as a plain ``float``)."""
    check_range(owner, name, **bounds)
    setattr(owner, name, float(getattr(owner, name)))
