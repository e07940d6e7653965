"""Figures of latent trajectories: pure functions from lens statistics to ``go.Figure``.

Each builder takes one statistic of :mod:`workbench.lens.statistics` (or the lines of a
comparison) and returns a new :class:`plotly.graph_objects.Figure` in the house theme
(:data:`workbench.viz.theme.WHITE`); same inputs, same figure. The statistics' ``.figure()``
methods call these, so ``traj.entropy().figure()`` and ``step_statistic_figure(traj.entropy())``
are the same figure.

Read ``t`` is labelled ``z{t+1}`` when latent ``t + 1`` was fed after it, ``end`` otherwise
(:func:`workbench.lens.statistics.read_labels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from workbench.lens.statistics import read_labels
from workbench.viz.theme import WHITE, titled

if TYPE_CHECKING:  # pragma: no cover
    from workbench.lens.statistics import LayerStatistic, StepStatistic, Superposition, TopKTokens

__all__ = [
    "step_statistic_figure",
    "layer_statistic_figure",
    "top_k_figure",
    "superposition_figure",
    "comparison_figure",
    "STEP_AXIS_TITLE",
]

STEP_AXIS_TITLE = "latent step (read t feeds z(t+1))"


def step_statistic_figure(stat: StepStatistic, example: int | None = None) -> go.Figure:
    """Line over steps for one example, or the mean +- std over examples (``example=None``).

    With a single example, ``example=None`` draws that example's line.
    """
    label = stat.label
    if example is not None or stat.values.shape[0] == 1:
        b = 0 if example is None else example
        y = stat.example(b)
        labels = read_labels(len(y), stat.fed[b])
        fig = go.Figure(
            go.Scatter(
                x=list(range(len(y))),
                y=y,
                mode="lines+markers",
                name=stat.method or label,
                customdata=labels,
                hovertemplate="read %{x} (%{customdata})<br>%{y:.4g}<extra></extra>",
            )
        )
        fig.update_xaxes(tickvals=list(range(len(y))), ticktext=labels)
        title = f"{label} per latent step, example {b}"
    else:
        m, sd, n = stat.mean(), stat.std(), stat.count()
        keep = n > 0
        x = np.arange(len(m))[keep]
        fig = go.Figure(
            go.Scatter(
                x=x,
                y=m[keep],
                error_y=dict(type="data", array=sd[keep], visible=True),
                mode="lines+markers",
                name=stat.method or label,
                customdata=n[keep],
                hovertemplate="read %{x}<br>mean %{y:.4g}<br>n=%{customdata}<extra></extra>",
            )
        )
        title = f"{label} per latent step (mean ± std over {stat.values.shape[0]} examples)"
    fig.update_layout(
        title=titled(title, stat.method),
        xaxis_title=STEP_AXIS_TITLE,
        yaxis_title=label,
        **WHITE,
    )
    return fig


def layer_statistic_figure(
    stat: LayerStatistic, example: int = 0, show_tokens: bool = True
) -> go.Figure:
    """Layer x step heatmap of example ``example``; cells show the logit lens's top-1 token."""
    z = stat.example(example)
    n = z.shape[1]
    text = stat.example_tokens(example)
    labels = read_labels(n, stat.fed[example])
    L = stat.num_layers
    ylabels = ["emb"] + [str(i) for i in range(1, L)] + [f"{L} (final)"] if L >= 1 else ["emb"]
    label = stat.label
    heat = go.Heatmap(
        z=z,
        x=labels,
        y=ylabels,
        text=text,
        colorscale="Viridis",
        colorbar=dict(title=dict(text=label)),
        hovertemplate="step %{x}<br>layer %{y}<br>"
        + stat.name
        + " %{z:.4g}<br>top-1 %{text}<extra></extra>",
    )
    if show_tokens:
        heat.update(texttemplate="%{text}", textfont=dict(size=11))
    fig = go.Figure(heat)
    fig.update_layout(
        title=titled(f"Logit lens: {label}, example {example}", stat.method),
        xaxis_title="latent step",
        yaxis_title="layer",
        **WHITE,
    )
    return fig


def top_k_figure(top: TopKTokens, example: int = 0, highlight_targets: bool = True) -> go.Figure:
    """Heatmap: steps as columns, ranks 1..k as rows, colour = probability, cells = token text.

    Target tokens (the CoT step the latent replaced) are drawn bold.
    """
    v = top.valid[example]
    probs = top.probs[example][v].T  # [k, n]
    text = top.text[example][v].T.astype(object)
    if highlight_targets:
        tgt = top.is_target[example][v].T
        text = np.where(
            tgt, np.char.add(np.char.add("<b>", text.astype(str)), "</b>"), text
        ).astype(object)
    n = probs.shape[1]
    fig = go.Figure(
        go.Heatmap(
            z=probs,
            x=read_labels(n, top.fed[example]),
            y=[f"#{r + 1}" for r in range(top.k)],
            text=text,
            texttemplate="%{text}",
            textfont=dict(size=12),
            colorscale="Blues",
            zmin=0.0,
            zmax=1.0,
            colorbar=dict(title=dict(text="prob")),
            hovertemplate="step %{x}<br>rank %{y}<br>token %{text}<br>p = %{z:.4f}<extra></extra>",
        )
    )
    where = "LM head" if top.layer is None else f"layer {top.layer}"
    fig.update_layout(
        title=titled(
            f"Top-{top.k} tokens per latent step ({where}), example {example}", top.method
        ),
        xaxis_title="latent step",
        yaxis_title="rank",
        **WHITE,
    )
    fig.update_yaxes(autorange="reversed")
    return fig


def superposition_figure(
    sup: Superposition, example: int = 0, step: int | None = None
) -> go.Figure:
    """Bars of the weights at ``step``, or stacked bars over all steps (``step=None``)."""
    what = (
        "fed superposition"
        if sup.source == "fed"
        else "LM-head top-k (this rule feeds no superposition)"
    )
    steps = np.nonzero(sup.valid[example])[0]
    if step is not None:
        w, tx = sup.weights[example, step], sup.text[example, step]
        fig = go.Figure(
            go.Bar(
                x=[f"{s} " if s in tx[:i] else s for i, s in enumerate(tx)],
                y=w,
                text=list(tx),
                textposition="outside",
                hovertemplate="token %{x}<br>weight %{y:.4f}<extra></extra>",
            )
        )
        fig.update_layout(
            title=titled(f"{what}, example {example}, read {step}", sup.method),
            xaxis_title="token",
            yaxis_title="weight",
            **WHITE,
        )
        return fig
    labels = read_labels(len(sup.valid[example]), sup.fed[example])
    x = [labels[t] for t in steps]
    fig = go.Figure()
    for r in range(sup.ids.shape[2]):
        fig.add_trace(
            go.Bar(
                x=x,
                y=sup.weights[example, steps, r],
                name=f"#{r + 1}",
                text=sup.text[example, steps, r],
                textposition="inside",
                insidetextanchor="middle",
                showlegend=False,
                hovertemplate="step %{x}<br>token %{text}<br>weight %{y:.4f}<extra>#"
                + str(r + 1)
                + "</extra>",
            )
        )
    fig.update_layout(
        barmode="stack",
        title=titled(f"{what} per latent step, example {example}", sup.method),
        xaxis_title="latent step",
        yaxis_title="weight",
        **WHITE,
    )
    return fig


def comparison_figure(
    lines: Sequence[tuple[str, np.ndarray, Sequence[str]]],
    name: str,
    *,
    example: int = 0,
    question: str | None = None,
    log_y: bool = False,
) -> go.Figure:
    """One statistic of several methods on the same example, one line per method.

    Args:
        lines: ``(method, values over the example's reads, read labels)`` per method.
        name: The statistic's name (axis and title).
        example: The example's row (title).
        question: The example's question (title), when known.
        log_y: Logarithmic y axis (ranks).
    """
    fig = go.Figure()
    for method, y, labels in lines:
        fig.add_trace(
            go.Scatter(
                x=list(range(len(y))),
                y=y,
                mode="lines+markers",
                name=method,
                customdata=list(labels),
                hovertemplate=method + "<br>read %{x} (%{customdata})<br>%{y:.4g}<extra></extra>",
            )
        )
    title = f"{name} per latent step, example {example}" + (f": {question}" if question else "")
    fig.update_layout(
        title=title,
        xaxis_title=STEP_AXIS_TITLE,
        yaxis_title=name,
        **WHITE,
        legend_title_text="method",
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig
