"""The method registry: every training method of the workbench, by name.

Each method lives in one file of this package and exports one :class:`MethodRecord` named
``RECORD`` (its name, config dataclass, train function, inference spec, lens alignment and
default notebook). This module is the only place that lists them; the CLI, the shipped
checkpoints, :func:`workbench.experiment.load_or_train`, the lens views and the inspector
look methods up here. Adding a method = one new file + one line in :data:`_MODULES`.

Records load lazily (on first lookup), so importing a low-level module such as
``workbench.methods.layout`` does not import every method.
"""

from __future__ import annotations

import difflib
import importlib

from workbench.config import ConfigError
from workbench.methods.base import MethodRecord

__all__ = [
    "BASE_METHOD",
    "DEMO_LATENT_METHOD",
    "NO_COT_METHOD",
    "MethodRecord",
    "get_method",
    "lens_alignment",
    "method_names",
    "registry",
    "step_texts",
]

_MODULES: dict[str, str] = {
    "cot": "workbench.methods.cot",
    "nocot": "workbench.methods.nocot",
    "coconut": "workbench.methods.coconut",
    "latent_sft": "workbench.methods.latent_sft",
    "pause": "workbench.methods.pause",
    "icot": "workbench.methods.icot",
    "atp": "workbench.methods.atp",
    "atp_rl": "workbench.methods.atp_rl",
    "lepo": "workbench.methods.lepo",
    "latro": "workbench.methods.latro",
}
"""Method name -> module exporting its ``RECORD``."""

BASE_METHOD = "cot"
"""The explicit-CoT baseline every latent method starts from (``needs_base``)."""
NO_COT_METHOD = "nocot"
"""The answer-only lower baseline."""
DEMO_LATENT_METHOD = "coconut"
"""The latent method ``make demo`` trains next to the baselines."""

_CACHE: dict[str, MethodRecord] = {}


def method_names() -> tuple[str, ...]:
    """Registered method names, in registration order."""
    return tuple(_MODULES)


def get_method(name: str) -> MethodRecord:
    """The record of method ``name``; an unknown name is a :class:`ConfigError` listing them."""
    if name not in _MODULES:
        close = difflib.get_close_matches(str(name), list(_MODULES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"method = {name!r}: expected one of {list(_MODULES)}{hint}")
    if name not in _CACHE:
        record = importlib.import_module(_MODULES[name]).RECORD
        if record.name != name:
            raise RuntimeError(
                f"{_MODULES[name]}.RECORD is named {record.name!r}, registered as {name!r}"
            )
        _CACHE[name] = record
    return _CACHE[name]


def registry() -> dict[str, MethodRecord]:
    """Every record, loaded."""
    return {name: get_method(name) for name in _MODULES}


def lens_alignment(method: str, meta: dict | None):
    """How ``method``'s latents align with CoT text, from a trained model's ``meta`` (or ``None``).

    An unregistered name (a model saved by code outside the registry) has no alignment.
    """
    if method not in _MODULES:
        return None
    return get_method(method).alignment(meta or {})


def step_texts(tm, examples) -> list[list[str]] | None:
    """Per example of ``examples``, per latent, the text ``tm``'s method decodes it to (from its
    record's ``decode_steps``; ``None`` for methods without a step decoder)."""
    if tm.method not in _MODULES or get_method(tm.method).decode_steps is None:
        return None
    out: list[list[str]] = [[] for _ in examples]
    for r in get_method(tm.method).decode_steps(tm, examples).itertuples():
        out[r.example] += [r.decoded] * int(r.latents)
    return out
