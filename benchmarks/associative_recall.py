"""Can the embedded default learn to look a fact up by its subject? (the graph task's bottleneck)

The graph task's CoT writes "Amy is a" and must copy the object of *Amy's* fact from the
question; at the recipe difficulty the d=128 CoT model stays near chance because it does not
(docs/results.md, graph). This benchmark isolates that one skill as multi-query associative
recall (MQAR, Arora et al., "Zoology", 2023): a sequence ``k1 v1 k2 v2 ... kN vN`` of random
concept names from the graph task's vocabulary, then the N keys again in a random order, each
followed by its value. The loss and the accuracy are on the queried values only, so a model
scores above ``1/(2N)`` (guessing a name of the context) only by matching the key. It trains
fresh models of the workbench's two architectures (``ModelConfig.arch``: GPT-2's learned absolute
positions, Llama's rotary ones) with the trainer's optimizer settings (AdamW, betas 0.9/0.98,
weight decay 0.01, 30 warm-up steps, then constant lr, clip 1.0) and prints the held-out
accuracy every ``--eval-every`` steps and the first step at which it reached 90%.

Usage::

    python benchmarks/associative_recall.py [--archs gpt2,llama] [--lrs 1e-3,2e-3]
        [--seeds 0] [--steps 3000] [--pairs 6] [--chained 0] [--threads 1]

``--chained k`` makes k pairs take another pair's key as their value (``a b ... b c``): those
names appear once as a value and once as a key, like the middle concepts of a graph path, whose
lookup the graph CoT learns only slowly (docs/results.md, graph).

The last line is one JSON object ``{"pairs", "chained", "steps", "runs": [{"arch", "lr", "seed",
"curve": [[step, loss, accuracy], ...], "final_accuracy", "step_to_90"}, ...]}``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

try:
    import workbench  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from workbench.data.tasks.graph_qa import CONCEPT_NAMES
from workbench.data.tokenizer import build_word_tokenizer
from workbench.models.build import ModelConfig, build_model


def recall_batch(
    rng: random.Random, names: list[int], pairs: int, batch: int, chained: int = 0
) -> torch.Tensor:
    """``batch`` sequences of ``pairs`` key-value pairs, then every key again with its value.

    ``chained`` pairs take another pair's key as their value (``a b ... b c``), so that name
    stands once as a value and once as a key, like a concept in the middle of a graph path.
    """
    rows = []
    for _ in range(batch):
        toks = rng.sample(names, 2 * pairs - chained)
        keys, values = toks[:pairs], toks[pairs:]
        if chained:  # keys[i] -> keys[i + 1] for the first `chained` keys, stated shuffled
            values = keys[1 : chained + 1] + values
            shuffled = rng.sample(range(pairs), pairs)
            keys, values = [keys[i] for i in shuffled], [values[i] for i in shuffled]
        order = rng.sample(range(pairs), pairs)
        rows.append([t for k, v in zip(keys, values, strict=True) for t in (k, v)]
                    + [t for i in order for t in (keys[i], values[i])])  # fmt: skip
    return torch.tensor(rows)


def recall_loss(model, x: torch.Tensor, pairs: int) -> tuple[torch.Tensor, float]:
    """Cross-entropy and accuracy on the queried values (odd positions of the second half)."""
    logits = model(input_ids=x).logits
    pred, gold = logits[:, 2 * pairs : -1 : 2], x[:, 2 * pairs + 1 :: 2]
    loss = F.cross_entropy(pred.reshape(-1, pred.size(-1)).float(), gold.reshape(-1))
    return loss, float((pred.argmax(-1) == gold).float().mean())


def run_one(arch: str, lr: float, seed: int, args, tokenizer, names: list[int], device: str):
    """Train one fresh model on fresh batches; the held-out batch is the same for every run."""
    config = ModelConfig(arch=arch, d_model=args.d_model, n_layer=args.n_layer,
                         max_positions=4 * args.pairs)  # fmt: skip
    model = build_model(config, tokenizer, seed=seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    rng = random.Random(seed)
    held_out = recall_batch(random.Random(10_000), names, args.pairs, 256, args.chained).to(device)
    curve, step_to_90 = [], None
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 30)
        x = recall_batch(rng, names, args.pairs, args.batch, args.chained).to(device)
        loss, _ = recall_loss(model, x, args.pairs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                _, acc = recall_loss(model, held_out, args.pairs)
            model.train()
            curve.append([step, round(loss.item(), 4), round(acc, 4)])
            if step_to_90 is None and acc >= 0.9:
                step_to_90 = step
            print(f"[recall] {arch} lr {lr:g} seed {seed} step {step}: loss {loss.item():.3f}, "
                  f"held-out accuracy {acc:.3f}", flush=True)  # fmt: skip
    return {"arch": arch, "lr": lr, "seed": seed, "curve": curve,
            "final_accuracy": curve[-1][2], "step_to_90": step_to_90}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="gpt2,llama", help="comma-separated ModelConfig.arch values")
    p.add_argument("--lrs", default="1e-3", help="comma-separated learning rates")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (init and batches)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--pairs", type=int, default=6, help="key-value pairs per sequence")
    p.add_argument("--chained", type=int, default=0,
                   help="pairs whose value is another pair's key")  # fmt: skip
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    for name in ("steps", "pairs", "batch", "eval_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = build_word_tokenizer(CONCEPT_NAMES)  # the graph task's 648 concept names
    vocab = tokenizer.get_vocab()
    names = sorted(vocab[n] for n in CONCEPT_NAMES)
    if not 0 <= args.chained < args.pairs:
        p.error(
            f"--chained must be in [0, --pairs - 1] = [0, {args.pairs - 1}], got {args.chained}"
        )
    if len(names) < 2 * args.pairs:
        p.error(f"--pairs {args.pairs} needs {2 * args.pairs} names, there are {len(names)}")
    runs = []
    t0 = time.perf_counter()
    for arch in args.archs.split(","):
        for lr in (float(x) for x in args.lrs.split(",")):
            for seed in (int(x) for x in args.seeds.split(",")):
                runs.append(run_one(arch.strip(), lr, seed, args, tokenizer, names, device))
    print(f"\nassociative recall, {args.pairs} pairs ({args.chained} chained), {len(names)} names, "
          f"batch {args.batch}, "
          f"{args.steps} steps, d={args.d_model} x {args.n_layer} layers, device {device}, "
          f"{(time.perf_counter() - t0) / 60:.1f} min")  # fmt: skip
    print("arch      lr        seed  final_accuracy  step_to_90")
    for r in runs:
        print(f"{r['arch']:<9} {r['lr']:<9g} {r['seed']:<5d} {r['final_accuracy']:>14.3f}  "
              f"{r['step_to_90'] if r['step_to_90'] is not None else '-':>10}")  # fmt: skip
    summary = {"pairs": args.pairs, "chained": args.chained, "steps": args.steps,
               "names": len(names), "device": device, "runs": runs}  # fmt: skip
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
