"""What an RL run did: reward curves, clipping, and how much a group explores.

Pure functions: a training history (``log_history`` as a DataFrame) or a batch of rollouts in,
a DataFrame or a ``go.Figure`` out.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import torch


def distinct_per_group(rollouts, num_generations: int, decimals: int = 4) -> pd.DataFrame:
    """Distinct trajectories in each group of ``num_generations`` rollouts of one question.

    Two rollouts are the same trajectory when their latent actions (Gaussian latents or soft
    tokens, rounded to ``decimals``) and their sampled tokens agree. One per group means the
    group cannot compare anything (greedy latent rollouts); GRPO needs more.
    """
    parts = []
    for name in ("latents", "soft_probs"):
        x = getattr(rollouts, name, None)
        if x is not None and x.numel():
            parts.append(x.flatten(1).float().round(decimals=decimals))
    tokens = getattr(rollouts, "tokens", None)
    if tokens is None:
        tokens = rollouts.answer
    parts.append(tokens.float())
    keys = torch.cat(parts, 1)
    G = num_generations
    rows = []
    for g in range(keys.shape[0] // G):
        group = keys[g * G : (g + 1) * G]
        rows.append({"question": g, "distinct": len({tuple(r.tolist()) for r in group})})
    return pd.DataFrame(rows, columns=["question", "distinct"])


def reward_curves(histories: dict[str, pd.DataFrame]) -> go.Figure:
    """Mean reward per step with a band of the mean within-group std, one colour per run."""
    fig = go.Figure()
    for name, h in histories.items():
        d = h[["step", "reward", "reward_std"]].dropna()
        fig.add_trace(go.Scatter(x=d["step"], y=d["reward"], mode="lines+markers", name=name))
        band_x = list(d["step"]) + list(d["step"])[::-1]
        band_y = list(d["reward"] + d["reward_std"]) + list(d["reward"] - d["reward_std"])[::-1]
        fig.add_trace(
            go.Scatter(
                x=band_x,
                y=band_y,
                fill="toself",
                opacity=0.2,
                showlegend=False,
                line={"width": 0},
                hoverinfo="skip",
                name=f"{name} std",
            )
        )
    fig.update_layout(
        title="reward per step (band: mean within-group std)",
        xaxis_title="step",
        yaxis_title="reward",
        template="plotly_white",
    )
    return fig


def rl_curves(
    histories: dict[str, pd.DataFrame], metrics=("clip_ratio/region_mean", "kl")
) -> go.Figure:
    """Each of ``metrics`` per step (those a run logged), one line per run and metric."""
    fig = go.Figure()
    for name, h in histories.items():
        for m in metrics:
            if m in h:
                d = h[["step", m]].dropna()
                fig.add_trace(go.Scatter(x=d["step"], y=d[m], mode="lines", name=f"{name}: {m}"))
    fig.update_layout(title="clipping and KL per step", xaxis_title="step", template="plotly_white")
    return fig
