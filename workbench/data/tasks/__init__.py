"""Synthetic reasoning tasks the workbench generates itself (no downloads).

Each task module exposes ``NAME``, ``TOKENIZER_KIND`` ("char" or "word") and
``generate(n, rng, **difficulty) -> list[Example]``; questions may repeat, the split
builder (:mod:`workbench.data.datasets`) de-duplicates across splits.
"""

from __future__ import annotations

import importlib
import random
from types import ModuleType

from workbench.data.schema import Example

TASK_MODULES = {
    "multiplication": "workbench.data.tasks.multiplication",
    "arithmetic": "workbench.data.tasks.arithmetic",
    "graph": "workbench.data.tasks.graph_qa",
    "sudoku": "workbench.data.tasks.sudoku",
}


def get_task(name: str) -> ModuleType:
    """The task module registered under ``name``; unknown names list the known ones."""
    if name not in TASK_MODULES:
        raise KeyError(f"unknown task {name!r}; known tasks: {sorted(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[name])


def generate(task: str, n: int, seed: int, **difficulty) -> list[Example]:
    """``n`` examples of ``task``, deterministic in ``seed`` (may contain repeats)."""
    return get_task(task).generate(n, random.Random(seed), **difficulty)
