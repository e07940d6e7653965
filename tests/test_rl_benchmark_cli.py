"""``benchmarks/rl.py --config``: other RL config fields, parsed as literals and checked against
each method's config before any model is loaded."""

import argparse

import pytest


@pytest.fixture(scope="module")
def rl(load_benchmark):
    return load_benchmark("rl")


def test_overrides_parse_as_literals_and_bare_words(rl):
    got = rl.parse_overrides("beta=0.04, gaussian_reduction=sum,top_k=5,name='x y'")
    assert got == {"beta": 0.04, "gaussian_reduction": "sum", "top_k": 5, "name": "x y"}
    assert isinstance(got["top_k"], int)
    assert rl.parse_overrides("") == {}
    nested = rl.parse_overrides("segment_weights={'latent': 1.0, 'answer': 0.0},beta=0")
    assert nested == {"segment_weights": {"latent": 1.0, "answer": 0.0}, "beta": 0}
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


def test_paired_change_counts_fixed_and_broken_problems(rl):
    import numpy as np

    before = np.array([1, 1, 0, 0, 0, 1], dtype=bool)
    after = np.array([1, 0, 1, 1, 0, 1], dtype=bool)
    got = rl.paired_change(before, after)
    assert (got["fixed"], got["broken"]) == (2, 1)
    assert got["mcnemar_z"] == pytest.approx(1 / 3**0.5)
    same = rl.paired_change(before, before)
    assert same == {"fixed": 0, "broken": 0, "mcnemar_z": 0.0}  # no change: no NaN


def test_a_negative_pool_is_refused(rl, tmp_path):
    with pytest.raises(SystemExit):
        rl.main(["--pool", "-1", "--models", str(tmp_path), "--no-throughput"])


def test_a_pool_run_scores_its_pool_and_the_held_out_set(rl, capsys, repo_root):
    """One RL step of ATP-RL from the shipped model on a pool of 4 training problems."""
    import json

    import torch

    threads = torch.get_num_threads()
    try:
        rl.main(["--methods", "atp_rl", "--models", str(repo_root / "checkpoints"), "--steps", "1",
                 "--questions", "2", "--generations", "2", "--test-size", "8", "--pool", "4",
                 "--no-throughput", "--threads", "1", "--print-every", "0",
                 "--config", "latent_gradient=pathwise"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)

    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["methods"]["atp_rl"]
    assert row["pool"] == 4 and row["trajectories"] == 4
    assert 0.0 <= row["pool_accuracy_before"] <= 1.0 and 0.0 <= row["pool_accuracy_after"] <= 1.0
    assert row["config"] == {"latent_gradient": "pathwise"}
