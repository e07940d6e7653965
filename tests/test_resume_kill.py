"""A run killed with SIGKILL mid-save and restarted with ``resume=True`` ends on the same weights.

This is the trainer side of a "survive a kill" CLI: ``TrainConfig(output_dir=DIR,
save_every=N, resume=True)``. The training script runs in a subprocess (CPU, one thread); the
first attempt is slowed down while saving so the kill lands inside a checkpoint write, leaving a
hidden, half-written temporary folder next to the complete checkpoints.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

MAX_STEPS, SAVE_EVERY = 40, 5

SCRIPT = textwrap.dedent(
    f"""
    import os, sys, time

    import torch

    torch.set_num_threads(1)
    from transformers import GPT2Config, GPT2LMHeadModel

    from workbench.train import TrainConfig, Trainer

    out, resume = sys.argv[1], sys.argv[2] == "resume"
    if os.environ.get("SLOW_SAVE"):  # the first attempt: make every save take a while
        real_save = torch.save

        def slow_save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            if str(f).endswith("optimizer.pt"):
                time.sleep(0.4)

        torch.save = slow_save

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=32,
                   bos_token_id=0, eos_token_id=0)  # dropout 0.1: the torch RNG matters
    )
    g = torch.Generator().manual_seed(123)
    data = [torch.randint(1, 50, (12,), generator=g) for _ in range(10)]

    def collate(items):
        ids = torch.stack(items)
        return {{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}}

    config = TrainConfig(
        output_dir=out, save_every={SAVE_EVERY}, resume=resume, max_steps={MAX_STEPS},
        batch_size=2, grad_accum_steps=2, lr=1e-3, warmup_steps=3, log_every=5,
        progress=False, seed=0,
    )
    trainer = Trainer(model, data, collate, config)
    trainer.train()
    print("finished at step", trainer.step, flush=True)
    """
)


def run_script(script: Path, out: Path, mode: str, **env: str) -> subprocess.Popen:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}
    return subprocess.Popen(
        [sys.executable, str(script), str(out), mode],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output
    return output


def complete_steps(out: Path) -> list[int]:
    """Steps of the complete checkpoint folders (what ``latest_checkpoint`` may pick)."""
    steps = []
    for name in os.listdir(out) if out.is_dir() else []:
        m = re.fullmatch(r"checkpoint-(\d+)", name)
        if m and (out / name / "trainer_state.json").is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


def temp_folders(out: Path) -> list[str]:
    return sorted(n for n in os.listdir(out) if n.startswith(".checkpoint-") and ".tmp-" in n)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from workbench.train import latest_checkpoint

    last = latest_checkpoint(out)
    assert last is not None and last.endswith(f"checkpoint-{MAX_STEPS}"), last
    return load_file(os.path.join(last, "model.safetensors"))


def test_sigkill_mid_save_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    from workbench.train import latest_checkpoint

    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT)
    straight_out, killed_out = tmp_path / "straight", tmp_path / "killed"

    straight = run_script(script, straight_out, "fresh")  # runs alongside the killed attempt
    victim = run_script(script, killed_out, "resume", SLOW_SAVE="1")
    try:
        deadline = time.monotonic() + 90
        while True:  # kill while a checkpoint after step 10 is being written
            assert victim.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            if any(s >= 10 for s in complete_steps(killed_out)) and temp_folders(killed_out):
                victim.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert victim.returncode == -signal.SIGKILL

    done = complete_steps(killed_out)
    assert done and max(done) >= 10 and MAX_STEPS not in done, done
    half = temp_folders(killed_out)
    assert half, "the kill should have left the interrupted save's temporary folder"
    # the half-written folder is hidden and incomplete: never taken for a checkpoint
    assert latest_checkpoint(killed_out) == str(killed_out / f"checkpoint-{max(done)}")
    # the interrupted save was for a later step than the newest complete checkpoint
    interrupted = int(re.match(r"\.checkpoint-(\d+)\.", half[0]).group(1))
    assert interrupted > max(done)

    resumed = finish(run_script(script, killed_out, "resume"))
    assert f"finished at step {MAX_STEPS}" in resumed
    finish(straight)

    a, b = final_weights(straight_out), final_weights(killed_out)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after kill + resume: {different}"
    assert temp_folders(killed_out) == []  # the resumed run cleaned up the killed save's leftover


def test_checkpoint_functions_without_a_trainer(tmp_path: Path) -> None:
    """What a second loop (e.g. an RL trainer) calls: save / latest / load, no Trainer involved."""
    import random

    from accelerate import Accelerator
    from torch import nn

    from workbench.train import CheckpointMismatchError
    from workbench.train.checkpoint import (
        latest_checkpoint,
        load_checkpoint,
        read_trainer_state,
        save_checkpoint,
    )

    def build(seed: int, width: int = 4):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        return model, opt, sched

    acc = Accelerator()
    model, opt, sched = build(0)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()
        sched.step()
    out = tmp_path / "rl"
    path = save_checkpoint(
        out / "checkpoint-3",
        accelerator=acc,
        model=model,
        optimizer=opt,
        scheduler=sched,
        state={"step": 3, "rewards": [0.5, 1.0]},
    )
    assert latest_checkpoint(out) == path
    assert read_trainer_state(path)["rewards"] == [0.5, 1.0]
    expected_draws = (torch.rand(2), random.random())

    other, opt2, sched2 = build(1)
    state = load_checkpoint(path, accelerator=acc, model=other, optimizer=opt2, scheduler=sched2)
    assert state["step"] == 3 and sched2.last_epoch == 3
    pairs = zip(model.parameters(), other.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    draws = (torch.rand(2), random.random())  # RNG states came back too
    assert torch.equal(draws[0], expected_draws[0]) and draws[1] == expected_draws[1]

    wrong, opt3, sched3 = build(0, width=5)
    with pytest.raises(CheckpointMismatchError, match=r"0\.weight.*\[4, 3\].*\[5, 3\]"):
        load_checkpoint(path, accelerator=acc, model=wrong, optimizer=opt3, scheduler=sched3)
