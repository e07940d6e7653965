"""workbench.sweep resumes: finished points are skipped, killed or failed ones rerun.

A point is finished when its ``point.json`` (written atomically, after the executed notebook
and the metrics) matches the notebook's content hash and the point's parameters. The tiny
notebook below appends its ``x`` to a counter file every time it runs, so each test counts
exactly which points executed. The fast tests execute the notebook in this process (a stand-in
for papermill with the same contract); the slow ones start real kernels, and one kills a real
``workbench sweep`` process with SIGKILL while point 3 runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest

from workbench import sweep as sw
from workbench.io import leftovers
from workbench.sweep import POINT_FILE, notebook_hash, sweep

PARAMS_SOURCE = """\
x: int = 0  # the swept value
counter: str = "counter.txt"  # every execution appends its x here
fail_x: int = -100  # this x raises
slow_x: int = -100  # this x sleeps while the file `hold` exists
hold: str = ""  # see slow_x
out_dir: str = "out"  # where metrics.json goes
"""

BODY_SOURCE = """\
import os, time
from workbench.runs import write_json
with open(counter, "a") as f:
    f.write(f"{x}\\n")
if x == fail_x:
    raise ValueError(f"x={x} is refused")
if x == slow_x and hold and os.path.exists(hold):
    with open(hold + ".started", "w") as f:
        f.write(str(os.getpid()))
    while os.path.exists(hold):
        time.sleep(0.1)
os.makedirs(out_dir, exist_ok=True)
write_json(os.path.join(out_dir, "metrics.json"), {"y": x * 10, "x": x})
"""


def write_notebook(path: Path, body: str = BODY_SOURCE) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell(PARAMS_SOURCE)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# resumable"),
        params,
        nbformat.v4.new_code_cell(body),
    ]
    nbformat.write(nb, str(path))
    return path


def executions(counter: Path) -> list[int]:
    return [int(line) for line in counter.read_text().split()] if counter.exists() else []


def in_process_execute(nb_path, out_path, params, **_ignored):
    """papermill's contract without a kernel: parameters injected after the tagged cell, the
    executed notebook written (also on failure), a failing cell raised as
    PapermillExecutionError (ename, evalue)."""
    nb = nbformat.read(str(nb_path), as_version=4)
    namespace: dict = {}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        try:
            exec(cell.source, namespace)
        except Exception as exc:
            nbformat.write(nb, str(out_path))
            raise papermill.PapermillExecutionError(
                index, 1, cell.source, type(exc).__name__, str(exc), []
            ) from exc
        if "parameters" in (cell.metadata.get("tags") or []):
            namespace.update(params)
    nbformat.write(nb, str(out_path))
    return out_path


@pytest.fixture
def nb(tmp_path: Path) -> Path:
    return write_notebook(tmp_path / "resumable.ipynb")


@pytest.fixture
def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sw, "_execute", in_process_execute)


def interrupt_at(monkeypatch: pytest.MonkeyPatch, x: int, execute) -> None:
    """Make point ``x`` stop like Ctrl-C does: after its notebook ran and wrote its metrics but
    before the sweep recorded it (the worst moment: everything but point.json is on disk)."""

    def execute_then_interrupt(nb_path, out_path, params, **kwargs):
        out = execute(nb_path, out_path, params, **kwargs)
        if params["x"] == x:
            assert (Path(params["out_dir"]) / "metrics.json").is_file()
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(sw, "_execute", execute_then_interrupt)


# ---- fast: the notebook runs in this process -------------------------------------------------


def test_interrupted_sweep_resumes_at_the_interrupted_point(
    nb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    counter, out_dir = tmp_path / "counter.txt", tmp_path / "sweep"
    grid, fixed = {"x": [1, 2, 3, 4]}, {"counter": str(counter)}
    interrupt_at(monkeypatch, 3, in_process_execute)
    with pytest.raises(KeyboardInterrupt):
        sweep(nb, grid, out_dir, fixed=fixed)
    assert executions(counter) == [1, 2, 3]
    assert "interrupted" in capsys.readouterr().out
    assert pd.read_csv(out_dir / "sweep.csv")["x"].tolist() == [1, 2]  # the finished points
    third = out_dir / "002_x=3"
    assert (third / "metrics.json").is_file() and not (third / POINT_FILE).exists()

    monkeypatch.setattr(sw, "_execute", in_process_execute)
    df = sweep(nb, grid, out_dir, fixed=fixed)
    assert executions(counter) == [1, 2, 3, 3, 4]  # only points 3 and 4 ran again
    assert df["status"].tolist() == ["skipped", "skipped", "ok", "ok"]
    assert df["y"].tolist() == [10, 20, 30, 40]  # a skipped point's metrics are read back
    assert df["error"].fillna("").tolist() == ["", "", "", ""]
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if "skipped" in line]
    assert len(skipped) == 2 and "001_x=2" in skipped[1]
    assert "rerun: an earlier run of it did not finish" in out  # point 3
    on_disk = pd.read_csv(out_dir / "sweep.csv")
    assert on_disk["status"].tolist() == ["skipped", "skipped", "ok", "ok"]
    for run in df["run"]:
        record = json.loads((out_dir / run / POINT_FILE).read_text())
        assert record["status"] == "ok" and record["notebook_sha256"] == notebook_hash(nb)
        assert record["parameters"]["counter"] == str(counter)
        assert "out_dir" not in record["parameters"]
    assert not leftovers(out_dir) and not any(leftovers(out_dir / r) for r in df["run"])

    # Everything finished: a third call runs nothing.
    df = sweep(nb, grid, out_dir, fixed=fixed, verbose=False)
    assert executions(counter) == [1, 2, 3, 3, 4]
    assert (df["status"] == "skipped").all() and df["y"].tolist() == [10, 20, 30, 40]


def test_failing_point_is_recorded_others_run_and_it_reruns(
    nb: Path, tmp_path: Path, fake_kernel
) -> None:
    counter, out_dir = tmp_path / "counter.txt", tmp_path / "sweep"
    grid, fixed = {"x": [1, 2, 3, 4]}, {"counter": str(counter), "fail_x": 2}
    df = sweep(nb, grid, out_dir, fixed=fixed, verbose=False)
    assert executions(counter) == [1, 2, 3, 4]  # the failure did not stop points 3 and 4
    on_disk = pd.read_csv(out_dir / "sweep.csv")
    assert on_disk["status"].tolist() == ["ok", "error", "ok", "ok"]
    assert on_disk["error"].fillna("").tolist() == ["", "ValueError: x=2 is refused", "", ""]
    assert on_disk["y"].isna().tolist() == [False, True, False, False]
    assert not (out_dir / "001_x=2" / POINT_FILE).exists()
    assert (out_dir / "001_x=2.ipynb").is_file()  # the executed notebook shows the error
    assert df["status"].tolist() == on_disk["status"].tolist()

    df = sweep(nb, grid, out_dir, fixed=fixed, verbose=False)
    assert executions(counter) == [1, 2, 3, 4, 2]  # only the failed point ran again
    assert df["status"].tolist() == ["skipped", "error", "skipped", "skipped"]


def test_changed_notebook_or_parameters_rerun_everything(
    nb: Path, tmp_path: Path, fake_kernel
) -> None:
    counter, out_dir = tmp_path / "counter.txt", tmp_path / "sweep"
    grid, fixed = {"x": [1, 2]}, {"counter": str(counter)}
    sweep(nb, grid, out_dir, fixed=fixed, verbose=False)
    assert executions(counter) == [1, 2]

    # Outputs and execution counts are not content: re-saving an executed copy changes nothing.
    executed = nbformat.read(str(out_dir / "000_x=1.ipynb"), as_version=4)
    executed.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi")]
    executed.cells[2].execution_count = 7
    nbformat.write(executed, str(nb))
    assert sweep(nb, grid, out_dir, fixed=fixed, verbose=False)["status"].eq("skipped").all()
    assert executions(counter) == [1, 2]

    write_notebook(nb, body=BODY_SOURCE + "# an edit\n")
    df = sweep(nb, grid, out_dir, fixed=fixed)
    assert executions(counter) == [1, 2, 1, 2]
    assert df["status"].tolist() == ["ok", "ok"]

    # Another fixed parameter value is another sweep: every point reruns.
    sweep(nb, grid, out_dir, fixed={**fixed, "fail_x": 99}, verbose=False)
    assert executions(counter) == [1, 2, 1, 2, 1, 2]


def test_tampered_or_missing_outputs_rerun_the_point(nb: Path, tmp_path: Path, fake_kernel):
    counter, out_dir = tmp_path / "counter.txt", tmp_path / "sweep"
    grid, fixed = {"x": [1, 2, 3]}, {"counter": str(counter)}
    sweep(nb, grid, out_dir, fixed=fixed, verbose=False)
    (out_dir / "000_x=1" / "metrics.json").write_text('{"y": 1')  # half a file
    (out_dir / "001_x=2.ipynb").unlink()  # the executed notebook is gone
    (out_dir / "002_x=3" / POINT_FILE).write_text("{")  # a damaged record
    df = sweep(nb, grid, out_dir, fixed=fixed, verbose=False)
    assert executions(counter) == [1, 2, 3, 1, 2, 3]
    assert df["status"].tolist() == ["ok", "ok", "ok"] and df["y"].tolist() == [10, 20, 30]
    assert json.loads((out_dir / "000_x=1" / "metrics.json").read_text())["y"] == 10


def test_cli_interrupt_and_stop_on_error_print_one_line(
    nb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    counter, out_dir = tmp_path / "counter.txt", tmp_path / "cli"
    argv = [str(nb), "-p", "x", "1,2,3", "-p", "counter", str(counter), "--out-dir", str(out_dir)]
    interrupt_at(monkeypatch, 2, in_process_execute)
    assert sw.main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0] and "rerun the same command" in err[0]

    monkeypatch.setattr(sw, "_execute", in_process_execute)
    assert sw.main(argv) == 0  # point 1 skipped, 2 and 3 ran: all good
    assert executions(counter) == [1, 2, 2, 3]
    assert pd.read_csv(out_dir / "sweep.csv")["status"].tolist() == ["skipped", "ok", "ok"]
    capsys.readouterr()

    stop = [*argv[:-1], str(tmp_path / "stop"), "-p", "fail_x", "1", "--stop-on-error"]
    assert sw.main(stop) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ValueError: x=1 is refused" in err[0] and "000_x=1" in err[0]
    assert executions(counter) == [1, 2, 2, 3, 1]  # stopped at the first point


def test_unknown_parameter_without_a_close_match(nb: Path, tmp_path: Path, capsys) -> None:
    assert sw.main([str(nb), "-p", "zzz", "1", "--out-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "unknown parameter 'zzz' for notebook resumable.ipynb; Known parameters: x," in err[0]
    assert not (tmp_path / "s").exists()


def test_unreadable_notebook_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "broken.ipynb"
    bad.write_text('{"cells": [')
    assert sw.main([str(bad), "-p", "x", "1", "--out-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "broken.ipynb" in err[0] and "not a readable Jupyter notebook" in err[0]
    )


# ---- slow: real kernels ----------------------------------------------------------------------


@pytest.mark.slow
def test_real_kernels_failure_recorded_and_changed_notebook_reruns(nb: Path, tmp_path: Path):
    counter, out_dir = tmp_path / "counter.txt", tmp_path / "sweep"
    grid, fixed = {"x": [1, 2, 3]}, {"counter": str(counter), "fail_x": 2}
    df = sweep(nb, grid, out_dir, fixed=fixed, verbose=False)
    assert executions(counter) == [1, 2, 3]
    assert df["status"].tolist() == ["ok", "error", "ok"]
    assert df["error"][1] == "ValueError: x=2 is refused"  # papermill's ename: evalue
    assert pd.read_csv(out_dir / "sweep.csv")["error"][1] == "ValueError: x=2 is refused"

    df = sweep(nb, grid, out_dir, fixed=fixed, verbose=False)
    assert executions(counter) == [1, 2, 3, 2]
    assert df["status"].tolist() == ["skipped", "error", "skipped"]

    write_notebook(nb, body=BODY_SOURCE + "# an edit\n")
    df = sweep(nb, grid, out_dir, fixed=fixed, verbose=False)
    assert executions(counter) == [1, 2, 3, 2, 1, 2, 3]
    assert df["status"].tolist() == ["ok", "error", "ok"] and df["y"][2] == 30


def _kill(pid: int, group: bool = False) -> None:
    try:
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_sigkill_during_point_3_then_rerun_runs_only_3_and_4(
    nb: Path, tmp_path: Path, capsys
) -> None:
    counter, out_dir, hold = tmp_path / "counter.txt", tmp_path / "sweep", tmp_path / "hold"
    hold.write_text("point 3 waits while this file exists")
    started = Path(f"{hold}.started")
    argv = [
        str(nb),
        *("-p", "x", "1,2,3,4"),
        *("-p", "counter", str(counter)),
        *("-p", "slow_x", "3"),
        *("-p", "hold", str(hold)),
        *("--out-dir", str(out_dir)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "sweep", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own process group: killed as one below
    )
    kernel_pid = None
    try:
        deadline = time.monotonic() + 180
        while not started.exists():
            assert proc.poll() is None, f"the sweep ended early (exit {proc.returncode})"
            assert time.monotonic() < deadline, "point 3 never started"
            time.sleep(0.1)
        time.sleep(0.2)
        kernel_pid = int(started.read_text() or 0) or None
        _kill(proc.pid, group=True)  # kill -9 while point 3 runs
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            _kill(proc.pid, group=True)
            proc.wait(timeout=30)
        if kernel_pid:  # the kernel runs in a session of its own: kill it by its id
            _kill(kernel_pid)
    assert executions(counter) == [1, 2, 3]
    assert pd.read_csv(out_dir / "sweep.csv")["x"].tolist() == [1, 2]
    assert not (out_dir / "002_x=3" / "metrics.json").exists()
    assert not (out_dir / "002_x=3" / POINT_FILE).exists()

    hold.unlink()
    assert sw.main(argv) == 0
    assert executions(counter) == [1, 2, 3, 3, 4]  # points 1 and 2 were skipped
    out = capsys.readouterr().out
    assert sum("skipped (finished earlier" in line for line in out.splitlines()) == 2
    df = pd.read_csv(out_dir / "sweep.csv")
    assert df["status"].tolist() == ["skipped", "skipped", "ok", "ok"]
    assert df["y"].tolist() == [10, 20, 30, 40]
