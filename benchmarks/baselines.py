"""CoT vs no-CoT on 3x3 multiplication under the same training-time budget (issue: foundation).

Trains the default model (GPT-2, 4 layers, d=256) from scratch for ``--minutes`` of wall time
per method on ``--threads`` CPU threads, then scores exact-match accuracy on ``--test-size``
held-out problems with the shared batched evaluator. Prints a table and, as its last line,
one JSON object with the numbers. ``--save DIR`` keeps the trained models (``make checkpoints``).

    python benchmarks/baselines.py --minutes 10 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training wall time per method")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--train-size", type=int, default=100_000)
    p.add_argument("--digits", type=int, default=3)
    p.add_argument("--methods", default="cot,nocot")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--d-model", type=int, default=256, help="hidden size (256 = the default 3.2M model)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--save", help="folder to save the trained models into (one subfolder per method)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_MININTERVAL", "10")

    from workbench.experiment import default_train_config, prepare_data, train_baseline
    from workbench.models.build import ModelConfig

    data = prepare_data(
        "multiplication",
        train_size=args.train_size,
        test_size=args.test_size,
        seed=args.seed,
        digits_a=args.digits,
    )
    rows = []
    for mode in args.methods.split(","):
        t0 = time.perf_counter()
        tc = default_train_config(
            seed=args.seed, eval_every=500, batch_size=args.batch_size, lr=args.lr
        )
        tm = train_baseline(
            data,
            mode,
            model_config=ModelConfig(d_model=args.d_model),
            train_config=tc,
            seed=args.seed,
            time_budget_s=60 * args.minutes,
        )
        train_s = time.perf_counter() - t0
        res = tm.evaluate()
        s = res.summary
        rows.append(
            {
                "method": mode,
                "accuracy": s["accuracy"],
                "train_minutes": train_s / 60,
                "train_steps": tm.meta["train_steps"],
                "params": tm.meta["params"],
                "reasoning_tokens": s["reasoning_tokens"],
                "answer_tokens": s["answer_tokens"],
                "forward_passes": s["forward_passes"],
                "ms_per_example": s["ms_per_example"],
            }
        )
        if args.save:
            tm.meta["data"] = {
                "train_size": len(data.train),
                "val_size": len(data.val),
                "test_size": len(data.test),
                "seed": args.seed,
                "difficulty": data.difficulty,
            }
            tm.save(os.path.join(args.save, mode))
    print(
        f"\n{args.digits}x{args.digits} multiplication, {args.test_size} held-out problems, "
        f"{args.minutes:g} min of training per method, {args.threads} threads, "
        f"d_model {args.d_model}, "
        f"batch {args.batch_size}, lr {args.lr:g}"
    )
    print(
        f"{'method':8s} {'accuracy':>9s} {'train min':>9s} {'steps':>6s} "
        f"{'reason tok':>10s} {'answer tok':>10s} "
        f"{'ms/ex':>7s}"
    )
    for r in rows:
        print(
            f"{r['method']:8s} {r['accuracy']:9.3f} {r['train_minutes']:9.2f} "
            f"{r['train_steps']:6d} "
            f"{r['reasoning_tokens']:10.1f} {r['answer_tokens']:10.1f} {r['ms_per_example']:7.2f}"
        )
    out = {
        "benchmark": "baselines",
        "task": f"multiplication {args.digits}x{args.digits}",
        "threads": args.threads,
        "d_model": args.d_model,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "minutes_per_method": args.minutes,
        "test_size": args.test_size,
        "results": rows,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
