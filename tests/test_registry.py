"""The method registry: one record per method file, and no method named anywhere else."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from workbench.config import ConfigError
from workbench.lens.alignment import Alignment
from workbench.methods import get_method, lens_alignment, method_names, registry

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"


def test_every_registered_method_exports_a_record_named_after_it():
    records = registry()
    assert set(records) == set(method_names())
    for name, record in records.items():
        assert record.name == name
        assert callable(record.train)
        if record.notebook is not None:
            assert (PACKAGE.parent / "notebooks" / record.notebook).exists(), record.notebook


def test_unknown_method_is_a_config_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"method = 'coconutt'.*did you mean 'coconut'"):
        get_method("coconutt")


def _method_literals(path: Path, names: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
    ]


SAME_NAME_ELSEWHERE = {PACKAGE / "data" / "loaders.py": {"icot"}}
"""Strings that spell a method's name but mean something else: the iCoT *text data format*."""


def test_no_method_name_as_a_string_literal_outside_its_module_and_the_registry():
    names = set(method_names())
    # the recipes are the one settings table keyed by method (like the registry itself)
    allowed = {PACKAGE / "methods" / "__init__.py", PACKAGE / "recipes.py"} | {
        PACKAGE / "methods" / f"{n}.py" for n in names
    }
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path not in allowed:
            found += _method_literals(path, names - SAME_NAME_ELSEWHERE.get(path, set()))
    assert not found, "method names spelled outside the registry:\n" + "\n".join(found)


def test_the_literal_check_sees_a_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('METHOD = "coconut"\n')
    tree = ast.parse(bad.read_text())
    hits = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == "coconut"]
    assert hits  # the check above is not vacuous


def test_cli_trains_every_registered_method():
    from workbench.cli import build_parser

    parser = build_parser()
    for name in method_names():
        args = parser.parse_args(["train", "--method", name, "--out", "x"])
        assert args.method == name


def test_lens_alignment_comes_from_the_record():
    assert lens_alignment("coconut", {"config": {"c_thought": 3}}) == Alignment(latents_per_step=3)
    # checkpoints saved before the registry keep the config under the method's name
    assert lens_alignment("coconut", {"coconut": {"c_thought": 1}}) == Alignment(latents_per_step=1)
    assert lens_alignment("latent_sft", {"config": {"compression_rate": 2}}) == Alignment(
        tokens_per_latent=2
    )
    assert lens_alignment("cot", {}) is None
    assert lens_alignment("not-registered", {}) is None
