"""Speed of the latent engine against its baselines, measured in one run (issue: latent engine).

1. ``K`` latent steps vs ``K`` cached greedy token steps (same batch, same cache machinery), per
   feedback rule; target <= 1.3x for ``hidden``.
2. Batched latent inference (engine, at each batch of ``--batches``) vs the reference approach
   re-implemented (batch 1, full recompute of the sequence for every latent and answer token,
   as facebookresearch/coconut's ``generate``): per-example time ratio (targets >= 20x at 64,
   >= 50x at 256) and latent-plus-answer positions per second. The same for group-policy
   rollouts (LEPO's Gumbel soft tokens, then sampled tokens): one batched run against the same
   engine called once per trajectory.
3. Training step (forward + backward, ``K`` latents): the multi-pass cached forward vs the naive
   ``K + 1`` full passes; target <= 1.0x.

Runs on the default model (untrained weights: speed does not depend on them). Prints a table
and, as its last line, one JSON object. ``--device cuda`` runs on a GPU when there is one;
``--precision bf16`` runs every measure, the baselines included, under bf16 autocast (the
superposition and Gumbel probabilities stay fp32).
``--profile`` adds the ten torch ops that take the most time in one batched run at the largest
batch (cProfile), which is where the ratio is decided.

Profile finding (idle 2 CPU cores, batch 256, K=6, 8 answer tokens; ``--profile``): the
batched run is compute-bound. Matmuls (``addmm``) take about 50% of the time, attention 10-12%,
GPT-2's five-op ``gelu_new`` about 19%, the ``DynamicCache`` concatenation about 8%; Python
overhead is under 2% (about 17k Python calls per run), so per-step Python work, cache growth and
mask concatenation are not what holds the ratio. The ratio is bounded by the work saved: the
reference recomputes about ``position_ratio`` times more positions than the cached engine (printed),
and batching multiplies that by the matmul efficiency of a larger batch (3-4x on 2 cores). A fused
tanh-GELU (the same function within 3e-7) cut GELU to 6% of the profile but did not change the
measured time (42.5x vs 42.3x at batch 256), so it was not kept.
Under ``--precision bf16`` on a CPU with AMX units (stop 24): 46.0x at batch 256 against 32.7x in
fp32 on the same host; the profile then has matmuls 24%, SDPA 22%, GELU 24%, cache concatenation
7%. The one-op GELU again did not move the ratio (43.3x): it speeds the reference as well.
Stop 26: the KV cache and the attention mask now fill buffers allocated once per run
(``workbench/engine/cache.py``), which removes the concatenation (14% of a bf16 profile). Reference
and engine alternate in ``--repeat`` rounds (the reference runs ``--ref-examples / --repeat``
examples per round), so the ratio compares medians measured under the same host load; each round's
ratio is printed and kept in the JSON (``speedup_per_round``). Five bf16 runs at batch 256 on idle
2 cores: 58.9x, 39.9x, 54.1x, 51.6x, 45.2x (median 51.6x).
Stop 32: ``run_latent`` runs eager attention on CPU (``--engine-attention auto``, the default;
``model`` gives the reference's SDPA to the engine too). On an AMD EPYC host, where SDPA at one
query position was 33% of the profile, that takes 13% off the engine's time per example.
Stop 35: ``--compile`` runs the engine's decoder layers through ``torch.compile``
(``run_latent(compile_layers=True)``), which fuses their elementwise work (GELU, layer norm, the
attention softmax and mask, the residual adds: slow in bf16 on a CPU without bf16 vector units
for them). On the EPYC host, five bf16 runs at batch 256: 57.0-61.3x, median 59.6x (engine
0.86-1.25 ms per example; eager in the same session 1.79 ms, 39.7x and 47.2x). The reference stays
eager: compiling its layers does not speed batch-1 recompute (docs/results.md). Compiled profile:
matmuls 43%, the fused layer kernels about 21%, dynamo's guards and dispatch 6%, Python 1.4%.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return median(ts)


def median(ts: list[float]) -> float:
    return sorted(ts)[len(ts) // 2]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64, help="batch of measures 1 and 3")
    p.add_argument("--batches", default="64,256", help="batches of measure 2 (comma-separated)")
    p.add_argument("--rollout-examples", type=int, default=16,
                   help="trajectories the batch-1 rollout loop runs")  # fmt: skip
    p.add_argument("--profile", action="store_true", help="print where a batched run spends time")
    p.add_argument("--latents", type=int, default=6)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument(
        "--ref-examples", type=int, default=100, help="examples the batch-1 reference runs on"
    )
    p.add_argument(
        "--repeat", type=int, default=5,
        help="timing repeats; measure 2 alternates reference and engine in this many rounds",
    )  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32",
        help="bf16: every measure (baselines too) under autocast; rule probabilities stay fp32",
    )  # fmt: skip
    p.add_argument(
        "--attn", choices=("sdpa", "eager"), default="sdpa",
        help="the model's attention (ModelConfig.attn_implementation); eager was faster on an "
        "AMD EPYC host (docs/results.md)",
    )  # fmt: skip
    p.add_argument(
        "--engine-attention", choices=("auto", "model", "sdpa", "eager"), default="auto",
        help="run_latent's attention kernel (auto: eager on CPU, the model's own elsewhere; "
        "model: the same as the reference)",
    )  # fmt: skip
    p.add_argument(
        "--compile", action="store_true",
        help="run_latent(compile_layers=True): the engine's layers through torch.compile (measures "
        "1 and 2; the reference and the rollouts stay eager; compiling happens in the warm-up)",
    )  # fmt: skip
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bf16 = args.precision == "bf16"
    with torch.autocast(args.device.split(":")[0], torch.bfloat16, enabled=bf16):
        return measure(args)


def measure(args) -> dict:

    from workbench.data.tasks import generate
    from workbench.data.tokenizer import build_char_tokenizer, special_ids
    from workbench.engine.feedback import make_feedback
    from workbench.engine.forward import latent_forward, naive_latent_forward, shifted_ce
    from workbench.engine.loop import run_latent
    from workbench.engine.reference import reference_generate
    from workbench.methods.layout import (
        build_sequence,
        collate,
        pad_prompts,
        prompt_ids,
        tokenize_examples,
    )
    from workbench.models.build import ModelConfig, build_model
    from workbench.rl import token_policy

    dev = torch.device(args.device)
    tok = build_char_tokenizer()
    sp = special_ids(tok)
    model = build_model(ModelConfig(attn_implementation=args.attn), tok).to(dev).eval()
    d = model.config.hidden_size
    K = args.latents
    examples = generate("multiplication", args.test_size, 123)
    texs = tokenize_examples(examples, tok)
    prompts = [prompt_ids(t, sp) for t in texs]
    batch = {k: v.to(dev) for k, v in pad_prompts(prompts[: args.batch], sp.pad).items()}
    device_name = (
        torch.cuda.get_device_name(0) if dev.type == "cuda" else f"CPU, {args.threads} threads"
    )

    # every engine call runs the same kernels (the reference and the rollouts keep their own)
    engine_kw = {"attention": args.engine_attention, "compile_layers": args.compile}

    # 1. latent steps vs token steps
    rules = {
        n: (make_feedback(n, d_model=d) if n == "projected" else make_feedback(n)).to(dev).eval()
        for n in ("hidden", "projected", "superposition", "gumbel")
    }
    tokens = timed(
        lambda: run_latent(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            sp,
            max_latent_steps=0,
            max_new_tokens=K + 1,
            append_eot=False,
            **engine_kw,
        ),
        args.repeat,
    )
    step_ratio = {}
    for name, fb in rules.items():
        t = timed(
            lambda fb=fb: run_latent(
                model,
                batch["input_ids"],
                batch["attention_mask"],
                sp,
                feedback=fb,
                max_latent_steps=K,
                max_new_tokens=1,
                append_eot=False,
                **engine_kw,
            ),
            args.repeat,
        )
        step_ratio[name] = t / tokens

    # 2. batched engine on the whole test set vs batch-1 full recompute
    n_gen = 8
    batches = [int(b) for b in args.batches.split(",") if b.strip()]

    def engine_all(bs: int):
        for s in range(0, len(prompts), bs):
            b = pad_prompts(prompts[s : s + bs], sp.pad)
            run_latent(
                model,
                b["input_ids"].to(dev),
                b["attention_mask"].to(dev),
                sp,
                max_latent_steps=K,
                max_new_tokens=n_gen,
                **engine_kw,
            )

    # reference and engine alternate in rounds, so a change in the shared host's speed during the
    # run hits both sides of the ratio alike; each side's time is the median over the rounds
    rounds = max(1, min(args.repeat, args.ref_examples))
    ref_prompts = prompts[: args.ref_examples]
    reference_generate(model, ref_prompts[0], sp, max_latent_steps=K, max_new_tokens=n_gen)
    for bs in batches:
        engine_all(bs)  # warm-up
    ref_times, engine_times = [], {bs: [] for bs in batches}
    for r in range(rounds):
        chunk = ref_prompts[r::rounds]
        t0 = time.perf_counter()
        for pr in chunk:
            reference_generate(model, pr, sp, max_latent_steps=K, max_new_tokens=n_gen)
        ref_times.append((time.perf_counter() - t0) / len(chunk))
        for bs in batches:
            t0 = time.perf_counter()
            engine_all(bs)
            engine_times[bs].append((time.perf_counter() - t0) / len(prompts))
    t_ref = median(ref_times)
    # positions each approach runs through the model: the reference recomputes the whole sequence
    # at each of its F forward passes, the engine runs the padded prompt once, then one position
    F = K + 2 + n_gen  # reads before each latent and <eot>, then the answer tokens (about)
    lens = torch.tensor([len(pr) for pr in prompts], dtype=torch.float)
    ref_positions = (F * lens + F * (F - 1) / 2).mean()
    position_ratio = float(ref_positions / (lens.max() + F))
    engine = {}
    for bs in batches:
        t = median(engine_times[bs])
        engine[bs] = {
            "ms_per_example": 1000 * t,
            "speedup_vs_reference": t_ref / t,
            "speedup_per_round": [a / b for a, b in zip(ref_times, engine_times[bs], strict=True)],
            "positions_per_s": (K + n_gen) / t,
        }

    # 2b. group-policy rollouts: one batched run vs the engine once per trajectory
    def rollouts(ps):
        token_policy.rollout(model, tok, ps, soft_tokens=K, max_completion_length=n_gen, seed=0)

    rollouts(prompts[:1])  # warm-up
    t0 = time.perf_counter()
    for pr in prompts[: args.rollout_examples]:
        rollouts([pr])
    t_roll1 = (time.perf_counter() - t0) / args.rollout_examples
    rollout = {}
    for bs in batches:
        t = timed(lambda bs=bs: rollouts(prompts[:bs]), max(1, args.repeat // 2)) / bs
        rollout[bs] = {
            "ms_per_trajectory": 1000 * t,
            "speedup_vs_batch1": t_roll1 / t,
            "positions_per_s": (K + n_gen) / t,
        }
    profile = profile_top(lambda: engine_all(max(batches))) if args.profile else None

    # 3. training step: multi-pass cached vs naive K+1 full passes
    model.train()
    seqs = [build_sequence(t, sp, n_latent=K, first_step=len(t.steps)) for t in texs[: args.batch]]
    tb = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in collate(seqs, sp.pad).items()}

    def train_step(fn):
        model.zero_grad(set_to_none=True)
        shifted_ce(fn(model, tb, rules["hidden"]).logits, tb["labels"]).backward()

    t_fast = timed(lambda: train_step(latent_forward), args.repeat)
    t_naive = timed(lambda: train_step(naive_latent_forward), args.repeat)
    train_ratio = t_fast / t_naive

    print(
        f"\nlatent engine benchmark on {device_name}; default model "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), "
        f"batch {args.batch}, K={K}, {args.precision}"
        f"{', engine layers compiled' if args.compile else ''}"
    )
    print(f"{'measure':58s} {'value':>8s} {'target':>8s}")
    for name, r in step_ratio.items():
        print(
            f"{'1. ' + name + ' latent steps / token steps (time ratio)':58s} {r:8.2f} "
            f"{'<= 1.3' if name == 'hidden' else '':>8s}"
        )
    for bs, e in engine.items():
        goal = {64: ">= 20", 256: ">= 50"}.get(bs, "")
        print(
            f"{f'2. batch-1 full-recompute / batched engine, batch {bs}':58s} "
            f"{e['speedup_vs_reference']:8.1f} {goal:>8s}"
        )
        print(f"{'   engine ms per example, positions per s':58s} "
              f"{e['ms_per_example']:8.2f} {e['positions_per_s']:8.0f}")  # fmt: skip
        per_round = e["speedup_per_round"]
        print(f"{'   ratio per round, lowest and highest':58s} "
              f"{min(per_round):8.1f} {max(per_round):8.1f}")  # fmt: skip
    print(
        f"{'   reference ms per example (' + str(args.ref_examples) + ' examples)':58s} "
        f"{1000 * t_ref:8.2f}"
    )
    print(f"{'   positions recomputed by the reference / run by the engine':58s} "
          f"{position_ratio:8.1f}")  # fmt: skip
    for bs, r in rollout.items():
        print(f"{f'2b. rollouts batch-1 loop / batched, batch {bs}':58s} "
              f"{r['speedup_vs_batch1']:8.1f}")  # fmt: skip
        print(f"{'   ms per trajectory, positions per s':58s} "
              f"{r['ms_per_trajectory']:8.2f} {r['positions_per_s']:8.0f}")  # fmt: skip
    print(f"{'   batch-1 rollout ms per trajectory':58s} {1000 * t_roll1:8.2f}")
    print(
        f"{'3. training step: cached multi-pass / naive K+1 passes':58s} "
        f"{train_ratio:8.2f} {'<= 1.0':>8s}"
    )
    print(f"{'   cached ms, naive ms':58s} {1000 * t_fast:8.1f} {1000 * t_naive:8.1f}")
    out = {
        "benchmark": "latent_engine",
        "device": device_name,
        "precision": args.precision,
        "attn": args.attn,
        "engine_attention": args.engine_attention,
        "compile_layers": args.compile,
        "batch": args.batch,
        "latents": K,
        "latent_vs_token_step_ratio": step_ratio,
        "batched_vs_reference_speedup": engine[batches[0]]["speedup_vs_reference"],
        "engine": {str(k): v for k, v in engine.items()},
        "reference_ms_per_example": 1000 * t_ref,
        "position_ratio": position_ratio,
        "rollouts": {str(k): v for k, v in rollout.items()},
        "rollout_batch1_ms_per_trajectory": 1000 * t_roll1,
        "train_step_ratio_cached_vs_naive": train_ratio,
    }
    if profile is not None:
        out["profile"] = profile
        print(f"\nprofile of one batched run at batch {max(batches)} (share of the time):")
        for name, share in profile.items():
            print(f"   {name:55s} {100 * share:5.1f}%")
    print(json.dumps(out))
    return out


def profile_top(fn, n: int = 10) -> dict[str, float]:
    """The ``n`` functions with the most own time in one call of ``fn`` (cProfile)."""
    import cProfile
    import pstats

    fn()
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    st = pstats.Stats(prof).stats
    total = sum(v[2] for v in st.values()) or 1.0
    rows = sorted(st.items(), key=lambda kv: -kv[1][2])[:n]
    return {f"{k[2]} ({Path(k[0]).name}:{k[1]})": v[2] / total for k, v in rows}


if __name__ == "__main__":
    main()
