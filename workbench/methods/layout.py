"""Moved to :mod:`workbench.data.layout` (the sequence layout is shared by data, engine and
evaluator, which must not import methods); this name stays for existing imports."""

from workbench.data.layout import (  # noqa: F401
    IGNORE,
    SequenceCollator,
    TokenizedExample,
    build_sequence,
    collate,
    pad_prompts,
    prompt_ids,
    tokenize_examples,
)
