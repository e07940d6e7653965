"""The one example schema every method shares: ``{question, steps: [str], answer}``.

This is the Coconut JSON format (RESEARCH Part A, 2.2 "Generic data format"). Every
generator and loader produces plain dicts of this shape, validated here, so that a
malformed row fails loudly with the file, the row number and the field that is wrong.
"""

from __future__ import annotations

from typing import Any, TypedDict

from workbench.errors import WorkbenchError

REQUIRED_FIELDS = ("question", "steps", "answer")


class Example(TypedDict):
    """One reasoning problem: a question, the explicit chain of thought, the answer."""

    question: str
    steps: list[str]
    answer: str


class DatasetFormatError(WorkbenchError, ValueError):
    """A dataset row does not fit the schema; says where and how to fix it."""

    def __init__(
        self, source: str, row: int | None, field: str | None, problem: str, fix: str = ""
    ):
        self.source, self.row, self.field, self.problem, self.fix = source, row, field, problem, fix
        where = source if row is None else f"{source}, row {row}"
        what = f"field {field!r}: " if field else ""
        msg = f"{where}: {what}{problem}"
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)


def validate_example(row: Any, source: str = "<memory>", row_no: int | None = None) -> Example:
    """Return ``row`` as a clean :class:`Example` or raise :class:`DatasetFormatError`.

    Extra keys (ProsQA's ``edges``, ``root``...) are kept: methods ignore them, analyses use them.
    """
    if not isinstance(row, dict):
        raise DatasetFormatError(
            source,
            row_no,
            None,
            f"expected an object, got {type(row).__name__}",
            "each row must be a JSON object with question, steps, answer",
        )
    for field in REQUIRED_FIELDS:
        if field not in row:
            raise DatasetFormatError(
                source,
                row_no,
                field,
                "missing",
                f"add {field!r} or map your column onto it (field_map=...)",
            )
    q, steps, a = row["question"], row["steps"], row["answer"]
    if not isinstance(q, str) or not q.strip():
        raise DatasetFormatError(
            source, row_no, "question", f"must be a non-empty string, got {q!r}"
        )
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise DatasetFormatError(
            source,
            row_no,
            "steps",
            f"must be a list of strings, got {steps!r}",
            "write steps as a JSON list of strings (may be empty)",
        )
    if not isinstance(a, (str, int, float)) or isinstance(a, bool) or str(a).strip() == "":
        raise DatasetFormatError(source, row_no, "answer", f"must be a non-empty string, got {a!r}")
    out = dict(row)
    out["question"], out["steps"], out["answer"] = q, list(steps), str(a)
    return out  # type: ignore[return-value]
