"""Splits and the dataset cache: disjoint, stable, atomic, and loud when data runs out."""

from __future__ import annotations

import json

import datasets as hf
import pytest

from workbench.config import ConfigError, config_from_dict
from workbench.data import datasets as wd
from workbench.data.datasets import (
    DataConfig,
    NotEnoughExamplesError,
    build_splits,
    dataset_to_examples,
    load_local_dataset,
    load_task_dataset,
    split_name,
)
from workbench.paths import data_dir, shared_dir

SIZES = {"train": 60, "val": 20, "test": 20}


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))


# ---------------------------------------------------------------- build_splits


@pytest.mark.parametrize("task", ["multiplication", "arithmetic", "graph"])
def test_splits_have_the_sizes_and_share_no_question(task):
    splits = build_splits(task, SIZES, seed=1)
    assert {k: len(v) for k, v in splits.items()} == SIZES
    questions = [e["question"] for split in splits.values() for e in split]
    assert len(questions) == len(set(questions))


def test_held_out_splits_do_not_depend_on_the_train_size():
    small = build_splits("multiplication", {"train": 10, "val": 10, "test": 10}, digits_a=2)
    big = build_splits("multiplication", {"train": 500, "val": 10, "test": 10}, digits_a=2)
    assert small["test"] == big["test"] and small["val"] == big["val"]
    assert small["train"] == big["train"][:10]  # and train grows by extension


def test_not_enough_unique_questions_is_a_clear_error():
    # 1x1 multiplication has 9 * 9 = 81 distinct questions
    assert len(build_splits("multiplication", {"train": 61, "test": 20}, digits_a=1)["train"]) == 61
    with pytest.raises(
        NotEnoughExamplesError, match=r"only 81 distinct questions.*lower the sizes"
    ):
        build_splits("multiplication", {"train": 70, "val": 10, "test": 10}, digits_a=1)


def test_bad_sizes_and_unknown_knobs_are_rejected():
    with pytest.raises(ValueError, match="'val'"):
        build_splits("arithmetic", {"train": 10, "val": 0})
    with pytest.raises(ConfigError, match="digitz.*digits_a"):
        build_splits("multiplication", SIZES, digitz=3)
    with pytest.raises(KeyError, match="unknown task"):
        build_splits("sudokku", SIZES)


# ---------------------------------------------------------------- cache


def test_cache_is_written_under_data_dir_and_hit_on_the_second_call(monkeypatch):
    first = load_task_dataset("graph", SIZES, seed=2, max_depth=4)
    assert isinstance(first, hf.DatasetDict) and list(first) == ["train", "val", "test"]
    (folder,) = (data_dir() / "cache").iterdir()
    assert folder.name == "graph-max_depth=4-test=20,train=60,val=20-seed2"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["difficulty"]["max_depth"] == 4 and meta["files"]["test"]["rows"] == 20

    def boom(*a, **k):
        raise AssertionError("cache miss: build_splits was called again")

    monkeypatch.setattr(wd, "build_splits", boom)
    second = load_task_dataset("graph", SIZES, seed=2, max_depth=4)
    for split in SIZES:
        assert second[split].to_list() == first[split].to_list()
    # extras (nested edges, idx_to_symbol, ...) survive the round trip
    ex = dataset_to_examples(second["test"])[0]
    assert ex["idx_to_symbol"][ex["target"]] in ex["answer"] and ex["edges"]


def test_cached_examples_equal_the_built_ones():
    built = build_splits("arithmetic", SIZES, seed=5, max_steps=3)
    loaded = load_task_dataset("arithmetic", SIZES, seed=5, max_steps=3)
    for split in SIZES:
        assert dataset_to_examples(loaded[split]) == built[split]


def test_default_knobs_share_one_cache_folder():
    load_task_dataset("multiplication", SIZES, digits_a=3)
    load_task_dataset("multiplication", SIZES)
    assert len(list((data_dir() / "cache").iterdir())) == 1


def test_interrupted_write_leaves_no_partial_folder(monkeypatch, tmp_path):
    calls = []
    real_write = wd._write_file

    def failing_write(path, data):
        calls.append(path.name)
        if len(calls) == 2:  # after the first split file is on disk
            raise KeyboardInterrupt("simulated crash mid-write")
        real_write(path, data)

    monkeypatch.setattr(wd, "_write_file", failing_write)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        load_task_dataset("arithmetic", SIZES, cache_dir=cache)
    assert len(calls) == 2
    assert list(cache.iterdir()) == []  # neither the final folder nor the temporary one
    monkeypatch.setattr(wd, "_write_file", real_write)
    out = load_task_dataset("arithmetic", SIZES, cache_dir=cache)
    assert out["train"].num_rows == 60 and len(list(cache.iterdir())) == 1


def test_stale_or_damaged_cache_is_rebuilt(monkeypatch):
    load_task_dataset("arithmetic", SIZES)
    (folder,) = (data_dir() / "cache").iterdir()
    good = (folder / "test.jsonl").read_bytes()
    (folder / "test.jsonl").write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning, match="does not match meta.json"):
        again = load_task_dataset("arithmetic", SIZES)
    assert again["test"].num_rows == 20 and (folder / "test.jsonl").read_bytes() == good
    # a changed generator (different source hash) invalidates the cache
    monkeypatch.setattr(wd, "_generator_hash", lambda task: "changed")
    load_task_dataset("arithmetic", SIZES)
    assert json.loads((folder / "meta.json").read_text())["generator_sha256"] == "changed"
    assert [p.name for p in (data_dir() / "cache").iterdir()] == [folder.name]


def test_cache_files_load_with_the_datasets_json_builder(tmp_path):
    load_task_dataset("graph", {"train": 5, "test": 5}, cache_dir=tmp_path / "c")
    (folder,) = (tmp_path / "c").iterdir()
    ds = hf.load_dataset(
        "json", data_files=str(folder / "test.jsonl"), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert ds.num_rows == 5 and set(ds.column_names) == {"question", "steps", "answer", "extras"}
    assert "edges" in json.loads(ds[0]["extras"])


# ---------------------------------------------------------------- local data


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(n, prefix="q"):
    return [{"question": f"{prefix}{i}", "steps": [f"s{i}"], "answer": str(i)} for i in range(n)]


def test_local_folder_with_split_files(tmp_path):
    _jsonl(tmp_path / "mydata_train.jsonl", _rows(8, "a"))
    (tmp_path / "mydata-valid.json").write_text(json.dumps(_rows(3, "b")))
    (tmp_path / "test.txt").write_text("c1||<<1+1=2>> #### 2\nc2||<<2+2=4>> #### 4\n")
    (tmp_path / "README.md").write_text("not data")
    out = load_local_dataset(tmp_path)
    assert {k: v.num_rows for k, v in out.items()} == {"train": 8, "val": 3, "test": 2}
    assert out["test"][1]["steps"] == ["<<2+2=4>>"]
    sub = load_local_dataset(tmp_path, split_sizes={"train": 4}, seed=1)
    assert sub["train"].num_rows == 4 and sub["val"].num_rows == 3
    assert (
        split_name("prosqa_valid.json") == "val" and split_name("GSM8k-Aug-train.jsonl") == "train"
    )
    assert split_name("notes.json") is None


def test_local_folder_warns_on_overlap_and_rejects_two_train_files(tmp_path):
    _jsonl(tmp_path / "train.jsonl", _rows(5))
    _jsonl(tmp_path / "test.jsonl", _rows(2))
    with pytest.warns(UserWarning, match="2 question"):
        load_local_dataset(tmp_path)
    _jsonl(tmp_path / "other_train.jsonl", _rows(2))
    with pytest.raises(ValueError, match="train"):
        load_local_dataset(tmp_path)


def test_local_single_file_split_and_extras(tmp_path):
    rows = _rows(30)
    rows[0]["meta"] = {"source": "x"}
    rows.append(dict(rows[1]))  # a duplicate question stays in one split
    path = _jsonl(tmp_path / "all.jsonl", rows)
    whole = load_local_dataset(path)
    assert list(whole) == ["train"] and whole["train"].num_rows == 31
    out = load_local_dataset(path, split_sizes={"train": None, "val": 5, "test": 5}, seed=3)
    assert out["test"].num_rows == 5 and out["val"].num_rows == 5 and out["train"].num_rows == 21
    by_split = {k: {r["question"] for r in v} for k, v in out.items()}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["val"] & by_split["test"])
    meta_rows = [e for v in out.values() for e in dataset_to_examples(v) if "meta" in e]
    assert meta_rows == [{**rows[0]}]
    with pytest.raises(NotEnoughExamplesError, match="all.jsonl"):
        load_local_dataset(path, split_sizes={"train": 30, "test": 5})


def test_real_prosqa_folder_loads():
    folder = shared_dir() / "data" / "prosqa"
    if not folder.is_dir():
        pytest.skip(f"real ProsQA not at {folder}")
    out = load_local_dataset(folder)
    assert {k: v.num_rows for k, v in out.items()} == {"val": 300, "test": 500}


# ---------------------------------------------------------------- DataConfig


def test_data_config_validates_and_loads(tmp_path):
    cfg = config_from_dict(
        DataConfig,
        {"task": "arithmetic", "train_size": "12", "val_size": 4, "test_size": 4,
         "difficulty": {"max_steps": 3}},
    )  # fmt: skip
    out = cfg.load()
    assert {k: v.num_rows for k, v in out.items()} == {"train": 12, "val": 4, "test": 4}
    assert max(len(s) for s in out["train"]["steps"]) <= 3
    with pytest.raises(ConfigError, match="train_size"):
        DataConfig(train_size=0)
    with pytest.raises(ConfigError, match="known task"):
        DataConfig(task="sudokku")
    with pytest.raises(ConfigError, match="max_stepz"):
        DataConfig(task="arithmetic", difficulty={"max_stepz": 3})
    with pytest.raises(ConfigError, match="format"):
        DataConfig(format="csv")
    with pytest.raises(ConfigError, match="generated tasks only"):
        DataConfig(task="mine", path="x.jsonl", difficulty={"a": 1})
    path = _jsonl(tmp_path / "mine.jsonl", _rows(20))
    local = DataConfig(task="mine", path=str(path), train_size=10, val_size=5, test_size=5).load()
    assert {k: v.num_rows for k, v in local.items()} == {"train": 10, "val": 5, "test": 5}


# ---------------------------------------------------------------- paths


def test_paths_follow_the_environment(monkeypatch, tmp_path):
    from workbench import paths

    root = paths.repo_root()
    assert (root / "pyproject.toml").is_file() and (root / "workbench").is_dir()
    assert paths.data_dir() == tmp_path / "data"  # set by the autouse fixture
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(tmp_path / "r"))
    monkeypatch.setenv("WORKBENCH_SHARED_DIR", str(tmp_path / "s"))
    assert paths.runs_dir() == tmp_path / "r" and paths.shared_dir() == tmp_path / "s"
    for var in ("WORKBENCH_DATA_DIR", "WORKBENCH_RUNS_DIR", "WORKBENCH_SHARED_DIR"):
        monkeypatch.delenv(var)
    assert paths.data_dir() == root / "data" and paths.runs_dir() == root / "runs"
    assert paths.shared_dir() == root.parent / "shared"


def test_processes_building_the_same_cache_take_turns(monkeypatch, tmp_path):
    """Two loaders at once (e.g. two ``accelerate launch`` processes): one builds the splits,
    the other waits and reads them; neither fails on the other's rename."""
    import threading
    import time

    builds = []
    real_build = wd.build_splits

    def slow_build(*a, **k):
        builds.append(threading.current_thread().name)
        time.sleep(0.5)  # the other loader arrives while this one is building
        return real_build(*a, **k)

    monkeypatch.setattr(wd, "build_splits", slow_build)
    results, errors = {}, []

    def load(name):
        try:
            results[name] = load_task_dataset("arithmetic", SIZES, cache_dir=tmp_path / "c")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=load, args=(n,), name=n) for n in ("a", "b")]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert errors == []
    assert builds == ["a"]  # b found a's cache once it got the lock
    assert results["a"]["train"].to_list() == results["b"]["train"].to_list()
    assert [p.name for p in (tmp_path / "c").iterdir()] == [
        "arithmetic-default-test=20,train=60,val=20-seed0"
    ]
