"""``benchmarks/compare_methods.py``'s difficulty override: parsed as literals, checked against
the task's knobs before anything is generated or trained."""

import argparse

import pytest

from workbench.config import ConfigError


@pytest.fixture(scope="module")
def compare(load_benchmark):
    return load_benchmark("compare_methods")


def test_knobs_parse_as_python_literals(compare):
    got = compare.parse_knobs("n_concepts=6, edges_per_concept=1.0,name='x'")
    assert got == {"n_concepts": 6, "edges_per_concept": 1.0, "name": "x"}
    assert isinstance(got["n_concepts"], int) and isinstance(got["edges_per_concept"], float)
    assert compare.parse_knobs("") == {}
    with pytest.raises(argparse.ArgumentTypeError, match="knob=value"):
        compare.parse_knobs("n_concepts")
    with pytest.raises(argparse.ArgumentTypeError, match="number or a quoted string"):
        compare.parse_knobs("n_concepts=eight")


def test_an_unknown_knob_is_refused_naming_the_known_ones(compare, tmp_path):
    with pytest.raises(ConfigError, match="no difficulty knob.*edges_per_concept"):
        compare.main(["--task", "graph", "--methods", "cot", "--difficulty", "n_edges=9",
                      "--out", str(tmp_path)])  # fmt: skip
    assert not any(tmp_path.iterdir())  # nothing trained or saved
