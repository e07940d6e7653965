"""``benchmarks/recursive.py`` end to end on a tiny 4x4 budget: it saves each arm, and
``--load-dir`` evaluates the saved weights to the same numbers without training."""

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("recursive")


def test_saved_arms_evaluate_to_the_same_numbers(bench, tmp_path, capsys):
    common = ["--seconds", "3", "--threads", "1", "--train-size", "40", "--test-size", "20",
              "--arms", "single,dis", "--device", "cpu"]  # fmt: skip
    trained = bench.main([*common, "--save-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == trained
    assert "guidance sweep" in out and "margin_w0" in out
    assert (tmp_path / "dis" / "model.safetensors").is_file()
    loaded = bench.main([*common, "--load-dir", str(tmp_path)])
    for a, b in zip(trained["rows"], loaded["rows"], strict=True):
        assert a["train_steps"] > 0 and b["train_steps"] is None
        for key in ("exact_acc", "cell_acc", "nfp", "dead_steps", "dead_steps_w0", "best_w"):
            assert a[key] == b[key], key
    assert [r["nfp"] for r in loaded["rows"]] == [2, 18]


def test_arm_overrides_are_parsed_and_checked(bench, tmp_path, capsys):
    import argparse

    from workbench.config import ConfigError

    assert bench.parse_arms("single, dis:n_sup=2:n=1") == [
        ("single", {}),
        ("dis:n_sup=2:n=1", {"n_sup": 2, "n": 1}),
    ]
    with pytest.raises(argparse.ArgumentTypeError, match="preset:field=value"):
        bench.parse_arms("dis:n_sup")
    with pytest.raises(SystemExit):
        bench.main(["--arms", "dis:depth=3"])
    assert "unknown field(s) ['depth']" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="n_sup"):
        bench.main(["--arms", "dis:n_sup=0"])
    row = bench.main(["--seconds", "1", "--threads", "1", "--train-size", "20", "--test-size",
                      "10", "--arms", "dis:n_sup=2:n=1", "--device", "cpu",
                      "--save-dir", str(tmp_path)])["rows"][0]  # fmt: skip
    assert row["arm"] == "dis:n_sup=2:n=1" and row["nfp"] == 2 * 1 * (1 + 1)
    assert (tmp_path / "dis_n_sup=2_n=1" / "config.json").is_file()
