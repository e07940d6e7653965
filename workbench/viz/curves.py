"""Figures of training and results: pure functions that return ``go.Figure``."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go


def learning_curves(
    histories: dict[str, pd.DataFrame],
    metric: str = "loss",
    x: str = "step",
    title: str | None = None,
) -> go.Figure:
    """One line per run of ``metric`` against ``x`` (rows without the metric are skipped)."""
    fig = go.Figure()
    for name, h in histories.items():
        if h is None or metric not in h:
            continue
        d = h[[x, metric]].dropna()
        fig.add_trace(
            go.Scatter(
                x=d[x], y=d[metric], mode="lines+markers" if len(d) < 30 else "lines", name=name
            )
        )
    fig.update_layout(
        title=title or f"{metric} vs {x}",
        xaxis_title=x,
        yaxis_title=metric,
        template="plotly_white",
    )
    if metric == "loss":
        fig.update_yaxes(type="log")
    return fig


def accuracy_vs_length(results: pd.DataFrame, length: str = "reasoning_positions") -> go.Figure:
    """Accuracy against mean reasoning length, one labelled point per method.

    The trade-off view.
    """
    fig = go.Figure(
        go.Scatter(
            x=results[length],
            y=results["accuracy"],
            mode="markers+text",
            text=results["method"],
            textposition="top center",
            marker=dict(size=14),
            hovertemplate="%{text}<br>accuracy %{y:.3f}<br>" + length + " %{x:.1f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"accuracy vs {length}",
        xaxis_title=f"mean {length}",
        yaxis_title="exact-match accuracy",
        yaxis_range=[-0.05, 1.05],
        template="plotly_white",
    )
    return fig


def results_bars(results: pd.DataFrame, columns=("accuracy",)) -> go.Figure:
    """Grouped bars of summary columns per method."""
    fig = go.Figure([go.Bar(name=c, x=results["method"], y=results[c]) for c in columns])
    fig.update_layout(barmode="group", template="plotly_white", title=", ".join(columns))
    return fig
