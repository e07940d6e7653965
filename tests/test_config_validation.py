"""One validation path: every config names its bad field in a ConfigError; the CLI says it once."""

from __future__ import annotations

import pytest

from workbench.config import ConfigError, check_choice, check_range
from workbench.data.datasets import DataConfig
from workbench.demo import DemoConfig
from workbench.methods.coconut import CoconutConfig
from workbench.methods.latent_sft import LatentSFTConfig
from workbench.models.build import ModelConfig
from workbench.train import TrainConfig

BAD = [
    (CoconutConfig, {"c_thought": 0}, "CoconutConfig.c_thought"),
    (CoconutConfig, {"uniform_prob": 1.5}, "CoconutConfig.uniform_prob"),
    (CoconutConfig, {"feedback": "hiden"}, "did you mean 'hidden'"),
    (LatentSFTConfig, {"compression_rate": 0}, "LatentSFTConfig.compression_rate"),
    (LatentSFTConfig, {"stage2_steps": 2.5}, "an integer"),
    (LatentSFTConfig, {"kl_weight": 0.0, "ce_weight": 0.0}, "LatentSFTConfig.ce_weight"),
    (ModelConfig, {"d_model": 100, "n_head": 3}, "ModelConfig.d_model"),
    (ModelConfig, {"arch": "gpt3"}, "ModelConfig.arch"),
    (ModelConfig, {"dropout": 1.0}, "ModelConfig.dropout"),
    (DemoConfig, {"cot_minutes": 0}, "DemoConfig.cot_minutes"),
    (DemoConfig, {"d_model": 130}, "multiple of 4"),
    (DataConfig, {"train_size": 0}, "DataConfig.train_size"),
    (DataConfig, {"task": "sudokku"}, "DataConfig.task"),
    (TrainConfig, {"lr": -1.0}, "TrainConfig.lr"),
]


@pytest.mark.parametrize(
    ("cls", "values", "message"), BAD, ids=[f"{c.__name__}-{m}" for c, _, m in BAD]
)
def test_bad_value_is_a_config_error_naming_the_field(cls, values, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        cls(**values)


def test_helpers_name_owner_field_value_and_what_is_allowed():
    class Owner:
        steps = 0
        rule = "gumbell"

    with pytest.raises(ConfigError) as err:
        check_range(Owner(), "steps", ge=1)
    assert str(err.value) == "Owner.steps = 0: expected a number >= 1"
    with pytest.raises(ConfigError, match=r"Owner\.rule = 'gumbell'.*'gumbel'"):
        check_choice(Owner(), "rule", ["hidden", "gumbel"])
    with pytest.raises(ConfigError, match="nan"):
        Owner.steps = float("nan")
        check_range(Owner(), "steps", ge=1)


def test_cli_prints_one_line_and_exits_2_on_a_bad_method_config(capsys, tmp_path):
    from workbench.cli import main

    code = main(
        ["train", "--method", "coconut", "--out", str(tmp_path / "run"),
         "--set", "coconut.c_thought=0"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0
    assert "CoconutConfig.c_thought = 0" in err and "expected" in err
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started


def test_cli_debug_shows_the_traceback(tmp_path):
    from workbench.cli import main

    with pytest.raises(ConfigError):
        main(
            [
                "--debug",
                "train",
                "--method",
                "cot",
                "--out",
                str(tmp_path),
                "--set",
                "model.d_model=0",
            ]
        )


def test_latent_sft_refuses_a_rate_above_the_shortest_cot():
    from workbench.experiment import prepare_data, train
    from workbench.models.build import build_model

    data = prepare_data("multiplication", train_size=16, val_size=2, test_size=2, digits_a=2)
    model = build_model(ModelConfig(n_layer=1, d_model=32, n_head=2), data.tokenizer)
    with pytest.raises(ConfigError, match=r"LatentSFTConfig\.compression_rate = 100.*shortest CoT"):
        train("latent_sft", data, model, config=LatentSFTConfig(compression_rate=100))


def test_cli_refuses_trainer_settings_for_a_method_with_its_own(capsys, tmp_path):
    from workbench.cli import main

    code = main(["train", "--method", "latent_sft", "--steps", "5", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "do not apply to 'latent_sft'" in err and "latent_sft.stage2_steps" in err
