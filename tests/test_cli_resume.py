"""`workbench train --out DIR` survives SIGKILL: `--resume` ends on the uninterrupted weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ARGS = [
    "--method", "cot", "--steps", "60", "--save-every", "5",
    "--set", "data.train_size=300", "--set", "data.val_size=8", "--set", "data.test_size=8",
    "--set", "model.d_model=32", "--set", "model.n_layer=1", "--set", "model.n_head=2",
    "--set", "train.batch_size=8", "--set", "train.progress=false", "--set", "train.log_every=5",
]  # fmt: skip


def _env(tmp_path: Path) -> dict:
    return {
        **os.environ,
        "WORKBENCH_DATA_DIR": str(tmp_path / "data"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }


def _train(out: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "workbench", "train", *ARGS, "--out", str(out), *extra]
    return subprocess.Popen(
        cmd, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _steps(out: Path) -> list[int]:
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name.split("-")[1])
        for p in folder.glob("checkpoint-*")
        if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").exists()
    )


def test_sigkilled_cli_run_resumes_to_the_uninterrupted_weights(tmp_path):
    ref = _train(tmp_path / "ref", tmp_path)
    out_ref, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out_ref

    run = tmp_path / "run"
    proc = _train(run, tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and not any(s >= 15 for s in _steps(run)):
        if proc.poll() is not None:
            pytest.fail("the run finished before it could be killed:\n" + proc.stdout.read())
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(_steps(run))
    assert 15 <= killed_at < 60
    assert not (run / "workbench_method.json").exists()  # it really died mid-run

    resumed = _train(run, tmp_path, "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resuming" in out

    a = load_file(str(tmp_path / "ref" / "model.safetensors"))
    b = load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), key

    again = _train(run, tmp_path, "--resume")  # a finished run is not trained again
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "nothing to resume" in out
