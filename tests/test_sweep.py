"""workbench.sweep: parameters are read with ast and checked before any kernel starts."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest

from workbench import sweep as sw
from workbench.sweep import (
    NotebookParameterError,
    ParamSpec,
    read_notebook_parameters,
    run_notebook,
    sweep,
    validate_parameters,
)

PARAMS_SOURCE = """\
# Parameters (literals only)
x: int = 1  # an int
name: str = "a"
out_dir: str = "out"
# learning rate
lr: float = 0.5
flag: bool = False  # a switch
sizes: list[int] = [1, 2]
"""

BODY_SOURCE = """\
import json, os
if x < 0:
    raise ValueError("x must be >= 0")
os.makedirs(out_dir, exist_ok=True)
if name == "rows":
    metrics = [{"method": "m1", "y": x * 2}, {"method": "m2", "y": x * 3}]
else:
    metrics = {"y": x * 2, "name_len": len(name), "lr": lr, "x": x, "train": {"loss": 0.25}}
with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(metrics, f)
"""


def write_notebook(path: Path, params_source: str = PARAMS_SOURCE, tag: bool = True) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell(params_source)
    if tag:
        params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# tiny"),
        params,
        nbformat.v4.new_code_cell(BODY_SOURCE),
    ]
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def nb(tmp_path: Path) -> Path:
    return write_notebook(tmp_path / "tiny.ipynb")


@pytest.fixture
def no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if papermill is ever asked to execute a notebook."""

    def boom(*args, **kwargs):
        raise AssertionError("papermill.execute_notebook was called: a kernel would have started")

    monkeypatch.setattr(papermill, "execute_notebook", boom)


# ---- parsing ---------------------------------------------------------------------------------


def test_read_parameters_types_defaults_help(nb: Path) -> None:
    specs = read_notebook_parameters(nb)
    assert list(specs) == ["x", "name", "out_dir", "lr", "flag", "sizes"]
    assert specs["x"] == ParamSpec("x", "int", 1, "an int")
    assert specs["name"] == ParamSpec("name", "str", "a", "")
    assert specs["out_dir"].default == "out"
    assert specs["lr"] == ParamSpec("lr", "float", 0.5, "learning rate")  # comment above
    assert specs["flag"] == ParamSpec("flag", "bool", False, "a switch")
    assert specs["sizes"] == ParamSpec("sizes", "list[int]", [1, 2], "")


def test_no_parameters_cell(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "untagged.ipynb", tag=False)
    with pytest.raises(NotebookParameterError, match="no cell is tagged 'parameters'"):
        read_notebook_parameters(path)


@pytest.mark.parametrize(
    "source, line, fragment",
    [
        ("x: int = 1\nsteps: int = 3 * 100\n", 2, "not a literal"),
        ("import os\n", 1, "not an assignment"),
        ("x: int = 1\n\nn: int = len('ab')\n", 3, "not a literal"),
        ("x: int\n", 1, "no value"),
        ("x: int = 'one'\n", 1, "does not match its annotation"),
    ],
)
def test_parameters_cell_must_be_literals(tmp_path: Path, source: str, line: int, fragment: str):
    path = write_notebook(tmp_path / "bad.ipynb", params_source=source)
    with pytest.raises(NotebookParameterError) as info:
        read_notebook_parameters(path)
    message = str(info.value)
    assert f"line {line}" in message and fragment in message and "bad.ipynb" in message


# ---- validation (no kernel) ------------------------------------------------------------------


def test_unknown_name_suggests_close_match_without_kernel(nb: Path, tmp_path: Path, no_kernel):
    with pytest.raises(NotebookParameterError) as info:
        run_notebook(nb, tmp_path / "out.ipynb", {"nmae": "b"})
    message = str(info.value)
    assert "'nmae'" in message and "tiny.ipynb" in message
    assert "did you mean 'name'" in message
    assert "x, name, out_dir, lr, flag, sizes" in message
    with pytest.raises(NotebookParameterError, match="did you mean 'x'"):
        sweep(nb, {"xx": [1, 2]}, tmp_path / "sweep")
    assert not (tmp_path / "sweep" / "sweep.csv").exists()


def test_wrong_type_names_parameter_and_types(nb: Path, no_kernel, tmp_path: Path) -> None:
    with pytest.raises(NotebookParameterError) as info:
        validate_parameters(nb, {"x": "abc"})
    message = str(info.value)
    assert "'x'" in message and "expects int" in message and "got str" in message
    with pytest.raises(NotebookParameterError, match="expects int, got bool"):
        validate_parameters(nb, {"x": True})  # a bool is not an int
    with pytest.raises(NotebookParameterError, match="expects float, got bool"):
        validate_parameters(nb, {"lr": False})
    with pytest.raises(NotebookParameterError, match="expects list\\[int\\]"):
        validate_parameters(nb, {"sizes": [1, "2"]})
    # A later grid value is checked before the first point runs.
    with pytest.raises(NotebookParameterError, match="'x'.*got str"):
        sweep(nb, {"x": [1, "2"]}, tmp_path / "sweep")


def test_validate_normalises(nb: Path, tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    out = validate_parameters(
        nb, {"lr": 1, "x": np.int64(3), "out_dir": tmp_path, "flag": True, "sizes": (4, 5)}
    )
    assert out == {"lr": 1.0, "x": 3, "out_dir": str(tmp_path), "flag": True, "sizes": [4, 5]}
    assert type(out["lr"]) is float and type(out["x"]) is int


def test_cli_values_cast_to_annotation(nb: Path) -> None:
    specs = read_notebook_parameters(nb)
    grid = sw._grid_from_cli(
        nb,
        specs,
        [
            ("lr", "1e-3,3e-4"),
            ("x", "2"),
            ("x", "3"),
            ("name", "007"),
            ("flag", "true"),
            ("sizes", "[1, 2, 3]"),
        ],
        [("out_dir", "a,b")],
    )
    assert grid == {
        "lr": [1e-3, 3e-4],
        "x": [2, 3],
        "name": ["007"],
        "flag": [True],
        "sizes": [[1, 2, 3]],
        "out_dir": ["a,b"],
    }
    assert all(type(v) is float for v in grid["lr"])
    with pytest.raises(NotebookParameterError, match="expects int"):
        sw._grid_from_cli(nb, specs, [("x", "abc")], [])
    with pytest.raises(NotebookParameterError, match="did you mean 'lr'"):
        sw._grid_from_cli(nb, specs, [("lrr", "1")], [])


def test_main_rejects_bad_parameter_without_kernel(nb: Path, tmp_path: Path, no_kernel, capsys):
    assert sw.main([str(nb), "-p", "nmae", "b", "--out-dir", str(tmp_path / "s")]) == 2
    assert "did you mean 'name'" in capsys.readouterr().err


def test_main_list_params(nb: Path, capsys) -> None:
    assert sw.main([str(nb), "--list-params"]) == 0
    out = capsys.readouterr().out
    assert "x" in out and "an int" in out and "list[int]" in out


# ---- real runs (each point starts a kernel) --------------------------------------------------


@pytest.mark.slow
def test_run_notebook_writes_output(nb: Path, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    out = run_notebook(nb, tmp_path / "ran" / "tiny.ipynb", {"x": 4, "out_dir": str(metrics_dir)})
    assert out.is_file()
    assert json.loads((metrics_dir / "metrics.json").read_text())["y"] == 8
    executed = nbformat.read(str(out), as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "x = 4" in injected[0].source


@pytest.mark.slow
def test_sweep_two_points(nb: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "sweep"
    df = sweep(nb, {"x": [1, 2]}, out_dir, fixed={"lr": 1}, verbose=False)
    assert isinstance(df, pd.DataFrame) and len(df) == 2
    assert list(df["x"]) == [1, 2] and list(df["y"]) == [2, 4]
    assert list(df["lr"]) == [1.0, 1.0]  # fixed parameter column; the echoed metric is dropped
    assert "metric_x" not in df.columns and "metric_lr" not in df.columns
    assert list(df["train/loss"]) == [0.25, 0.25]  # nested metrics are flattened
    assert (df["status"] == "ok").all() and (df["notebook"] == "tiny.ipynb").all()
    assert df["run"].tolist() == ["000_x=1", "001_x=2"]
    for run in df["run"]:
        assert (out_dir / f"{run}.ipynb").is_file()
        assert (out_dir / run / "metrics.json").is_file()
    on_disk = pd.read_csv(out_dir / "sweep.csv")
    assert on_disk["y"].tolist() == [2, 4] and on_disk["run"].tolist() == df["run"].tolist()
    assert not list(out_dir.glob(".sweep.csv.*"))  # no temp file left behind


@pytest.mark.slow
def test_sweep_records_failure_and_continues(nb: Path, tmp_path: Path) -> None:
    df = sweep(nb, {"x": [-1, 3]}, tmp_path / "s", verbose=False)
    assert df["status"].tolist() == ["error", "ok"]
    assert "ValueError" in df["error"][0] and "x must be >= 0" in df["error"][0]
    assert df["y"][1] == 6
    with pytest.raises(papermill.PapermillExecutionError):
        sweep(nb, {"x": [-1, 3]}, tmp_path / "s2", stop_on_error=True, verbose=False)
    assert len(pd.read_csv(tmp_path / "s2" / "sweep.csv")) == 1  # written before re-raising


@pytest.mark.slow
def test_main_end_to_end(nb: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "cli"
    argv = [
        str(nb),
        "-p",
        "x",
        "1,2",
        "-p",
        "name",
        "rows",
        "-p",
        "lr",
        "1e-3",
        "--out-dir",
        str(out_dir),
    ]
    assert sw.main(argv) == 0
    out = capsys.readouterr().out
    assert "method" in out and "sweep.csv" in out
    df = pd.read_csv(out_dir / "sweep.csv")
    assert len(df) == 4  # 2 points x 2 rows (one per method)
    assert sorted(zip(df["x"], df["method"], df["y"], strict=True)) == [
        (1, "m1", 2),
        (1, "m2", 3),
        (2, "m1", 4),
        (2, "m2", 6),
    ]
    assert set(df["lr"]) == {0.001} and set(df["name"]) == {"rows"}
