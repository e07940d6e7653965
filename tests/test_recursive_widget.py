"""The Sudoku grid figure, the recursion scrubber and the shipped recursive checkpoints."""

from __future__ import annotations

import random

import pytest
import torch

from workbench.config import ConfigError
from workbench.data.tasks import sudoku
from workbench.errors import CheckpointError
from workbench.recursive import RecursiveReasoner, preset
from workbench.recursive import shipped as ship
from workbench.recursive.diagnostics import grid_figure
from workbench.recursive.widget import RecursionScrubber

torch.set_num_threads(1)

PUZZLE = "1000" "0010" "0100" "0002"  # fmt: skip
SOLUTION = "1243" "3421" "2134" "4312"  # fmt: skip


def _trace(fig, name):
    (trace,) = [t for t in fig.data if t.name == name]
    return trace


def test_grid_figure_marks_givens_and_wrong_cells():
    pred = list(map(int, SOLUTION))
    pred[1] = 4  # row 0, col 1 wrong
    pred[14] = 0  # row 3, col 2 still blank
    conf = [0.5] * 16
    fig = grid_figure(PUZZLE, pred, conf, SOLUTION, title="t")
    givens = _trace(fig, "givens")
    assert sorted(zip(givens.y, givens.x, strict=True)) == [(0, 0), (1, 2), (2, 1), (3, 3)]
    assert [t.replace("<b>", "").replace("</b>", "") for t in givens.text] == ["1", "1", "1", "2"]
    wrong = _trace(fig, "wrong")
    assert sorted(zip(wrong.y, wrong.x, strict=True)) == [(0, 1), (3, 2)]
    assert list(wrong.customdata) == [2, 1]  # what they should be
    heat = _trace(fig, "confidence")
    assert heat.z[0][0] is None and heat.z[0][1] == 0.5  # givens are left out of the heatmap
    assert heat.text[0][1] == "4" and heat.text[3][2] == "·" and heat.text[0][0] == ""
    assert fig.layout.title.text == "t"
    # without a solution nothing is marked wrong; tensors work as well as strings
    fig = grid_figure(sudoku.encode([PUZZLE])[0], torch.tensor(pred), torch.tensor(conf))
    assert len(_trace(fig, "wrong").x) == 0
    # a given the model overwrites is wrong too
    pred[0] = 3
    wrong = _trace(grid_figure(PUZZLE, pred, conf, SOLUTION), "wrong")
    assert (0, 0) in set(zip(wrong.y, wrong.x, strict=True))
    with pytest.raises(ValueError, match="expected 16"):
        grid_figure(PUZZLE, pred[:15], conf, SOLUTION)


def test_grid_figure_9x9_draws_box_lines():
    (ex,) = sudoku.generate(1, random.Random(0), size=9)
    sol = sudoku.parse_grid(ex["answer"])
    fig = grid_figure(ex["question"], sol, [1.0] * 81, ex["answer"])
    assert len(_trace(fig, "wrong").x) == 0
    assert len(_trace(fig, "givens").x) == sum(ch != "0" for ch in ex["question"])
    assert len(fig.layout.shapes) == 8  # 4 vertical + 4 horizontal box borders


@pytest.fixture(scope="module")
def trained_trm():
    torch.manual_seed(0)
    model = RecursiveReasoner(preset("trm", size=4, hidden=32, layers=1, n_sup=4))
    return model.eval()


@pytest.mark.parametrize("use_figure_widget", [False, True])
def test_scrubber_show_changes_the_figure(trained_trm, use_figure_widget):
    scrub = RecursionScrubber(
        trained_trm, PUZZLE, SOLUTION, use_figure_widget=use_figure_widget, name="trm"
    )
    assert scrub.step == 4 and scrub.slider.max == 4
    first = scrub.show(0).to_plotly_json()
    assert scrub.step == 0 and "step 0/4" in first["layout"]["title"]["text"]
    last = scrub.show(4).to_plotly_json()
    assert scrub.step == 4 and "step 4/4" in last["layout"]["title"]["text"]
    assert "margin" in last["layout"]["title"]["text"] and "NFP 32" in scrub.status.value
    assert first["data"][0]["z"] != last["data"][0]["z"]  # confidences differ between steps
    # moving the slider (the widget callback) updates the figure too
    scrub.slider.value = 1
    assert "step 1/4" in scrub.figure.layout.title.text
    assert scrub.show(99) is scrub.figure and scrub.step == 4  # clamped
    assert scrub.widget.children[0] is scrub.slider
    if use_figure_widget:
        import plotly.graph_objects as go

        assert isinstance(scrub.figure, go.FigureWidget)


def test_scrubber_rejects_a_puzzle_of_another_size(trained_trm):
    (ex,) = sudoku.generate(1, random.Random(0), size=9)
    with pytest.raises(ValueError, match="expects 16"):
        RecursionScrubber(trained_trm, ex["question"])


def test_load_recursive_round_trips_a_tiny_build(tmp_path):
    metas = ship.build_recursive_checkpoints(
        tmp_path, seed=0, arms=("trm", "dis"), steps=2, train_size=8, test_size=4, log=None
    )
    assert set(metas) == {"trm", "dis"}
    assert ship.shipped_arms(tmp_path) == ["trm", "dis"]
    for arm in ("trm", "dis"):
        folder = tmp_path / "sudoku" / arm
        assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
        assert ship.shipped_meta(arm, tmp_path)["train_config"]["steps"] == 2
        model = ship.load_recursive(arm, tmp_path)
        assert not model.training and model.cfg.size == 4 and model.cfg.dis == (arm == "dis")
        saved = ship.shipped_meta(arm, tmp_path)["held_out"]["easy"]
        ex = ship.held_out(4, difficulty="easy", exclude=ship.training_puzzles(0, n=8))
        p = sudoku.encode([e["question"] for e in ex])
        s = sudoku.encode([e["answer"] for e in ex])
        from workbench.recursive.diagnostics import summary

        assert summary(model, p, s)["cell_acc"] == pytest.approx(saved["cell_acc"])
    with pytest.raises(CheckpointError, match="build_recursive_checkpoints"):
        ship.load_recursive("single", tmp_path)
    with pytest.raises(ConfigError):
        ship.load_recursive("hrm", tmp_path)


def test_held_out_never_repeats_a_training_puzzle():
    train = ship.training_puzzles(0, n=40)
    test = ship.held_out(30, exclude=train)
    assert len(test) == 30
    assert not {e["question"] for e in train} & {e["question"] for e in test}
    assert len({e["question"] for e in test}) == 30
