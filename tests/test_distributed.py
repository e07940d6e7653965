"""Two processes through ``accelerate launch`` on CPU (gloo), for both trainers (issue 13).

Each launch runs ``tests/distributed_run.py``: a full run, a half run and a resumed run, in
every process. What must hold:

* ``accelerate launch --multi_gpu --num_processes 2`` really gives two processes (without
  ``cpu=True`` accelerate silently makes two single-process runs on a machine with no GPU);
* supervised: two processes with batch b give the losses of one process with batch 2b (same
  examples per step, fixed-length sequences, so the gradients are the same up to float
  rounding: 1e-5 tolerance), and the same weights;
* the processes end with identical weights (gradients are averaged over processes even though
  losses call the model directly, not through DDP's wrapper);
* resuming from the checkpoint of the half run continues exactly (same losses, same weights);
* only the main process writes checkpoints and run files: the other one writes nothing but its
  own RNG state into the main process's temporary checkpoint folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("distributed_run.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(folder: Path) -> dict:
    """One thread per process; temporary files (torchelastic's log folders) under ``folder``,
    not left in the system's /tmp."""
    tmp = folder / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "TMPDIR": str(tmp)}  # fmt: skip


def _run(mode: str, out: Path, batch_size: int, processes: int) -> list[dict]:
    report = out / "report.json"
    args = [str(SCRIPT), "--mode", mode, "--out", str(out / "run"), "--report", str(report),
            "--batch-size", str(batch_size)]  # fmt: skip
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(processes), "--num_machines", "1",
               "--main_process_port", str(_free_port()), "--mixed_precision", "no",
               "--dynamo_backend", "no", *args]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(out), timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return sorted(json.loads(report.read_text())["processes"], key=lambda r: r["rank"])


def _check_processes(procs: list[dict], n: int) -> None:
    assert [p["rank"] for p in procs] == list(range(n))
    assert all(p["num_processes"] == n for p in procs)
    main, others = procs[0], procs[1:]
    assert main["writes"] == []  # (only recorded on the other processes)
    for p in others:
        assert p["full_checksum"] == pytest.approx(main["full_checksum"], rel=1e-12)
        assert p["full_losses"] == main["full_losses"]
        unexpected = [w for w in p["writes"] if not w.endswith(f"rng_state_{p['rank']}.pt")]
        assert unexpected == [], f"process {p['rank']} wrote {unexpected}"
        assert p["writes"], "the other process's RNG state is part of every checkpoint"
    for p in procs:  # resumed from the half run's checkpoint: the same run
        assert p["resumed_start_step"] > 0
        assert p["resumed_losses"] == pytest.approx(p["full_losses"], abs=1e-7)
        assert p["resumed_checksum"] == pytest.approx(p["full_checksum"], rel=1e-9)


def test_supervised_two_processes_match_one_with_double_batch(tmp_path):
    two = _run("supervised", tmp_path / "two", batch_size=4, processes=2)
    _check_processes(two, 2)
    one = _run("supervised", tmp_path / "one", batch_size=8, processes=1)
    _check_processes(one, 1)
    assert two[0]["full_losses"] == pytest.approx(one[0]["full_losses"], abs=1e-5)
    assert two[0]["full_checksum"] == pytest.approx(one[0]["full_checksum"], rel=1e-6)
    assert len(set(one[0]["full_losses"])) > 1  # the loss moved: the steps did something


def test_group_policy_two_processes(tmp_path):
    two = _run("group", tmp_path / "two", batch_size=2, processes=2)
    _check_processes(two, 2)
    losses = two[0]["full_losses"]
    assert any(abs(v) > 1e-4 for v in losses)  # the second pass over a rollout has a gradient


def test_cli_train_under_accelerate_launch_saves_once(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           "2", "--num_machines", "1", "--main_process_port", str(_free_port()),
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "workbench", "train",
           "--method", "cot", "--steps", "4", "--out", str(out), "--set", "data.train_size=64",
           "--set", "data.test_size=8", "--set", "model.d_model=32",
           "--set", "model.n_layer=1"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    assert res.stdout.count("saved to") == 1  # the main process alone saves and reports
    from workbench.trained import TrainedModel

    tm = TrainedModel.load(out)
    assert tm.meta["train_steps"] == 4


def test_end_distributed_leaves_the_process_group(tmp_path):
    """``end_distributed`` destroys the group (a no-op when there is none), so no gloo thread
    is left for interpreter shutdown to tear down (the SIGABRT of a finished launch)."""
    import torch.distributed as dist

    from workbench.train import end_distributed

    end_distributed()  # no group: nothing to do, no error
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        end_distributed()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
