"""Loaders for the foreign dataset formats latent-reasoning papers ship, into one schema.

Coconut ships JSON lists (``[{question, steps, answer, ...}]``, ProsQA loads as is), iCoT ships
text lines ``question||steps #### answer`` and Latent-SFT ships JSONL with its own field names
(``problem``, ``cot``, ``cot_answer``). Each loader turns a file into validated
:class:`~workbench.data.schema.Example` dicts, keeping extra keys.

Errors are loud and located: a bad row raises :class:`DatasetFormatError` naming the file, the
1-based row (the line number for line formats, the position in the list for a JSON list) and
the field, with a fix. ``on_error="skip"`` instead skips bad rows, warns with the count and the
first reasons, and returns a :class:`SkipReport`; nothing is ever dropped silently, and a file
with no usable row is an error in both modes.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.data.schema import DatasetFormatError, Example, validate_example

FORMATS = ("auto", "coconut_json", "icot", "jsonl")
"""Accepted ``format`` values; ``"json"`` and ``"txt"`` are accepted aliases."""
_ALIASES = {"json": "coconut_json", "txt": "icot", "icot_text": "icot"}
_CALC_RE = re.compile(r"<<.*?>>")
_ANSWER_SEP_RE = re.compile(r"\s*#{2,}\s*")

# One parsed row: (row number, the raw row) or (row number, the error that row raised).
_Row = tuple[int, Any]


@dataclass
class SkipReport:
    """What a load kept and what it skipped (``on_error="skip"``), with one reason per skip."""

    source: str
    """The file that was read."""
    rows: int = 0
    """Rows seen (non-blank lines for line formats, list items for JSON)."""
    skipped: list[DatasetFormatError] = field(default_factory=list)
    """One error per skipped row; each names the row and the field."""

    @property
    def kept(self) -> int:
        """Rows that became examples."""
        return self.rows - len(self.skipped)

    def summary(self, first: int = 5) -> str:
        """One paragraph: counts, then the first ``first`` reasons."""
        head = f"{self.source}: skipped {len(self.skipped)} of {self.rows} rows, kept {self.kept}"
        if not self.skipped:
            return head
        reasons = "; ".join(str(e) for e in self.skipped[:first])
        more = f" (and {len(self.skipped) - first} more)" if len(self.skipped) > first else ""
        return f"{head}. First reasons: {reasons}{more}"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetFormatError(
            str(path), None, None, f"not UTF-8 text (byte {e.start})", "re-save the file as UTF-8"
        ) from None


def _collect(
    rows: Iterable[_Row], source: str, on_error: str, convert=lambda row, row_no: row
) -> tuple[list[Example], SkipReport]:
    """Validate parsed rows; raise on the first bad one, or skip and report them."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    report, out = SkipReport(source), []
    for row_no, row in rows:
        report.rows += 1
        try:
            if isinstance(row, DatasetFormatError):
                raise row
            out.append(validate_example(convert(row, row_no), source, row_no))
        except DatasetFormatError as e:
            if on_error == "raise":
                raise
            report.skipped.append(e)
    if not out:
        problem = (
            "no examples found" if report.rows == 0 else f"none of its {report.rows} rows is usable"
        )
        err = DatasetFormatError(
            source, None, None, problem, "check the file and the format= / field_map= you passed"
        )
        if report.skipped:
            err.add_note(report.summary())
        raise err
    if report.skipped:
        warnings.warn(report.summary(), stacklevel=3)
    return out, report


# ---------------------------------------------------------------- Coconut JSON list


def _rows_coconut_json(path: Path) -> Iterator[_Row]:
    source = str(path)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DatasetFormatError(
            source,
            None,
            None,
            f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}",
            "fix the JSON syntax there (a JSON list of objects is expected)",
        ) from None
    if not isinstance(data, list):
        raise DatasetFormatError(
            source,
            None,
            None,
            f"expected a JSON list of examples, got {type(data).__name__}",
            'write [{"question": ..., "steps": [...], "answer": ...}, ...]; '
            "for one object per line use format='jsonl'",
        )
    yield from enumerate(data, 1)


def load_coconut_json(path: str | Path) -> list[Example]:
    """A Coconut-format JSON list (``[{question, steps, answer, ...}]``); extra keys are kept.

    The released ProsQA files load with this as they are.
    """
    path = Path(path)
    return _collect(_rows_coconut_json(path), str(path), "raise")[0]


# ---------------------------------------------------------------- iCoT text


def _split_steps(text: str, step_separator: str | None) -> list[str]:
    text = text.strip()
    if not text:
        return []
    if step_separator is None:
        if "<<" in text:
            return _CALC_RE.findall(text)
        step_separator = " + "
    return [s.strip() for s in text.split(step_separator) if s.strip()]


def _rows_icot(path: Path, step_separator: str | None) -> Iterator[_Row]:
    source = str(path)
    for line_no, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        question, sep, rest = line.partition("||")
        if not sep:
            yield (
                line_no,
                DatasetFormatError(
                    source,
                    line_no,
                    "steps",
                    "no '||' between question and steps",
                    "write each line as question||steps #### answer",
                ),
            )
            continue
        parts = _ANSWER_SEP_RE.split(rest)
        if len(parts) != 2:
            problem = (
                "no '####' (or '##') before the answer"
                if len(parts) < 2
                else "more than one '##' answer separator"
            )
            yield (
                line_no,
                DatasetFormatError(
                    source,
                    line_no,
                    "answer",
                    problem,
                    "write each line as question||steps #### answer",
                ),
            )
            continue
        steps_text, answer = parts
        if "<<" in steps_text and step_separator is None and _CALC_RE.sub("", steps_text).strip():
            leftover = _CALC_RE.sub("", steps_text).strip()
            yield (
                line_no,
                DatasetFormatError(
                    source,
                    line_no,
                    "steps",
                    f"text outside the <<...>> steps: {leftover[:40]!r}",
                    "remove it, or pass step_separator= to split steps yourself",
                ),
            )
            continue
        yield (
            line_no,
            {
                "question": question.strip(),
                "steps": _split_steps(steps_text, step_separator),
                "answer": answer.strip(),
            },
        )


def load_icot_text(path: str | Path, step_separator: str | None = None) -> list[Example]:
    """iCoT text lines ``question||steps #### answer`` (``##`` also accepted as the separator).

    Steps: with ``step_separator=None`` (auto), each ``<<...>>`` calculator chunk is one step
    (GSM8k-Aug); otherwise steps are split on ``" + "`` (iCoT multiplication). A given
    ``step_separator`` always splits on that string. An empty steps part gives ``[]``.
    """
    path = Path(path)
    return _collect(_rows_icot(path, step_separator), str(path), "raise")[0]


# ---------------------------------------------------------------- JSONL with field names


def _rows_jsonl(path: Path) -> Iterator[_Row]:
    source = str(path)
    for line_no, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as e:
            yield (
                line_no,
                DatasetFormatError(
                    source,
                    line_no,
                    None,
                    f"invalid JSON (column {e.colno}): {e.msg}",
                    "each line must be one complete JSON object",
                ),
            )


def _jsonl_converter(source: str, field_map: dict[str, str] | None, steps_split: str | None):
    field_map = dict(field_map or {})
    unknown = sorted(set(field_map) - {"question", "steps", "answer"})
    if unknown:
        raise ValueError(
            f"field_map keys must be question/steps/answer, got {unknown}; "
            "map OUR name to YOUR column, e.g. {'question': 'problem'}"
        )

    sources = {field_map.get(ours, ours) for ours in ("question", "steps", "answer")}

    def convert(row: Any, row_no: int) -> Any:
        if not isinstance(row, dict):
            return row  # validate_example names the problem
        out = {k: v for k, v in row.items() if k not in sources}
        for ours in ("question", "steps", "answer"):
            theirs = field_map.get(ours, ours)
            if theirs not in row:
                problem = (
                    "missing" if theirs == ours else f"missing (field_map reads it as {ours!r})"
                )
                raise DatasetFormatError(
                    source,
                    row_no,
                    theirs,
                    problem,
                    f"the row has keys {sorted(row)}; set field_map={{{ours!r}: <column>}}",
                )
            out[ours] = row[theirs]
        if isinstance(out["steps"], str):
            text = out["steps"]
            out["steps"] = (
                [text]
                if steps_split is None
                else [s.strip() for s in text.split(steps_split) if s.strip()]
            )
        return out

    return convert


def load_jsonl(
    path: str | Path, field_map: dict[str, str] | None = None, steps_split: str | None = None
) -> list[Example]:
    """JSONL, one object per line, with configurable field names.

    ``field_map`` maps our names onto the file's, e.g. Latent-SFT's
    ``{"question": "problem", "steps": "cot", "answer": "cot_answer"}``; unmapped columns are
    kept as extra keys. A string steps field is split on ``steps_split`` (e.g. ``"\\n"``), or
    kept as a single step when ``steps_split`` is None.
    """
    path = Path(path)
    return _collect(
        _rows_jsonl(path), str(path), "raise", _jsonl_converter(str(path), field_map, steps_split)
    )[0]


# ---------------------------------------------------------------- dispatch


def detect_format(path: str | Path) -> str:
    """``"coconut_json"``, ``"jsonl"`` or ``"icot"``, from the extension, else from the content."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".txt":
        return "icot"
    head = _read_text(path)[:4096].lstrip()
    if head.startswith("["):
        return "coconut_json"
    if head.startswith("{"):
        return "jsonl"
    if "||" in head.split("\n", 1)[0]:
        return "icot"
    raise DatasetFormatError(
        str(path),
        None,
        None,
        "cannot tell the format from the extension or the content",
        f"pass format= one of {list(FORMATS[1:])}",
    )


def load_examples_with_report(
    path: str | Path, format: str = "auto", on_error: str = "raise", **kw: Any
) -> tuple[list[Example], SkipReport]:
    """Load any supported file; also return the :class:`SkipReport` (empty in raise mode).

    ``kw`` goes to the format: ``step_separator`` (icot), ``field_map`` and ``steps_split`` (jsonl).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file (fix: check the path; folders go to load_local_dataset)"
        )
    fmt = _ALIASES.get(format, format)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {format!r}; use one of {list(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)
    allowed = {
        "coconut_json": set(),
        "icot": {"step_separator"},
        "jsonl": {"field_map", "steps_split"},
    }[fmt]
    if set(kw) - allowed:
        raise TypeError(
            f"{path}: option(s) {sorted(set(kw) - allowed)} do not apply to format {fmt!r}; "
            f"it takes {sorted(allowed) or 'none'}"
        )
    source = str(path)
    if fmt == "coconut_json":
        return _collect(_rows_coconut_json(path), source, on_error)
    if fmt == "icot":
        return _collect(_rows_icot(path, kw.get("step_separator")), source, on_error)
    return _collect(
        _rows_jsonl(path),
        source,
        on_error,
        _jsonl_converter(source, kw.get("field_map"), kw.get("steps_split")),
    )


def load_examples(
    path: str | Path, format: str = "auto", on_error: str = "raise", **kw: Any
) -> list[Example]:
    """Load any supported file as examples (see :func:`load_examples_with_report`).

    ``on_error="raise"`` stops at the first bad row; ``"skip"`` skips bad rows and warns with
    their count and first reasons (call :func:`load_examples_with_report` to get them as data).
    """
    return load_examples_with_report(path, format, on_error, **kw)[0]
