"""Speed of the latent engine against its baselines, measured in one run (issue: latent engine).

1. ``K`` latent steps vs ``K`` cached greedy token steps (same batch, same cache machinery), per
   feedback rule; target <= 1.3x for ``hidden``.
2. Batched latent inference (engine, batch ``--batch``) vs the reference approach re-implemented
   (batch 1, full recompute of the sequence for every latent and answer token, as
   facebookresearch/coconut's ``generate``): per-example time ratio; target >= 20x.
3. Training step (forward + backward, ``K`` latents): the multi-pass cached forward vs the naive
   ``K + 1`` full passes; target <= 1.0x.

Runs on the default model (untrained weights: speed does not depend on them). Prints a table
and, as its last line, one JSON object. ``--device cuda`` runs on a GPU when there is one.
"""

from __future__ import annotations

import argparse
import json
import time

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
    return sorted(ts)[len(ts) // 2]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--latents", type=int, default=6)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument(
        "--ref-examples", type=int, default=100, help="examples the batch-1 reference runs on"
    )
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

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

    dev = torch.device(args.device)
    tok = build_char_tokenizer()
    sp = special_ids(tok)
    model = build_model(ModelConfig(), tok).to(dev).eval()
    d = model.config.hidden_size
    K = args.latents
    examples = generate("multiplication", args.test_size, 123)
    texs = tokenize_examples(examples, tok)
    prompts = [prompt_ids(t, sp) for t in texs]
    batch = {k: v.to(dev) for k, v in pad_prompts(prompts[: args.batch], sp.pad).items()}
    device_name = (
        torch.cuda.get_device_name(0) if dev.type == "cuda" else f"CPU, {args.threads} threads"
    )

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
            ),
            args.repeat,
        )
        step_ratio[name] = t / tokens

    # 2. batched engine on the whole test set vs batch-1 full recompute
    n_gen = 8

    def engine_all():
        for s in range(0, len(prompts), args.batch):
            b = pad_prompts(prompts[s : s + args.batch], sp.pad)
            run_latent(
                model,
                b["input_ids"].to(dev),
                b["attention_mask"].to(dev),
                sp,
                max_latent_steps=K,
                max_new_tokens=n_gen,
            )

    t_engine = timed(engine_all, max(1, args.repeat // 2)) / len(prompts)
    t0 = time.perf_counter()
    for pr in prompts[: args.ref_examples]:
        reference_generate(model, pr, sp, max_latent_steps=K, max_new_tokens=n_gen)
    t_ref = (time.perf_counter() - t0) / args.ref_examples
    inference_speedup = t_ref / t_engine

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
        f"batch {args.batch}, K={K}"
    )
    print(f"{'measure':58s} {'value':>8s} {'target':>8s}")
    for name, r in step_ratio.items():
        print(
            f"{'1. ' + name + ' latent steps / token steps (time ratio)':58s} {r:8.2f} "
            f"{'<= 1.3' if name == 'hidden' else '':>8s}"
        )
    print(
        f"{'2. batch-1 full-recompute / batched engine (per example)':58s} "
        f"{inference_speedup:8.1f} {'>= 20':>8s}"
    )
    print(f"{'   engine ms per example':58s} {1000 * t_engine:8.2f}")
    print(
        f"{'   reference ms per example (' + str(args.ref_examples) + ' examples)':58s} "
        f"{1000 * t_ref:8.2f}"
    )
    print(
        f"{'3. training step: cached multi-pass / naive K+1 passes':58s} "
        f"{train_ratio:8.2f} {'<= 1.0':>8s}"
    )
    print(f"{'   cached ms, naive ms':58s} {1000 * t_fast:8.1f} {1000 * t_naive:8.1f}")
    out = {
        "benchmark": "latent_engine",
        "device": device_name,
        "batch": args.batch,
        "latents": K,
        "latent_vs_token_step_ratio": step_ratio,
        "batched_vs_reference_speedup": inference_speedup,
        "engine_ms_per_example": 1000 * t_engine,
        "reference_ms_per_example": 1000 * t_ref,
        "train_step_ratio_cached_vs_naive": train_ratio,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
