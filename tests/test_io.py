"""Tests for workbench.io: atomic file and folder writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from workbench import io as wio
from workbench.io import (
    atomic_folder,
    atomic_save_safetensors,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    leftovers,
    remove_folder,
)


def names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_files_content_parents_and_no_temp_left(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.bin"
    assert atomic_write_bytes(target, b"\x00\x01abc") == target
    assert target.read_bytes() == b"\x00\x01abc"
    atomic_write_bytes(target, b"new")  # overwrite
    assert target.read_bytes() == b"new"

    text = tmp_path / "t.txt"
    atomic_write_text(text, "héllo\nwörld\n")
    assert text.read_text(encoding="utf-8") == "héllo\nwörld\n"
    assert text.read_bytes() == "héllo\nwörld\n".encode()  # no newline translation

    js = tmp_path / "m.json"
    atomic_write_json(js, {"a": 1, "b": [1.5, None]}, indent=2, sort_keys=True)
    assert json.loads(js.read_text()) == {"a": 1, "b": [1.5, None]}
    assert js.read_text() == json.dumps({"a": 1, "b": [1.5, None]}, indent=2, sort_keys=True)

    st = tmp_path / "w.safetensors"
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "i": torch.tensor([1, 2], dtype=torch.long)}
    atomic_save_safetensors(st, tensors, metadata={"format": "pt"})
    from safetensors.torch import load_file

    back = load_file(st)
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in back)

    assert names(tmp_path) == ["a", "m.json", "t.txt", "w.safetensors"]
    assert names(tmp_path / "a" / "b") == ["x.bin"]
    assert leftovers(tmp_path) == []


def test_file_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "r.txt", "x")
        with atomic_folder(tmp_path / "d") as tmp:
            (tmp / "f").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "r.txt").st_mode) == 0o644  # not mkstemp's 0600
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o755  # not mkdtemp's 0700


def test_failed_replace_keeps_old_file_and_removes_temp(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "results.csv"
    atomic_write_text(target, "old,complete\n")

    def boom(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new,but,never,finished\n")
    monkeypatch.undo()
    assert target.read_text() == "old,complete\n"  # a non-atomic write would have truncated it
    assert names(tmp_path) == ["results.csv"]


def test_write_error_midway_keeps_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "x.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": object()})  # not serialisable: nothing written
    real_fsync = os.fsync

    def failing_fsync(fd):
        raise OSError("I/O error (simulated)")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write_json(target, {"v": 2})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert json.loads(target.read_text()) == {"v": 1}
    assert names(tmp_path) == ["x.json"]


def test_atomic_folder_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model"
    with atomic_folder(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".model.tmp-")
        assert not target.exists()  # nothing visible until the block ends
        (tmp / "weights.bin").write_bytes(b"v1")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "cfg.json").write_text("{}")
    assert names(target) == ["nested", "weights.bin"]
    assert (target / "weights.bin").read_bytes() == b"v1"

    with atomic_folder(target) as tmp:  # replace an existing, non-empty folder
        (tmp / "weights.bin").write_bytes(b"v2")
    assert names(target) == ["weights.bin"]  # old content gone, not merged
    assert (target / "weights.bin").read_bytes() == b"v2"
    assert names(target.parent) == ["model"]  # no temp, no moved-aside folder left


def test_atomic_folder_error_leaves_existing_untouched(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    with atomic_folder(target) as tmp:
        (tmp / "a").write_text("good")
    with pytest.raises(RuntimeError, match="crash inside"), atomic_folder(target) as tmp:
        (tmp / "a").write_text("half")
        (tmp / "b").write_text("written")
        raise RuntimeError("crash inside")
    assert names(target) == ["a"] and (target / "a").read_text() == "good"
    assert names(tmp_path) == ["ckpt"]

    fresh = tmp_path / "never"
    with pytest.raises(KeyboardInterrupt), atomic_folder(fresh) as tmp:
        (tmp / "x").write_text("x")
        raise KeyboardInterrupt
    assert not fresh.exists() and names(tmp_path) == ["ckpt"]


def test_atomic_folder_failed_final_rename_restores_old(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out"
    with atomic_folder(target) as tmp:
        (tmp / "a").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".out.tmp-"):  # the new folder cannot be moved in
            raise OSError("rename failed (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"), atomic_folder(target) as tmp:
        (tmp / "a").write_text("new")
    monkeypatch.undo()
    assert (target / "a").read_text() == "old"
    assert names(tmp_path) == ["out"]


def test_leftovers_and_remove_folder(tmp_path: Path) -> None:
    (tmp_path / ".checkpoint-5.tmp-0123456789ab").mkdir()
    (tmp_path / ".x.json.tmp-abcdefabcdef").write_text("{")
    (tmp_path / ".model.old-aaaaaaaaaaaa").mkdir()
    (tmp_path / ".hidden-but-mine").mkdir()
    (tmp_path / "checkpoint-5").mkdir()
    found = {target: p.name for target, p in leftovers(tmp_path)}
    assert found == {
        "checkpoint-5": ".checkpoint-5.tmp-0123456789ab",
        "x.json": ".x.json.tmp-abcdefabcdef",
        "model": ".model.old-aaaaaaaaaaaa",
    }
    (tmp_path / "checkpoint-5" / "f").write_text("x")
    remove_folder(tmp_path / "checkpoint-5")
    remove_folder(tmp_path / "absent")  # no error
    assert not (tmp_path / "checkpoint-5").exists()
    assert len(leftovers(tmp_path)) == 3


def test_runs_reexports_the_one_writer() -> None:
    from workbench import runs

    assert runs.atomic_write_text is wio.atomic_write_text
