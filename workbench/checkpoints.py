"""The project's own small checkpoints: how they are trained (``make checkpoints``) and stored.

Notebooks start from these instead of a barely-trained toy: ``checkpoints/cot`` (explicit CoT),
``checkpoints/coconut`` and ``checkpoints/latent_sft`` (both trained from that CoT model). All are
the d=128 variant of the default architecture (4 layers, 0.8M parameters) on 3x3 multiplication,
stored in fp16 (about 1.7 MB each). Everything is trained here, from scratch, on the package's
own synthetic data; nothing is downloaded.

The recipes below are the ones whose numbers are quoted in the README; change them here, rebuild
with ``make checkpoints`` and the notebooks pick the new models up.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from workbench.experiment import (
    SHIPPED_D_MODEL,
    TrainedModel,
    checkpoints_dir,
    default_train_config,
    prepare_data,
    train_baseline,
    train_coconut,
    train_latent_sft,
)
from workbench.methods.coconut import CoconutConfig
from workbench.methods.latent_sft import LatentSFTConfig
from workbench.models.build import ModelConfig

SHIPPED_METHODS = ("cot", "coconut", "latent_sft")
TRAIN_SIZE = 100_000
"""Generated training problems (more than any recipe consumes: every batch is fresh)."""
LATENT_SFT_TRAIN_SIZE = 20_000
"""Latent-SFT trains on the first 20k of them: its soft-label cache covers its whole training set."""


def coconut_recipe(seed: int = 0) -> tuple[CoconutConfig, dict]:
    """Coconut settings of the shipped model: (curriculum, trainer overrides)."""
    return (
        CoconutConfig(c_thought=2, steps_per_stage=300, final_stage_steps=500, seed=seed),
        dict(lr=1e-3, warmup_steps=20, eval_every=100),
    )


def latent_sft_recipe(seed: int = 0) -> LatentSFTConfig:
    """Latent-SFT settings of the shipped model."""
    return LatentSFTConfig(
        compression_rate=4,
        encoder_steps=50,
        decoder_steps=300,
        union_steps=300,
        stage2_steps=500,
        batch_size=32,
        encoder_lr=1e-3,
        decoder_lr=1e-3,
        union_lr=6e-4,
        stage2_lr=1e-3,
        seed=seed,
    )


def build_checkpoints(
    out_dir: str | Path | None = None,
    *,
    methods: tuple[str, ...] = SHIPPED_METHODS,
    cot_minutes: float = 10.0,
    d_model: int = SHIPPED_D_MODEL,
    seed: int = 0,
    test_size: int = 1000,
) -> dict[str, dict]:
    """Train and save the shipped models; returns ``{method: test summary}``.

    Latent methods start from ``<out_dir>/cot``: trained first when ``"cot"`` is in ``methods``,
    else loaded from there (so ``methods=("coconut",)`` retrains Coconut only).
    """
    unknown = set(methods) - set(SHIPPED_METHODS)
    if unknown:
        raise ValueError(
            f"methods={sorted(unknown)} are not shipped; choose from {SHIPPED_METHODS}"
        )
    out = Path(out_dir) if out_dir else checkpoints_dir()
    data = prepare_data(
        "multiplication", train_size=TRAIN_SIZE, test_size=test_size, seed=seed, digits_a=3
    )
    data_meta = {
        "train_size": TRAIN_SIZE,
        "val_size": len(data.val),
        "test_size": test_size,
        "seed": seed,
        "difficulty": data.difficulty,
    }
    summaries: dict[str, dict] = {}

    def finish(tm: TrainedModel, t0: float) -> None:
        res = tm.evaluate()
        tm.meta.pop("soft_labels", None)  # a temporary folder, gone after the build
        tm.meta.update(
            data=data_meta,
            test_accuracy=res.summary["accuracy"],
            train_seconds=time.perf_counter() - t0,
        )
        path = tm.save(out / tm.method, dtype=torch.float16)
        summaries[tm.method] = {
            **res.summary,
            "train_seconds": tm.meta["train_seconds"],
            "saved": str(path),
        }
        print(json.dumps({"method": tm.method, **summaries[tm.method]}), flush=True)

    if "cot" in methods:
        t0 = time.perf_counter()
        cot = train_baseline(
            data,
            "cot",
            model_config=ModelConfig(d_model=d_model),
            train_config=default_train_config(seed=seed, eval_every=500),
            seed=seed,
            time_budget_s=60 * cot_minutes,
        )
        finish(cot, t0)
    cot = TrainedModel.load(
        out / "cot", data.test
    )  # the stored (fp16-rounded) model, as users get it
    if "coconut" in methods:
        t0 = time.perf_counter()
        cc, overrides = coconut_recipe(seed)
        finish(
            train_coconut(
                data,
                cot,
                coconut=cc,
                train_config=default_train_config(seed=seed, **overrides),
                seed=seed,
            ),
            t0,
        )
    if "latent_sft" in methods:
        t0 = time.perf_counter()
        sft_data = dataclasses.replace(data, train=data.train[:LATENT_SFT_TRAIN_SIZE])
        finish(train_latent_sft(sft_data, cot, config=latent_sft_recipe(seed)), t0)
    return summaries
