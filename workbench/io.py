"""Atomic file and folder writes: the one implementation everything that saves goes through.

A reader (or a run restarted after a crash or ``kill -9``) sees either the old content of a path
or the complete new one, never a half-written file or folder:

* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json` /
  :func:`atomic_save_safetensors` write a temporary file in the target's folder
  (``.{name}.tmp-{random}``), flush and ``fsync`` it, ``os.replace`` it onto the target and
  ``fsync`` the folder. On any error the temporary file is removed and the target is untouched.
* :func:`atomic_folder` yields a fresh hidden sibling folder (``.{name}.tmp-{random}``) to fill;
  when the block ends without an exception every file in it is fsynced and it replaces the
  target (an existing target is first renamed to ``.{name}.old-{random}``, then deleted). If the
  block raises, the temporary folder is deleted and the target is left as it was.

Parent folders are created as needed. New files get mode ``0o666`` and folders ``0o777``,
minus the process umask (so usually 0644 / 0755): they are created with ``os.open`` /
``os.mkdir`` and that mode, and the kernel applies the umask (no process-wide ``os.umask``
juggling, which would race with other threads).

Leftovers of a writer that was killed mid-write are hidden names that no loader picks up;
:func:`leftovers` lists them so an owner of a folder (e.g. the trainer's ``output_dir``) can
delete them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_folder",
    "atomic_save_safetensors",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_dir",
    "fsync_tree",
    "leftovers",
    "remove_folder",
]

TMP_TAG = ".tmp-"
"""``.{name}{TMP_TAG}{random}``: a file or folder being written for target ``name``."""
OLD_TAG = ".old-"
"""``.{name}{OLD_TAG}{random}``: a replaced folder about to be deleted."""
_TRIES = 100


def _hidden_sibling(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}{tag}{uuid.uuid4().hex[:12]}"


def fsync_dir(folder: str | os.PathLike) -> None:
    """Best-effort ``fsync`` of a folder (makes a rename in it durable); errors are ignored."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Best-effort ``fsync`` of every file and folder under ``folder`` (and of ``folder``)."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)
        for name in dirs:
            fsync_dir(os.path.join(root, name))
    fsync_dir(folder)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``).

    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(_TRIES):
        tmp = _hidden_sibling(path, TMP_TAG)
        try:
            fd = os.open(tmp, flags, 0o666)  # the kernel applies the umask
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation). Returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, **json_kwargs: Any) -> Path:
    """Write ``json.dumps(obj, **json_kwargs)`` to ``path`` atomically. Returns ``path``.

    ``json_kwargs`` go to :func:`json.dumps` as given (e.g. ``indent=2, default=str``); the
    object is serialised before anything is written, so an unserialisable object leaves the
    target untouched.
    """
    return atomic_write_text(path, json.dumps(obj, **json_kwargs))


def atomic_save_safetensors(
    path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` (name -> torch tensor) as a safetensors file, atomically.

    Serialised in memory with ``safetensors.torch.save`` (the tensors must not share memory:
    de-duplicate tied weights first), then written with :func:`atomic_write_bytes`.
    """
    from safetensors.torch import save

    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def _make_temp_folder(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(_TRIES):
        tmp = _hidden_sibling(path, TMP_TAG)
        try:
            os.mkdir(tmp, 0o777)  # the kernel applies the umask
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(  # pragma: no cover
        errno.EEXIST, "no free temporary name", str(path)
    )


def _replace_folder(tmp: Path, path: Path) -> None:
    """Move the filled folder ``tmp`` onto ``path`` (moving an existing ``path`` aside first)."""
    fsync_tree(tmp)
    if os.path.lexists(path):
        # os.replace cannot overwrite a non-empty folder: move the old one aside first. A crash
        # right here leaves no ``path`` (only the hidden old and new folders), never a mix.
        old = _hidden_sibling(path, OLD_TAG)
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
        fsync_dir(path.parent)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                old.unlink()
    else:
        os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder atomically: ``with atomic_folder(p) as tmp: <write files into tmp>``.

    Yields a fresh, empty, hidden folder next to ``path`` (same parent, so the final rename
    never crosses file systems). When the block ends without an exception its content is
    fsynced and it becomes ``path``; an existing ``path`` (folder or file) is renamed aside and
    deleted afterwards. When the block raises (or the final rename fails), the temporary folder
    is deleted, ``path`` is left exactly as it was and the exception propagates.
    """
    path = Path(os.path.abspath(os.fspath(path)))
    tmp = _make_temp_folder(path)
    try:
        yield tmp
        _replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_folder(path: str | os.PathLike) -> None:
    """Delete folder ``path`` so that no reader ever sees it half-deleted.

    It is first renamed to a hidden sibling (``.{name}.old-{random}``, one atomic step), then
    deleted; a missing ``path`` is not an error.
    """
    path = Path(os.path.abspath(os.fspath(path)))
    if not os.path.lexists(path):
        return
    old = _hidden_sibling(path, OLD_TAG)
    try:
        os.replace(path, old)
    except FileNotFoundError:
        return
    shutil.rmtree(old, ignore_errors=True)


def leftovers(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """``(target name, path)`` of each temporary / moved-aside entry this module left in ``folder``.

    Such entries exist only while a write is in progress or after a writer was killed; they are
    hidden and never picked up by a loader. Delete them only in a folder no other process is
    writing to at the same time.
    """
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in sorted(names):
        if not name.startswith("."):
            continue
        for tag in (TMP_TAG, OLD_TAG):
            target, sep, rand = name[1:].rpartition(tag)
            if sep and target and len(rand) == 12 and all(c in "0123456789abcdef" for c in rand):
                found.append((target, Path(folder) / name))
                break
    return found
