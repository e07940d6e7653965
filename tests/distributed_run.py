"""Run by ``tests/test_distributed.py``, once under ``accelerate launch --num_processes 2`` and
once as one plain process; not a test module itself (no ``test_`` prefix).

``supervised``: a tiny GPT-2 on fixed-length random sequences, trained three ways in one launch:
``full`` (``--steps`` uninterrupted), then ``half`` (``--steps // 2``, checkpointed) continued
by a *new* model and trainer with ``resume=True`` up to ``--steps``. ``group``: the
group-policy trainer (LaTRO's token policy on the tiny model), the same three ways.

Every process reports its per-step losses and a checksum of its weights; a process other than
the main one also reports every file it wrote (``open`` for writing, ``torch.save``,
``safetensors`` saves, renames), so the test can check that only the main process writes
checkpoints and run files. The main process writes the report JSON to ``--report``.
"""

from __future__ import annotations

import argparse
import builtins
import os
import sys

import torch

WRITES: list[str] = []


def watch_writes(root: str) -> None:
    """Record every write under ``root`` by this process (installed on non-main processes)."""
    import safetensors.torch

    root = os.path.abspath(root)

    def note(path) -> None:
        p = os.path.abspath(os.fspath(path))
        if p.startswith(root):
            WRITES.append(os.path.relpath(p, root))

    real_open, real_save, real_replace, real_rename = (
        builtins.open, torch.save, os.replace, os.rename)  # fmt: skip
    real_st = safetensors.torch.save_file

    def open_(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            note(file)
        return real_open(file, mode, *a, **k)

    def save_(obj, f, *a, **k):
        if isinstance(f, (str, os.PathLike)):
            note(f)
        return real_save(obj, f, *a, **k)

    def replace_(src, dst, *a, **k):
        note(dst)
        return real_replace(src, dst, *a, **k)

    def rename_(src, dst, *a, **k):
        note(dst)
        return real_rename(src, dst, *a, **k)

    def st_(tensors, filename, *a, **k):
        note(filename)
        return real_st(tensors, filename, *a, **k)

    builtins.open, torch.save, os.replace, os.rename = open_, save_, replace_, rename_
    safetensors.torch.save_file = st_


def tiny_model(vocab: int = 40):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return GPT2LMHeadModel(cfg)


def checksum(model) -> float:
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def supervised(args, out: str):
    from workbench.train import TrainConfig, Trainer

    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(3, 40, (16,), generator=g)} for _ in range(64)]

    def collate(items):
        ids = torch.stack([it["input_ids"] for it in items])
        return {"input_ids": ids, "labels": ids.clone()}

    def run(max_steps: int, folder: str, resume: bool = False):
        losses: list[float] = []
        model = tiny_model()
        tc = TrainConfig(batch_size=args.batch_size, lr=3e-3, warmup_steps=0, max_steps=max_steps,
                         lr_schedule="constant",
                         seed=0, output_dir=folder, save_every=max(1, args.steps // 2),
                         log_every=1, progress=False, resume=resume)  # fmt: skip
        trainer = Trainer(model, data, collate, tc)
        trainer.add_callback("on_step_end", lambda t, logs: losses.append(logs["loss"]))
        trainer.train()
        return trainer, losses

    return run


def group(args, out: str):
    from workbench.data.prepare import prepare_data
    from workbench.methods.latro import LaTROConfig, LaTROPolicy
    from workbench.models.build import ModelConfig, build_model
    from workbench.rl.trainer import GroupPolicyTrainer, frozen_copy

    data = prepare_data("arithmetic", train_size=64, val_size=4, test_size=4, seed=0,
                        max_value=5, max_result=20, min_steps=1, max_steps=2)  # fmt: skip
    tok = data.tokenizer
    base = build_model(ModelConfig(d_model=32, n_layer=1, n_head=2, max_positions=128), tok,
                       seed=0)  # fmt: skip

    def run(max_steps: int, folder: str, resume: bool = False):
        import copy

        losses: list[float] = []
        cfg = LaTROConfig(num_generations=2, per_device_train_batch_size=args.batch_size,
                          max_steps=max_steps, learning_rate=1e-3, num_iterations=2,
                          max_completion_length=6, seed=0)  # fmt: skip
        model = copy.deepcopy(base)
        policy = LaTROPolicy(tok, cfg, frozen_copy(base))
        gpt = GroupPolicyTrainer(model, data.train, policy, cfg, output_dir=folder, resume=resume)
        gpt.trainer.config.save_every = max(1, args.steps // 2)
        gpt.trainer.add_callback("on_step_end", lambda t, logs: losses.append(logs["loss"]))
        gpt.train()
        return gpt.trainer, losses

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("supervised", "group"), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from accelerate.utils import gather_object

    if int(os.environ.get("RANK", "0")) != 0:  # before the trainer exists: torchrun's rank
        watch_writes(args.out)
    run = (supervised if args.mode == "supervised" else group)(args, args.out)
    full, full_losses = run(args.steps, os.path.join(args.out, "full"))
    state = full.accelerator
    _, first = run(args.steps // 2, os.path.join(args.out, "half"))
    resumed, rest = run(args.steps, os.path.join(args.out, "half"), resume=True)
    mine = {
        "rank": state.process_index,
        "num_processes": state.num_processes,
        "full_losses": full_losses,
        "resumed_losses": first + rest,
        "resumed_start_step": args.steps - len(rest),
        "full_checksum": checksum(full.unwrapped_model),
        "resumed_checksum": checksum(resumed.unwrapped_model),
        "writes": sorted(set(WRITES)),
    }
    reports = gather_object([mine])
    if state.is_main_process:
        from workbench.io import atomic_write_json

        atomic_write_json(args.report, {"processes": reports})
    from workbench.train import end_distributed

    end_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
