"""Run notebooks with papermill, alone or as a parameter sweep, checking parameters first.

Every workbench notebook has exactly one cell tagged ``parameters`` holding literal, typed,
commented assignments::

    steps: int = 300  # training steps
    lr: float = 1e-3  # learning rate
    out_dir: str = "artifacts"  # where metrics.json and figures go

and writes ``metrics.json`` (a flat dict of metrics, or a list of row dicts such as one row per
method) into ``out_dir``. This module reads that cell with :mod:`ast` (no kernel), so a misspelt
name or a wrong type is refused *before* any kernel starts, with the notebook's own parameter
list in the message. :func:`sweep` then runs the cartesian product of a grid, one executed
notebook per point, and gathers every ``metrics.json`` into one tidy :class:`pandas.DataFrame`
(also written as ``sweep.csv``).

A sweep is resumable: each finished point gets a ``point.json`` (written atomically, last, after
its executed notebook and metrics) recording the notebook's content hash, the point's parameters
and the metrics file's hash. Rerunning the same sweep into the same folder skips every point
whose record still matches and reruns the rest (a point that failed, was killed half-way, or
ran with another notebook or other parameters). A failing point never stops the others unless
``stop_on_error`` is set; its one-line error lands in the ``error`` column of ``sweep.csv``.

From the command line (``workbench sweep``)::

    workbench sweep notebooks/01_coconut.ipynb -p lr 1e-3,3e-4 -p seed 0 -p seed 1 --out-dir runs/s1
    workbench sweep notebooks/01_coconut.ipynb --list-params
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import hashlib
import io
import itertools
import json
import math
import numbers
import os
import re
import sys
import time
import tokenize
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import WorkbenchError
from workbench.io import atomic_write_json, atomic_write_text, remove_folder

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "POINT_FILE",
    "NotebookParameterError",
    "ParamSpec",
    "main",
    "notebook_hash",
    "read_notebook_parameters",
    "run_notebook",
    "sweep",
    "validate_parameters",
]

#: Annotations whose values are checked; anything else is accepted as written.
_SCALAR_TYPES: dict[str, type] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "list": list,
    "dict": dict,
    "tuple": tuple,
}
#: Columns the sweep table owns; metrics with these names are renamed ``metric_<name>``.
_RESERVED_COLUMNS = ("run", "notebook", "status", "error", "duration_s")
POINT_FILE = "point.json"
"""The record of a finished point, in its folder; written last, so its presence means done."""
_POINT_FORMAT = 1
_MAX_ERROR_CHARS = 500


class NotebookParameterError(WorkbenchError, ValueError):
    """A notebook parameter is unknown, mistyped, or the parameters cell is not literal."""


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a notebook, as declared in its ``parameters`` cell.

    Args:
        name: The variable name.
        type_name: The annotation as written (``"int"``, ``"list[int]"``, ``"str | None"``);
            for an unannotated assignment, the type of its literal value (``"Any"`` for None).
        default: The literal value in the cell.
        help: The trailing comment on the assignment (or the comment block just above it).
    """

    name: str
    type_name: str
    default: Any
    help: str = ""


# --------------------------------------------------------------------------------------------
# Reading the parameters cell
# --------------------------------------------------------------------------------------------


def read_notebook_parameters(nb_path: str | Path) -> dict[str, ParamSpec]:
    """The parameters declared in the notebook's cell tagged ``parameters``, in cell order.

    Raises:
        NotebookParameterError: no (or more than one) ``parameters`` cell, a statement that is
            not a ``name: type = literal`` assignment, or a default that does not match its
            annotation. The message names the notebook and the line within the cell.
    """
    nb_path = Path(nb_path)
    nb = _read_notebook(nb_path)
    tagged = [
        (i, cell)
        for i, cell in enumerate(nb.cells)
        if "parameters" in (cell.get("metadata", {}).get("tags") or [])
    ]
    if not tagged:
        raise NotebookParameterError(
            f"{nb_path.name}: no cell is tagged 'parameters'; tag exactly one code cell "
            "'parameters' (papermill injects overrides right after it)"
        )
    if len(tagged) > 1:
        where = ", ".join(str(i + 1) for i, _ in tagged)
        raise NotebookParameterError(
            f"{nb_path.name}: {len(tagged)} cells are tagged 'parameters' (cells {where}); "
            "tag exactly one"
        )
    index, cell = tagged[0]
    if cell.get("cell_type") != "code":
        raise NotebookParameterError(
            f"{nb_path.name}: the cell tagged 'parameters' (cell {index + 1}) is a "
            f"{cell.get('cell_type')} cell; it must be a code cell"
        )
    return _parse_parameters_source(cell.source, f"{nb_path.name} parameters cell")


def _read_notebook(nb_path: Path):
    """The notebook as an nbformat v4 node; an unreadable file is a NotebookParameterError."""
    import nbformat

    try:
        return nbformat.read(str(nb_path), as_version=4)
    except FileNotFoundError:
        raise NotebookParameterError(f"no such notebook: {nb_path}") from None
    except Exception as exc:  # nbformat raises NotJSONError, ValidationError, KeyError, ...
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise NotebookParameterError(
            f"{nb_path}: not a readable Jupyter notebook ({type(exc).__name__}: {first}); "
            "open and re-save it in JupyterLab, or restore it from git"
        ) from None


def notebook_hash(nb_path: str | Path) -> str:
    """sha256 of what the notebook computes: each cell's type, tags and source, in order.

    Outputs, execution counts and other metadata are left out, so running or re-saving the
    notebook does not change it; editing any cell (the parameters cell included) does.
    """
    nb = _read_notebook(Path(nb_path))
    cells = [
        [cell.get("cell_type"), sorted(cell.get("metadata", {}).get("tags") or []), cell.source]
        for cell in nb.cells
    ]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode("utf-8")).hexdigest()


def _parse_parameters_source(source: str, where: str) -> dict[str, ParamSpec]:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise NotebookParameterError(
            f"{where}, line {exc.lineno}: not valid Python ({exc.msg}); parameters cells must "
            "hold only `name: type = literal` assignments"
        ) from None
    lines = source.splitlines()
    comments = _comments_by_line(source)
    specs: dict[str, ParamSpec] = {}
    for node in tree.body:
        line = node.lineno
        text = lines[line - 1].strip() if line - 1 < len(lines) else ""
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring or bare string: harmless
        if isinstance(node, ast.AnnAssign):
            target, annotation, value_node = node.target, node.annotation, node.value
            if value_node is None:
                raise NotebookParameterError(
                    f"{where}, line {line}: `{text}` has no value; give every parameter a "
                    "literal default"
                )
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, annotation, value_node = node.targets[0], None, node.value
        else:
            raise NotebookParameterError(
                f"{where}, line {line}: `{text}` is not an assignment; parameters cells may "
                "only hold `name: type = literal` lines (put code in the next cell)"
            )
        if not isinstance(target, ast.Name):
            raise NotebookParameterError(
                f"{where}, line {line}: `{text}` does not assign a plain name"
            )
        try:
            value = ast.literal_eval(value_node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise NotebookParameterError(
                f"{where}, line {line}: the value of `{target.id}` "
                f"(`{ast.unparse(value_node)}`) is not a literal; parameters cells must be "
                "literals only: papermill overrides do not recompute derived values, so derive "
                "them in the next cell"
            ) from None
        if annotation is not None:
            type_name = ast.unparse(annotation)
        else:
            type_name = "Any" if value is None else type(value).__name__
        if not _matches(value, type_name):
            raise NotebookParameterError(
                f"{where}, line {line}: the default of `{target.id}` is "
                f"{type(value).__name__} {value!r}, which does not match its annotation "
                f"{type_name}"
            )
        specs[target.id] = ParamSpec(
            name=target.id,
            type_name=type_name,
            default=value,
            help=_help_for(node, comments, lines),
        )
    return specs


def _comments_by_line(source: str) -> dict[int, str]:
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError):  # pragma: no cover - ast.parse passed
        pass
    return comments


def _help_for(node: ast.stmt, comments: dict[int, str], lines: list[str]) -> str:
    end = node.end_lineno or node.lineno
    for line in range(node.lineno, end + 1):
        if line in comments:
            return comments[line]
    # No trailing comment: use the block of whole-line comments right above.
    block: list[str] = []
    line = node.lineno - 1
    while line >= 1 and line in comments and lines[line - 1].lstrip().startswith("#"):
        block.insert(0, comments[line])
        line -= 1
    return " ".join(b for b in block if b)


# --------------------------------------------------------------------------------------------
# Type checking
# --------------------------------------------------------------------------------------------


def _split_top(text: str, sep: str) -> list[str]:
    """Split ``text`` on ``sep`` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _union_members(type_name: str) -> list[str] | None:
    """``"int | None"`` / ``"Optional[int]"`` / ``"Union[a, b]"`` as members, else None."""
    members = _split_top(type_name, "|")
    if len(members) > 1:
        return members
    m = re.fullmatch(r"(?:typing\.)?(Optional|Union)\[(.*)\]", type_name.strip())
    if m:
        inner = _split_top(m.group(2), ",")
        return [*inner, "None"] if m.group(1) == "Optional" else inner
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _matches(value: Any, type_name: str) -> bool:
    """Whether ``value`` fits the annotation ``type_name`` (unknown annotations always fit)."""
    type_name = type_name.strip()
    members = _union_members(type_name)
    if members is not None:
        return any(_matches(value, m) for m in members)
    if type_name in ("None", "NoneType"):
        return value is None
    if type_name in ("Any", "typing.Any", "object", ""):
        return True
    m = re.fullmatch(r"(?:typing\.)?(\w+)\[(.*)\]", type_name)
    base = m.group(1).lower() if m else type_name
    args = _split_top(m.group(2), ",") if m else []
    if base == "int":
        return _is_int(value)
    if base == "float":
        return _is_real(value)
    if base == "str":
        return isinstance(value, (str, os.PathLike))
    if base == "bool":
        return isinstance(value, bool) or type(value).__name__ == "bool_"
    if base == "list":
        if not isinstance(value, (list, tuple)):
            return False
        return not args or all(_matches(v, args[0]) for v in value)
    if base == "tuple":
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] == "...":
            return all(_matches(v, args[0]) for v in value)
        return not args or (
            len(args) == len(value)
            and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        )
    if base == "dict":
        if not isinstance(value, dict):
            return False
        if len(args) == 2:
            return all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
        return True
    return True  # an annotation we do not model (e.g. a Literal): accept


def _normalize(value: Any, type_name: str) -> Any:
    """Plain-Python form of an accepted value, so papermill writes it as a valid literal."""
    members = _union_members(type_name)
    if members is not None:
        if value is None:
            return None
        for m in members:
            if m.strip() not in ("None", "NoneType") and _matches(value, m):
                return _normalize(value, m)
        return value
    m = re.fullmatch(r"(?:typing\.)?(\w+)\[(.*)\]", type_name.strip())
    base = (m.group(1) if m else type_name.strip().replace("typing.", "")).lower()
    args = _split_top(m.group(2), ",") if m else []
    if base in ("list", "tuple") and isinstance(value, (list, tuple)):
        if base == "list" and args:
            return [_normalize(v, args[0]) for v in value]
        if base == "tuple" and len(args) == 2 and args[1] == "...":
            return [_normalize(v, args[0]) for v in value]
        if base == "tuple" and len(args) == len(value):
            return [_normalize(v, a) for v, a in zip(value, args, strict=True)]
        return [_normalize(v, "Any") for v in value]
    if base == "dict" and isinstance(value, dict):
        if len(args) == 2:
            return {_normalize(k, args[0]): _normalize(v, args[1]) for k, v in value.items()}
        return value
    if base == "float" and value is not None:
        return float(value)
    if base == "int" and value is not None:
        return int(value)
    if base == "bool" and value is not None:
        return bool(value)
    if base == "str" and isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and type(value).__module__ == "numpy":  # numpy scalar
        return value.item()
    return value


def _type_label(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _unknown_error(name: str, specs: dict[str, ParamSpec], nb_path: Path) -> NotebookParameterError:
    known = list(specs)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ";"
    return NotebookParameterError(
        f"unknown parameter '{name}' for notebook {nb_path.name}{hint} "
        f"Known parameters: {', '.join(known) or '(none)'} (see --list-params)"
    )


def _check(specs: dict[str, ParamSpec], nb_path: Path, params: dict[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for name, value in params.items():
        spec = specs.get(name)
        if spec is None:
            raise _unknown_error(name, specs, nb_path)
        if not _matches(value, spec.type_name):
            raise NotebookParameterError(
                f"parameter '{name}' of notebook {nb_path.name} expects {spec.type_name}, "
                f"got {_type_label(value)} {value!r}"
            )
        checked[name] = _normalize(value, spec.type_name)
    return checked


def validate_parameters(nb_path: str | Path, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the notebook's ``parameters`` cell; return them normalised.

    Normalised means plain Python values of the annotated type: an int given for a ``float``
    becomes a float, a path given for a ``str`` becomes a str, numpy scalars become Python ones.
    A bool is not accepted as an int or float.

    Raises:
        NotebookParameterError: an unknown name (with the closest known name and the full list)
            or a value whose type does not match the annotation (with both types).
    """
    nb_path = Path(nb_path)
    return _check(read_notebook_parameters(nb_path), nb_path, dict(params or {}))


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def _execute(
    nb_path: Path,
    out_path: Path,
    params: dict[str, Any],
    *,
    cwd: str | Path | None,
    kernel_name: str,
    execution_timeout: int | None,
    log_output: bool,
    start_timeout: int,
    papermill_kwargs: dict[str, Any],
) -> Path:
    import papermill

    out_path.parent.mkdir(parents=True, exist_ok=True)
    if kernel_name.startswith("python") and "extra_arguments" not in papermill_kwargs:
        # ipykernel logs start-up chatter (e.g. "running over TCP without encryption") straight
        # to stderr, once per kernel; keep real errors only.
        papermill_kwargs = {
            **papermill_kwargs,
            "extra_arguments": ["--IPKernelApp.log_level=ERROR"],
        }
    papermill.execute_notebook(
        str(nb_path),
        str(out_path),
        parameters=params,
        kernel_name=kernel_name,
        cwd=str(cwd if cwd is not None else nb_path.resolve().parent),
        execution_timeout=execution_timeout,
        start_timeout=start_timeout,
        progress_bar=False,
        log_output=log_output,
        **papermill_kwargs,
    )
    return out_path


def run_notebook(
    nb_path: str | Path,
    out_path: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    cwd: str | Path | None = None,
    kernel_name: str = "python3",
    execution_timeout: int | None = None,
    log_output: bool = False,
    start_timeout: int = 120,
    **papermill_kwargs: Any,
) -> Path:
    """Execute ``nb_path`` with papermill into ``out_path``, after checking ``parameters``.

    Args:
        nb_path: The source notebook.
        out_path: Where the executed notebook is written (folders are created).
        parameters: Overrides for the ``parameters`` cell; checked before any kernel starts.
        cwd: The kernel's working directory; defaults to the notebook's own folder (as nbval
            and JupyterLab do), not the caller's.
        kernel_name: Kernel spec to run; ``python3`` ignores whatever the notebook names.
        execution_timeout: Seconds per cell (None: no limit).
        log_output: Echo the notebook's output to this process's log as it runs.
        start_timeout: Seconds to wait for the kernel to start.
        **papermill_kwargs: Passed on to :func:`papermill.execute_notebook`.

    Returns:
        ``out_path`` as a Path.

    Raises:
        NotebookParameterError: before execution, for bad parameters.
        papermill.PapermillExecutionError: a cell raised.
    """
    nb_path = Path(nb_path)
    params = validate_parameters(nb_path, parameters or {})
    return _execute(
        nb_path,
        Path(out_path),
        params,
        cwd=cwd,
        kernel_name=kernel_name,
        execution_timeout=execution_timeout,
        log_output=log_output,
        start_timeout=start_timeout,
        papermill_kwargs=papermill_kwargs,
    )


def _slug(value: Any) -> str:
    text = repr(value) if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text) or "x"


def _run_name(index: int, width: int, point: dict[str, Any]) -> str:
    parts = [f"{index:0{width}d}"] + [f"{_slug(k)}={_slug(v)}" for k, v in point.items()]
    return "_".join(parts)[:120]


def _flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, dict):
        return [_flatten(data)]
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        return [_flatten(row) for row in data] or [{}]
    raise ValueError(
        f"{path.name} must hold a dict of metrics or a list of row dicts, got {type(data).__name__}"
    )


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _error_text(exc: BaseException) -> str:
    """One line: the exception type and message (for a failing cell, the cell's own error)."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        text = f"{ename}: {evalue}" if evalue else str(ename)
    else:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    text = " ".join(_ANSI_RE.sub("", text).split())
    if len(text) > _MAX_ERROR_CHARS:
        text = text[: _MAX_ERROR_CHARS - 3] + "..."
    return text


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _jsonable(params: dict[str, Any]) -> Any:
    """``params`` as they read back from JSON (tuples become lists), for comparing records."""
    return json.loads(json.dumps(params, sort_keys=True, default=str))


def _finished_point(
    point_dir: Path, out_nb: Path, nb_hash: str, params: dict[str, Any], metrics_file: str
) -> tuple[dict[str, Any] | None, str]:
    """``(record, "")`` when the point in ``point_dir`` finished with this notebook and these
    parameters (its ``point.json`` matches and its files are intact), else ``(None, why not)``."""
    record_path = point_dir / POINT_FILE
    if not record_path.is_file():
        if point_dir.exists() or out_nb.exists():
            return None, "an earlier run of it did not finish"
        return None, ""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, f"its {POINT_FILE} is unreadable"
    if not isinstance(record, dict) or record.get("status") != "ok":
        return None, f"its {POINT_FILE} does not record a finished point"
    if record.get("notebook_sha256") != nb_hash:
        return None, "the notebook changed since it ran"
    if record.get("parameters") != _jsonable(params) or record.get("metrics_file") != metrics_file:
        return None, "its parameters changed since it ran"
    metrics_path = point_dir / metrics_file
    if not out_nb.is_file() or not metrics_path.is_file():
        return None, f"its executed notebook or {metrics_file} is missing"
    if _sha256_file(metrics_path) != record.get("metrics_sha256"):
        return None, f"its {metrics_file} changed since it ran"
    return record, ""


def _discard_point(point_dir: Path, out_nb: Path) -> None:
    """Remove what an earlier (unfinished or outdated) run of a point left: record first."""
    with contextlib.suppress(FileNotFoundError):
        (point_dir / POINT_FILE).unlink()
    remove_folder(point_dir)
    with contextlib.suppress(FileNotFoundError):
        out_nb.unlink()


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False, lineterminator="\n"))


def _as_values(name: str, values: Any) -> list[Any]:
    if isinstance(values, (list, tuple)):
        values = list(values)
    elif hasattr(values, "tolist") and not isinstance(values, (str, bytes)):  # numpy array
        values = list(values.tolist())
    else:
        values = [values]
    if not values:
        raise NotebookParameterError(f"sweep: parameter '{name}' has no values in the grid")
    return values


def sweep(
    nb_path: str | Path,
    grid: dict[str, list[Any]],
    out_dir: str | Path,
    *,
    fixed: dict[str, Any] | None = None,
    metrics_file: str = "metrics.json",
    kernel_name: str = "python3",
    cwd: str | Path | None = None,
    execution_timeout: int | None = None,
    start_timeout: int = 120,
    log_output: bool = False,
    stop_on_error: bool = False,
    verbose: bool = True,
) -> pd.DataFrame:
    """Run ``nb_path`` at every point of ``grid`` and gather the metrics into one table.

    Every value in ``grid`` and ``fixed`` is checked against the notebook's parameters cell
    before the first kernel starts. Point ``i`` runs with its own ``out_dir`` parameter,
    ``<out_dir>/<run>/``, and its executed notebook is ``<out_dir>/<run>.ipynb``, where ``run``
    encodes the point (``003_lr=0.001_seed=1``). After each point the table so far is written
    atomically to ``<out_dir>/sweep.csv``.

    Resuming: a point that finished is recorded in ``<out_dir>/<run>/point.json`` (notebook
    content hash, parameters, metrics hash), written atomically after its metrics. Calling
    ``sweep`` again with the same ``out_dir`` skips every point whose record matches (its
    metrics are read back, ``status="skipped"``) and reruns the others from scratch: a point
    that failed or was killed (no record), or whose notebook (see :func:`notebook_hash`) or
    parameters changed. An outdated point's old folder and executed notebook are deleted first,
    so nothing stale is ever read as its result.

    Args:
        nb_path: The notebook; it must have an ``out_dir: str`` parameter and write
            ``metrics_file`` there (a flat dict, or a list of row dicts: one table row each).
        grid: Parameter name -> list of values; the sweep is their cartesian product (a
            single non-list value counts as a one-value list).
        out_dir: The sweep's folder.
        fixed: Parameters held constant at every point (they are columns too).
        metrics_file: The file name each point writes in its ``out_dir``.
        kernel_name, cwd, execution_timeout, start_timeout, log_output: as in
            :func:`run_notebook`.
        stop_on_error: Re-raise the first failing point's error (after writing sweep.csv);
            otherwise record it (``status="error"`` and the one-line message) and go on.
        verbose: Print one progress line per point (and one per skipped point).

    Returns:
        One row per point (or per metrics row): ``run``, ``notebook``, the parameter columns,
        the metric columns (nested dicts flattened as ``a/b``; a metric named like a parameter
        or a reserved column becomes ``metric_<name>`` unless it just repeats the parameter),
        ``status`` (``ok``, ``skipped``: finished by an earlier call, or ``error``), ``error``
        (one line: exception type and message) and ``duration_s`` (for a skipped point, the
        duration of the run that finished it).

    Raises:
        NotebookParameterError: bad parameters or notebook, before anything runs.
        KeyboardInterrupt: passed on; ``sweep.csv`` holds the points finished so far and
            rerunning resumes at the interrupted point.
    """
    import pandas as pd

    nb_path = Path(nb_path)
    out_dir = Path(out_dir)
    fixed = dict(fixed or {})
    grid = {name: _as_values(name, values) for name, values in (grid or {}).items()}

    specs = read_notebook_parameters(nb_path)
    if "out_dir" not in specs:
        raise NotebookParameterError(
            f"{nb_path.name} has no 'out_dir' parameter; a sweep gives every point its own "
            "out_dir, so the notebook must declare `out_dir: str = ...` and write "
            f"{metrics_file} there"
        )
    for name in ("out_dir",):
        if name in grid or name in fixed:
            raise NotebookParameterError(
                f"sweep: do not set '{name}'; the sweep gives each point its own folder "
                f"under {out_dir}"
            )
    both = sorted(set(grid) & set(fixed))
    if both:
        raise NotebookParameterError(f"sweep: {both} given both in grid and in fixed")
    fixed = _check(specs, nb_path, fixed)
    grid = {
        name: [_check(specs, nb_path, {name: v})[name] for v in values]
        for name, values in grid.items()
    }
    nb_hash = notebook_hash(nb_path)

    names = list(grid)
    points = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grid.values())]
    width = max(3, len(str(len(points) - 1)))
    param_cols = [*fixed, *names]
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "sweep.csv"
    rows: list[dict[str, Any]] = []

    def frame() -> pd.DataFrame:
        df = pd.DataFrame(rows)
        metric_cols = [c for c in df.columns if c not in (*_RESERVED_COLUMNS, *param_cols)]
        order = ["run", "notebook", *param_cols, *metric_cols, "status", "error", "duration_s"]
        return df.reindex(columns=order)

    def add_rows(
        base: dict[str, Any],
        metric_rows: list[dict[str, Any]],
        status: str,
        error: str,
        duration: float,
    ) -> None:
        for metrics in metric_rows:
            row = dict(base)
            for key, value in metrics.items():
                if key in base and key in param_cols and _same(base[key], value):
                    continue  # the notebook echoed its parameter: nothing new
                if key in base or key in _RESERVED_COLUMNS:
                    key = f"metric_{key}"
                row[key] = value
            row.update(status=status, error=error, duration_s=duration)
            rows.append(row)

    for i, point in enumerate(points):
        run = _run_name(i, width, point)
        point_dir = (out_dir / run).resolve()
        out_nb = out_dir / f"{run}.ipynb"
        point_params = {**fixed, **point}
        params = {**point_params, "out_dir": str(point_dir)}
        base = {"run": run, "notebook": nb_path.name, **fixed, **point}
        tag = f"[{i + 1}/{len(points)}] {run}"

        record, why = _finished_point(point_dir, out_nb, nb_hash, point_params, metrics_file)
        if record is not None:
            try:
                metric_rows = _read_metrics(point_dir / metrics_file)
            except (OSError, ValueError) as exc:
                record, why = None, f"its {metrics_file} is unreadable ({_error_text(exc)})"
            else:
                duration = record.get("duration_s")
                add_rows(base, metric_rows, "skipped", "", duration)
                _write_csv_atomic(frame(), csv_path)
                if verbose:
                    print(f"{tag}: skipped (finished earlier; see {run}/{POINT_FILE})", flush=True)
                continue
        if verbose:
            print(f"{tag} ... (rerun: {why})" if why else f"{tag} ...", flush=True)
        _discard_point(point_dir, out_nb)
        t0 = time.perf_counter()
        error: BaseException | None = None
        metric_rows = [{}]
        try:
            _execute(
                nb_path,
                out_nb,
                params,
                cwd=cwd,
                kernel_name=kernel_name,
                execution_timeout=execution_timeout,
                log_output=log_output,
                start_timeout=start_timeout,
                papermill_kwargs={},
            )
            metrics_path = point_dir / metrics_file
            if not metrics_path.is_file():
                raise FileNotFoundError(
                    f"the notebook ran but wrote no {metrics_file} in its out_dir ({point_dir})"
                )
            metric_rows = _read_metrics(metrics_path)
            duration = round(time.perf_counter() - t0, 3)
            # Written last: its presence (and matching hashes) is what marks the point finished.
            atomic_write_json(
                point_dir / POINT_FILE,
                {
                    "format_version": _POINT_FORMAT,
                    "status": "ok",
                    "run": run,
                    "notebook": nb_path.name,
                    "notebook_sha256": nb_hash,
                    "parameters": _jsonable(point_params),
                    "metrics_file": metrics_file,
                    "metrics_sha256": _sha256_file(metrics_path),
                    "output_notebook": out_nb.name,
                    "duration_s": duration,
                    "finished_at": datetime.now().isoformat(timespec="seconds"),
                },
                indent=2,
                sort_keys=True,
            )
        except Exception as exc:  # a failing point is recorded; KeyboardInterrupt is not caught
            error = exc
            metric_rows = [{}]
        except KeyboardInterrupt:
            if verbose:
                print(
                    f"{tag}: interrupted; {csv_path} holds the {i} point(s) before it. Rerun the "
                    "same sweep with the same out_dir to resume here",
                    flush=True,
                )
            raise
        duration = round(time.perf_counter() - t0, 3)
        error_text = "" if error is None else _error_text(error)
        add_rows(base, metric_rows, "ok" if error is None else "error", error_text, duration)
        _write_csv_atomic(frame(), csv_path)
        if verbose:
            state = "ok" if error is None else f"ERROR {error_text}"
            print(f"{tag}: {state} ({duration:.1f}s)", flush=True)
        if error is not None and stop_on_error:
            with contextlib.suppress(AttributeError):  # main() names the point
                error._workbench_sweep_run = run  # type: ignore[attr-defined]
            raise error
    return frame()


def _same(a: Any, b: Any) -> bool:
    try:
        if isinstance(a, float) or isinstance(b, float):
            return math.isclose(float(a), float(b))
        return bool(a == b)
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _cast_cli(raw: str, spec: ParamSpec, nb_path: Path) -> Any:
    """One command-line token as a value of ``spec``'s type (YAML for scalars, lists, dicts)."""
    import yaml

    def fail() -> NotebookParameterError:
        return NotebookParameterError(
            f"parameter '{spec.name}' of notebook {nb_path.name} expects {spec.type_name}, "
            f"got {raw!r} on the command line"
        )

    type_name = spec.type_name.strip()
    members = _union_members(type_name)
    if members is not None:
        if raw.strip() in ("None", "null", "~", "") and any(
            m.strip() in ("None", "NoneType") for m in members
        ):
            return None
        for m in members:
            if m.strip() in ("None", "NoneType"):
                continue
            try:
                return _cast_cli(raw, ParamSpec(spec.name, m, spec.default, spec.help), nb_path)
            except NotebookParameterError:
                pass
        raise fail()
    base = re.sub(r"\[.*", "", type_name).replace("typing.", "").lower()
    if base == "str":
        return raw  # raw text: `-p name 007` stays "007"
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if base == "float":
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-3 as a string
            except ValueError:
                raise fail() from None
        if not _is_real(value):
            raise fail()
        return float(value)
    if base == "int":
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    raise fail() from None
                if not f.is_integer():
                    raise fail() from None
                return int(f)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not _is_int(value):
            raise fail()
        return value
    if base == "bool":
        if not isinstance(value, bool):
            raise fail()
        return value
    if not _matches(value, type_name):
        raise fail()
    return value


def _grid_from_cli(
    nb_path: Path,
    specs: dict[str, ParamSpec],
    params: list[tuple[str, str]],
    raw_params: list[tuple[str, str]],
) -> dict[str, list[Any]]:
    """``-p name value`` pairs as a grid; repeats and comma lists add values to a name."""
    grid: dict[str, list[Any]] = {}
    for name, raw in params:
        spec = specs.get(name)
        if spec is None:
            raise _unknown_error(name, specs, nb_path)
        base = re.sub(r"\[.*", "", spec.type_name.strip()).lower()
        # A list or dict value is one YAML flow value ("[1, 2]"); other values split on commas.
        tokens = [raw] if base in ("list", "dict", "tuple") else raw.split(",")
        for token in tokens:
            grid.setdefault(name, []).append(_cast_cli(token.strip(), spec, nb_path))
    for name, raw in raw_params:
        if name not in specs:
            raise _unknown_error(name, specs, nb_path)
        grid.setdefault(name, []).append(raw)
    return grid


def _default_out_dir(nb_path: Path) -> Path:
    from workbench.paths import runs_dir

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return runs_dir() / "sweeps" / f"{nb_path.stem}-{stamp}"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench sweep",
        description=(
            "Run a notebook with papermill over a grid of parameters and gather every point's "
            "metrics.json into one table (sweep.csv). Parameters are checked against the "
            "notebook's parameters cell before any kernel starts."
        ),
        epilog=(
            "example: workbench sweep notebooks/01_coconut.ipynb -p lr 1e-3,3e-4 -p seed 0 "
            "-p seed 1 --out-dir runs/lr-sweep"
        ),
    )
    parser.add_argument("notebook", type=Path, help="the notebook to run")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a parameter value; repeat a name or give a comma list (1e-3,3e-4) to sweep it. "
        "Values are read as YAML scalars and cast to the annotated type; a list or dict "
        "parameter takes one YAML flow value per -p ('[1, 2]')",
    )
    parser.add_argument(
        "-r",
        "--raw",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a string parameter value taken verbatim (no comma splitting)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="the sweep's folder (default: $WORKBENCH_RUNS_DIR/sweeps/<notebook>-<time>)",
    )
    parser.add_argument("--metrics-file", default="metrics.json")
    parser.add_argument("-k", "--kernel", default="python3", help="kernel name (python3)")
    parser.add_argument("--cwd", type=Path, default=None, help="default: the notebook's folder")
    parser.add_argument(
        "--execution-timeout", type=int, default=None, help="seconds per cell (default: none)"
    )
    parser.add_argument("--start-timeout", type=int, default=120, help="kernel start, seconds")
    parser.add_argument("--log-output", action="store_true", help="echo notebook output")
    parser.add_argument(
        "--stop-on-error", action="store_true", help="stop at the first failing point"
    )
    parser.add_argument(
        "--list-params",
        action="store_true",
        help="print the notebook's parameters (type, default, help) and exit",
    )
    return parser


def _params_table(specs: dict[str, ParamSpec]) -> str:
    rows = [("name", "type", "default", "help")] + [
        (s.name, s.type_name, repr(s.default), s.help) for s in specs.values()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip()
        for r in rows
    )


def main(argv: list[str] | None = None) -> int:
    """``workbench sweep NOTEBOOK -p NAME VALUE ... --out-dir DIR``; returns the exit status.

    0: every point ran (or had finished in an earlier call: skipped); 1: some point failed (see
    the table, or with ``--stop-on-error`` the one-line error); 2: bad arguments, parameters or
    notebook (nothing was run), or an out-dir that cannot be written; 130: interrupted (rerun
    the same command to resume). Nothing ends in a traceback but a bug in the workbench.
    """
    import pandas as pd

    args = _build_parser().parse_args(argv)
    nb_path: Path = args.notebook
    if not nb_path.is_file():
        print(
            f"workbench sweep: error: no such notebook: {nb_path}; pass the path of an .ipynb file",
            file=sys.stderr,
        )
        return 2
    out_dir = args.out_dir
    try:
        specs = read_notebook_parameters(nb_path)
        if args.list_params:
            print(_params_table(specs))
            return 0
        grid = _grid_from_cli(nb_path, specs, args.parameter, args.raw)
        fixed = {name: values[0] for name, values in grid.items() if len(values) == 1}
        grid = {name: values for name, values in grid.items() if len(values) > 1}
        out_dir = args.out_dir if args.out_dir is not None else _default_out_dir(nb_path)
        n_points = math.prod(len(v) for v in grid.values())
        print(f"sweep: {nb_path} -> {out_dir} ({n_points} point{'s' * (n_points != 1)})")
        df = sweep(
            nb_path,
            grid,
            out_dir,
            fixed=fixed,
            metrics_file=args.metrics_file,
            kernel_name=args.kernel,
            cwd=args.cwd,
            execution_timeout=args.execution_timeout,
            start_timeout=args.start_timeout,
            log_output=args.log_output,
            stop_on_error=args.stop_on_error,
        )
    except NotebookParameterError as exc:
        print(f"workbench sweep: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if out_dir is None:
            print("workbench sweep: interrupted before any point ran", file=sys.stderr)
        else:
            again = (
                "rerun the same command"
                if args.out_dir is not None
                else f"rerun it with --out-dir {out_dir}"
            )
            print(
                f"workbench sweep: interrupted; the finished points are kept in {out_dir}: "
                f"{again} to resume (they are skipped)",
                file=sys.stderr,
            )
        return 130
    except Exception as exc:
        run = getattr(exc, "_workbench_sweep_run", None)
        if run is not None:  # --stop-on-error: the first failing point's own error
            print(
                f"workbench sweep: error: point {run} failed ({_error_text(exc)}); stopped "
                f"(--stop-on-error); see {out_dir / f'{run}.ipynb'} and {out_dir / 'sweep.csv'}",
                file=sys.stderr,
            )
            return 1
        if isinstance(exc, OSError) and out_dir is not None:  # e.g. out-dir not writable
            print(
                f"workbench sweep: error: cannot write the sweep to {out_dir} ({_error_text(exc)});"
                " pass an --out-dir you can write to",
                file=sys.stderr,
            )
            return 2
        raise
    shown = df.drop(columns=["notebook"])
    if not (shown["error"].astype(str) != "").any():
        shown = shown.drop(columns=["error"])
    with pd.option_context(
        "display.max_columns", None, "display.width", 200, "display.max_colwidth", 80
    ):
        print(shown.to_string(index=False))
    print(f"\nwrote {out_dir / 'sweep.csv'}")
    return 0 if df["status"].isin(["ok", "skipped"]).all() else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
