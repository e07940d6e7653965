"""RL fine-tuning against its SFT start, and rollout throughput of the batched engine.

For each RL method (``--methods atp_rl,lepo,latro``; those registered) this loads its SFT
starting point from a ``compare_methods.py --out`` folder (``<models>/<task>/<row>``: ``atp``
for ATP-RL, ``cot`` for LEPO and LaTRO), scores it on held-out problems, trains the RL method
for ``--steps`` steps of ``--questions`` x ``--generations`` sampled trajectories and scores it
again; the table has accuracy before / after, the problems fixed and broken on the same set with
McNemar's z (the paired test of the gain), latents used, the mean reward of the first and last
quarter of the steps, trajectories sampled and minutes. ``--eval-seeds K`` scores each model under K
sampling seeds and reports the mean and spread (LEPO evaluates with sampled Gumbel soft tokens:
+/-0.4 points on 500 problems). ``--seed`` also picks the held-out set, so compare runs under one
seed. ``--pool N`` trains on the first ``N`` training problems only and also scores that pool
before and after (``pool_accuracy_*``): what RL learns on the questions it samples against what
carries over to held-out ones. Training prints a progress line every ``--print-every`` steps.
``--config field=value,...`` sets any other field of the methods' RL configs (e.g.
``beta=0.04`` or ``latent_gradient=pathwise``); a field that a method's config lacks, or that has
its own flag, is refused before anything is loaded.

Throughput: ``N`` rollouts of the shipped arithmetic CoT model sampled in one batched KV-cached
engine run against a loop calling ``model.generate(do_sample=True)`` once per trajectory, same
tokens, same model, in the same run; printed as a ratio.

Usage::

    python benchmarks/rl.py --models runs/compare [--task arithmetic] [--steps 40]
        [--methods atp_rl] [--throughput-only]

The last line is one JSON object ``{"throughput": {...}, "methods": {...}}``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

try:
    import workbench  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from workbench.data.layout import prompt_ids, tokenize_examples
from workbench.data.tokenizer import special_ids
from workbench.experiment import TrainedModel, prepare_data, shipped_path, train
from workbench.methods import get_method, method_names
from workbench.recipes import RECIPES
from workbench.rl import token_policy
from workbench.train.trainer import TrainerCallback

START_ROW = {"atp_rl": "atp", "lepo": "cot", "latro": "cot"}
"""The SFT model each RL method starts from (a recipe row)."""

FLAG_FIELDS = {
    "num_generations": "--generations",
    "per_device_train_batch_size": "--questions",
    "max_steps": "--steps",
    "learning_rate": "--lr",
    "num_iterations": "--num-iterations",
    "temperature": "--temperature",
    "seed": "--seed",
}
"""Config fields that ``run_method`` sets from a flag of their own (``--config`` may not)."""


def parse_overrides(text: str) -> dict:
    """``"beta=0.04,gaussian_reduction=sum"`` -> ``{"beta": 0.04, "gaussian_reduction": "sum"}``:
    values are Python literals (a dict or list keeps its commas), a bare word is a string."""
    out = {}
    for part in filter(None, (x.strip() for x in _top_level_split(text))):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise argparse.ArgumentTypeError(f"{part!r}: expected field=value, e.g. beta=0.04")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            if not value.isidentifier():
                raise argparse.ArgumentTypeError(
                    f"{part!r}: the value must be a Python literal or a bare word"
                ) from None
            out[key] = value
    return out


def _top_level_split(text: str) -> list[str]:
    """Split on the commas outside brackets and quotes (a dict value keeps its commas)."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    return [*parts, "".join(cur)]


def check_overrides(overrides: dict, methods: list[str]) -> None:
    """Refuse a ``--config`` field a method's config lacks, or one with its own flag."""
    for key in overrides:
        if key in FLAG_FIELDS:
            raise SystemExit(f"--config {key}=...: use {FLAG_FIELDS[key]} for {key}")
    for name in methods:
        known = {f.name for f in dataclasses.fields(get_method(name).config_cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise SystemExit(
                f"--config {unknown}: not fields of {name}'s config; it has {sorted(known)}"
            )


def throughput(tm: TrainedModel, examples: list, n: int, tokens: int, seed: int = 0) -> dict:
    """Trajectories per second: one batched engine run vs one ``generate`` call each."""
    sp = special_ids(tm.tokenizer)
    prompts = [prompt_ids(t, sp) for t in tokenize_examples(examples, tm.tokenizer)]
    prompts = (prompts * (n // len(prompts) + 1))[:n]
    model = tm.model.eval()
    dev = next(model.parameters()).device
    t0 = time.perf_counter()
    token_policy.rollout(model, tm.tokenizer, prompts, max_completion_length=tokens, seed=seed)
    batched = time.perf_counter() - t0
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], device=dev)
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                pad_token_id=sp.pad,
                top_k=0,
            )
    loop = time.perf_counter() - t0
    return {
        "trajectories": n,
        "tokens": tokens,
        "batched_s": batched,
        "loop_s": loop,
        "batched_per_s": n / batched,
        "loop_per_s": n / loop,
        "ratio": loop / batched,
    }


class ProgressPrinter(TrainerCallback):
    """One line every ``every`` RL steps: step, reward, loss, minutes (long runs are not silent)."""

    def __init__(self, name: str, every: int, total: int):
        self.name, self.every, self.total = name, every, total
        self.t0 = time.perf_counter()

    def on_log(self, trainer, logs: dict) -> None:
        step = int(logs.get("step", 0))
        if self.every and (step % self.every == 0 or step == self.total):
            parts = " ".join(f"{k}={logs[k]:.4g}" for k in ("reward", "loss") if k in logs)
            minutes = (time.perf_counter() - self.t0) / 60
            print(f"[rl] {self.name} step {step}/{self.total} {parts} ({minutes:.1f} min)",
                  flush=True)  # fmt: skip


def seeded_accuracy(tm: TrainedModel, examples: list, seeds: list[int], spec=None) -> tuple:
    """Mean and population std of held-out accuracy over sampling ``seeds``, and the summary
    of the first seed's run (for the latent and token counts; ``"correct"`` holds its per-problem
    outcomes)."""
    kwargs = {} if spec is None else {"spec": spec}
    evals = [tm.evaluate(examples, seed=s, **kwargs) for s in seeds]
    runs = [e.summary for e in evals]
    accs = torch.tensor([r["accuracy"] for r in runs], dtype=torch.float64)
    std = float(accs.std(unbiased=False)) if len(seeds) > 1 else 0.0
    first = {**runs[0], "correct": evals[0].per_example["correct"].to_numpy().astype(bool)}
    return float(accs.mean()), std, first


def paired_change(before, after) -> dict:
    """Problems the RL model fixed and broke against its start on the same held-out set, and
    McNemar's z = (fixed - broken) / sqrt(fixed + broken): with paired outcomes, a gain is
    judged against the problems that changed, not against the sampling noise of two accuracies
    (|z| > 2: unlikely under no change)."""
    fixed = int((after & ~before).sum())
    broken = int((before & ~after).sum())
    z = (fixed - broken) / math.sqrt(fixed + broken) if fixed + broken else 0.0
    return {"fixed": fixed, "broken": broken, "mcnemar_z": z}


def run_method(name: str, models: Path, task: str, args) -> dict:
    record = get_method(name)
    recipe = RECIPES[task]
    start_row = args.start.get(name, START_ROW[name])
    start = TrainedModel.load(models / task / start_row)
    data = prepare_data(
        task,
        train_size=recipe.train_size,
        test_size=args.test_size,
        seed=args.seed,
        tokenizer=start.tokenizer,
        **recipe.difficulty,
    )
    held_out = data.test
    pool = None
    if args.pool:
        pool = data.train[: args.pool]
        data = dataclasses.replace(data, train=pool)
    seeds = [args.seed + i for i in range(args.eval_seeds)]
    acc_before, std_before, before = seeded_accuracy(start, held_out, seeds)
    sampled_before = sampled_accuracy(start, held_out, seeds)
    cfg = record.config_cls(
        num_generations=args.generations,
        per_device_train_batch_size=args.questions,
        max_steps=args.steps,
        learning_rate=args.lr,
        num_iterations=args.num_iterations,
        temperature=args.temperature,
        seed=args.seed,
        **args.config,
    )
    t0 = time.perf_counter()
    progress = ProgressPrinter(name, args.print_every, args.steps)
    tm = train(name, data, start, config=cfg, seed=args.seed, callbacks=[progress])
    minutes = (time.perf_counter() - t0) / 60
    acc_after, std_after, after = seeded_accuracy(tm, held_out, seeds)
    h = tm.history
    if args.out:
        tm.save(Path(args.out) / task / name)
    # first and last quarter of the run: a step's reward is the mean of only Q x G rollouts,
    # so 10-step windows moved by more than a 300-step trend (LaTRO, stop 24)
    window = max(1, len(h) // 4)
    row = {
        "start": start_row,
        "config": dict(args.config),
        "accuracy_before": acc_before,
        "accuracy_after": acc_after,
        "gain": acc_after - acc_before,
        **paired_change(before["correct"], after["correct"]),
        "accuracy_before_std": std_before,
        "accuracy_after_std": std_after,
        "eval_seeds": len(seeds),
        "latents_before": before["latent_steps"],
        "latents_after": after["latent_steps"],
        "reward_first": float(h["reward"].iloc[:window].mean()),
        "reward_last": float(h["reward"].iloc[-window:].mean()),
        "distinct_per_group": float(h["distinct_per_group"].mean()),
        "frac_reward_zero_std": float(h["frac_reward_zero_std"].mean()),
        # each rollout batch serves num_iterations optimizer steps
        "trajectories": -(-args.steps // args.num_iterations) * args.questions * args.generations,
        "train_minutes": minutes,
    }
    for col in h.columns:  # each reward part's mean over the first and last window
        if col.startswith("rewards/") and col.endswith("/mean"):
            part = col.split("/")[1]
            row[f"{part}_first"] = float(h[col].iloc[:window].mean())
            row[f"{part}_last"] = float(h[col].iloc[-window:].mean())
    if pool is not None:
        row["pool"] = len(pool)
        row["pool_accuracy_before"] = seeded_accuracy(start, pool, seeds)[0]
        row["pool_accuracy_after"] = seeded_accuracy(tm, pool, seeds)[0]
    if sampled_before is not None:
        row["accuracy_sampled_before"] = sampled_before
        row["accuracy_sampled_after"] = sampled_accuracy(tm, held_out, seeds)
    return row


def sampled_accuracy(tm: TrainedModel, examples: list, seeds: list[int]) -> float | None:
    """ATP's own evaluation mode (latents sampled, RESEARCH Part B 1 pitfall 3), the mean over
    ``seeds``; None for a model without Gaussian latents."""
    from workbench.engine.feedback import GaussianFeedback
    from workbench.methods.atp import sampled_spec

    if tm.spec is None or not isinstance(tm.spec.feedback, GaussianFeedback):
        return None
    return seeded_accuracy(tm, examples, seeds, spec=sampled_spec(tm.spec))[0]


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="runs/compare", help="compare_methods.py --out folder")
    p.add_argument("--task", default="arithmetic", choices=sorted(RECIPES))
    p.add_argument("--methods", default="atp_rl")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--num-iterations", type=int, default=1, help="passes over each rollout batch")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument(
        "--eval-seeds",
        type=int,
        default=1,
        help="score each model under this many sampling seeds (mean and std)",
    )
    p.add_argument("--print-every", type=int, default=10, help="progress line every N steps "
                   "(0: silent)")  # fmt: skip
    p.add_argument("--rollouts", type=int, default=256, help="trajectories in the throughput run")
    p.add_argument("--tokens", type=int, default=32, help="tokens per trajectory there")
    p.add_argument("--throughput-only", action="store_true")
    p.add_argument("--no-throughput", action="store_true", help="skip the throughput run")
    p.add_argument("--out", help="save the RL models under <out>/<task>/<method>")
    p.add_argument("--config", type=parse_overrides, default={},
                   help="field=value,... for other RL config fields (e.g. beta=0.04)")  # fmt: skip
    p.add_argument("--pool", type=int, default=0, help="train on the first N training problems "
                   "only and score them too (0: the whole split)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", default="", help="method=row,... : start rows other than "
                   f"{START_ROW} (e.g. atp_rl=atp_long)")  # fmt: skip
    args = p.parse_args(argv)
    if args.eval_seeds < 1:
        p.error(f"--eval-seeds must be >= 1, got {args.eval_seeds}")
    if args.pool < 0:
        p.error(f"--pool must be >= 0 (0: the whole training split), got {args.pool}")
    pairs = [kv.split("=", 1) for kv in args.start.split(",") if kv.strip()]
    bad = [kv for kv in pairs if len(kv) != 2 or kv[0] not in START_ROW]
    if bad:
        p.error(f"--start {args.start!r}: expected method=row with a method of {list(START_ROW)}")
    args.start = {k.strip(): v.strip() for k, v in pairs}
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    check_overrides(args.config, [n for n in names if n in method_names()])
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cot_dir = shipped_path("cot", args.task)
    cot = TrainedModel.load(cot_dir if cot_dir.exists() else Path(args.models) / args.task / "cot")
    examples = prepare_data(
        args.task,
        train_size=64,
        test_size=64,
        seed=args.seed,
        tokenizer=cot.tokenizer,
        **RECIPES[args.task].difficulty,
    ).test
    cot.model.to(device)
    tp = None
    if not args.no_throughput:
        tp = throughput(cot, examples, args.rollouts, args.tokens, args.seed)
        print(
            f"throughput ({device}): {tp['trajectories']} trajectories x {tp['tokens']} tokens: "
            f"batched engine {tp['batched_per_s']:.1f}/s, per-sample generate loop "
            f"{tp['loop_per_s']:.1f}/s, ratio {tp['ratio']:.1f}x",
            flush=True,
        )
    results: dict[str, dict] = {}
    if not args.throughput_only:
        for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
            if name not in method_names():
                print(f"[rl] {name}: not registered, skipped", flush=True)
                continue
            results[name] = run_method(name, Path(args.models), args.task, args)
            print(f"[rl] {name}: {json.dumps(results[name])}", flush=True)
        cols = [
            "start",
            "accuracy_before",
            "accuracy_after",
            "gain",
            "mcnemar_z",
            "accuracy_after_std",
            "latents_before",
            "latents_after",
            "reward_first",
            "reward_last",
            "distinct_per_group",
            "trajectories",
            "train_minutes",
        ]
        print(f"\n{args.task} ({args.test_size} held-out problems, device {device})")
        print("method".ljust(10) + "".join(c[:13].rjust(14) for c in cols))
        for name, row in results.items():
            print(name.ljust(10) + "".join(_cell(row.get(c)).rjust(14) for c in cols))
    print(json.dumps({"task": args.task, "device": device, "throughput": tp, "methods": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
