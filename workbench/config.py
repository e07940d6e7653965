"""Typed configs shared by notebooks, the CLI and code: building them from dicts/YAML.

Every config in the workbench is a ``@dataclass`` with a docstring per field and checks in
``__post_init__``. This module turns plain mappings (YAML files, CLI flags, papermill
parameters) into those dataclasses, and refuses unknown keys by name instead of ignoring them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from workbench.errors import WorkbenchError

T = TypeVar("T")


class ConfigError(WorkbenchError, ValueError):
    """A config value or key is wrong; the message names it and says what is allowed."""


# ----- the one validation path: every config's ``__post_init__`` calls these ----------------


def _fail(owner: object, name: str, value: Any, expected: str) -> None:
    cls = owner if isinstance(owner, str) else type(owner).__name__
    raise ConfigError(f"{cls}.{name} = {value!r}: expected {expected}")


def check_range(
    owner: object,
    name: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    allow_none: bool = False,
    integer: bool = False,
) -> None:
    """Raise :class:`ConfigError` unless ``owner.name`` lies in the given bounds.

    ``integer=True`` also refuses a float (``steps = 2.5``).

    ``owner`` is the config instance (its class names the error); the message reads
    ``CoconutConfig.c_thought = 0: expected a number >= 1``.
    """
    value = getattr(owner, name)
    if value is None and allow_none:
        return
    bounds = [
        f"{op} {b}" for op, b in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if b is not None
    ]
    kind = "an integer " if integer else "a number "
    expected = kind + " and ".join(bounds) + (" (or None)" if allow_none else "")
    types_ok = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, types_ok):
        _fail(owner, name, value, expected)
    if value != value:  # NaN
        _fail(owner, name, value, expected)
    if (
        (ge is not None and value < ge)
        or (gt is not None and value <= gt)
        or (le is not None and value > le)
        or (lt is not None and value >= lt)
    ):
        _fail(owner, name, value, expected)


def check_choice(owner: object, name: str, choices, *, allow_none: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``owner.name`` is one of ``choices`` (listed)."""
    value = getattr(owner, name)
    if value is None and allow_none:
        return
    choices = list(choices)
    if value not in choices:
        import difflib

        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        _fail(owner, name, value, f"one of {choices}{hint}")


def check_that(owner: object, name: str, ok: bool, expected: str) -> None:
    """Raise :class:`ConfigError` naming ``owner.name`` and ``expected`` unless ``ok``."""
    if not ok:
        _fail(owner, name, getattr(owner, name, None), expected)


def config_from_dict(cls: type[T], values: dict[str, Any], *, source: str = "config") -> T:
    """Build dataclass ``cls`` from ``values``; unknown keys are an error naming the key."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(names)}"
        )
    hints = typing.get_type_hints(cls)
    coerced = {k: _coerce(v, hints.get(k, Any), f"{source}.{k}") for k, v in values.items()}
    return cls(**coerced)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (an empty file is ``{}``)."""
    import yaml

    from workbench.errors import MissingFileError

    if not Path(path).is_file():
        raise MissingFileError(f"{path}: no such config file (fix: check the --config path)")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where} ({problem}); fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as a plain JSON/YAML-friendly dict."""
    return dataclasses.asdict(cfg)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Light coercion for strings from the command line (``"3"`` -> 3 for an ``int`` field)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _coerce(value, args[0], where)
        return value
    if hint is bool and isinstance(value, str):
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected a boolean, got {value!r}")
    if hint in (int, float) and isinstance(value, str):
        try:
            return hint(value)
        except ValueError:
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}") from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
