"""``benchmarks/compare_methods.py``'s difficulty override: parsed as literals, checked against
the task's knobs before anything is generated or trained."""

import argparse

import pytest

from workbench.config import ConfigError


@pytest.fixture(scope="module")
def compare(load_benchmark):
    return load_benchmark("compare_methods")


def test_knobs_parse_as_python_literals(compare):
    got = compare.parse_knobs("n_concepts=6, edges_per_concept=1.0,name='x'")
    assert got == {"n_concepts": 6, "edges_per_concept": 1.0, "name": "x"}
    assert isinstance(got["n_concepts"], int) and isinstance(got["edges_per_concept"], float)
    assert compare.parse_knobs("") == {}
    with pytest.raises(argparse.ArgumentTypeError, match="knob=value"):
        compare.parse_knobs("n_concepts")
    with pytest.raises(argparse.ArgumentTypeError, match="number or a quoted string"):
        compare.parse_knobs("n_concepts=eight")


def test_an_unknown_knob_is_refused_naming_the_known_ones(compare, tmp_path):
    with pytest.raises(ConfigError, match="no difficulty knob.*edges_per_concept"):
        compare.main(["--task", "graph", "--methods", "cot", "--difficulty", "n_edges=9",
                      "--out", str(tmp_path)])  # fmt: skip
    assert not any(tmp_path.iterdir())  # nothing trained or saved


def test_a_killed_row_resumes_from_its_run_folder_and_ends_where_an_unbroken_one_does(
    compare, tmp_path, monkeypatch, capsys
):
    """A row trained with a run folder checkpoints there; killed and rerun, it resumes (the
    progress line says where) and ends on the weights of a run never killed. A folder holding
    another setting of the row is refused, naming what differs."""
    from dataclasses import replace

    import torch

    from workbench import recipes
    from workbench.data.prepare import prepare_data
    from workbench.recipes import RECIPES, Entry, train_entry
    from workbench.train import TrainerCallback, latest_checkpoint

    monkeypatch.setattr(recipes, "RUN_SAVE_EVERY", 2)
    data = prepare_data("multiplication", train_size=32, val_size=2, test_size=2, seed=0,
                        digits_a=2)  # fmt: skip
    recipe = replace(RECIPES["multiplication"], d_model=32)
    entry = Entry("nocot", train={"max_steps": 6, "warmup_steps": 1, "batch_size": 4})
    run = tmp_path / "run"

    class Kill(TrainerCallback):
        def on_step_end(self, trainer, logs):
            if trainer.step == 5:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_entry("nocot", entry, data, None, recipe, 0, run_dir=run, callbacks=[Kill()])
    assert latest_checkpoint(run).endswith("checkpoint-4")
    progress = compare.RowProgress("nocot")
    resumed = train_entry("nocot", entry, data, None, recipe, 0, run_dir=run,
                          callbacks=[progress])  # fmt: skip
    assert "[compare] nocot: resumed at step 4" in capsys.readouterr().out
    assert progress.resumed_s > 0
    whole = train_entry("nocot", entry, data, None, recipe, 0)
    got, want = resumed.model.state_dict(), whole.model.state_dict()
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)
    longer = replace(entry, train={**entry.train, "max_steps": 7})
    with pytest.raises(ConfigError, match="another setting of row 'nocot'.*entry.*delete"):
        train_entry("nocot", longer, data, None, recipe, 0, run_dir=run)


def test_a_finished_comparison_leaves_its_models_and_no_unfinished_runs(compare, tmp_path, capsys):
    """Every trained row is saved under ``<out>/<task>/<row>``; the checkpoints it resumed from
    are gone once it is, and a rerun loads the rows instead of training them."""
    argv = ["--task", "multiplication", "--methods", "icot", "--scale", "0.001",
            "--train-size", "32", "--test-size", "4", "--usage-size", "2", "--threads", "1",
            "--out", str(tmp_path)]  # fmt: skip
    assert compare.main(argv) == 0
    root = tmp_path / "multiplication"
    assert sorted(p.name for p in root.iterdir()) == ["cot", "icot"]
    assert not (root / compare.UNFINISHED).exists()
    capsys.readouterr()
    assert compare.main(argv) == 0
    out = capsys.readouterr().out
    assert "cot: loaded from" in out and "icot: loaded from" in out and "training" not in out
