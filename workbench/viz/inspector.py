"""An interactive latent-trajectory inspector (ipywidgets 8 + plotly), testable without a browser.

``LatentInspector`` shows, for one method and one example (from a dataset, or a question
typed into the box and run through the engine with the method's ``LatentSpec``):

* ``figures["topk"]``: step x top-k token heatmap, the selected step framed;
* ``figures["step"]``: the distribution at the selected step and layer (logit lens), with the
  superposition actually fed when the rule feeds one, CoT target tokens in orange;
* ``figures["layers"]``: layer x step heatmap (entropy / top-1 / target / answer probability)
  with each cell's top-1 token, the selected (step, layer) framed;
* ``figures["curve"]``: entropy and target / answer probabilities over steps.

Every callback is an ordinary method (``on_step_change``, ``on_method_change``,
``update_figures``, ``run_question``...): set a widget's ``.value`` or call
``run_button.click()`` and the figures in ``figures`` change, in a kernel or in plain pytest.
Figures are ``go.FigureWidget`` (updated in place) when ``anywidget`` is importable, else
``go.Figure`` shown through an ``Output`` widget. :func:`inspector_figures` is the pure
function behind them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go

from workbench.lens.alignment import Alignment
from workbench.lens.logit_lens import join_tokens
from workbench.lens.trajectory import LatentTrajectory
from workbench.viz.theme import WHITE

__all__ = [
    "LatentInspector",
    "MethodEntry",
    "inspector_figures",
    "run_questions",
    "LAYER_STATISTICS",
    "figure_widgets_available",
]

LAYER_STATISTICS = ("entropy", "top-1 probability", "target probability", "answer probability")
FIGURE_NAMES = ("topk", "step", "layers", "curve")
#: Pixel widths: the first two sit side by side and wrap below each other in narrow notebooks.
FIGURE_WIDTH = {"topk": 580, "step": 560, "layers": 780, "curve": 780}
_HILITE = dict(
    type="rect", xref="x", yref="y", line=dict(color="#d62728", width=3), fillcolor="rgba(0,0,0,0)"
)


def figure_widgets_available() -> bool:
    """True when plotly's FigureWidget can work (it needs ``anywidget`` since plotly 6)."""
    return importlib.util.find_spec("anywidget") is not None


@dataclass
class MethodEntry:
    """One inspector method: a model to run (typed questions) and/or precomputed trajectories.

    Attributes:
        model: The causal LM (``None``: precomputed only).
        tokenizer: Its tokenizer.
        spec: The method's ``LatentSpec`` (``None``: no latents, e.g. CoT).
        trajectory: Precomputed trajectory of the inspector's examples (computed lazily from
            ``model`` when missing and examples are given).
        latents_per_step: Shorthand for ``alignment=Alignment(latents_per_step=c)``.
        alignment: Which CoT tokens each latent stands for (alignment targets of typed-in and
            lazily computed trajectories); ``None`` and no ``latents_per_step``: inferred by
            step.
    """

    model: Any = None
    tokenizer: Any = None
    spec: Any = None
    trajectory: LatentTrajectory | None = None
    latents_per_step: int | None = None
    alignment: Alignment | None = None

    @classmethod
    def coerce(cls, value) -> MethodEntry:
        """A MethodEntry from a trajectory, a (model, tokenizer, spec[, trajectory]) tuple, or an
        object with ``.model``, ``.tokenizer``, ``.spec`` (a ``TrainedModel``; its alignment
        comes from the method registry, :func:`workbench.methods.lens_alignment`)."""
        if isinstance(value, MethodEntry):
            return value
        if isinstance(value, LatentTrajectory):
            return cls(trajectory=value)
        if isinstance(value, tuple) and 2 <= len(value) <= 4:
            return cls(*value)
        if hasattr(value, "model") and hasattr(value, "tokenizer"):
            from workbench.methods import lens_alignment

            alignment = lens_alignment(
                getattr(value, "method", ""), getattr(value, "meta", None) or {}
            )
            return cls(
                value.model, value.tokenizer, getattr(value, "spec", None), alignment=alignment
            )
        raise TypeError(
            f"cannot use {type(value).__name__} as an inspector method: give a LatentTrajectory, "
            "a (model, tokenizer, spec) tuple, a MethodEntry or a TrainedModel"
        )


def _position_limit(model) -> int | None:
    cfg = model.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


def run_questions(
    entry: MethodEntry,
    examples: Sequence[Mapping[str, Any]],
    *,
    method: str = "",
    max_new_tokens: int = 32,
    top_k: int = 10,
    with_targets: bool = True,
) -> LatentTrajectory:
    """Run ``entry``'s model through the engine (its ``LatentSpec``) and decode the trajectories.

    ``examples`` are schema dicts; a typed question is ``{"question": text, "steps": [],
    "answer": "?"}`` with ``with_targets=False``.
    """
    from workbench.eval.evaluator import evaluate

    if entry.model is None or entry.tokenizer is None:
        raise ValueError(
            f"method {method!r} has no model to run (it was given as precomputed trajectories); "
            "pass (model, tokenizer, spec) to run typed questions"
        )
    examples = [dict(e) for e in examples]
    limit = _position_limit(entry.model)
    if limit is not None:
        longest = max(
            len(entry.tokenizer.encode(e["question"], add_special_tokens=False)) for e in examples
        )
        latents = entry.spec.max_latent_steps if entry.spec is not None else 0
        max_new_tokens = max(1, min(max_new_tokens, limit - longest - latents - 3))
    res = evaluate(
        entry.model,
        entry.tokenizer,
        examples,
        spec=entry.spec,
        method=method,
        record_trace=True,
        record_hidden=True,
        top_k=top_k,
        max_new_tokens=max_new_tokens,
    )
    if with_targets:
        return LatentTrajectory.from_eval(
            res,
            entry.model,
            entry.tokenizer,
            examples,
            alignment=entry.alignment,
            latents_per_step=entry.latents_per_step,
        )
    df = res.per_example.sort_values("index")
    traj = LatentTrajectory.from_trace(
        res.trace,
        entry.model,
        entry.tokenizer,
        predictions=df["prediction"].tolist(),
        method=method,
    )
    traj.questions = [e["question"] for e in examples]
    traj.meta["generated"] = df["generated"].tolist()
    return traj


# ----- the pure figure builder -------------------------------------------------------------------


def _frame(fig: go.Figure, x: float, y0: float, y1: float, x1: float | None = None) -> None:
    fig.add_shape(x0=x - 0.5, x1=(x if x1 is None else x1) + 0.5, y0=y0, y1=y1, **_HILITE)


def _step_bar(traj: LatentTrajectory, b: int, step: int, k: int, layer: int | None) -> go.Figure:
    L = traj.num_layers
    use_layer = (
        layer if (layer is not None and traj.layer_log_probs is not None and layer != L) else None
    )
    top = traj.top_k(k, layer=use_layer)
    ids, probs, text = top.ids[b, step], top.probs[b, step], top.text[b, step]
    targets = set(traj.aligned_targets[b][step]) if traj.aligned_targets is not None else set()
    answer = traj.answer_ids[b][0] if traj.answer_ids and traj.answer_ids[b] else None
    colors = [
        "#ff7f0e"
        if int(i) in targets
        else ("#2ca02c" if answer is not None and int(i) == answer else "#1f77b4")
        for i in ids
    ]
    fig = go.Figure(
        go.Bar(
            x=[f"#{r + 1} {t}" for r, t in enumerate(text)],
            y=probs,
            text=list(text),
            textposition="outside",
            marker_color=colors,
            name="read",
            customdata=ids,
            hovertemplate="token %{text} (id %{customdata})<br>p = %{y:.4f}<extra></extra>",
        )
    )
    if use_layer is None and traj.weight_ids is not None and bool(traj.fed[b, step]):
        wi, wp = traj.weight_ids[b, step].tolist(), traj.weight_probs[b, step].tolist()
        pos = {int(i): r for r, i in enumerate(ids)}
        xs, ys = [], []
        for i, p in zip(wi, wp, strict=True):
            if int(i) in pos:
                xs.append(f"#{pos[int(i)] + 1} {text[pos[int(i)]]}")
                ys.append(p)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name="fed weight",
                marker=dict(symbol="diamond", size=11, color="#d62728"),
                hovertemplate="fed weight %{y:.4f}<extra></extra>",
            )
        )
    label = traj.step_labels(b)[step]
    where = "LM head" if use_layer is None else f"logit lens, layer {use_layer}"
    fig.update_layout(
        title=f"read {step} ({label}), {where}: top-{len(ids)}",
        yaxis_title="probability",
        xaxis_title="token (orange: CoT target, green: first answer token)",
        **WHITE,
        showlegend=traj.weight_ids is not None,
        height=380,
        margin=dict(t=60, b=60, l=50, r=20),
    )
    fig.update_yaxes(range=[0, max(1e-3, float(np.max(probs)) * 1.25 if len(probs) else 1.0)])
    return fig


def _layer_stat(traj: LatentTrajectory, name: str):
    if name == "entropy":
        return traj.layer_entropy()
    if name == "top-1 probability":
        return traj.layer_top1_probability()
    if name == "target probability" and traj.aligned_targets is not None:
        return traj.layer_target_probability()
    if name == "answer probability" and traj.answer_ids is not None:
        return traj.layer_answer_probability()
    return traj.layer_entropy()


def _curve(traj: LatentTrajectory, b: int, step: int) -> go.Figure:
    labels = traj.step_labels(b)
    x = list(range(len(labels)))
    fig = go.Figure(
        go.Scatter(x=x, y=traj.entropy().example(b), name="entropy (nats)", mode="lines+markers")
    )
    for name, fn in (
        ("target probability", "target_probability"),
        ("answer-token probability", "answer_probability"),
        ("top-1 probability", "top1_probability"),
    ):
        if fn == "target_probability" and traj.aligned_targets is None:
            continue
        if fn == "answer_probability" and traj.answer_ids is None:
            continue
        fig.add_trace(
            go.Scatter(
                x=x, y=getattr(traj, fn)().example(b), name=name, mode="lines+markers", yaxis="y2"
            )
        )
    fig.add_vline(x=step, line=dict(color="#d62728", width=2, dash="dot"))
    fig.update_layout(
        title="entropy and probabilities per latent step",
        **WHITE,
        height=340,
        xaxis=dict(title="latent step", tickvals=x, ticktext=labels),
        yaxis=dict(title="entropy (nats)"),
        yaxis2=dict(title="probability", overlaying="y", side="right", range=[0, 1]),
        legend=dict(orientation="h", y=-0.25),
        margin=dict(t=50, b=40, l=50, r=50),
    )
    return fig


def inspector_figures(
    traj: LatentTrajectory,
    example: int = 0,
    step: int = 0,
    top_k: int = 10,
    layer: int | None = None,
    layer_statistic: str = "entropy",
) -> dict[str, go.Figure]:
    """The inspector's four figures for one state (pure: same inputs, same figures)."""
    n = traj.steps_of(example)
    step = max(0, min(step, n - 1))
    top_k = max(1, top_k)
    figs: dict[str, go.Figure] = {}
    fig = traj.top_k(top_k).figure(example)
    _frame(fig, step, -0.5, top_k - 0.5)
    fig.update_layout(
        height=max(300, 60 + 28 * top_k),
        width=FIGURE_WIDTH["topk"],
        margin=dict(t=60, b=40, l=50, r=20),
    )
    figs["topk"] = fig
    figs["step"] = _step_bar(traj, example, step, top_k, layer)
    figs["step"].update_layout(width=FIGURE_WIDTH["step"])
    if traj.layer_log_probs is not None:
        L = traj.num_layers
        lay = L if layer is None else max(0, min(layer, L))
        fig = _layer_stat(traj, layer_statistic).figure(example)
        _frame(fig, step, lay - 0.5, lay + 0.5)
        fig.update_layout(
            height=max(280, 60 + 45 * (L + 1)),
            width=FIGURE_WIDTH["layers"],
            margin=dict(t=60, b=40, l=60, r=20),
        )
    else:
        fig = go.Figure()
        fig.update_layout(
            title="no logit lens (trajectory built with layers=False or without hidden states)"
        )
    figs["layers"] = fig
    figs["curve"] = _curve(traj, example, step)
    figs["curve"].update_layout(width=FIGURE_WIDTH["curve"])
    return figs


# ----- the widget ---------------------------------------------------------------------------------


def _mime_bundle(fig: go.Figure) -> dict:
    import plotly.io as pio

    spec = json.loads(pio.to_json(fig, validate=False))
    spec["config"] = {"responsive": True, "displaylogo": False}
    return {
        "output_type": "display_data",
        "metadata": {},
        "data": {"application/vnd.plotly.v1+json": spec, "text/plain": "<plotly figure>"},
    }


class LatentInspector:
    """Widgets + figures to browse latent trajectories of one or several methods.

    Args:
        methods: ``{name: LatentTrajectory | (model, tokenizer, spec) | MethodEntry |
            TrainedModel}``
            (or one of these, named ``"method"``). Precomputed trajectories must all cover the
            same examples in the same order.
        examples: Schema dicts of the dataset examples (labels of the selector; used to
            compute trajectories lazily for model entries). Default: the questions of the
            first trajectory.
        top_k: Tokens shown per step.
        layer: Initial logit-lens layer (default: the last).
        use_figure_widget: Force ``go.FigureWidget`` (True) or ``go.Figure`` in ``Output``
            widgets (False); default: FigureWidget when ``anywidget`` is importable.
        max_examples: At most this many dataset examples in the selector.
    """

    def __init__(
        self,
        methods,
        examples: Sequence[Mapping[str, Any]] | None = None,
        *,
        top_k: int = 10,
        layer: int | None = None,
        layer_statistic: str = "entropy",
        use_figure_widget: bool | None = None,
        max_examples: int = 500,
    ):
        import ipywidgets as W

        if not isinstance(methods, Mapping):
            methods = {"method": methods}
        if not methods:
            raise ValueError("LatentInspector needs at least one method")
        self.entries: dict[str, MethodEntry] = {
            str(k): MethodEntry.coerce(v) for k, v in methods.items()
        }
        self.examples = [dict(e) for e in examples][:max_examples] if examples is not None else None
        self._typed: dict[tuple[str, str], LatentTrajectory] = {}
        self._quiet = False
        self.use_figure_widget = (
            figure_widgets_available() if use_figure_widget is None else use_figure_widget
        )
        if layer_statistic not in LAYER_STATISTICS:
            raise ValueError(
                f"layer_statistic={layer_statistic!r}; choose one of {LAYER_STATISTICS}"
            )

        names = list(self.entries)
        self.method_dropdown = W.Dropdown(options=names, value=names[0], description="method")
        self.example_selector = W.Dropdown(
            options=self._example_options(), description="example", layout=W.Layout(width="420px")
        )
        self.question_box = W.Text(
            value="",
            placeholder="type a question (e.g. 321*654) and press Run",
            description="question",
            layout=W.Layout(width="420px"),
        )
        self.run_button = W.Button(
            description="Run",
            button_style="primary",
            tooltip="run the method on the question",
            icon="play",
        )
        self.step_slider = W.IntSlider(
            value=0, min=0, max=1, description="step", continuous_update=False
        )
        self.top_k_slider = W.IntSlider(
            value=top_k, min=1, max=max(top_k, 30), description="top-k", continuous_update=False
        )
        self.layer_slider = W.IntSlider(
            value=0, min=0, max=1, description="layer", continuous_update=False
        )
        self.layer_stat_dropdown = W.Dropdown(
            options=list(LAYER_STATISTICS), value=layer_statistic, description="layer stat"
        )
        self.status = W.HTML(value="")
        self._initial_layer = layer

        self.figures: dict[str, go.Figure] = {}
        self.figure_boxes: dict[str, Any] = {}
        self._widget = None

        self.method_dropdown.observe(self.on_method_change, names="value")
        self.example_selector.observe(self.on_example_change, names="value")
        self.step_slider.observe(self.on_step_change, names="value")
        self.top_k_slider.observe(self.on_top_k_change, names="value")
        self.layer_slider.observe(self.on_layer_change, names="value")
        self.layer_stat_dropdown.observe(self.on_layer_stat_change, names="value")
        self.run_button.on_click(self.on_run_click)
        self.question_box.continuous_update = False

        self._sync_limits(reset_layer=True)
        self.update_figures()

    # --- state ------------------------------------------------------------------------------------
    def _example_options(self) -> list[tuple[str, tuple]]:
        qs = None
        if self.examples is not None:
            qs = [e["question"] for e in self.examples]
        else:
            for e in self.entries.values():
                if e.trajectory is not None:
                    tr = e.trajectory
                    qs = tr.questions or [f"example {i}" for i in range(tr.num_examples)]
                    break
        opts = [(f"{i}: {_short(q)}", ("data", i)) for i, q in enumerate(qs or [])]
        opts += [
            (f"typed: {_short(text)}", ("typed", text))
            for text in dict.fromkeys(t for _, t in self._typed)
        ]
        return opts or [("(no examples: type a question)", ("none", 0))]

    @contextlib.contextmanager
    def _silent(self):
        old, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = old

    @property
    def method(self) -> str:
        """The selected method's name."""
        return self.method_dropdown.value

    def trajectory(self) -> tuple[LatentTrajectory | None, int]:
        """The selected (trajectory, row): a dataset example or a typed question (run on demand)."""
        kind, key = self.example_selector.value
        entry = self.entries[self.method]
        if kind == "typed":
            if (self.method, key) not in self._typed:
                if entry.model is None:
                    return None, 0
                self._typed[(self.method, key)] = run_questions(
                    entry,
                    [{"question": key, "steps": [], "answer": "?"}],
                    method=self.method,
                    with_targets=False,
                    top_k=max(10, self.top_k_slider.value),
                )
            return self._typed[(self.method, key)], 0
        if kind == "none":
            return None, 0
        if entry.trajectory is None:
            if entry.model is None or self.examples is None:
                return None, 0
            self.status.value = f"<i>running {self.method} on {len(self.examples)} examples...</i>"
            entry.trajectory = run_questions(
                entry, self.examples, method=self.method, top_k=max(10, self.top_k_slider.value)
            )
        if entry.trajectory.method == "":
            entry.trajectory.method = self.method
        return entry.trajectory, min(key, entry.trajectory.num_examples - 1)

    def _sync_limits(self, reset_layer: bool = False) -> None:
        traj, b = self.trajectory()
        with self._silent():
            if traj is None:
                self.step_slider.max = 0
                return
            n = traj.steps_of(b)
            self.step_slider.max = max(0, n - 1)
            self.step_slider.value = min(self.step_slider.value, n - 1)
            L = traj.num_layers or 0
            self.layer_slider.max = max(1, L)
            self.layer_slider.disabled = traj.layer_log_probs is None
            if reset_layer or self.layer_slider.value > L:
                self.layer_slider.value = (
                    L if self._initial_layer is None else max(0, min(self._initial_layer, L))
                )
            self.top_k_slider.max = max(self.top_k_slider.value, min(30, traj.vocab_size))

    # --- callbacks --------------------------------------------------------------------------------
    def on_method_change(self, change=None) -> dict[str, go.Figure]:
        """The method dropdown moved: same example (typed questions are re-run), new figures."""
        if self._quiet:
            return self.figures
        kind, key = self.example_selector.value
        if kind == "typed" and self.entries[self.method].model is None:
            self.status.value = (
                f"<b>{self.method}</b> has no model to run the typed question; showing example 0"
            )
            with self._silent():
                self.example_selector.value = self.example_selector.options[0][1]
        self._sync_limits()
        return self.update_figures()

    def on_example_change(self, change=None) -> dict[str, go.Figure]:
        """The example selector moved."""
        if self._quiet:
            return self.figures
        self._sync_limits()
        return self.update_figures()

    def on_step_change(self, change=None) -> dict[str, go.Figure]:
        """The step slider moved: the step's distribution is redrawn, the step markers move."""
        if self._quiet:
            return self.figures
        return self._update_step_and_layer()

    def on_top_k_change(self, change=None) -> dict[str, go.Figure]:
        """The top-k slider moved."""
        if self._quiet:
            return self.figures
        return self.update_figures()

    def on_layer_change(self, change=None) -> dict[str, go.Figure]:
        """The layer slider moved: the step's distribution is read at that layer (logit lens)."""
        if self._quiet:
            return self.figures
        return self._update_step_and_layer()

    def _update_step_and_layer(self) -> dict[str, go.Figure]:
        """Cheap update: rebuild the step's bar chart, move the other figures' markers."""
        traj, b = self.trajectory()
        if traj is None or any(n not in self.figures for n in FIGURE_NAMES):
            return self.update_figures()
        step = max(0, min(self.step_slider.value, traj.steps_of(b) - 1))
        self._push(
            "step",
            _step_bar(traj, b, step, max(1, self.top_k_slider.value), self.layer_slider.value),
        )
        L = traj.num_layers or 0
        self._move_marker("topk", x=step)
        self._move_marker("curve", x=step)
        self._move_marker("layers", x=step, y=max(0, min(self.layer_slider.value, L)))
        self._update_status()
        return self.figures

    def _move_marker(self, name: str, x: float | None = None, y: float | None = None) -> None:
        """Centre the first shape of figure ``name`` on ``x`` (and ``y``), in place."""
        fig = self.figures[name]
        if not fig.layout.shapes:
            return
        shape = fig.layout.shapes[0]
        moves = {}
        if x is not None:
            dx = x - (shape.x0 + shape.x1) / 2
            moves.update(x0=shape.x0 + dx, x1=shape.x1 + dx)
        if y is not None and shape.yref == "y":
            dy = y - (shape.y0 + shape.y1) / 2
            moves.update(y0=shape.y0 + dy, y1=shape.y1 + dy)
        if self.use_figure_widget:
            with fig.batch_update():
                shape.update(moves)
        else:
            shape.update(moves)
            self.figure_boxes[name].outputs = (_mime_bundle(fig),)

    def on_layer_stat_change(self, change=None) -> dict[str, go.Figure]:
        """The layer statistic changed."""
        if self._quiet:
            return self.figures
        return self.update_figures()

    def on_run_click(self, button=None) -> LatentTrajectory | None:
        """The Run button: run the typed question (``question_box``) through the selected method."""
        try:
            return self.run_question(self.question_box.value)
        except Exception as e:  # shown in the widget; a callback must not raise into the frontend
            self.status.value = f"<span style='color:#b00'>error: {_esc(str(e))}</span>"
            return None

    def run_question(self, text: str | None = None) -> LatentTrajectory:
        """Run ``text`` through the selected method's model and show it (a ``typed:`` option)."""
        text = (self.question_box.value if text is None else text).strip()
        if not text:
            raise ValueError("type a question first")
        entry = self.entries[self.method]
        if entry.model is None:
            raise ValueError(
                f"method {self.method!r} has no model (precomputed trajectories only); "
                "give the inspector (model, tokenizer, spec) to run typed questions"
            )
        key = (self.method, text)
        self._typed[key] = run_questions(
            entry,
            [{"question": text, "steps": [], "answer": "?"}],
            method=self.method,
            with_targets=False,
            top_k=max(10, self.top_k_slider.value),
        )
        with self._silent():
            self.question_box.value = text
            self.example_selector.options = self._example_options()
            self.example_selector.value = ("typed", text)
            self.step_slider.value = 0
        self._sync_limits()
        self.update_figures()
        return self._typed[key]

    # --- figures ----------------------------------------------------------------------------------
    def current_figures(self) -> dict[str, go.Figure]:
        """Fresh figures for the current widget state (pure: does not touch the displayed ones)."""
        traj, b = self.trajectory()
        if traj is None:
            empty = go.Figure()
            empty.update_layout(
                title="nothing to show: this method has no trajectory for this example"
            )
            return {n: go.Figure(empty) for n in FIGURE_NAMES}
        return inspector_figures(
            traj,
            b,
            self.step_slider.value,
            self.top_k_slider.value,
            self.layer_slider.value,
            self.layer_stat_dropdown.value,
        )

    def update_figures(self) -> dict[str, go.Figure]:
        """Rebuild every figure from the widgets' state and push it to the displayed figures."""
        new = self.current_figures()
        for name, fig in new.items():
            self._push(name, fig)
        self._update_status()
        return self.figures

    def _push(self, name: str, fig: go.Figure) -> None:
        import ipywidgets as W

        if self.use_figure_widget:
            fw = self.figures.get(name)
            if fw is None:
                fw = go.FigureWidget(fig)
                self.figures[name] = fw
                self.figure_boxes[name] = fw
                return
            with fw.batch_update():
                same = len(fw.data) == len(fig.data) and all(
                    a.type == b.type for a, b in zip(fw.data, fig.data, strict=True)
                )
                if same:
                    for old, tr in zip(fw.data, fig.data, strict=True):
                        old.update(tr.to_plotly_json(), overwrite=True)
                fw.layout = fig.layout
            if not same:
                fw.data = []
                fw.add_traces(list(fig.data))
            return
        self.figures[name] = fig
        out = self.figure_boxes.get(name)
        if out is None:
            out = W.Output(layout=W.Layout(width="100%"))
            self.figure_boxes[name] = out
        out.outputs = (_mime_bundle(fig),)

    def _update_status(self) -> None:
        traj, b = self.trajectory()
        if traj is None:
            return
        t = min(self.step_slider.value, traj.steps_of(b) - 1)
        parts = [f"<b>{_esc(self.method)}</b>"]
        if traj.questions:
            parts.append(f"question <code>{_esc(traj.questions[b])}</code>")
        if traj.gold:
            parts.append(f"gold <code>{_esc(traj.gold[b])}</code>")
        if traj.predictions:
            parts.append(f"prediction <code>{_esc(str(traj.predictions[b]))}</code>")
        if traj.correct is not None:
            parts.append(
                "<span style='color:#2ca02c'>correct</span>"
                if traj.correct[b]
                else "<span style='color:#d62728'>wrong</span>"
            )
        parts.append(f"{int(traj.fed[b].sum())} latents")
        if traj.answer_ids is not None:
            c = int(traj.collapse_step()[b])
            parts.append(f"collapse step {c if c >= 0 else 'none'}")
        line2 = [
            f"read {t} ({traj.step_labels(b)[t]}): top-1 "
            f"<code>{_esc(traj.decode([traj.topk_ids[b, t, 0]])[0])}"
            f"</code> p={float(traj.topk_probs[b, t, 0]):.3f}"
        ]
        if traj.aligned_targets is not None and traj.aligned_targets[b][t]:
            line2.append(
                "CoT target "
                f"<code>{_esc(join_tokens(traj.decode(traj.aligned_targets[b][t])))}</code>"
            )
        if traj.decoded_steps is not None and traj.decoded_steps[b][t]:
            line2.append(f"step decoder <code>{_esc(traj.decoded_steps[b][t])}</code>")
        self.status.value = " · ".join(parts) + "<br>" + " · ".join(line2)

    # --- display ----------------------------------------------------------------------------------
    @property
    def widget(self):
        """The top-level ``VBox`` (controls, status line, figures)."""
        if self._widget is None:
            import ipywidgets as W

            boxes = self.figure_boxes
            for name in ("topk", "step"):
                if isinstance(boxes[name], W.Output):
                    boxes[name].layout = W.Layout(width=f"{FIGURE_WIDTH[name] + 10}px")
            top = W.HBox(
                [boxes["topk"], boxes["step"]], layout=W.Layout(flex_flow="row wrap", width="100%")
            )
            self._widget = W.VBox(
                [
                    W.HBox([self.method_dropdown, self.example_selector]),
                    W.HBox([self.question_box, self.run_button]),
                    W.HBox(
                        [
                            self.step_slider,
                            self.top_k_slider,
                            self.layer_slider,
                            self.layer_stat_dropdown,
                        ]
                    ),
                    self.status,
                    top,
                    boxes["layers"],
                    boxes["curve"],
                ],
                layout=W.Layout(width="100%"),
            )
            self._widget.add_class("workbench-latent-inspector")
        return self._widget

    def display(self) -> None:
        """Show the inspector in the notebook."""
        from IPython.display import display

        display(self.widget)

    def _ipython_display_(self) -> None:
        self.display()


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _esc(text: str) -> str:
    import html

    return html.escape(str(text))
