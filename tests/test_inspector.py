"""The inspector's callbacks change its figures (no browser: set .value, call .click())."""

from __future__ import annotations

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import pytest

from workbench.data.tasks import generate
from workbench.data.tokenizer import build_char_tokenizer
from workbench.engine.feedback import make_feedback
from workbench.eval.evaluator import LatentSpec, evaluate
from workbench.lens.trajectory import LatentTrajectory
from workbench.models.build import ModelConfig, build_model
from workbench.viz.inspector import (
    FIGURE_NAMES,
    LatentInspector,
    MethodEntry,
    figure_widgets_available,
    inspector_figures,
)


@pytest.fixture(scope="module")
def setup():
    tok = build_char_tokenizer()
    examples = generate("multiplication", 3, 0, digits_a=2)
    model = build_model(ModelConfig(n_layer=2, d_model=32, n_head=2), tok, seed=0).float()
    sft = LatentSpec(make_feedback("superposition", top_k=4), None, 3)
    coconut = LatentSpec(None, None, 2)
    res = evaluate(
        model, tok, examples, spec=coconut, record_trace=True, record_hidden=True, method="coconut"
    )
    pre = LatentTrajectory.from_eval(res, model, tok, examples, latents_per_step=1)
    return {
        "tok": tok,
        "examples": examples,
        "model": model,
        "sft": sft,
        "coconut": coconut,
        "pre": pre,
    }


def _inspector(setup, use_figure_widget: bool) -> LatentInspector:
    methods = {
        "sft": (
            setup["model"],
            setup["tok"],
            setup["sft"],
        ),  # trajectories computed lazily from the model
        "coconut": MethodEntry(setup["model"], setup["tok"], setup["coconut"], setup["pre"]),
        "precomputed": setup["pre"],  # no model: typed questions are refused
    }
    return LatentInspector(methods, setup["examples"], top_k=5, use_figure_widget=use_figure_widget)


def _snapshot(fig) -> str:
    return fig.to_json()


def test_pure_figures(setup):
    tr = setup["pre"]
    figs = inspector_figures(tr, example=1, step=1, top_k=4)
    assert set(figs) == set(FIGURE_NAMES)
    assert figs["topk"].data[0].type == "heatmap" and np.asarray(figs["topk"].data[0].z).shape == (
        4,
        tr.steps_of(1),
    )
    assert figs["topk"].layout.shapes[0].x0 == 0.5  # the selected step is framed
    assert len(figs["step"].data[0].y) == 4
    assert figs["layers"].data[0].type == "heatmap"
    assert len(figs["curve"].data) >= 3  # entropy + target/answer/top-1 probabilities
    assert inspector_figures(tr, 1, 1, 4) is not figs and _snapshot(
        inspector_figures(tr, 1, 1, 4)["step"]
    ) == _snapshot(figs["step"])  # pure: same state, same figure


def test_sliders_change_figures(setup):
    insp = _inspector(setup, use_figure_widget=False)
    assert all(isinstance(insp.figures[n], go.Figure) for n in FIGURE_NAMES)
    before = {n: _snapshot(insp.figures[n]) for n in FIGURE_NAMES}
    assert insp.step_slider.max == 3  # sft: 3 latents -> 4 reads

    insp.step_slider.value = 2
    after = {n: _snapshot(insp.figures[n]) for n in FIGURE_NAMES}
    assert (
        after["step"] != before["step"]
        and after["topk"] != before["topk"]
        and after["curve"] != before["curve"]
    )
    assert insp.figures["topk"].layout.shapes[0].x0 == 1.5
    assert "read 2" in insp.figures["step"].layout.title.text
    out = insp.figure_boxes[
        "step"
    ]  # go.Figure shown through an Output widget carrying the plotly mimetype
    assert isinstance(out, W.Output)
    shown = out.outputs[0]["data"]["application/vnd.plotly.v1+json"]
    assert shown["layout"]["title"]["text"] == insp.figures["step"].layout.title.text
    marker = insp.figure_boxes["topk"].outputs[0]["data"]["application/vnd.plotly.v1+json"][
        "layout"
    ]["shapes"][0]
    assert marker["x0"] == 1.5  # the moved marker reached the displayed output too

    insp.top_k_slider.value = 3
    assert len(insp.figures["step"].data[0].y) == 3
    assert np.asarray(insp.figures["topk"].data[0].z).shape[0] == 3

    insp.layer_slider.value = 0
    assert "layer 0" in insp.figures["step"].layout.title.text
    assert insp.figures["layers"].layout.shapes[0].y0 == -0.5
    insp.layer_stat_dropdown.value = "target probability"
    assert "target probability" in insp.figures["layers"].layout.title.text

    insp.example_selector.value = ("data", 2)
    assert setup["examples"][2]["question"] in insp.status.value

    insp.method_dropdown.value = "coconut"
    assert insp.step_slider.max == 2 and insp.figures["topk"].layout.title.text.startswith(
        "coconut"
    )
    assert isinstance(insp.widget, W.VBox)


@pytest.mark.skipif(
    not figure_widgets_available(), reason="anywidget is not installed: FigureWidget unavailable"
)
def test_figure_widgets_update_in_place(setup):
    insp = LatentInspector(
        {"coconut": setup["pre"]}, setup["examples"], top_k=4, use_figure_widget=True
    )
    assert all(isinstance(insp.figures[n], go.FigureWidget) for n in FIGURE_NAMES)
    shown = dict(insp.figures)
    bar = list(insp.figures["step"].data[0].y)
    insp.step_slider.value = 1
    assert list(insp.figures["step"].data[0].y) != bar
    assert insp.figures["topk"].layout.shapes[0].x0 == 0.5
    insp.example_selector.value = ("data", 1)  # a full rebuild
    assert all(
        insp.figures[n] is shown[n] for n in FIGURE_NAMES
    )  # same displayed widgets, new contents
    assert insp.figure_boxes["topk"] is insp.figures["topk"]


def test_run_button_runs_typed_question(setup):
    insp = _inspector(setup, use_figure_widget=False)
    before = _snapshot(insp.figures["topk"])
    insp.question_box.value = "12*34"
    insp.run_button.click()
    assert insp.example_selector.value == ("typed", "12*34")
    assert "12*34" in insp.status.value and "error" not in insp.status.value
    assert _snapshot(insp.figures["topk"]) != before
    tr, b = insp.trajectory()
    assert tr.questions == ["12*34"] and tr.aligned_targets is None and tr.num_steps == 4
    step_before = _snapshot(insp.figures["step"])
    insp.step_slider.value = 1
    assert _snapshot(insp.figures["step"]) != step_before

    insp.method_dropdown.value = (
        "coconut"  # same typed question, re-run with the other method's spec
    )
    tr2, _ = insp.trajectory()
    assert tr2.questions == ["12*34"] and tr2.num_steps == 3

    insp.method_dropdown.value = "precomputed"  # no model: falls back to a dataset example
    assert insp.example_selector.value == ("data", 0)
    insp.question_box.value = "98*76"
    assert insp.on_run_click() is None
    assert "error" in insp.status.value and "no model" in insp.status.value
