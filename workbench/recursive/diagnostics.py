"""Per-supervision-step diagnostics of a recursive reasoner: is each step useful compute?

RESEARCH Part B 4.2(b) and 4.3 step 4. For every supervision step s of an evaluation rollout
(all ``n_sup`` steps, no halting) this measures cell accuracy (on the blank cells) and exact
accuracy, the accuracy gain over step s-1, and the advantage margin of the step's residual
Δℓ = ℓ_c - ℓ_u, where ℓ_u is the readout before the step and ℓ_c the one after it::

    margin_s = Δℓ[y*] - E_{a ~ softmax(ℓ_c)} Δℓ[a]        (mean over blank cells; w = 1)

A non-positive margin means the step did not push the correct digit up more than the policy's
average: "dead compute". The margin is a slope: with L(w) the CE of ℓ_u + w Δℓ against y*,
margin(w) = -dL/dw, and L is convex in w, so ``margin(1) <= L(0) - L(1) <= margin(0)`` (cell by
cell and on the mean). :func:`per_step` therefore also reports ``margin_w0`` (the slope at the
reference policy π_u) and ``loss_drop`` = L(0) - L(1), the CE the step actually removed. A step
with margin(1) < 0 < loss_drop did help: it overshoots, and the loss-optimal guidance is below 1
(the w-sweep shows it); only margin_w0 <= 0 means that no w > 0 of the residual helps.
It also counts forward passes of the net (NFP) per example, with and without the Q-head's
halting, and sweeps the guidance weight w of ℓ_u + w Δℓ at the last step.
Deviation from RESEARCH 4.3: the readouts are per supervision step (ℓ_u is the previous step's
ℓ_c), not per inner recursion. Everything returns a DataFrame or a plotly figure;
:func:`grid_figure` draws one puzzle's prediction and confidence (the scrubber's picture,
:mod:`workbench.recursive.widget`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
import torch

from workbench.recursive.model import RecursiveReasoner, Rollout


def _batches(puzzles: torch.Tensor, batch_size: int):
    for i in range(0, len(puzzles), batch_size):
        yield i, puzzles[i : i + batch_size]


def advantage_margin(
    prev: torch.Tensor, cur: torch.Tensor, target: torch.Tensor, w: float = 1.0
) -> torch.Tensor:
    """Δℓ[y*] - E_{π_w}[Δℓ] per cell, π_w = softmax(prev + w Δℓ): ``prev``/``cur`` [..., vocab],
    ``target`` [...]. The default w = 1 takes the expectation under the model's own policy."""
    delta = cur - prev
    expected = ((prev + w * delta).softmax(-1) * delta).sum(-1)
    return delta.gather(-1, target[..., None]).squeeze(-1) - expected


def loss_drop(prev: torch.Tensor, cur: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE(prev, y*) - CE(cur, y*) per cell: how much cross-entropy the step removed."""
    t = target[..., None]
    return (cur.log_softmax(-1).gather(-1, t) - prev.log_softmax(-1).gather(-1, t)).squeeze(-1)


def _blank_mean(per_cell: torch.Tensor, blank: torch.Tensor, n_blank: torch.Tensor) -> torch.Tensor:
    """[K, B, cells] -> [K+1, B]: the mean over blank cells, NaN for step 0."""
    nan = torch.full((1, per_cell.shape[1]), float("nan"))
    return torch.cat([nan, (per_cell * blank).sum(-1) / n_blank])


def per_step(
    model: RecursiveReasoner,
    puzzles: torch.Tensor,
    solutions: torch.Tensor,
    batch_size: int = 256,
) -> pd.DataFrame:
    """One row per (example, step), step 0 being the initial carry's readout.

    Columns: example, step, cell_acc (blank cells), exact, margin (w = 1), margin_w0 and
    loss_drop (each the mean over blank cells; NaN at step 0), q_halt (NaN without a Q-head or
    at step 0), nfp (cumulative net calls).
    """
    frames = []
    nfp = model.cfg.nfp_per_step
    for start, batch in _batches(puzzles, batch_size):
        sol = solutions[start : start + len(batch)]
        roll: Rollout = model.rollout(batch)
        pred = roll.logits.argmax(-1)  # [K+1, B, cells]
        blank = (batch == 0).float()
        n_blank = blank.sum(1).clamp(min=1)
        right = (pred == sol).float()
        cell_acc = (right * blank).sum(-1) / n_blank
        exact = right.bool().all(-1)
        target = sol.expand(len(roll.logits) - 1, -1, -1)
        prev, cur = roll.logits[:-1], roll.logits[1:]
        margin, margin_w0, drop = (
            _blank_mean(per_cell, blank, n_blank)
            for per_cell in (
                advantage_margin(prev, cur, target),
                advantage_margin(prev, cur, target, w=0.0),
                loss_drop(prev, cur, target),
            )
        )
        q = torch.full_like(cell_acc, float("nan"))
        if roll.q_halt is not None:
            q[1:] = roll.q_halt
        steps = torch.arange(len(roll.logits))[:, None].expand_as(cell_acc)
        frames.append(
            pd.DataFrame(
                {
                    "example": (torch.arange(len(batch)) + start).expand_as(cell_acc).flatten(),
                    "step": steps.flatten(),
                    "cell_acc": cell_acc.flatten(),
                    "exact": exact.flatten(),
                    "margin": margin.flatten(),
                    "margin_w0": margin_w0.flatten(),
                    "loss_drop": drop.flatten(),
                    "q_halt": q.flatten(),
                    "nfp": (steps * nfp).flatten(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True).sort_values(["example", "step"], ignore_index=True)


def step_summary(steps: pd.DataFrame) -> pd.DataFrame:
    """Per step: cell_acc, exact_acc, their gains over the previous step, advantage_margin,
    dead_compute (margin <= 0) and nfp; also margin_w0 and loss_drop when ``steps`` has them."""
    extra = {c: (c, "mean") for c in ("margin_w0", "loss_drop") if c in steps}
    out = (
        steps.groupby("step")
        .agg(
            cell_acc=("cell_acc", "mean"),
            exact_acc=("exact", "mean"),
            advantage_margin=("margin", "mean"),
            nfp=("nfp", "first"),
            **extra,
        )
        .reset_index()
    )
    out["cell_gain"] = out["cell_acc"].diff()
    out["exact_gain"] = out["exact_acc"].diff()
    out["dead_compute"] = out["advantage_margin"] <= 0
    out.loc[out["step"] == 0, "dead_compute"] = False
    cols = ["step", "nfp", "cell_acc", "exact_acc", "cell_gain", "exact_gain"]
    return out[cols + ["advantage_margin", "dead_compute", *extra]]


def nfp_per_example(steps: pd.DataFrame) -> pd.DataFrame:
    """Per example: halt_step (first step with q_halt > 0, else the last), nfp at halting and
    for the full rollout, solved_at (first exactly right step, NaN if none) and exact at halt."""
    s = steps[steps["step"] > 0]
    last = int(s["step"].max())
    per_step_nfp = int(s["nfp"].iloc[0])  # step 1
    halts = s[s["q_halt"] > 0].groupby("example")["step"].min()
    solved = s[s["exact"]].groupby("example")["step"].min()
    out = pd.DataFrame({"example": sorted(s["example"].unique())}).set_index("example")
    out["halt_step"] = halts.reindex(out.index).fillna(last).astype(int)
    out["nfp_halt"] = out["halt_step"] * per_step_nfp
    out["nfp_full"] = last * per_step_nfp
    out["solved_at"] = solved.reindex(out.index)
    exact = s.set_index(["example", "step"])["exact"]
    out["exact_at_halt"] = exact.loc[list(zip(out.index, out["halt_step"], strict=True))].values
    return out.reset_index()


def guidance_sweep(
    model: RecursiveReasoner,
    puzzles: torch.Tensor,
    solutions: torch.Tensor,
    ws: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
    batch_size: int = 256,
) -> pd.DataFrame:
    """Accuracy of ℓ_u + w Δℓ at the last step, for each w (w = 1 is the plain model)."""
    right = torch.zeros(len(ws))
    cells = torch.zeros(len(ws))
    n_blank = 0.0
    for start, batch in _batches(puzzles, batch_size):
        sol = solutions[start : start + len(batch)]
        logits = model.rollout(batch).logits
        ref, cond = logits[-2], logits[-1]
        blank = batch == 0
        n_blank += float(blank.sum())
        for i, w in enumerate(ws):
            ok = (ref + w * (cond - ref)).argmax(-1) == sol
            right[i] += ok.all(1).sum()
            cells[i] += (ok & blank).sum()
    return pd.DataFrame(
        {
            "w": list(ws),
            "cell_acc": (cells / max(n_blank, 1.0)).tolist(),
            "exact_acc": (right / len(puzzles)).tolist(),
        }
    )


def summary(model: RecursiveReasoner, puzzles: torch.Tensor, solutions: torch.Tensor) -> dict:
    """Last-step exact and cell accuracy and NFP per example (full rollout and with halting)."""
    steps = per_step(model, puzzles, solutions)
    last = step_summary(steps).iloc[-1]
    nfp = nfp_per_example(steps)
    return {
        "exact_acc": float(last["exact_acc"]),
        "cell_acc": float(last["cell_acc"]),
        "nfp": int(last["nfp"]),
        "nfp_halt": float(nfp["nfp_halt"].mean()),
    }


def plot_steps(summary_df: pd.DataFrame, title: str = "Per supervision step") -> go.Figure:
    """Cell and exact accuracy per step (left axis) and the advantage margin (right axis);
    dead-compute steps are marked with a red x."""
    fig = go.Figure()
    for col in ("cell_acc", "exact_acc"):
        fig.add_trace(go.Scatter(x=summary_df["step"], y=summary_df[col], name=col))
    fig.add_trace(
        go.Bar(
            x=summary_df["step"],
            y=summary_df["advantage_margin"],
            name="advantage margin",
            yaxis="y2",
            opacity=0.4,
        )
    )
    dead = summary_df[summary_df["dead_compute"]]
    fig.add_trace(
        go.Scatter(
            x=dead["step"],
            y=dead["advantage_margin"],
            mode="markers",
            marker={"symbol": "x", "color": "red", "size": 10},
            name="dead compute",
            yaxis="y2",
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title="supervision step",
        yaxis={"title": "accuracy", "range": [0, 1]},
        yaxis2={"title": "margin", "overlaying": "y", "side": "right"},
    )
    return fig


def plot_nfp(nfp_df: pd.DataFrame, title: str = "Forward passes per example") -> go.Figure:
    """Histogram of NFP at halting, split by whether the example is right at its halt step."""
    fig = go.Figure()
    for ok, name in ((True, "right at halt"), (False, "wrong at halt")):
        part = nfp_df[nfp_df["exact_at_halt"] == ok]
        fig.add_trace(go.Histogram(x=part["nfp_halt"], name=name))
    fig.update_layout(barmode="stack", title=title, xaxis_title="NFP", yaxis_title="examples")
    return fig


def _flat(values, name: str, n_cells: int | None = None) -> list:
    if isinstance(values, str):
        out = [0 if ch == "." else int(ch) for ch in values]
    elif isinstance(values, torch.Tensor):
        out = values.flatten().tolist()
    else:
        out = list(values)
    if n_cells is not None and len(out) != n_cells:
        raise ValueError(f"grid_figure: {name} has {len(out)} cells, expected {n_cells}")
    return out


def grid_figure(
    puzzle,
    prediction,
    confidence,
    solution=None,
    title: str | None = None,
) -> go.Figure:
    """One Sudoku grid: the prediction's digits over a heatmap of per-cell confidence.

    ``puzzle``, ``prediction`` and ``solution`` are ``cells`` digits each (a string like
    ``"1030..."``, a list or a 1-D tensor; 0 = blank), ``confidence`` ``cells`` numbers in [0, 1]
    (e.g. the softmax probability of the predicted digit). Traces, by name:

    * ``"confidence"``: a heatmap (row 0 at the top) of the non-given cells, with their predicted
      digit as text (``·`` for a predicted blank); givens are left grey;
    * ``"givens"``: the givens' digits in bold, one point per given;
    * ``"wrong"``: a red open square on every cell whose prediction differs from ``solution``
      (only when a solution is given; a given the model overwrites counts too).

    Box borders are layout shapes. Points have x = column and y = row.
    """
    p = _flat(puzzle, "puzzle")
    n = len(p)
    size = round(n**0.5)
    if size * size != n:
        raise ValueError(f"grid_figure: {n} cells is not a square grid")
    pred = _flat(prediction, "prediction", n)
    conf = [float(c) for c in _flat(confidence, "confidence", n)]
    sol = _flat(solution, "solution", n) if solution is not None else None

    def rows(values):
        return [values[r * size : (r + 1) * size] for r in range(size)]

    z = [None if p[i] else conf[i] for i in range(n)]
    text = ["" if p[i] else (str(pred[i]) if pred[i] else "·") for i in range(n)]
    fig = go.Figure(
        go.Heatmap(
            z=rows(z),
            text=rows(text),
            texttemplate="%{text}",
            textfont={"size": 22 if size <= 4 else 14},
            zmin=0,
            zmax=1,
            colorscale="Blues",
            colorbar={"title": "confidence"},
            hovertemplate="row %{y}, col %{x}<br>predicted %{text}<br>confidence %{z:.3f}"
            "<extra></extra>",
            name="confidence",
            xgap=1,
            ygap=1,
        )
    )
    given = [i for i in range(n) if p[i]]
    fig.add_trace(
        go.Scatter(
            x=[i % size for i in given],
            y=[i // size for i in given],
            text=[f"<b>{p[i]}</b>" for i in given],
            mode="text",
            textfont={"size": 22 if size <= 4 else 14, "color": "black"},
            hovertemplate="given %{text}<extra></extra>",
            name="givens",
        )
    )
    wrong = [i for i in range(n) if sol is not None and pred[i] != sol[i]]
    fig.add_trace(
        go.Scatter(
            x=[i % size for i in wrong],
            y=[i // size for i in wrong],
            mode="markers",
            marker={
                "symbol": "square-open",
                "color": "#d62728",
                "size": 44 if size <= 4 else 26,
                "line": {"width": 3},
            },
            customdata=[sol[i] for i in wrong] if sol is not None else [],
            hovertemplate="wrong: should be %{customdata}<extra></extra>",
            name="wrong",
        )
    )
    box = round(size**0.5)
    for k in range(0, size + 1, box):
        line = {"color": "black", "width": 3}
        fig.add_shape(type="line", x0=k - 0.5, x1=k - 0.5, y0=-0.5, y1=size - 0.5, line=line)
        fig.add_shape(type="line", y0=k - 0.5, y1=k - 0.5, x0=-0.5, x1=size - 0.5, line=line)
    side = 80 * size if size <= 4 else 50 * size
    fig.update_layout(
        title=title,
        width=side + 160,
        height=side + 80,
        showlegend=False,
        plot_bgcolor="#d9d9d9",
        margin={"l": 20, "r": 20, "t": 50 if title else 20, "b": 20},
        xaxis={
            "showticklabels": False,
            "showgrid": False,
            "zeroline": False,
            "range": [-0.5, size - 0.5],
            "constrain": "domain",
        },  # fmt: skip
        yaxis={
            "showticklabels": False,
            "showgrid": False,
            "zeroline": False,
            "range": [size - 0.5, -0.5],
            "scaleanchor": "x",
        },  # fmt: skip
    )
    return fig


def plot_arms(
    tables: dict[str, pd.DataFrame], y: str = "exact_acc", title: str | None = None
) -> go.Figure:
    """One line per arm of a :func:`step_summary` column ``y`` against the cumulative NFP, so
    arms with different compute per step share one axis (a point per supervision step)."""
    fig = go.Figure()
    for arm, table in tables.items():
        fig.add_trace(
            go.Scatter(
                x=table["nfp"],
                y=table[y],
                mode="lines+markers",
                name=arm,
                customdata=table["step"],
                hovertemplate=f"{arm} step %{{customdata}}<br>NFP %{{x}}<br>{y} %{{y:.3f}}"
                "<extra></extra>",
            )
        )
    fig.update_layout(
        title=title or f"{y} per supervision step",
        xaxis_title="forward passes of the net (NFP, cumulative)",
        yaxis_title=y,
    )
    if y.endswith("_acc"):
        fig.update_yaxes(range=[0, 1.02])
    return fig


def plot_guidance(sweeps: dict[str, pd.DataFrame], title: str = "Guidance sweep") -> go.Figure:
    """Exact (solid) and cell (dotted) accuracy of ℓ_u + w Δℓ against w, one colour per arm."""
    fig = go.Figure()
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
    for k, (arm, df) in enumerate(sweeps.items()):
        c = colors[k % len(colors)]
        fig.add_trace(
            go.Scatter(x=df["w"], y=df["exact_acc"], name=f"{arm} exact", line={"color": c})
        )
        fig.add_trace(
            go.Scatter(
                x=df["w"], y=df["cell_acc"], name=f"{arm} cell", line={"color": c, "dash": "dot"}
            )
        )
    fig.add_vline(x=1.0, line={"color": "grey", "dash": "dash"})
    fig.update_layout(
        title=title,
        xaxis_title="w (1 = the plain model)",
        yaxis={"title": "accuracy", "range": [0, 1.02]},
    )
    return fig


def best_guidance(sweep: pd.DataFrame) -> pd.Series:
    """The row of a :func:`guidance_sweep` with the best exact, then cell, accuracy; ties go to
    the w nearest 1 (the plain model), so a flat sweep reports w = 1."""
    order = sweep.assign(_d=(sweep["w"] - 1.0).abs()).sort_values(
        ["exact_acc", "cell_acc", "_d"], ascending=[False, False, True], kind="stable"
    )
    return order.drop(columns="_d").iloc[0]
