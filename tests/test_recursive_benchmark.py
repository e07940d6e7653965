"""``benchmarks/recursive.py`` end to end on a tiny 4x4 budget: it saves each arm, and
``--load-dir`` evaluates the saved weights to the same numbers without training."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "recursive.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_recursive", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
