"""``benchmarks/rl.py --config``: other RL config fields, parsed as literals and checked against
each method's config before any model is loaded."""

import argparse
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rl.py"


@pytest.fixture(scope="module")
def rl():
    spec = importlib.util.spec_from_file_location("rl_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overrides_parse_as_literals_and_bare_words(rl):
    got = rl.parse_overrides("beta=0.04, gaussian_reduction=sum,top_k=5,name='x y'")
    assert got == {"beta": 0.04, "gaussian_reduction": "sum", "top_k": 5, "name": "x y"}
    assert isinstance(got["top_k"], int)
    assert rl.parse_overrides("") == {}
    with pytest.raises(argparse.ArgumentTypeError, match="field=value"):
        rl.parse_overrides("beta")
    with pytest.raises(argparse.ArgumentTypeError, match="literal or a bare word"):
        rl.parse_overrides("beta=0.1.2")


def test_an_unknown_field_is_refused_naming_the_method_and_its_fields(rl, tmp_path):
    with pytest.raises(SystemExit, match=r"\['no_such_field'\].*lepo.*latent_length"):
        rl.main(["--methods", "lepo", "--config", "no_such_field=1", "--models", str(tmp_path),
                 "--no-throughput"])  # fmt: skip


def test_a_field_with_its_own_flag_is_refused(rl, tmp_path):
    with pytest.raises(SystemExit, match="use --lr for learning_rate"):
        rl.main(["--methods", "atp_rl", "--config", "learning_rate=1e-4", "--models",
                 str(tmp_path), "--no-throughput"])  # fmt: skip


def test_known_fields_reach_the_config(rl):
    rl.check_overrides({"beta": 0.04, "gaussian_reduction": "sum"}, ["atp_rl"])  # no error
    with pytest.raises(SystemExit, match="gaussian_reduction"):
        rl.check_overrides({"latent_length": 4}, ["atp_rl"])  # lepo's field, not atp_rl's
