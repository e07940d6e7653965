"""Shipped models of a recipe task: built from a benchmark folder, loaded by row, demoed."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from workbench.checkpoints import build_task_checkpoints
from workbench.config import ConfigError
from workbench.demo import DemoConfig, run_demo
from workbench.engine.feedback import GaussianFeedback
from workbench.engine.stop import StepStopHead
from workbench.errors import CheckpointError
from workbench.experiment import compare, load_pretrained, prepare_data, shipped_methods
from workbench.methods.atp import ATPConfig
from workbench.methods.coconut import CoconutConfig
from workbench.models.build import ModelConfig, build_model
from workbench.recipes import RECIPES
from workbench.trained import TrainedModel

ROWS = RECIPES["arithmetic"].shipped


def _tiny_models(data) -> dict[str, TrainedModel]:
    """Untrained d=32 models with each shipped row's method and inference spec."""
    tok = data.tokenizer
    model = lambda seed: build_model(ModelConfig(n_layer=1, d_model=32, n_head=2), tok, seed=seed)  # noqa: E731
    meta = {"data": data.describe(), "train_steps": 0}
    atp_spec = ATPConfig().inference_spec(GaussianFeedback(32), StepStopHead(32))
    specs = {
        "cot": ("cot", None),
        "nocot": ("nocot", None),
        "coconut_sup": ("coconut", CoconutConfig(c_thought=1, max_latent_stage=4).inference_spec()),
        "coconut_sup_long": (
            "coconut",
            CoconutConfig(c_thought=1, max_latent_stage=4).inference_spec(),
        ),
        "atp": ("atp", atp_spec),
        "atp_long": ("atp", atp_spec),
    }
    out = {}
    for i, (row, (method, spec)) in enumerate(specs.items()):
        tm = TrainedModel(method, model(i), tok, spec, None, "arithmetic", data.test, dict(meta))
        if method == "atp":
            tm.meta["config"] = {"c_thought": 1, "max_latent_stage": 4}
            tm.parts = {"step_decoder": model(9)}
        out[row] = tm
    return out


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    root = tmp_path_factory.mktemp("shipped")
    data = prepare_data("arithmetic", train_size=64, val_size=4, test_size=8, seed=0,
                        **RECIPES["arithmetic"].difficulty)  # fmt: skip
    assert set(ROWS) == {"cot", "nocot", "coconut_sup", "coconut_sup_long", "atp", "atp_long"}
    for row, tm in _tiny_models(data).items():
        tm.save(root / "bench" / row)
    summaries = build_task_checkpoints("arithmetic", root / "ck", reuse=root / "bench")
    return root / "ck", summaries, data


def test_build_stores_every_shipped_row_in_fp16(shipped):
    ck, summaries, _ = shipped
    assert set(summaries) == set(ROWS)
    for row in ROWS:
        back = TrainedModel.load(ck / "arithmetic" / row)
        assert back.meta["recipe_row"] == row and "test_accuracy" in back.meta
    # the stored weights are fp16 (half the size), loaded back as fp32
    from safetensors import safe_open

    with safe_open(str(ck / "arithmetic" / "atp" / "model.safetensors"), "pt") as f:
        names = f.keys()
        assert all(f.get_tensor(k).dtype == torch.float16 for k in names)
    assert (ck / "arithmetic" / "atp" / "parts" / "step_decoder" / "config.json").exists()


def test_load_pretrained_knows_rows_and_tasks(shipped, monkeypatch):
    ck, _, data = shipped
    monkeypatch.setenv("WORKBENCH_CHECKPOINTS_DIR", str(ck))
    assert shipped_methods("arithmetic") == sorted(ROWS)
    sup = load_pretrained("coconut_sup", task="arithmetic", test_examples=data.test)
    assert sup.method == "coconut" and sup.test_examples == data.test
    with pytest.raises(CheckpointError, match="no shipped checkpoint 'icot' for task 'arithmetic'"):
        load_pretrained("icot", task="arithmetic")
    table = compare({"coconut_sup": sup, "cot": load_pretrained("cot", task="arithmetic",
                     test_examples=data.test)}, data.test)  # fmt: skip
    assert table["method"].tolist() == ["coconut_sup", "cot"]


def test_demo_scores_the_shipped_models(shipped, monkeypatch, tmp_path):
    ck, _, _ = shipped
    monkeypatch.setenv("WORKBENCH_CHECKPOINTS_DIR", str(ck))
    results = run_demo(DemoConfig(test_size=8, report_examples=4, out_dir=str(tmp_path)))
    assert results["method"].tolist() == [
        "cot",
        "nocot",
        "atp",
        "atp_long",
        "coconut_sup",
        "coconut_sup_long",
    ]
    assert results.loc[results.method == "cot", "usage_drop"].isna().all()  # no latents
    assert results.loc[results.method == "atp", "usage_drop"].notna().all()
    saved = pd.read_csv(tmp_path / "results.csv")
    assert saved["method"].tolist() == results["method"].tolist()
    steps = pd.read_csv(tmp_path / "decoded_steps_atp.csv")
    assert {"decoded", "gold", "exact", "top_k"} <= set(steps.columns)
    assert (tmp_path / "latent_trajectories.html").exists()


def test_bad_rows_and_tasks_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="rows = \\['icot'\\]"):
        build_task_checkpoints("arithmetic", tmp_path, rows=("icot",))
    with pytest.raises(ConfigError, match="task = 'sorting'"):
        build_task_checkpoints("sorting", tmp_path)
    monkeypatch.setenv("WORKBENCH_CHECKPOINTS_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="DemoConfig.task = 'arithmetic'.*make checkpoints"):
        run_demo(DemoConfig(out_dir=str(tmp_path / "run")))


def test_a_continued_row_brings_the_rows_it_starts_from():
    from workbench.recipes import start_of, with_start_rows

    recipe = RECIPES["arithmetic"]
    assert with_start_rows(recipe, ["atp_long"]) == ["cot", "atp", "atp_long"]
    assert with_start_rows(recipe, ["atp_long", "atp", "nocot"]) == [
        "cot",
        "atp",
        "atp_long",
        "nocot",
    ]
    assert with_start_rows(recipe, ["nocot"]) == ["nocot"]  # a baseline needs no CoT run
    trained = {"cot": "the cot model", "atp": "the atp model"}
    assert start_of(recipe.entries["atp_long"], trained) == "the atp model"
    assert start_of(recipe.entries["atp"], trained) == "the cot model"


def test_a_baseline_row_with_a_start_continues_that_model_and_long_rows_are_opt_in():
    """``icot_slow_long`` (no-CoT training of the iCoT model) brings its starts but no CoT row;
    a baseline with a ``start`` trains a copy of that model, not a fresh one; the opt-in rows
    stay out of a default comparison."""
    from workbench.recipes import Entry, default_rows, train_entry, with_start_rows

    recipe = RECIPES["multiplication"]
    assert with_start_rows(recipe, ["icot_slow_long"]) == [
        "cot_5000",
        "icot_slow",
        "icot_slow_long",
    ]
    assert with_start_rows(recipe, ["icot_slow", "icot"]) == [
        "cot",
        "cot_5000",
        "icot_slow",
        "icot",
    ]
    rows = default_rows(recipe)
    assert "icot" in rows and "cot" in rows
    long_rows = {"cot_5000", "icot_slow", "icot_slow_long", "nocot_cot_5000", "atp_slow",
                 "coconut_sup_slow", "atp_slow3", "atp_slow3_long", "atp_slow3_long2", "icot3",
                 "icot3_fast", "icot3_long", "icot3_fast_long", "nocot_cot3",
                 "icot_slow_long2", "nocot_cot3_long"}  # fmt: skip
    assert not long_rows & set(rows)
    # the 3x3 continuations chain back to the CoT row, each start before its user
    assert with_start_rows(recipe, ["atp_slow3_long2"]) == [
        "cot",
        "atp_slow3",
        "atp_slow3_long",
        "atp_slow3_long2",
    ]
    assert with_start_rows(recipe, ["icot3_long"]) == ["cot", "icot3", "icot3_long"]
    assert with_start_rows(recipe, ["nocot_cot3"]) == ["cot", "nocot_cot3"]
    assert with_start_rows(recipe, ["nocot_cot3_long"]) == ["cot", "nocot_cot3", "nocot_cot3_long"]
    assert with_start_rows(recipe, ["icot_slow_long2"])[-2:] == [
        "icot_slow_long",
        "icot_slow_long2",
    ]
    assert with_start_rows(recipe, ["atp_slow", "nocot_cot_5000"]) == [
        "cot_5000",
        "atp_slow",
        "nocot_cot_5000",
    ]
    assert default_rows(RECIPES["arithmetic"]) == list(RECIPES["arithmetic"].entries)

    data = prepare_data("multiplication", train_size=16, val_size=2, test_size=2, seed=0,
                        digits_a=2)  # fmt: skip
    start = build_model(ModelConfig(n_layer=1, d_model=32, n_head=2), data.tokenizer, seed=3)
    start_tm = TrainedModel(
        "icot", start, data.tokenizer, None, None, "multiplication", data.test, {}
    )
    before = {k: v.clone() for k, v in start.state_dict().items()}
    train = {"max_steps": 2, "lr": 1e-6, "warmup_steps": 1, "batch_size": 4}
    cont = train_entry("x", Entry("nocot", train=train, start="s"), data, start_tm, recipe, 0)
    fresh = train_entry("y", Entry("nocot", train=train), data, start_tm, recipe, 0)
    emb = "transformer.wte.weight"
    assert cont.method == "nocot" and cont.model.config.n_embd == 32
    assert torch.allclose(cont.model.state_dict()[emb], before[emb], atol=1e-4)
    assert fresh.model.config.n_embd == recipe.d_model  # no start: a new model of the recipe
    assert all(torch.equal(v, before[k]) for k, v in start.state_dict().items())  # copied


def test_a_recipe_trains_its_rows_from_scratch_on_its_body():
    """``TaskRecipe.arch`` is the body of every row trained from scratch (graph: Llama), and
    the graph recipe's data are the symbolic facts its numbers were measured on."""
    from dataclasses import replace

    from workbench.recipes import Entry, default_rows, train_entry, with_start_rows

    recipe = RECIPES["graph"]
    assert recipe.arch == "llama" and recipe.difficulty["fact_format"] == "symbolic"
    assert "cot_long" not in default_rows(recipe)
    assert with_start_rows(recipe, ["cot_long"]) == ["cot", "cot_long"]
    # the latent rows of the long CoT chain start from it; their control from no-CoT
    long_rows = {"cot_long2", "cot_long3", "nocot_long", "pause_l2", "coconut_l2",
                 "coconut_sup_l2", "atp_l2", "coconut_sup_l2_long"}  # fmt: skip
    assert long_rows <= set(recipe.entries) and not long_rows & set(default_rows(recipe))
    assert with_start_rows(recipe, ["coconut_sup_l2"]) == [
        "cot", "cot_long", "cot_long2", "coconut_sup_l2"
    ]  # fmt: skip
    assert with_start_rows(recipe, ["nocot_long"]) == ["nocot", "nocot_long"]
    assert with_start_rows(recipe, ["coconut_sup_l2_long"])[-2:] == [
        "coconut_sup_l2", "coconut_sup_l2_long"
    ]  # fmt: skip
    assert recipe.entries["coconut_sup_l2"].config == recipe.entries["coconut_sup"].config
    data = prepare_data("graph", train_size=16, val_size=2, test_size=2, seed=0,
                        **recipe.difficulty)  # fmt: skip
    assert "Every" not in data.train[0]["question"]
    train = {"max_steps": 1, "warmup_steps": 1, "batch_size": 2}
    small = replace(recipe, d_model=32)
    llama = train_entry("cot", Entry("cot", train=train), data, None, small, 0)
    gpt2 = train_entry("cot", Entry("cot", train=train), data, None, replace(small, arch="gpt2"), 0)
    assert llama.model.config.model_type == "llama" and llama.model.config.hidden_size == 32
    assert gpt2.model.config.model_type == "gpt2"
