"""Train/val/test splits, from a generated task or a local file, as cached ``DatasetDict``s.

Why this module exists:

* **No leakage.** :func:`build_splits` de-duplicates by question across splits and fills the
  held-out splits first (test, then val, each from its own seeded stream), so the test set does
  not change when you ask for more training data.
* **Reproducible bytes.** :func:`load_task_dataset` caches each split as sorted-key JSONL under
  ``data_dir()/cache/<task>-<difficulty>-<sizes>-seed<seed>/`` with a ``meta.json``; the same
  arguments give byte-identical files. The cache is written to a temporary folder and moved in
  place in one rename (:func:`workbench.io.atomic_folder`), so an interrupted build leaves
  no half cache. ``meta.json`` records
  a hash of the generator's source; when the generator changes, the cache is rebuilt.
  Processes that ask for the same splits at once (``accelerate launch``) take turns on a lock
  file (:func:`_build_lock`, in the temp folder, so the cache holds only data): one builds,
  the others read what it wrote (two builders raced on the final rename, ``Directory not
  empty``, under load).
* **One column layout.** Every ``Dataset`` here has the columns ``question`` (str), ``steps``
  (list of str), ``answer`` (str) and ``extras``: a JSON string (sorted keys) holding every other
  key of the example, e.g. ProsQA's ``edges``/``idx_to_symbol``/``root``. Arrow cannot hold
  heterogeneous nested extras as columns, a string always can; :func:`dataset_to_examples`
  (or ``json.loads(row["extras"])``) restores them. The cache files use the same layout, so they
  also load with ``datasets.load_dataset("json", data_files=...)``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets as hf
from filelock import FileLock

from workbench.config import ConfigError, check_choice, check_range, check_that
from workbench.data.loaders import _ALIASES, FORMATS, load_examples
from workbench.data.schema import Example, validate_example
from workbench.data.tasks import TASK_MODULES, get_task
from workbench.errors import MissingFileError, WorkbenchError
from workbench.io import atomic_folder
from workbench.paths import data_dir

CORE_FIELDS = ("question", "steps", "answer")
FEATURES = hf.Features(
    {
        "question": hf.Value("string"),
        "steps": hf.List(hf.Value("string")),
        "answer": hf.Value("string"),
        "extras": hf.Value("string"),
    }
)
"""The columns of every Dataset built here."""
DEFAULT_SIZES = {"train": 1000, "val": 200, "test": 200}
CACHE_FORMAT_VERSION = 1
_HELD_OUT = ("test", "val", "validation", "valid", "dev")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
}
_DATA_SUFFIXES = (".json", ".jsonl", ".txt")


class NotEnoughExamplesError(WorkbenchError, ValueError):
    """A task or file cannot supply the requested number of distinct questions."""


# ---------------------------------------------------------------- records <-> examples


def to_record(ex: Mapping[str, Any]) -> dict[str, Any]:
    """An example as a cache/Dataset row: the core fields plus ``extras`` as a JSON string."""
    extras = {k: v for k, v in ex.items() if k not in CORE_FIELDS}
    return {
        "question": ex["question"],
        "steps": list(ex["steps"]),
        "answer": ex["answer"],
        "extras": json.dumps(extras, sort_keys=True, ensure_ascii=False),
    }


def from_record(rec: Mapping[str, Any]) -> Example:
    """Invert :func:`to_record` (a Dataset row back to a plain example with its extra keys)."""
    out = dict(json.loads(rec.get("extras") or "{}"))
    out.update({"question": rec["question"], "steps": list(rec["steps"]), "answer": rec["answer"]})
    return out  # type: ignore[return-value]


def examples_to_dataset(examples: list[Example]) -> hf.Dataset:
    """A ``datasets.Dataset`` with the columns of :data:`FEATURES`."""
    return hf.Dataset.from_list([to_record(e) for e in examples], features=FEATURES)


def dataset_to_examples(ds: hf.Dataset) -> list[Example]:
    """Plain examples (extras restored) from a Dataset built here."""
    return [from_record(r) for r in ds]


# ---------------------------------------------------------------- generated splits


def difficulty_knobs(task: str) -> dict[str, Any]:
    """The difficulty knobs of ``task``'s ``generate`` with their defaults."""
    params = list(inspect.signature(get_task(task).generate).parameters.values())[2:]
    return {
        p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def resolve_difficulty(task: str, difficulty: Mapping[str, Any]) -> dict[str, Any]:
    """All knobs of ``task``, defaults filled in; an unknown knob is an error naming the known."""
    knobs = difficulty_knobs(task)
    unknown = sorted(set(difficulty) - set(knobs))
    if unknown:
        raise ConfigError(
            f"task {task!r} has no difficulty knob(s) {unknown}; its knobs are {knobs}"
        )
    return {**knobs, **difficulty}


def _check_sizes(sizes: Mapping[str, Any], what: str, allow_rest: bool = False) -> None:
    if not sizes:
        raise ValueError(f"{what}: give at least one split, e.g. {DEFAULT_SIZES}")
    for name, n in sizes.items():
        if n is None and allow_rest:
            continue
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            extra = " or None (= the rest)" if allow_rest else ""
            raise ValueError(
                f"{what}: size of split {name!r} must be a positive int{extra}, got {n!r}"
            )
    if allow_rest and sum(n is None for n in sizes.values()) > 1:
        raise ValueError(f"{what}: at most one split may be None (= the rest), got {dict(sizes)}")


def _split_order(names: list[str]) -> list[str]:
    """Held-out splits first (test, then val...), then the others in the given order."""
    held = [n for h in _HELD_OUT for n in names if n == h]
    return held + [n for n in names if n not in held]


def build_splits(
    task: str, sizes: Mapping[str, int] | None = None, seed: int = 0, **difficulty: Any
) -> dict[str, list[Example]]:
    """Disjoint splits of ``task``: no question appears twice, in one split or across splits.

    Each split draws from its own stream ``random.Random(f"{task}|{seed}|{split}")``; test and
    val are filled before train, so held-out sets do not depend on the train size. Raises
    :class:`NotEnoughExamplesError` when the task runs out of distinct questions (e.g. 1x1
    multiplication has only 81).
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    _check_sizes(sizes, f"build_splits({task!r})")
    module = get_task(task)
    knobs = resolve_difficulty(task, difficulty)
    seen: set[str] = set()
    out: dict[str, list[Example]] = {}
    for split in _split_order(list(sizes)):
        need, got, draws = sizes[split], [], 0
        limit = max(2000, 20 * need)
        rng = random.Random(f"{task}|{seed}|{split}")
        while len(got) < need:
            if draws >= limit:
                total = sum(sizes.values())
                raise NotEnoughExamplesError(
                    f"task {task!r} with difficulty {knobs} gave only {len(seen)} distinct "
                    f"questions in {draws} draws for split {split!r}, but sizes {sizes} need "
                    f"{total} (fix: lower the sizes or raise the difficulty)"
                )
            chunk = max(need - len(got), 32)
            draws += chunk
            for ex in module.generate(chunk, rng, **knobs):
                ex = validate_example(ex, f"task {task!r}", None)
                if ex["question"] not in seen and len(got) < need:
                    seen.add(ex["question"])
                    got.append(ex)
        out[split] = got
    return {name: out[name] for name in sizes}


# ---------------------------------------------------------------- cache


def _sanitize(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._,=+-]", "_", s)


def cache_key(task: str, sizes: Mapping[str, int], seed: int, difficulty: Mapping[str, Any]) -> str:
    """``<task>-<non-default knobs or 'default'>-<sizes>-seed<seed>`` (a folder name)."""
    defaults = difficulty_knobs(task)
    changed = {k: v for k, v in sorted(difficulty.items()) if defaults.get(k, object()) != v}
    knob_s = ",".join(f"{k}={v}" for k, v in changed.items()) or "default"
    size_s = ",".join(f"{k}={v}" for k, v in sorted(sizes.items()))
    return _sanitize(f"{task}-{knob_s}-{size_s}-seed{seed}")


def _generator_hash(task: str) -> str:
    src = inspect.getsourcefile(get_task(task))
    return hashlib.sha256(Path(src).read_bytes()).hexdigest() if src else ""


def _jsonl_bytes(examples: list[Example]) -> bytes:
    lines = (json.dumps(to_record(e), sort_keys=True, ensure_ascii=False) + "\n" for e in examples)
    return "".join(lines).encode("utf-8")


def _write_file(path: Path, data: bytes) -> None:
    """One cache file inside the temporary folder (``atomic_folder`` fsyncs the tree)."""
    path.write_bytes(data)


def _write_cache(final: Path, splits: dict[str, list[Example]], meta: dict[str, Any]) -> None:
    """Write all files into a temporary sibling folder, then move it to ``final`` in one step."""
    with atomic_folder(final) as tmp:
        files = {}
        for name, examples in splits.items():
            data = _jsonl_bytes(examples)
            _write_file(tmp / f"{name}.jsonl", data)
            files[name] = {"rows": len(examples), "sha256": hashlib.sha256(data).hexdigest()}
        meta = {**meta, "files": files}
        _write_file(tmp / "meta.json", (json.dumps(meta, sort_keys=True, indent=2) + "\n").encode())


def _build_lock(folder: Path) -> FileLock:
    """The lock that processes building the cache ``folder`` take turns on (one per folder)."""
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:24]
    user = os.getuid() if hasattr(os, "getuid") else ""  # another user's folder is not ours
    locks = Path(tempfile.gettempdir()) / f"workbench-cache-locks{user}"
    locks.mkdir(exist_ok=True)
    return FileLock(locks / f"{key}.lock")


def _read_cache(folder: Path, identity: dict[str, Any], splits: list[str]) -> hf.DatasetDict | None:
    """The cached DatasetDict, or None when the folder is missing, stale or damaged."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if any(meta.get(k) != v for k, v in identity.items()):
            return None
        out = {}
        for name in splits:
            data = (folder / f"{name}.jsonl").read_bytes()
            if hashlib.sha256(data).hexdigest() != meta["files"][name]["sha256"]:
                warnings.warn(
                    f"{folder / (name + '.jsonl')}: content does not match meta.json; rebuilding",
                    stacklevel=3,
                )
                return None
            rows = [json.loads(line) for line in data.decode("utf-8").splitlines()]
            rows = [{k: r[k] for k in FEATURES} for r in rows]  # column order as in FEATURES
            out[name] = hf.Dataset.from_list(rows, features=FEATURES)
        return hf.DatasetDict(out)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_task_dataset(
    task: str,
    sizes: Mapping[str, int] | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    **difficulty: Any,
) -> hf.DatasetDict:
    """:func:`build_splits` as a ``DatasetDict``, cached on disk (see the module docstring).

    ``cache_dir`` defaults to ``data_dir()/"cache"`` (``$WORKBENCH_DATA_DIR`` moves it).
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    _check_sizes(sizes, f"load_task_dataset({task!r})")
    knobs = resolve_difficulty(task, difficulty)
    folder = (Path(cache_dir) if cache_dir is not None else data_dir() / "cache") / cache_key(
        task, sizes, seed, knobs
    )
    identity = {
        "cache_format": CACHE_FORMAT_VERSION,
        "task": task,
        "difficulty": knobs,
        "sizes": sizes,
        "seed": seed,
        "generator_sha256": _generator_hash(task),
    }
    identity = json.loads(
        json.dumps(identity)
    )  # compare as meta.json will read back (tuples -> lists)
    cached = _read_cache(folder, identity, list(sizes))
    if cached is not None:
        return cached
    with _build_lock(folder):
        cached = _read_cache(folder, identity, list(sizes))  # another process built it meanwhile
        if cached is not None:
            return cached
        _write_cache(folder, build_splits(task, sizes, seed, **knobs), identity)
    result = _read_cache(folder, identity, list(sizes))
    if result is None:
        raise RuntimeError(
            f"{folder}: the cache just written cannot be read back "
            "(fix: delete the folder and retry)"
        )
    return result


# ---------------------------------------------------------------- local files


def split_name(filename: str) -> str | None:
    """``'prosqa_valid.json'`` -> ``'val'``; ``None`` when the name names no split."""
    for piece in reversed(re.split(r"[-_.\s]+", Path(filename).stem.lower())):
        if piece in _SPLIT_ALIASES:
            return _SPLIT_ALIASES[piece]
    return None


def split_examples(
    examples: list[Example],
    split_sizes: Mapping[str, int | None],
    seed: int = 0,
    source: str = "<memory>",
) -> dict[str, list[Example]]:
    """Shuffle (seeded) and cut ``examples`` into splits, keeping copies of a question together.

    Sizes count examples; ``None`` means "all the rest" (one split at most). Held-out splits are
    filled first. Examples left over when no split is ``None`` are not used (a subsample).
    """
    _check_sizes(split_sizes, f"{source}: split_sizes", allow_rest=True)
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex["question"], []).append(ex)
    order = list(groups)
    random.Random(seed).shuffle(order)
    out: dict[str, list[Example]] = {}
    pos = 0
    for split in _split_order(list(split_sizes)):
        need = split_sizes[split]
        if need is None:
            continue
        got: list[Example] = []
        while len(got) < need and pos < len(order):
            got.extend(groups[order[pos]])
            pos += 1
        if len(got) < need:
            fixed = sum(n for n in split_sizes.values() if n is not None)
            raise NotEnoughExamplesError(
                f"{source}: {len(examples)} examples ({len(groups)} distinct questions) cannot "
                f"fill split_sizes {dict(split_sizes)} (need {fixed}; fix: lower the sizes)"
            )
        out[split] = got
    for split, need in split_sizes.items():
        if need is None:
            out[split] = [ex for q in order[pos:] for ex in groups[q]]
    return {name: out[name] for name in split_sizes}


def load_local_dataset(
    path: str | Path,
    format: str = "auto",
    split_sizes: Mapping[str, int | None] | None = None,
    seed: int = 0,
    on_error: str = "raise",
    **loader_kwargs: Any,
) -> hf.DatasetDict:
    """A user's own data as a ``DatasetDict`` (columns as in :data:`FEATURES`).

    * a file: one ``"train"`` split, or cut by ``split_sizes`` (see :func:`split_examples`);
    * a folder: one split per data file (``.json``/``.jsonl``/``.txt``) whose name ends in a
      split name (``train``, ``val``/``valid``/``validation``/``dev``, ``test``; e.g.
      ``prosqa_valid.json``); ``split_sizes`` then subsamples the named splits (seeded).

    Loader options (``field_map``, ``steps_split``, ``step_separator``) and ``on_error`` go to
    :func:`~workbench.data.loaders.load_examples`.
    """
    path = Path(path)
    if path.is_file():
        examples = load_examples(path, format, on_error, **loader_kwargs)
        splits = (
            {"train": examples}
            if split_sizes is None
            else split_examples(examples, split_sizes, seed, str(path))
        )
        return hf.DatasetDict({k: examples_to_dataset(v) for k, v in splits.items()})
    if not path.is_dir():
        raise MissingFileError(f"{path}: no such file or folder (fix: check the path)")
    found: dict[str, Path] = {}
    ignored = []
    for f in sorted(path.iterdir()):
        if not f.is_file() or f.suffix.lower() not in _DATA_SUFFIXES:
            continue
        name = split_name(f.name)
        if name is None:
            ignored.append(f.name)
        elif name in found:
            raise ValueError(
                f"{path}: both {found[name].name} and {f.name} look like the {name!r} split "
                "(fix: rename or move one of them)"
            )
        else:
            found[name] = f
    if not found:
        raise FileNotFoundError(
            f"{path}: no data file named after a split (fix: name files like train.jsonl, "
            f"val.json, test.txt; found {sorted(p.name for p in path.iterdir())})"
        )
    if ignored:
        warnings.warn(
            f"{path}: ignoring {ignored}: their names do not end in train/val/test", stacklevel=2
        )
    splits = {
        name: load_examples(found[name], format, on_error, **loader_kwargs)
        for name in ("train", "val", "test")
        if name in found
    }
    if split_sizes is not None:
        unknown = sorted(set(split_sizes) - set(splits))
        if unknown:
            raise ValueError(
                f"{path}: split_sizes names {unknown}, but the folder has {sorted(splits)}"
            )
        for name, n in split_sizes.items():
            if n is None:
                continue
            _check_sizes({name: n}, f"{path}: split_sizes")
            if n > len(splits[name]):
                raise NotEnoughExamplesError(
                    f"{found[name]}: has {len(splits[name])} examples, split_sizes asks {n}"
                )
            keep = sorted(random.Random(f"{seed}|{name}").sample(range(len(splits[name])), n))
            splits[name] = [splits[name][i] for i in keep]
    names = list(splits)
    for i, a in enumerate(names):
        qa = {e["question"] for e in splits[a]}
        for b in names[i + 1 :]:
            shared = sum(e["question"] in qa for e in splits[b])
            if shared:
                warnings.warn(
                    f"{path}: {shared} question(s) of {b!r} also appear in {a!r}", stacklevel=2
                )
    return hf.DatasetDict({k: examples_to_dataset(v) for k, v in splits.items()})


# ---------------------------------------------------------------- config


@dataclass
class DataConfig:
    """Which examples to use: a generated task (``path=None``) or a local file or folder."""

    task: str = "multiplication"
    """Registered task (``multiplication``, ``arithmetic``, ``graph``). With ``path`` set, any
    non-empty label (it names the data in results)."""
    train_size: int = 1000
    """Training examples (for a local single file: how many of its examples go to train)."""
    val_size: int = 200
    """Validation examples (as above; ignored for a local folder, whose files are the splits)."""
    test_size: int = 200
    """Test examples (as above)."""
    seed: int = 0
    """Seed of the generator streams, or of the shuffle that cuts a local file."""
    difficulty: dict[str, Any] = field(default_factory=dict)
    """Task knobs passed to ``generate``, e.g. ``{"digits_a": 4}``; must be empty with ``path``."""
    path: str | None = None
    """A local file or folder to load instead of generating; ``None`` generates ``task``."""
    format: str = "auto"
    """Format of the local file(s): ``auto``, ``coconut_json``, ``icot`` or ``jsonl``."""

    def __post_init__(self) -> None:
        for name in ("train_size", "val_size", "test_size"):
            check_range(self, name, ge=1, integer=True)
        check_range(self, "seed", ge=0, integer=True)
        check_that(self, "difficulty", isinstance(self.difficulty, dict), "a mapping knob -> value")
        check_choice(self, "format", [*FORMATS, *_ALIASES])
        if self.path is None:
            check_that(
                self,
                "task",
                self.task in TASK_MODULES,
                f"a known task, one of {sorted(TASK_MODULES)} (or set path= to load your own data)",
            )
            resolve_difficulty(self.task, self.difficulty)
        else:
            if not isinstance(self.task, str) or not self.task:
                raise ConfigError("DataConfig.task must be a non-empty label when path is set")
            if self.difficulty:
                raise ConfigError(
                    f"DataConfig.difficulty {self.difficulty} applies to generated tasks only; "
                    "remove it or set path=None"
                )

    @property
    def sizes(self) -> dict[str, int]:
        """``{"train": ..., "val": ..., "test": ...}``."""
        return {"train": self.train_size, "val": self.val_size, "test": self.test_size}

    def load(self) -> hf.DatasetDict:
        """Build (or read from the cache) the DatasetDict this config describes."""
        if self.path is None:
            return load_task_dataset(self.task, self.sizes, self.seed, **self.difficulty)
        p = Path(self.path)
        return load_local_dataset(p, self.format, self.sizes if p.is_file() else None, self.seed)
