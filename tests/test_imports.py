"""Arrows point inward: the engine, data and models layers import no outer layer.

ARCHITECTURE "Rules of the house": methods -> engine/models/train, lens -> engine's Trace;
the engine, evaluator and lens know no method by name. So nothing under ``workbench/engine``,
``workbench/data`` or ``workbench/models`` may import ``workbench.methods``, ``.eval``,
``.lens``, ``.viz``, ``.experiment`` or ``.train`` (checked on the source with :mod:`ast`, so
imports inside functions and under ``TYPE_CHECKING`` count too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

INNER = ("engine", "data", "models")
OUTER = (
    "workbench.methods",
    "workbench.eval",
    "workbench.lens",
    "workbench.viz",
    "workbench.experiment",
    "workbench.train",
)
ROOT = Path(__file__).resolve().parents[1]


def _package_of(path: Path) -> list[str]:
    """The package a file's relative imports start from (``workbench/engine/loop.py``:
    ``["workbench", "engine"]``)."""
    return list(path.relative_to(ROOT).parent.parts)


def imported_modules(source: str, package: list[str]) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``source`` (relative ones resolved
    against ``package``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            # ``from workbench import eval`` / ``from .. import eval``: the names may be modules
            found += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return found


def _is_outer(module: str) -> bool:
    return any(module == o or module.startswith(o + ".") for o in OUTER)


FILES = sorted(p for d in INNER for p in (ROOT / "workbench" / d).rglob("*.py"))


def test_there_are_files_to_check():
    for d in INNER:
        assert any(p.is_relative_to(ROOT / "workbench" / d) for p in FILES), d


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_inner_layers_import_no_outer_layer(path):
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {mod}"
        for line, mod in imported_modules(path.read_text(), _package_of(path))
        if _is_outer(mod)
    ]
    assert not bad, "arrows point inward:\n" + "\n".join(bad)


def test_the_checker_sees_relative_and_nested_imports():
    src = (
        "from ..eval import evaluator\n"
        "from .. import lens\n"
        "def f():\n"
        "    from workbench import viz\n"
        "    import workbench.train.trainer\n"
        "from .feedback import FeedbackRule\n"
    )
    mods = {m for _, m in imported_modules(src, ["workbench", "engine"])}
    for outer in ("workbench.eval", "workbench.lens", "workbench.viz", "workbench.train.trainer"):
        assert outer in mods and _is_outer(outer)
    assert "workbench.engine.feedback" in mods and not _is_outer("workbench.engine.feedback")
