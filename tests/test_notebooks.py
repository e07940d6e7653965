"""The committed notebooks: each is stripped and well-formed, and each runs under papermill.

The papermill run uses the small parameters in ``tests/notebook_params.py`` plus
``out_dir=<a fresh tmp folder>``, kernel ``python3``, working directory ``notebooks/``, and
checks what every workbench notebook promises to leave in ``out_dir``: a non-empty
``metrics.json`` and at least one ``*.html`` figure.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import nbformat
import pytest

from workbench.sweep import read_notebook_parameters, run_notebook, validate_parameters

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
NO_NOTEBOOKS = [pytest.param(None, marks=pytest.mark.skip(reason="notebooks/ has no .ipynb yet"))]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SMOKE_PARAMS: dict[str, dict] = _load(
    Path(__file__).with_name("notebook_params.py"), "workbench_tests_notebook_params"
).SMOKE_PARAMS


@pytest.fixture(scope="module")
def strip_tool() -> ModuleType:
    return _load(REPO_ROOT / "tools" / "strip_notebooks.py", "workbench_tools_strip_notebooks")


def _ids(path: Path | None) -> str:
    return path.name if path is not None else "none"


@pytest.mark.parametrize("nb_path", NOTEBOOKS or NO_NOTEBOOKS, ids=_ids)
def test_notebook_is_committed_clean(nb_path: Path, strip_tool: ModuleType) -> None:
    """Stripped, kernelspec python3, exactly one literal parameters cell with out_dir."""
    problems = strip_tool.check_notebook(nb_path)
    assert not problems, f"{nb_path.name}: {'; '.join(problems)} (fix: make strip)"
    specs = read_notebook_parameters(nb_path)  # raises unless literals only
    assert "out_dir" in specs, f"{nb_path.name}: the parameters cell needs `out_dir: str = ...`"
    assert specs["out_dir"].type_name == "str"


def test_smoke_params_name_real_notebooks() -> None:
    """Every SMOKE_PARAMS entry names a notebook and passes its parameter check (no kernel)."""
    names = {p.name for p in NOTEBOOKS}
    unknown = sorted(set(SMOKE_PARAMS) - names)
    assert not unknown, f"SMOKE_PARAMS names notebooks that do not exist: {unknown}"
    for name, params in SMOKE_PARAMS.items():
        assert "out_dir" not in params, f"{name}: the harness sets out_dir itself"
        validate_parameters(NOTEBOOK_DIR / name, params)


@pytest.mark.slow
@pytest.mark.parametrize("nb_path", NOTEBOOKS or NO_NOTEBOOKS, ids=_ids)
def test_notebook_runs_with_papermill(nb_path: Path, tmp_path: Path) -> None:
    params = {**SMOKE_PARAMS.get(nb_path.name, {}), "out_dir": str(tmp_path)}
    executed = tmp_path / f"{nb_path.stem}.executed.ipynb"
    run_notebook(
        nb_path,
        executed,
        params,
        cwd=NOTEBOOK_DIR,
        kernel_name="python3",
        execution_timeout=900,
    )
    assert executed.is_file()
    metrics_path = tmp_path / "metrics.json"
    assert metrics_path.is_file(), f"{nb_path.name} wrote no metrics.json in out_dir"
    metrics = json.loads(metrics_path.read_text())
    assert isinstance(metrics, (dict, list)) and metrics, f"{nb_path.name}: metrics.json is empty"
    figures = sorted(p.name for p in tmp_path.rglob("*.html"))
    assert figures, f"{nb_path.name} wrote no *.html figure in out_dir"


def test_strip_tool_cleans_a_dirty_notebook(tmp_path: Path, strip_tool: ModuleType) -> None:
    """The tool behind `make strip` / the clean check above (no kernel needed)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "conda-env-x-py",
        "display_name": "x",
        "language": "python",
    }
    nb.metadata["papermill"] = {"duration": 1.0}
    params = nbformat.v4.new_code_cell("out_dir: str = 'out'  # artifacts", execution_count=1)
    params.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell("out_dir = '/tmp/x'", execution_count=2)
    injected.metadata["tags"] = ["injected-parameters"]
    body = nbformat.v4.new_code_cell("print(out_dir)", execution_count=3)
    body.outputs = [nbformat.v4.new_output("stream", text="/tmp/x\n")]
    body.metadata["ExecuteTime"] = {"end_time": "2026-01-01"}
    nb.cells = [params, injected, body]
    path = tmp_path / "dirty.ipynb"
    nbformat.write(nb, str(path))

    problems = "; ".join(strip_tool.check_notebook(path))
    for fragment in ("outputs present", "execution counts", "kernelspec", "injected-parameters"):
        assert fragment in problems
    tool = str(REPO_ROOT / "tools" / "strip_notebooks.py")
    check = subprocess.run([sys.executable, tool, "--check", str(path)], capture_output=True)
    assert check.returncode == 1 and b"dirty.ipynb" in check.stdout
    subprocess.run([sys.executable, tool, str(path)], check=True, capture_output=True)
    assert strip_tool.check_notebook(path) == []
    clean = nbformat.read(str(path), as_version=4)
    assert [c.source for c in clean.cells] == [
        "out_dir: str = 'out'  # artifacts",
        "print(out_dir)",
    ]
    assert clean.metadata["kernelspec"]["name"] == "python3" and "papermill" not in clean.metadata
    assert read_notebook_parameters(path)["out_dir"].help == "artifacts"

    untagged = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(untagged, str(path))
    assert "no cell tagged 'parameters'" in "; ".join(strip_tool.check_notebook(path))
