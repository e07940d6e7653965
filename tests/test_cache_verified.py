"""A generated-data cache file damaged by hand is detected, rebuilt, and gives the same metrics."""

from __future__ import annotations

import pytest

from workbench.data.datasets import cache_key, resolve_difficulty
from workbench.experiment import prepare_data
from workbench.models.build import ModelConfig, build_model
from workbench.paths import data_dir
from workbench.trained import TrainedModel

KNOBS = {"digits_a": 2}
SIZES = {"train": 40, "val": 4, "test": 12}


def _folder():
    knobs = resolve_difficulty("multiplication", KNOBS)
    return data_dir() / "cache" / cache_key("multiplication", SIZES, 7, knobs)


def _data(tokenizer=None):
    data = prepare_data("multiplication", train_size=40, val_size=4, test_size=12, seed=7,
                        tokenizer=tokenizer, **KNOBS)  # fmt: skip
    return data


@pytest.mark.parametrize("damage", ["truncate", "edit"])
def test_damaged_cache_is_rebuilt_with_a_notice_and_the_same_metrics(damage):
    data = _data()
    model = build_model(ModelConfig(n_layer=1, d_model=32, n_head=2), data.tokenizer, seed=0)
    tm = TrainedModel("demo", model, data.tokenizer, None, None, "multiplication", data.test)
    before = tm.evaluate(data.test).per_example
    test_file = _folder() / "test.jsonl"
    good = test_file.read_bytes()
    if damage == "truncate":
        test_file.write_bytes(good[: len(good) // 3])
    else:  # same length, one answer digit changed: only the hash can tell
        i = good.index(b'"answer": "') + len(b'"answer": "')
        test_file.write_bytes(
            good[:i] + (b"1" if good[i : i + 1] != b"1" else b"2") + good[i + 1 :]
        )
    with pytest.warns(UserWarning, match="does not match meta.json; rebuilding"):
        again = _data(tokenizer=data.tokenizer)
    assert test_file.read_bytes() == good  # rebuilt byte for byte, never loaded as damaged
    after = tm.evaluate(again.test).per_example
    assert after[["gold", "prediction", "correct"]].equals(
        before[["gold", "prediction", "correct"]]
    )
