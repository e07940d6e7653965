"""A task's splits plus the tokenizer built for them: what every method trains and scores on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from workbench.data.datasets import dataset_to_examples, load_local_dataset, load_task_dataset
from workbench.data.schema import Example
from workbench.data.tasks import get_task
from workbench.data.tokenizer import build_tokenizer


@dataclass
class TaskData:
    """Splits of one task and the tokenizer built for it."""

    task: str
    train: list[Example]
    val: list[Example]
    test: list[Example]
    tokenizer: PreTrainedTokenizerBase
    seed: int = 0
    difficulty: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """Sizes, seed and difficulty: enough to regenerate the same splits (saved with models)."""
        return {
            "train_size": len(self.train),
            "val_size": len(self.val),
            "test_size": len(self.test),
            "seed": self.seed,
            "difficulty": dict(self.difficulty),
        }


def prepare_data(
    task: str = "multiplication",
    *,
    train_size: int = 50_000,
    val_size: int = 200,
    test_size: int = 1_000,
    seed: int = 0,
    path: str | None = None,
    tokenizer: PreTrainedTokenizerBase | str | None = None,
    **difficulty,
) -> TaskData:
    """Generate (and cache) a task's splits, or load a local dataset from ``path``; tokenizer too.

    ``tokenizer`` may be a tokenizer, a local folder to load one from, or ``None`` to build the
    task's default (``char`` for arithmetic, ``word`` for text).
    """
    if path is not None:
        dd = load_local_dataset(
            path, split_sizes={"train": None, "val": val_size, "test": test_size}, seed=seed
        )
        kind = "word"
    else:
        sizes = {"train": train_size, "val": val_size, "test": test_size}
        dd = load_task_dataset(task, sizes=sizes, seed=seed, **difficulty)
        kind = get_task(task).TOKENIZER_KIND
    splits = {
        name: dataset_to_examples(dd[name]) if name in dd else []
        for name in ("train", "val", "test")
    }
    if isinstance(tokenizer, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    if tokenizer is None:
        tokenizer = build_tokenizer(kind, [e for s in splits.values() for e in s])
    return TaskData(
        task if path is None else str(path),
        splits["train"],
        splits["val"],
        splits["test"],
        tokenizer,
        seed,
        dict(difficulty),
    )
