"""Experiments in a few calls: data -> tokenizer -> model -> method training -> evaluation.

This is the layer notebooks, the CLI and the demo share, so none of them defines helpers
of its own. A trained method is a :class:`TrainedModel` (model, tokenizer, inference spec,
history) that saves to and loads from a folder (``save_pretrained`` safetensors plus a JSON
description of the method), written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from workbench.data.datasets import dataset_to_examples, load_local_dataset, load_task_dataset
from workbench.data.schema import Example
from workbench.data.tasks import get_task
from workbench.data.tokenizer import build_tokenizer, special_ids
from workbench.engine.feedback import FEEDBACK_RULES, FeedbackRule, make_feedback
from workbench.engine.stop import ArgmaxToken, EntropyColdStop, FixedSteps, StopRule
from workbench.eval.evaluator import EvalResult, LatentSpec, evaluate
from workbench.methods.coconut import CoconutCollator, CoconutConfig, CoconutLoss
from workbench.methods.layout import SequenceCollator, tokenize_examples
from workbench.models.build import ModelConfig, build_model, count_parameters, load_local_model
from workbench.paths import repo_root
from workbench.train import TrainConfig, Trainer

METHODS = ("cot", "nocot", "coconut", "latent_sft")
METHOD_FILE = "workbench_method.json"
SHIPPED_D_MODEL = 128
"""Hidden size of the shipped checkpoints and of the CoT model trained when they are absent."""


# ----- data --------------------------------------------------------------------------------


@dataclass
class TaskData:
    """Splits of one task and the tokenizer built for it."""

    task: str
    train: list[Example]
    val: list[Example]
    test: list[Example]
    tokenizer: PreTrainedTokenizerBase
    seed: int = 0
    difficulty: dict = field(default_factory=dict)


def prepare_data(
    task: str = "multiplication",
    *,
    train_size: int = 50_000,
    val_size: int = 200,
    test_size: int = 1_000,
    seed: int = 0,
    path: str | None = None,
    tokenizer: PreTrainedTokenizerBase | str | None = None,
    **difficulty,
) -> TaskData:
    """Generate (and cache) a task's splits, or load a local dataset from ``path``; build a tokenizer.

    ``tokenizer`` may be a tokenizer, a local folder to load one from, or ``None`` to build the
    task's default (``char`` for arithmetic, ``word`` for text).
    """
    if path is not None:
        dd = load_local_dataset(
            path, split_sizes={"train": None, "val": val_size, "test": test_size}, seed=seed
        )
        kind = "word"
    else:
        sizes = {"train": train_size, "val": val_size, "test": test_size}
        dd = load_task_dataset(task, sizes=sizes, seed=seed, **difficulty)
        kind = get_task(task).TOKENIZER_KIND
    splits = {
        name: dataset_to_examples(dd[name]) if name in dd else []
        for name in ("train", "val", "test")
    }
    if isinstance(tokenizer, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    if tokenizer is None:
        tokenizer = build_tokenizer(kind, [e for s in splits.values() for e in s])
    return TaskData(
        task if path is None else str(path),
        splits["train"],
        splits["val"],
        splits["test"],
        tokenizer,
        seed,
        dict(difficulty),
    )


# ----- trained methods ----------------------------------------------------------------------


@dataclass
class TrainedModel:
    """A model trained with one method, ready to evaluate, inspect, save."""

    method: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: LatentSpec | None = None
    history: pd.DataFrame | None = None
    task: str = "multiplication"
    test_examples: list[Example] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def evaluate(self, examples=None, **kwargs) -> EvalResult:
        """Evaluate on ``examples`` (default: the test split it was trained with)."""
        return evaluate(
            self.model,
            self.tokenizer,
            examples if examples is not None else self.test_examples,
            spec=self.spec,
            method=self.method,
            **kwargs,
        )

    def save(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write model, tokenizer and method description to ``path`` atomically.

        ``dtype`` (e.g. ``torch.float16``) stores the weights smaller; loading returns fp32.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            if dtype is None:
                self.model.save_pretrained(tmp, safe_serialization=True)
            else:
                import copy as _copy

                _copy.deepcopy(self.model).to(dtype).save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            if (
                self.spec is not None
                and self.spec.feedback is not None
                and any(True for _ in self.spec.feedback.parameters())
            ):
                from safetensors.torch import save_file

                save_file(
                    {k: v.contiguous() for k, v in self.spec.feedback.state_dict().items()},
                    str(tmp / "feedback.safetensors"),
                )
            desc = {
                "method": self.method,
                "task": self.task,
                "spec": spec_to_dict(self.spec),
                "meta": self.meta,
            }
            (tmp / METHOD_FILE).write_text(json.dumps(desc, indent=2, default=str))
            if self.history is not None:
                self.history.to_csv(tmp / "history.csv", index=False)
            if path.exists():
                old = path.with_name(path.name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, test_examples: list[Example] | None = None) -> TrainedModel:
        """Load a folder written by :meth:`save` (safetensors only; nothing is unpickled)."""
        path = Path(path)
        desc_file = path / METHOD_FILE
        if not desc_file.exists():
            raise FileNotFoundError(
                f"{path} has no {METHOD_FILE}; it was not saved by TrainedModel.save"
            )
        desc = json.loads(desc_file.read_text())
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = load_local_model(path, tok)
        spec = spec_from_dict(desc.get("spec"), d_model=model.config.hidden_size)
        if (
            spec is not None
            and spec.feedback is not None
            and (path / "feedback.safetensors").exists()
        ):
            from safetensors.torch import load_file

            spec.feedback.load_state_dict(load_file(str(path / "feedback.safetensors")))
        hist = pd.read_csv(path / "history.csv") if (path / "history.csv").exists() else None
        return cls(
            desc["method"],
            model,
            tok,
            spec,
            hist,
            desc.get("task", ""),
            test_examples or [],
            desc.get("meta", {}),
        )


def spec_to_dict(spec: LatentSpec | None) -> dict | None:
    """JSON description of an inference spec (rules by name and settings)."""
    if spec is None:
        return None
    fb = spec.feedback
    fb_d = None
    if fb is not None:
        kw = {
            k: getattr(fb, k)
            for k in ("top_k", "temperature", "gumbel_tau", "noise_scale")
            if hasattr(fb, k)
        }
        fb_d = {"name": fb.name, "kwargs": kw}
    st = spec.stop
    if st is None or isinstance(st, FixedSteps):
        st_d = {"kind": "fixed", "n": spec.max_latent_steps if st is None else int(st.n)}
    elif isinstance(st, ArgmaxToken):
        st_d = {"kind": "argmax", "token_id": st.token_id, "min_steps": st.min_steps}
    elif isinstance(st, EntropyColdStop):
        st_d = {"kind": "cold", "tau": st.tau, "k": st.k}
    else:
        raise TypeError(f"cannot describe stop rule {type(st).__name__}")
    return {
        "feedback": fb_d,
        "stop": st_d,
        "max_latent_steps": spec.max_latent_steps,
        "append_eot": spec.append_eot,
    }


def spec_from_dict(d: dict | None, d_model: int) -> LatentSpec | None:
    """Inverse of :func:`spec_to_dict`."""
    if d is None:
        return None
    fb: FeedbackRule | None = None
    if d.get("feedback"):
        name, kw = d["feedback"]["name"], dict(d["feedback"].get("kwargs", {}))
        if name not in FEEDBACK_RULES:
            raise ValueError(f"saved spec names unknown feedback rule {name!r}")
        fb = (
            make_feedback(name, d_model=d_model, **kw)
            if name == "projected"
            else make_feedback(name, **kw)
        )
    s = d["stop"]
    stop: StopRule = {
        "fixed": lambda: FixedSteps(s.get("n", 0)),
        "argmax": lambda: ArgmaxToken(s["token_id"], s.get("min_steps", 0)),
        "cold": lambda: EntropyColdStop(s["tau"], s["k"]),
    }[s["kind"]]()
    return LatentSpec(fb, stop, d["max_latent_steps"], d["append_eot"])


def default_train_config(**overrides) -> TrainConfig:
    """The baseline recipe: batch 32, lr 2e-3, 30 warm-up steps, cosine to 5% (betas 0.9/0.98).

    Measured on 3x3 multiplication with the default d=256 model on 2 CPU threads
    (``benchmarks/baselines.py``): the CoT loss sits on a plateau near 0.07 until the run has
    accumulated enough learning rate, then drops sharply; lr 1e-3 reached the drop only at the
    very end of a 10-minute budget (92%), lr 2e-3 reached it at ~5 minutes (97.9% at 10).
    """
    base = dict(
        batch_size=32,
        lr=2e-3,
        weight_decay=0.01,
        warmup_steps=30,
        max_steps=3000,
        lr_schedule="cosine",
        min_lr_ratio=0.05,
        max_grad_norm=1.0,
        log_every=25,
        betas=(0.9, 0.98),
    )
    base.update(overrides)
    return TrainConfig(**base)


def _val_accuracy_fn(tokenizer, examples, spec_fn):
    def eval_fn(trainer):
        model = trainer.unwrapped_model
        lm = model.lm if hasattr(model, "lm") else model
        res = evaluate(lm, tokenizer, examples, spec=spec_fn())
        return {
            "accuracy": res.summary["accuracy"],
            "reasoning_positions": res.summary["reasoning_positions"],
        }

    return eval_fn


def train_baseline(
    data: TaskData,
    mode: str = "cot",
    *,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    model: PreTrainedModel | None = None,
    callbacks=None,
    seed: int = 0,
    time_budget_s: float | None = None,
) -> TrainedModel:
    """Explicit-CoT (``cot``) or answer-only (``nocot``) SFT of a new or given model.

    With ``time_budget_s`` training runs for that wall time: the lr schedule follows the
    elapsed time (``TrainConfig.schedule_by_time``), so it completes whatever the machine's speed.
    """
    if mode not in ("cot", "nocot"):
        raise ValueError(f"mode={mode!r}; baselines are 'cot' and 'nocot'")
    tok = data.tokenizer
    model = (
        model if model is not None else build_model(model_config or ModelConfig(), tok, seed=seed)
    )
    cfg = train_config or default_train_config(seed=seed)
    eval_fn = _val_accuracy_fn(tok, data.val, lambda: None) if data.val and cfg.eval_every else None
    items, collator = (
        tokenize_examples(data.train, tok),
        SequenceCollator(tok, with_steps=mode == "cot"),
    )
    if time_budget_s is not None:
        cfg = TrainConfig(
            **{
                **asdict(cfg),
                "max_steps": 10**9,
                "max_time_s": time_budget_s,
                "schedule_by_time": True,
            }
        )
    trainer = Trainer(model, items, collator, cfg, eval_fn=eval_fn, callbacks=callbacks)
    trainer.train()
    hist = trainer.log_history.to_pandas()
    meta = {"params": count_parameters(model), "train_steps": trainer.step, "seed": seed}
    return TrainedModel(mode, trainer.unwrapped_model, tok, None, hist, data.task, data.test, meta)


class LatentLM(torch.nn.Module):
    """An LM plus the trainable feedback rule it feeds back through (e.g. CODI's projection)."""

    def __init__(self, lm: PreTrainedModel, feedback: FeedbackRule):
        super().__init__()
        self.lm, self.feedback = lm, feedback


def train_coconut(
    data: TaskData,
    base: TrainedModel | PreTrainedModel | None = None,
    *,
    coconut: CoconutConfig | None = None,
    train_config: TrainConfig | None = None,
    model_config: ModelConfig | None = None,
    callbacks=None,
    seed: int = 0,
) -> TrainedModel:
    """Coconut's curriculum (RESEARCH 2.1) from a CoT-trained ``base`` (or from scratch with ``cot_steps``).

    ``base`` is copied, never modified, so it stays usable as the CoT baseline.
    """
    import copy

    cc = coconut or CoconutConfig(seed=seed)
    tok = data.tokenizer
    if isinstance(base, TrainedModel):
        model = copy.deepcopy(base.model)
    elif base is not None:
        model = copy.deepcopy(base)
    else:
        model = build_model(model_config or ModelConfig(), tok, seed=seed)
    feedback = cc.make_feedback(model.config.hidden_size)
    has_params = any(True for _ in feedback.parameters())
    net = LatentLM(model, feedback) if has_params else model
    collator = CoconutCollator(tok, cc, stage=0 if cc.cot_steps else 1)
    cfg = train_config or default_train_config(seed=seed, lr=5e-4, warmup_steps=20)
    val = data.val
    eval_fn = (
        _val_accuracy_fn(tok, val, lambda: cc.inference_spec(feedback))
        if val and cfg.eval_every
        else None
    )
    stages = ([(0, cc.cot_steps)] if cc.cot_steps else []) + [
        (k, cc.steps_per_stage) for k in range(1, cc.max_latent_stage + 1)
    ]
    stages[-1] = (
        stages[-1][0],
        cc.final_stage_steps if cc.final_stage_steps is not None else stages[-1][1],
    )
    first_steps = stages[0][1]
    cfg_first = TrainConfig(**{**asdict(cfg), "max_steps": first_steps})
    trainer = Trainer(
        net,
        tokenize_examples(data.train, tok),
        collator,
        cfg_first,
        loss_fn=CoconutLoss(feedback),
        eval_fn=eval_fn,
        callbacks=callbacks,
    )
    frames, done = [], 0
    for i, (stage, steps) in enumerate(stages):
        collator.stage = stage
        if i > 0:
            if cc.reset_optimizer:
                trainer.reset_optimizer()
            trainer.config.max_steps = done + steps
        n_before = len(trainer.log_history)
        trainer.train()
        done = trainer.step
        part = pd.DataFrame(trainer.log_history[n_before:])
        part["stage"] = stage
        frames.append(part)
    hist = pd.concat(frames, ignore_index=True) if frames else None
    meta = {
        "coconut": asdict(cc),
        "params": count_parameters(model),
        "train_steps": trainer.step,
        "seed": seed,
    }
    return TrainedModel(
        "coconut", model, tok, cc.inference_spec(feedback), hist, data.task, data.test, meta
    )


def train_latent_sft(
    data: TaskData,
    base: TrainedModel | PreTrainedModel,
    *,
    config=None,
    output_dir: str | None = None,
    callbacks=None,
) -> TrainedModel:
    """Latent-SFT (RESEARCH Part A 1) from a CoT-trained ``base``: stage 1, soft labels, stage 2.

    ``base`` is not modified. See :mod:`workbench.methods.latent_sft` for the stages and deviations.
    """
    import tempfile as _tempfile

    from workbench.methods.latent_sft import LatentSFTConfig
    from workbench.methods.latent_sft import train_latent_sft as _train

    cfg = config or LatentSFTConfig()
    model = base.model if isinstance(base, TrainedModel) else base
    out = output_dir or _tempfile.mkdtemp(prefix="latent_sft-")
    res = _train(
        model,
        data.tokenizer,
        data.train,
        cfg,
        eval_examples=data.val or None,
        output_dir=out,
        callbacks=callbacks,
    )
    meta = {
        "latent_sft": asdict(cfg),
        "params": count_parameters(res.model),
        "soft_labels": str(res.soft_label_path),
    }
    return TrainedModel(
        "latent_sft", res.model, data.tokenizer, res.spec, res.history, data.task, data.test, meta
    )


def compare(models: list[TrainedModel], examples=None, **kwargs) -> pd.DataFrame:
    """One row per method: accuracy and reasoning lengths on the same examples."""
    return pd.concat([m.evaluate(examples, **kwargs).to_frame() for m in models], ignore_index=True)


# ----- shipped checkpoints -------------------------------------------------------------------


def checkpoints_dir() -> Path:
    """Where the project's own small checkpoints live (rebuilt by ``make checkpoints``)."""
    return repo_root() / "checkpoints"


def load_pretrained(method: str, *, test_size: int = 1000, seed: int = 0) -> TrainedModel:
    """A shipped checkpoint of ``method`` with its task's test split (no network, no training)."""
    path = checkpoints_dir() / method
    if not (path / METHOD_FILE).exists():
        raise FileNotFoundError(
            f"no shipped checkpoint for {method!r} at {path}; rebuild them with `make checkpoints` "
            f"(known: {sorted(p.name for p in checkpoints_dir().glob('*') if (p / METHOD_FILE).exists())})"
        )
    tm = TrainedModel.load(path)
    task_meta = tm.meta.get("data", {})
    data = prepare_data(
        tm.task,
        train_size=task_meta.get("train_size", 1000),
        val_size=task_meta.get("val_size", 200),
        test_size=test_size,
        seed=task_meta.get("seed", seed),
        tokenizer=tm.tokenizer,
        **task_meta.get("difficulty", {}),
    )
    tm.test_examples = data.test
    return tm


def cot_starting_point(
    data: TaskData, init_from: str = "shipped", *, cot_minutes: float = 2.0, seed: int = 0
) -> TrainedModel:
    """The CoT model latent methods start from: the shipped checkpoint, or one trained here.

    ``init_from="shipped"`` loads ``checkpoints/cot`` (rebuilt by ``make checkpoints``) and falls
    back to training for ``cot_minutes`` when it is absent or does not fit ``data``'s tokenizer;
    ``"scratch"`` always trains; any other value is a local TrainedModel folder.
    """
    if init_from not in ("shipped", "scratch"):
        return TrainedModel.load(init_from, data.test)
    if init_from == "shipped" and (checkpoints_dir() / "cot" / METHOD_FILE).exists():
        tm = TrainedModel.load(checkpoints_dir() / "cot", data.test)
        if tm.tokenizer.get_vocab() == data.tokenizer.get_vocab() and tm.task == data.task:
            return tm
        print(
            f"[workbench] shipped CoT checkpoint is for task {tm.task!r}; training CoT here instead"
        )
    elif init_from == "shipped":
        print("[workbench] no shipped CoT checkpoint (make checkpoints); training CoT here instead")
    return train_baseline(
        data,
        "cot",
        model_config=ModelConfig(d_model=SHIPPED_D_MODEL),
        train_config=default_train_config(seed=seed),
        seed=seed,
        time_budget_s=60 * cot_minutes,
    )


def load_or_train(
    method: str,
    *,
    test_size: int = 500,
    seed: int = 0,
    train_size: int = 1000,
    minutes: float = 2.0,
) -> TrainedModel:
    """A model of ``method`` for inspection: the shipped checkpoint if there is one, else a quick one.

    The quick path starts from the CoT starting point (:func:`cot_starting_point`) and trains a
    short Coconut curriculum or Latent-SFT run; it is meant for looking at trajectories, not for
    headline numbers (notebooks 01 and 02 train properly).
    """
    if (checkpoints_dir() / method / METHOD_FILE).exists():
        return load_pretrained(method, test_size=test_size, seed=seed)
    data = prepare_data(
        "multiplication", train_size=train_size, test_size=test_size, seed=seed, digits_a=3
    )
    cot = cot_starting_point(data, "shipped", cot_minutes=minutes, seed=seed)
    if method == "cot":
        return cot
    if method == "nocot":
        return train_baseline(data, "nocot", seed=seed, time_budget_s=60 * minutes)
    if method == "coconut":
        cc = CoconutConfig(c_thought=2, steps_per_stage=10, final_stage_steps=20, seed=seed)
        tc = default_train_config(lr=5e-4, batch_size=16, warmup_steps=5, seed=seed, progress=False)
        return train_coconut(data, cot, coconut=cc, train_config=tc, seed=seed)
    if method == "latent_sft":
        from workbench.methods.latent_sft import LatentSFTConfig

        cfg = LatentSFTConfig(
            encoder_steps=10,
            decoder_steps=10,
            union_steps=10,
            stage2_steps=30,
            batch_size=16,
            seed=seed,
        )
        return train_latent_sft(data, cot, config=cfg)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def describe(tm: TrainedModel) -> dict[str, Any]:
    """A short JSON-able description (for tables and metrics files)."""
    return {
        "method": tm.method,
        "task": tm.task,
        "params": count_parameters(tm.model),
        "spec": spec_to_dict(tm.spec),
        **{k: v for k, v in tm.meta.items() if not isinstance(v, dict)},
    }


__all__ = [
    "METHODS",
    "TaskData",
    "TrainedModel",
    "prepare_data",
    "train_baseline",
    "train_coconut",
    "compare",
    "load_pretrained",
    "default_train_config",
    "spec_to_dict",
    "spec_from_dict",
    "special_ids",
    "describe",
]
