#!/usr/bin/env python
"""Strip outputs and run-specific metadata from the committed notebooks, or check they are.

Committed notebooks hold source only: no outputs, no execution counts, no per-run metadata
(timings, papermill records, widget state), and the plain ``python3`` kernelspec so that
papermill, nbval and JupyterLab all find the same kernel. Each must also have exactly one
cell tagged ``parameters``.

    python tools/strip_notebooks.py            # strip notebooks/*.ipynb in place
    python tools/strip_notebooks.py --check    # list offenders, exit 1 if any (CI, hooks)
    python tools/strip_notebooks.py a.ipynb b.ipynb

Only ``nbformat`` is needed. A notebook is rewritten only when something changes.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

REPO_ROOT = Path(__file__).resolve().parents[1]
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
#: Cell metadata written by a run, not by an author.
CELL_TRANSIENT = ("execution", "ExecuteTime", "papermill", "collapsed", "scrolled", "widgets")
#: Notebook metadata written by a run (language_info is reduced to its name).
NOTEBOOK_TRANSIENT = ("papermill", "widgets", "signature", "varInspector", "toc-autonumbering")
#: Tags papermill and nbval runs add to cells.
RUN_TAGS = ("injected-parameters",)


def strip_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A stripped copy of ``nb`` (outputs, counts, run metadata removed; kernelspec python3)."""
    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags") or []
        if any(t in RUN_TAGS for t in tags):
            continue  # papermill's injected-parameters cell is a run artifact
        meta = cell.setdefault("metadata", {})
        for key in CELL_TRANSIENT:
            meta.pop(key, None)
        if "tags" in meta and not meta["tags"]:
            del meta["tags"]
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cells.append(cell)
    nb.cells = cells
    meta = nb.setdefault("metadata", {})
    for key in NOTEBOOK_TRANSIENT:
        meta.pop(key, None)
    meta["kernelspec"] = dict(KERNELSPEC)
    meta["language_info"] = {"name": "python"}
    return nb


def _parameters_problems(nb: nbformat.NotebookNode) -> list[str]:
    tagged = [c for c in nb.cells if "parameters" in (c.get("metadata", {}).get("tags") or [])]
    if not tagged:
        return ["no cell tagged 'parameters'"]
    if len(tagged) > 1:
        return [f"{len(tagged)} cells tagged 'parameters' (expected exactly one)"]
    if tagged[0].cell_type != "code":
        return ["the cell tagged 'parameters' is not a code cell"]
    return []


def check_notebook(path: str | Path) -> list[str]:
    """What is wrong with the committed notebook at ``path`` (empty when it is clean)."""
    path = Path(path)
    nb = nbformat.read(str(path), as_version=4)
    problems: list[str] = []
    with_outputs = [i + 1 for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.outputs]
    if with_outputs:
        problems.append(f"outputs present in cells {_cells(with_outputs)}")
    counted = [
        i + 1
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and c.get("execution_count") is not None
    ]
    if counted:
        problems.append(f"execution counts present in cells {_cells(counted)}")
    spec = nb.get("metadata", {}).get("kernelspec")
    if not spec or spec.get("name") != "python3" or dict(spec) != KERNELSPEC:
        problems.append(f"kernelspec is {dict(spec) if spec else None}, expected {KERNELSPEC}")
    injected = [
        i + 1
        for i, c in enumerate(nb.cells)
        if any(t in RUN_TAGS for t in (c.get("metadata", {}).get("tags") or []))
    ]
    if injected:
        problems.append(f"papermill injected-parameters cell(s) {_cells(injected)}")
    problems += _parameters_problems(nb)
    if not problems and nbformat.writes(strip_notebook(nb)) != nbformat.writes(nb):
        problems.append("run metadata present (execution times, papermill, widget state, ...)")
    return problems


def _cells(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:8])
    return shown + (f" (+{len(numbers) - 8} more)" if len(numbers) > 8 else "")


def strip_file(path: str | Path) -> bool:
    """Strip the notebook at ``path`` in place; True when the file changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=4)
    new = nbformat.writes(strip_notebook(nb))
    if not new.endswith("\n"):
        new += "\n"
    if new == text:
        return False
    path.write_text(new, encoding="utf-8")
    return True


def default_notebooks() -> list[Path]:
    """The committed notebooks: ``notebooks/*.ipynb`` (checkpoints are not matched)."""
    return sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    """Strip (default) or ``--check`` the given notebooks, or notebooks/*.ipynb."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument(
        "--check", action="store_true", help="change nothing; list offenders and exit 1 if any"
    )
    args = parser.parse_args(argv)
    paths = args.paths or default_notebooks()
    if not paths:
        print("no notebooks to process")
        return 0
    status = 0
    for path in paths:
        if args.check:
            problems = check_notebook(path)
            if problems:
                status = 1
                print(f"{path}: " + "; ".join(problems))
        else:
            changed = strip_file(path)
            print(f"{'stripped' if changed else 'clean   '} {path}")
            left = _parameters_problems(nbformat.read(str(path), as_version=4))
            for problem in left:
                print(f"  warning: {path}: {problem} (strip cannot fix this)", file=sys.stderr)
    if args.check:
        print(
            f"{len(paths)} notebook(s) checked: "
            + (
                "all clean"
                if status == 0
                else "fix with `make strip` (python tools/strip_notebooks.py); a missing or "
                "duplicated 'parameters' tag must be fixed by hand"
            )
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
