"""Single pass vs TRM vs DIS on Sudoku at equal training wall-clock (issue 12, RESEARCH B 4.3).

Generates ``--train-size`` training and ``--test-size`` held-out puzzles (no question in both)
of ``--size`` (4, the default, or 9) at ``--difficulty``, trains each arm of
:func:`workbench.recursive.model.preset` for ``--seconds`` of wall time on ``--threads``
threads with the same model width, optimiser and seed, then evaluates the EMA weights on the
held-out puzzles with all supervision steps. Prints, per arm, the per-step table (accuracy
gain, advantage margin, dead compute), then one summary table (exact accuracy, cell accuracy
on the blanks, NFP per example with all steps and with Q-head halting, train steps, seconds)
and, as its last line, one JSON object with the numbers.

    python benchmarks/recursive.py --seconds 120              # 4x4, about 8 minutes
    python benchmarks/recursive.py --size 9 --seconds 1200    # 9x9 easy
    python benchmarks/recursive.py --size 9 --seconds 30 --batch-size 1024 --device cuda

An arm may override its preset, e.g. ``--arms trm,dis,dis:n_sup=2:n=1`` (DIS at 4 NFP); the
default arms add ``dis:n_sup=3:n=1`` (DIS at 6 NFP, under 1/10 of TRM's 64) to the three presets.
``--save-dir DIR`` keeps each arm's evaluated weights in ``DIR/<arm>``; ``--load-dir DIR``
evaluates them again (same data flags) without training. Each arm's per-step table has the
advantage margin at w = 1 (``advantage_margin``, "dead compute" when <= 0), at w = 0
(``margin_w0``) and the cross-entropy the step removed (``loss_drop``); a guidance sweep follows.

Measured (``--size 9 --seconds 2400 --threads 1``, one arm per process, one core each;
docs/results.md, Sudoku): single pass 63.0% exact, TRM 98.6% (64 NFP, 10.35 with halting),
DIS 97.4% (18 NFP), DIS at 6 NFP (``dis:n_sup=3:n=1``) 96.4% with a positive advantage margin
at all three steps.

Deviation from RESEARCH 4.3 (CPU minutes instead of hours): lr 1e-3 (not 1e-4), weight decay
0.1 (not 1.0) and EMA 0.99 (not 0.999) by default, since an arm gets only a few hundred to a
few thousand optimizer steps; hidden 64 for 4x4.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import random
import time


def parse_arms(text: str) -> list[tuple[str, dict]]:
    """``"single,dis:n=1"`` -> ``[("single", {}), ("dis:n=1", {"n": 1})]``.

    Values are Python literals; ``main`` checks the field names, :class:`RecursiveConfig` the
    values, before any puzzle is generated.
    """
    arms = []
    for spec in text.split(","):
        _, *pairs = spec.strip().split(":")
        overrides = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise argparse.ArgumentTypeError(f"arm {spec!r}: expected preset:field=value")
            try:
                overrides[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                raise argparse.ArgumentTypeError(
                    f"arm {spec!r}: {key}={value!r} is not a Python literal"
                ) from None
        arms.append((spec.strip(), overrides))
    return arms


def folder(arm: str) -> str:
    """The --save-dir / --load-dir subfolder of an arm spec (``dis:n=1`` -> ``dis_n=1``)."""
    return arm.replace(":", "_")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4, choices=(4, 9))
    p.add_argument("--difficulty", default="easy", choices=("easy", "hard"))
    p.add_argument("--seconds", type=float, default=120.0, help="training wall time per arm")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--arms",
        type=parse_arms,
        default="single,trm,dis,dis:n_sup=3:n=1",
        help="comma-separated arms, each a preset with optional RecursiveConfig overrides "
        "(default: the three presets and DIS at 6 NFP, under 1/10 of TRM's 64)",
    )
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--hidden", type=int, help="model width (default: 64 for 4x4, 128 for 9x9)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--ema-decay", type=float, default=0.99)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument(
        "--load-dir",
        help="evaluate the arms saved in LOAD_DIR/<arm> by --save-dir instead of training them",
    )
    p.add_argument(
        "--save-dir", help="save each arm's evaluated (EMA) weights to SAVE_DIR/<arm> (safetensors)"
    )
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)

    from workbench.data.tasks import sudoku
    from workbench.recursive import (
        RecursiveConfig,
        RecursiveTrainer,
        TrainConfig,
        load_model,
        preset,
    )
    from workbench.recursive import diagnostics as diag

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fields = {f.name for f in dataclasses.fields(RecursiveConfig)} - {"size", "hidden", "layers"}
    for arm, overrides in args.arms:
        if unknown := sorted(set(overrides) - fields):
            p.error(
                f"--arms {arm}: unknown field(s) {unknown}; RecursiveConfig has {sorted(fields)}"
            )
    hidden = args.hidden or (64 if args.size == 4 else 128)
    configs = [
        (arm, preset(arm.split(":")[0], size=args.size, hidden=hidden, layers=args.layers, **kw))
        for arm, kw in args.arms
    ]
    t0 = time.perf_counter()
    rng = random.Random(args.seed)
    train = sudoku.generate(args.train_size, rng, size=args.size, difficulty=args.difficulty)
    seen = {e["question"] for e in train}
    test = [
        e
        for e in sudoku.generate(
            3 * args.test_size, rng, size=args.size, difficulty=args.difficulty
        )
        if e["question"] not in seen
    ][: args.test_size]
    puzzles = sudoku.encode([e["question"] for e in test])
    solutions = sudoku.encode([e["answer"] for e in test])
    print(
        f"{args.size}x{args.size} {args.difficulty}: {len(train)} train / {len(test)} test "
        f"puzzles generated in {time.perf_counter() - t0:.1f}s; {args.seconds:.0f}s per arm, "
        f"{args.threads} thread(s)"
    )

    rows = []
    for arm, mcfg in configs:
        if args.load_dir:
            model = (
                load_model(os.path.join(args.load_dir, folder(arm)), config=mcfg).to(device).eval()
            )
            trained = {"train_steps": None, "seconds": None}
        else:
            tcfg = TrainConfig(
                steps=10**9,
                max_seconds=args.seconds,
                batch_size=args.batch_size,
                lr=args.lr,
                weight_decay=args.weight_decay,
                ema_decay=args.ema_decay,
                log_every=50,
                seed=args.seed,
                device=args.device,
            )
            trainer = RecursiveTrainer(mcfg, tcfg, train)
            trainer.fit()
            model = trainer.eval_model
            if args.save_dir:
                trainer.save(os.path.join(args.save_dir, folder(arm)))
            trained = {"train_steps": trainer.global_step, "seconds": round(trainer.seconds, 1)}
        steps = diag.per_step(model, puzzles, solutions)
        table = diag.step_summary(steps)
        nfp = diag.nfp_per_example(steps)
        sweep = diag.guidance_sweep(model, puzzles, solutions)
        last = table.iloc[-1]
        print(f"\n[{arm}] T={mcfg.T} n={mcfg.n} N_sup={mcfg.n_sup} halting={mcfg.halting}")
        print(table.round(4).to_string(index=False))
        print("guidance sweep at the last step (w = 1 is the model itself):")
        print(sweep.round(4).to_string(index=False))
        rows.append(
            {
                "arm": arm,
                "exact_acc": round(float(last["exact_acc"]), 4),
                "cell_acc": round(float(last["cell_acc"]), 4),
                "nfp": int(last["nfp"]),
                "nfp_halt": round(float(nfp["nfp_halt"].mean()), 2),
                **trained,
                "params": sum(q.numel() for q in model.parameters()),
                "dead_steps": int(table["dead_compute"].sum()),
                "dead_steps_w0": int((table["margin_w0"].iloc[1:] <= 0).sum()),
                "best_w": float(diag.best_guidance(sweep)["w"]),
            }
        )

    print()
    header = list(rows[0])
    print("  ".join(f"{h:>11}" for h in header))
    for r in rows:
        print("  ".join(f"{r[h]!s:>11}" for h in header))
    result = {
        "benchmark": "recursive",
        "size": args.size,
        "difficulty": args.difficulty,
        "seconds_per_arm": args.seconds,
        "threads": args.threads,
        "device": str(device),
        "hidden": hidden,
        "layers": args.layers,
        "train_size": len(train),
        "test_size": len(test),
        "rows": rows,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
