"""Diagnostics of a Gaussian latent policy (ATP-Latent's CVAE): pure functions of a trace.

A run of the engine with a :class:`~workbench.engine.feedback.GaussianFeedback` rule records
``mu`` and ``logvar`` per latent (``trace.latent_stats``). From it: the KL to N(0, I) per latent
position (is the posterior collapsing onto the prior, or carrying information?), sigma per
position, latents used per example (the stop head's decisions), and a PCA of ``mu`` coloured by
the step each latent stands for. Tables are DataFrames, figures ``go.Figure``.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import torch

from workbench.engine.feedback import gaussian_kl
from workbench.engine.trace import Trace
from workbench.lens.projection import pca


def _gaussian_stats(trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
    if "mu" not in trace.latent_stats or "logvar" not in trace.latent_stats:
        raise ValueError(
            "the trace has no mu / logvar: run a model with a gaussian feedback rule "
            "(e.g. ATP-Latent) with record_trace=True"
        )
    return trace.latent_stats["mu"].float(), trace.latent_stats["logvar"].float()


def kl_per_latent(trace: Trace) -> pd.DataFrame:
    """Per latent position: examples that fed it, mean KL (nats, summed over dimensions), mean
    per-dimension KL and mean sigma, over the examples that fed it."""
    mu, logvar = _gaussian_stats(trace)
    fed = trace.fed[:, : mu.shape[1]].bool()
    kl = gaussian_kl(mu, logvar)  # [B, S, d]
    rows = []
    for t in range(mu.shape[1]):
        m = fed[:, t]
        if not bool(m.any()):
            continue
        rows.append(
            {
                "latent": t,
                "examples": int(m.sum()),
                "kl": float(kl[m, t].sum(-1).mean()),
                "kl_per_dim": float(kl[m, t].mean()),
                "sigma": float((0.5 * logvar[m, t]).exp().mean()),
            }
        )
    return pd.DataFrame(rows, columns=["latent", "examples", "kl", "kl_per_dim", "sigma"])


def kl_figure(table: pd.DataFrame) -> go.Figure:
    """Bars of the KL per latent position (from :func:`kl_per_latent`)."""
    fig = go.Figure(
        go.Bar(
            x=table["latent"],
            y=table["kl"],
            customdata=table[["examples", "sigma"]].to_numpy(),
            hovertemplate="latent %{x}<br>KL %{y:.2f} nats<br>%{customdata[0]} examples"
            "<br>mean sigma %{customdata[1]:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title="KL(q(l_t) || N(0, I)) per latent position",
        xaxis_title="latent position",
        yaxis_title="KL (nats, summed over dimensions)",
        template="plotly_white",
    )
    return fig


def latents_used_figure(n_latent: torch.Tensor, fixed: int | None = None) -> go.Figure:
    """Histogram of latents used per example; ``fixed`` marks a fixed-count method's budget."""
    counts = pd.Series(n_latent.tolist()).value_counts().sort_index()
    fig = go.Figure(go.Bar(x=counts.index, y=counts.values, name="examples"))
    if fixed is not None:
        fig.add_vline(x=fixed, line_dash="dash", annotation_text=f"fixed count {fixed}")
    fig.update_layout(
        title=f"latents used per example (mean {float(n_latent.float().mean()):.2f})",
        xaxis_title="latents used",
        yaxis_title="examples",
        template="plotly_white",
    )
    return fig


def mu_pca(trace: Trace, latents_per_step: int = 1) -> pd.DataFrame:
    """2-D PCA of every fed latent's ``mu``, one row per (example, latent) with its step
    (``latent // latents_per_step``)."""
    mu, _ = _gaussian_stats(trace)
    fed = trace.fed[:, : mu.shape[1]].bool()
    b, t = fed.nonzero(as_tuple=True)
    if len(b) < 2:
        raise ValueError("mu_pca needs at least two fed latents")
    coords, _, _ = pca(mu[b, t], n_components=2)
    return pd.DataFrame(
        {
            "example": b.tolist(),
            "latent": t.tolist(),
            "step": (t // latents_per_step).tolist(),
            "pc1": coords[:, 0],
            "pc2": coords[:, 1],
        }
    )


def mu_pca_figure(points: pd.DataFrame) -> go.Figure:
    """Scatter of :func:`mu_pca`, one colour per step."""
    fig = go.Figure()
    for step, d in points.groupby("step"):
        fig.add_trace(
            go.Scatter(
                x=d["pc1"],
                y=d["pc2"],
                mode="markers",
                name=f"step {step}",
                customdata=d[["example", "latent"]].to_numpy(),
                hovertemplate="example %{customdata[0]}, latent %{customdata[1]}<extra></extra>",
            )
        )
    fig.update_layout(
        title="PCA of the latent means mu, coloured by the step each latent stands for",
        xaxis_title="PC 1",
        yaxis_title="PC 2",
        template="plotly_white",
    )
    return fig


def loss_parts_figure(history: pd.DataFrame, parts=None, x: str = "step") -> go.Figure:
    """Each ``loss_*`` column of one training history against ``x`` (log scale)."""
    parts = parts or [c for c in history.columns if c.startswith("loss_")]
    fig = go.Figure()
    for part in parts:
        d = history[[x, part]].dropna()
        fig.add_trace(go.Scatter(x=d[x], y=d[part], mode="lines", name=part))
    fig.update_layout(
        title="loss parts", xaxis_title=x, yaxis_title="loss", template="plotly_white"
    )
    fig.update_yaxes(type="log")
    return fig
