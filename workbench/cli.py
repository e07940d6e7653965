"""Command line: ``workbench data | train | eval | sweep | demo`` (also ``python -m workbench``).

Configs come from a YAML file (``--config``) with the sections ``data``, ``model``, ``train``
and one per registered method with settings (named after it, e.g. ``coconut``), overridden by
flags and by ``--set section.key=value``. Every section is a typed dataclass: an unknown key is
an error that names it. Errors in the user's input print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import yaml

from workbench.config import ConfigError, config_from_dict, load_yaml

BASE_SECTIONS = ("method", "data", "model", "train")
"""Sections every run config may have; each registered method with settings adds its own."""


def _parse_set(items: list[str]) -> dict:
    """``["train.lr=3e-4", ...]`` -> nested dict (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.lr=3e-4")
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def load_run_config(path: str | None, overrides: dict) -> dict:
    """Merge a YAML config with overrides; unknown sections are an error naming them."""
    cfg = load_yaml(path) if path else {}
    for section, values in overrides.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    sections = [*BASE_SECTIONS, *_method_sections()]
    unknown = sorted(set(cfg) - set(sections))
    if unknown:
        raise ConfigError(
            f"{path or 'config'}: unknown section(s) {unknown}; known sections: {sections}"
        )
    return cfg


def _data_from(cfg: dict, source: str):
    from workbench.data.datasets import DataConfig
    from workbench.experiment import prepare_data

    dc = config_from_dict(DataConfig, cfg.get("data", {}), source=f"{source}:data")
    return prepare_data(
        dc.task,
        train_size=dc.train_size,
        val_size=dc.val_size,
        test_size=dc.test_size,
        seed=dc.seed,
        path=dc.path,
        **(dc.difficulty or {}),
    )


def cmd_data(args) -> int:
    from workbench.data.datasets import DataConfig

    cfg = load_run_config(args.config, _parse_set(args.set))
    data_cfg = cfg.setdefault("data", {})
    for k in ("task", "seed", "path"):
        if getattr(args, k) is not None:
            data_cfg[k] = getattr(args, k)
    config_from_dict(DataConfig, data_cfg, source="data")
    data = _data_from(cfg, args.config or "flags")
    tok = data.tokenizer
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        steps = sum(len(e["steps"]) for e in split) / max(1, len(split))
        print(f"{name:5s} {len(split):7d} examples, {steps:.2f} steps on average")
    print(f"tokenizer: {len(tok)} tokens; first test example: {json.dumps(data.test[0])[:300]}")
    return 0


def _method_sections() -> dict[str, type]:
    """Config section name -> config dataclass, one per registered method that has settings."""
    from workbench.methods import get_method, method_names

    return {n: get_method(n).config_cls for n in method_names() if get_method(n).config_cls}


def cmd_train(args) -> int:
    from workbench.experiment import cot_starting_point, default_train_config, train
    from workbench.methods import BASE_METHOD, get_method
    from workbench.models.build import ModelConfig
    from workbench.train import TrainConfig
    from workbench.trained import METHOD_FILE, TrainedModel

    cfg = load_run_config(args.config, _parse_set(args.set))
    if args.method:
        cfg["method"] = args.method
    if args.steps:
        cfg.setdefault("train", {})["max_steps"] = args.steps
    src = args.config or "flags"
    method = cfg.get("method", BASE_METHOD)
    record = get_method(method)
    out = Path(args.out)
    if args.resume and (out / METHOD_FILE).exists():
        print(f"{out} already holds a finished {method!r} run; nothing to resume")
        return 0
    mc = config_from_dict(ModelConfig, cfg.get("model", {}), source=f"{src}:model")
    # Periodic checkpoints under --out, so a killed run continues with --resume.
    kill_safe = {"output_dir": str(out / "checkpoints"), "save_every": args.save_every}
    tc_values = {**asdict(default_train_config()), **kill_safe, **cfg.get("train", {})}
    tc_values["resume"] = bool(args.resume)
    tc = config_from_dict(TrainConfig, tc_values, source=f"{src}:train")
    seed = cfg.get("data", {}).get("seed", 0)
    kwargs = {"train_config": tc, "model_config": mc, "seed": seed}
    if args.max_minutes:
        kwargs["time_budget_s"] = args.max_minutes * 60
    if not record.takes_train_config:
        given = [k for k in ("model", "train") if cfg.get(k)] + (
            ["--max-minutes"] if args.max_minutes else []
        ) + (["--resume"] if args.resume else [])  # fmt: skip
        if given:
            raise ConfigError(
                f"{given} do not apply to {method!r}: its steps and learning rates are in "
                f"the {method!r} section (e.g. --set {method}.stage2_steps=500)"
            )
        kwargs = {"seed": seed}
    if record.config_cls is not None:
        section = cfg.get(method, {})
        kwargs["config"] = config_from_dict(record.config_cls, section, source=f"{src}:{method}")
    for name in _method_sections():
        if name != method and name in cfg:
            raise ConfigError(f"{src}: section {name!r} given, but method is {method!r}")
    data = _data_from(cfg, src)  # after every config is checked: a typo fails at once
    base = None
    if args.init:
        base = TrainedModel.load(args.init)
    elif record.needs_base:
        base = cot_starting_point(data, "shipped", seed=seed)
    if args.resume:
        print(f"resuming from the latest checkpoint under {out / 'checkpoints'}")
    tm = train(method, data, base, **kwargs)
    if not _is_main_process():  # under `accelerate launch`: one process saves and reports
        return 0
    tm.meta["data"] = data.describe()
    tm.save(out)
    res = tm.evaluate()
    print(json.dumps(res.summary, indent=2))
    print(f"saved to {out}")
    return 0


def _is_main_process() -> bool:
    """False on the other processes of an ``accelerate launch`` run (torchrun's ``RANK``)."""
    return int(os.environ.get("RANK", "0")) == 0


def cmd_eval(args) -> int:
    from workbench.experiment import TrainedModel, prepare_data
    from workbench.runs import write_json, write_table

    tm = TrainedModel.load(args.checkpoint)
    data_meta = tm.meta.get("data", {})
    data = prepare_data(
        tm.task if not args.path else "local",
        train_size=data_meta.get("train_size", 1000),
        test_size=args.test_size,
        seed=data_meta.get("seed", 0),
        path=args.path,
        tokenizer=tm.tokenizer,
        **data_meta.get("difficulty", {}),
    )
    res = tm.evaluate(data.test, batch_size=args.batch_size)
    print(res.to_frame().to_string(index=False))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_table(Path(args.out) / "predictions.csv", res.per_example)
        write_json(Path(args.out) / "metrics.json", res.summary)
    return 0


def cmd_sweep(args) -> int:
    from workbench import sweep

    return sweep.main(args.rest)


def cmd_demo(args) -> int:
    from workbench.demo import DemoConfig, run_demo

    values = {
        k: v
        for k, v in vars(args).items()
        if k in DemoConfig.__dataclass_fields__ and v is not None
    }
    run_demo(config_from_dict(DemoConfig, values, source="demo"))
    return 0


def cmd_build_checkpoints(args) -> int:
    """Train the models the notebooks start from and store them (fp16) under checkpoints/."""
    import torch

    from workbench.checkpoints import build_checkpoints, build_task_checkpoints
    from workbench.experiment import SHIPPED_TASK
    from workbench.recipes import RECIPES

    torch.set_num_threads(args.threads)
    methods = None
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    tasks = [SHIPPED_TASK, *(t for t, r in RECIPES.items() if r.shipped and t != SHIPPED_TASK)]
    tasks.append("sudoku")  # the recursive reasoners (workbench.recursive.shipped)
    if args.task != "all":
        tasks = [args.task]
    summaries = {}
    for task in tasks:
        if task == "sudoku":
            from workbench.recursive.shipped import build_recursive_checkpoints

            out = Path(args.out) if args.out else None
            summaries[task] = build_recursive_checkpoints(out, seed=args.seed)
        elif task == SHIPPED_TASK:
            summaries[task] = build_checkpoints(args.out, methods=methods, cot_minutes=args.minutes,
                                                d_model=args.d_model, seed=args.seed)  # fmt: skip
        else:
            summaries[task] = build_task_checkpoints(task, args.out, rows=methods, seed=args.seed,
                                                     reuse=args.reuse)  # fmt: skip
    print(json.dumps(summaries))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from workbench.methods import method_names

    p = argparse.ArgumentParser(prog="workbench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of a workbench error (also WORKBENCH_DEBUG=1)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="generate/cache a task's splits and print statistics")
    d.add_argument("--config"), d.add_argument("--task"), d.add_argument("--seed", type=int)
    d.add_argument("--path", help="a local dataset file or folder instead of a generated task")
    d.add_argument("--set", action="append", help="section.key=value override")
    d.set_defaults(fn=cmd_data)

    t = sub.add_parser("train", help="train a method and save it")
    t.add_argument("--config")
    t.add_argument("--method", choices=method_names(), help="a registered method")
    t.add_argument("--steps", type=int), t.add_argument("--max-minutes", type=float)
    t.add_argument(
        "--init",
        help="a saved TrainedModel folder to start from (latent methods; default: the shipped CoT)",
    )
    t.add_argument("--out", required=True, help="output folder (periodic checkpoints go under it)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run from the latest checkpoint under --out",
    )
    t.add_argument("--save-every", type=int, default=50, help="optimizer steps between checkpoints")
    t.add_argument("--set", action="append", help="section.key=value override")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a saved model")
    e.add_argument("checkpoint"), e.add_argument("--test-size", type=int, default=1000)
    e.add_argument("--path", help="a local dataset instead of the model's task")
    e.add_argument("--batch-size", type=int, default=256), e.add_argument("--out")
    e.set_defaults(fn=cmd_eval)

    s = sub.add_parser("sweep", help="papermill sweep over a notebook's parameters", add_help=False)
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_sweep)

    m = sub.add_parser(
        "demo",
        help="compare CoT, no-CoT and the shipped latent models on arithmetic (a few minutes); "
        "--source train trains CoT, no-CoT and Coconut here instead",
    )
    m.add_argument("--source", choices=["shipped", "train"]), m.add_argument("--task")
    m.add_argument("--cot-minutes", type=float), m.add_argument("--nocot-minutes", type=float)
    (
        m.add_argument("--test-size", type=int),
        m.add_argument("--seed", type=int),
        m.add_argument("--out-dir"),
    )
    m.add_argument("--coconut-steps-per-stage", type=int), m.add_argument("--coconut-c", type=int)
    m.add_argument("--d-model", type=int), m.add_argument("--batch-size", type=int)
    m.set_defaults(fn=cmd_demo)

    b = sub.add_parser(
        "build-checkpoints", help="train and store the checkpoints the notebooks start from"
    )
    b.add_argument("--minutes", type=float, default=10.0, help="CoT training wall time")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset to (re)build (default: every method with a recipe)",
    )
    b.add_argument("--out", help="folder holding one subfolder per method (default checkpoints/)")
    b.add_argument(
        "--task",
        default="all",
        help="multiplication (checkpoints/<method>), a recipe task such as arithmetic "
        "(checkpoints/<task>/<row>), sudoku (the recursive reasoners), or all (default)",
    )
    b.add_argument(
        "--reuse",
        help="a compare_methods.py --out <dir>/<task> folder: store its trained rows instead of "
        "retraining them",
    )
    (
        b.add_argument("--d-model", type=int, default=128),
        b.add_argument("--threads", type=int, default=2),
    )
    b.set_defaults(fn=cmd_build_checkpoints)
    return p


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's input, not a workbench bug: printed as one line, exit 2."""
    from workbench.errors import WorkbenchError
    from workbench.train import CheckpointMismatchError, NonFiniteLossError

    return (WorkbenchError, CheckpointMismatchError, NonFiniteLossError)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a workbench error prints one line (``--debug``: traceback), exit 2."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("WORKBENCH_DEBUG", "") not in ("", "0")
    try:
        code = args.fn(args)
    except user_errors() as err:
        if debug:
            raise
        message = " ".join(str(err).split("\n"))
        print(f"workbench {args.command}: error: {message}", file=sys.stderr)
        return 2
    if "torch" in sys.modules:  # only a command that imported torch can hold a process group
        from workbench.train import end_distributed

        end_distributed()
    return code


if __name__ == "__main__":
    sys.exit(main())
