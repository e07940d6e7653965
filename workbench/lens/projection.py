"""Project latent states of many examples (and methods) into 2-D, and draw them as paths.

Every valid read of every example is one point: its hidden state at a chosen layer (the
state a Coconut latent is made of) or the embedding actually fed after it. Points of one
example are joined in step order, so a figure shows trajectories through the projection.

* ``method="pca"`` (default): exact PCA through an SVD of the centred points (float64). Sign
  convention: each component is flipped so that its largest-magnitude loading is positive,
  so the same points always give the same picture.
* ``method="umap"``: UMAP from the optional extra ``umap-learn`` (``pip install
  'workbench[umap]'``), imported lazily, with a fixed ``random_state`` (reproducible, single
  threaded). The first call JIT-compiles for 15-30 s on a small CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from workbench.lens.trajectory import LatentTrajectory
from workbench.viz.theme import WHITE

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

    from workbench.engine.trace import Trace

__all__ = [
    "LatentProjection",
    "project_latents",
    "pca",
    "PROJECTION_METHODS",
    "COLOR_BY",
    "UMAP_INSTALL_HINT",
]

PROJECTION_METHODS = ("pca", "umap")
COLOR_BY = ("step", "correct", "method", "example")
UMAP_INSTALL_HINT = (
    "UMAP projections need the optional extra 'umap-learn': pip install 'workbench[umap]' "
    "(or pip install umap-learn); method='pca' needs nothing more"
)


@dataclass
class LatentProjection:
    """2-D (or k-D) coordinates of latent states plus one metadata row per point.

    Attributes:
        coords: ``[N, k]`` coordinates.
        frame: One row per point: ``method``, ``example``, ``step``, ``label``, ``correct``,
            ``top1_token`` (when known) and the coordinates ``x``, ``y`` (``c0..`` beyond 2).
        method: ``"pca"`` or ``"umap"``.
        state: ``"hidden"`` (layer ``layer``) or ``"embeds"``.
        layer: Hidden-state layer index used (``None`` for embeds).
        explained_variance_ratio: PCA only, per component.
        color_by: Default colouring of :meth:`figure`.
        meta: Anything else (UMAP settings...).
    """

    coords: np.ndarray
    frame: pd.DataFrame
    method: str = "pca"
    state: str = "hidden"
    layer: int | None = -1
    explained_variance_ratio: np.ndarray | None = None
    color_by: str = "step"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.coords.ndim != 2 or self.coords.shape[0] != len(self.frame):
            raise ValueError(
                f"coords {self.coords.shape} must be [N, k] with N = {len(self.frame)} rows"
            )
        if self.color_by not in COLOR_BY:
            raise ValueError(f"color_by={self.color_by!r}; choose one of {COLOR_BY}")

    def axis_titles(self) -> tuple[str, str]:
        """Axis titles (PCA ones carry the explained variance)."""
        if self.method == "pca" and self.explained_variance_ratio is not None:
            ev = self.explained_variance_ratio
            return tuple(
                f"PC{i + 1} ({100 * ev[i]:.1f}%)" if i < len(ev) else f"PC{i + 1}" for i in range(2)
            )
        return (f"{self.method.upper()} 1", f"{self.method.upper()} 2")

    def figure(
        self, color_by: str | None = None, lines: bool = True, max_lines: int = 500
    ) -> go.Figure:
        """Scatter of the points coloured by step / correctness / method / example, with paths.

        Args:
            color_by: ``"step"`` (continuous colour scale), ``"correct"``, ``"method"`` or
                ``"example"``; default: the one chosen at projection time.
            lines: Join each example's points in step order (one grey line trace per method).
            max_lines: Draw paths for at most this many examples per method.
        """
        import plotly.graph_objects as go

        color_by = color_by or self.color_by
        if color_by not in COLOR_BY:
            raise ValueError(f"color_by={color_by!r}; choose one of {COLOR_BY}")
        df = self.frame
        fig = go.Figure()
        methods = list(dict.fromkeys(df["method"]))
        dashes = ["solid", "dot", "dash", "dashdot", "longdash"]
        if lines:
            for i, m in enumerate(methods):
                xs: list[Any] = []
                ys: list[Any] = []
                sub = df[df["method"] == m]
                for j, (_, g) in enumerate(sub.groupby("example", sort=True)):
                    if j >= max_lines:
                        break
                    g = g.sort_values("step")
                    xs += g["x"].tolist() + [None]
                    ys += g["y"].tolist() + [None]
                fig.add_trace(
                    go.Scatter(
                        x=xs,
                        y=ys,
                        mode="lines",
                        name=f"paths ({m})" if m else "paths",
                        line=dict(color="rgba(120,120,120,0.35)", width=1, dash=dashes[i % 5]),
                        hoverinfo="skip",
                        showlegend=len(methods) > 1,
                    )
                )
        hover = (
            "%{customdata[0]} ex %{customdata[1]} step %{customdata[2]} (%{customdata[3]})"
            "<br>top-1 %{customdata[4]}<br>correct %{customdata[5]}<extra></extra>"
        )

        def custom(g):
            return np.stack(
                [
                    g["method"].astype(str),
                    g["example"],
                    g["step"],
                    g["label"],
                    g["top1_token"].astype(str),
                    g["correct"].astype(str),
                ],
                axis=-1,
            )

        if color_by == "step":
            fig.add_trace(
                go.Scatter(
                    x=df["x"],
                    y=df["y"],
                    mode="markers",
                    name="latent step",
                    customdata=custom(df),
                    hovertemplate=hover,
                    marker=dict(
                        color=df["step"],
                        colorscale="Viridis",
                        size=7,
                        showscale=True,
                        colorbar=dict(title=dict(text="step")),
                        line=dict(width=0.5, color="white"),
                    ),
                )
            )
        else:
            key = {"correct": "correct", "method": "method", "example": "example"}[color_by]
            for value, g in df.groupby(key, sort=True, dropna=False):
                fig.add_trace(
                    go.Scatter(
                        x=g["x"],
                        y=g["y"],
                        mode="markers",
                        name=f"{key}={value}",
                        customdata=custom(g),
                        hovertemplate=hover,
                        marker=dict(size=7, line=dict(width=0.5, color="white")),
                    )
                )
        xt, yt = self.axis_titles()
        what = (
            "hidden states" + (f" (layer {self.layer})" if self.layer is not None else "")
            if self.state == "hidden"
            else "fed embeddings"
        )
        fig.update_layout(
            title=f"{self.method.upper()} of latent {what}, coloured by {color_by}",
            xaxis_title=xt,
            yaxis_title=yt,
            **WHITE,
        )
        return fig


def pca(
    x: torch.Tensor | np.ndarray, n_components: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic PCA: ``(coords [N, k], components [k, d], explained_variance_ratio [k])``.

    SVD of the centred data in float64; each component's largest-magnitude loading is made
    positive (the sign convention).
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"PCA needs an [N, d] matrix with N >= 2 points, got {tuple(x.shape)}")
    k = min(n_components, x.shape[0], x.shape[1])
    xc = x - x.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    vh = vh[:k]
    sign = torch.sign(vh.gather(1, vh.abs().argmax(1, keepdim=True)))
    sign[sign == 0] = 1
    vh = vh * sign
    coords = xc @ vh.T
    var = s**2
    ratio = (var[:k] / var.sum()).numpy() if float(var.sum()) > 0 else np.zeros(k)
    if k < n_components:  # fewer points/dims than components: pad with zeros
        coords = torch.cat(
            [coords, torch.zeros(coords.shape[0], n_components - k, dtype=coords.dtype)], 1
        )
    return coords.numpy(), vh.numpy(), ratio


def _umap(
    x: np.ndarray, n_components: int, n_neighbors: int, random_state: int, **kwargs
) -> np.ndarray:
    try:
        import umap  # noqa: PLC0415  (lazy: heavy, optional)
    except ImportError as e:
        raise ImportError(UMAP_INSTALL_HINT) from e
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"UMAP needs at least 3 points, got {n}")
    if n <= n_neighbors:
        warnings.warn(
            f"UMAP: only {n} points for n_neighbors={n_neighbors}; using n_neighbors={n - 1} "
            "(project more examples, or use method='pca')",
            UserWarning,
            stacklevel=3,
        )
        n_neighbors = n - 1
    reducer = umap.UMAP(
        n_components=n_components, n_neighbors=n_neighbors, random_state=random_state, **kwargs
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def _points_from_trajectory(
    tr: LatentTrajectory, name: str, state: str, layer: int
) -> tuple[np.ndarray, list[dict]]:
    if state == "hidden":
        if tr.hidden_states is None:
            raise ValueError(
                "state='hidden' needs hidden states: build the trajectory from a trace "
                "recorded with "
                "record_hidden=True (and keep_hidden=True), or use state='embeds'"
            )
        vecs = tr.hidden_states[:, :, layer]
        mask = tr.valid
    else:
        if tr.embeds is None:
            raise ValueError("state='embeds' needs the fed embeddings (trace.embeds)")
        vecs, mask = tr.embeds, tr.fed
    b_idx, t_idx = torch.nonzero(mask, as_tuple=True)
    top1 = tr.topk_ids[b_idx, t_idx, 0].tolist()
    top1_text = tr.decode(top1)
    rows = []
    for i, (b, t) in enumerate(zip(b_idx.tolist(), t_idx.tolist(), strict=True)):
        rows.append(
            {
                "method": name,
                "example": b,
                "step": t,
                "label": f"z{t + 1}" if bool(tr.fed[b, t]) else "end",
                "correct": tr.correct[b] if tr.correct is not None else None,
                "top1_token": top1_text[i],
                "question": tr.questions[b] if tr.questions is not None else None,
            }
        )
    return vecs[b_idx, t_idx].double().numpy(), rows


def _points_from_trace(
    trace: Trace, name: str, state: str, layer: int
) -> tuple[np.ndarray, list[dict]]:
    B, S = trace.fed.shape
    valid = torch.arange(S)[None, :] <= trace.n_latent[:, None]
    if state == "hidden":
        if trace.hidden_states is None:
            raise ValueError(
                "state='hidden' needs a trace recorded with record_hidden=True; "
                "or use state='embeds'"
            )
        vecs, mask = trace.hidden_states[:, :, layer], valid
    else:
        vecs, mask = trace.embeds, trace.fed & valid
    idx = trace.meta.get("example_index")
    b_idx, t_idx = torch.nonzero(mask, as_tuple=True)
    top1 = trace.topk_ids[b_idx, t_idx, 0].tolist()
    rows = [
        {
            "method": name,
            "example": int(idx[b]) if idx is not None else b,
            "step": t,
            "label": f"z{t + 1}" if bool(trace.fed[b, t]) else "end",
            "correct": None,
            "top1_token": str(top1[i]),
            "question": None,
        }
        for i, (b, t) in enumerate(zip(b_idx.tolist(), t_idx.tolist(), strict=True))
    ]
    return vecs[b_idx, t_idx].double().numpy(), rows


def _sources(source) -> list[tuple[str, Any]]:
    from workbench.engine.trace import Trace

    if isinstance(source, (LatentTrajectory, Trace)):
        return [(getattr(source, "method", "") or "", source)]
    if isinstance(source, Mapping):
        return [(str(k), v) for k, v in source.items()]
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        return [(getattr(s, "method", "") or f"run {i}", s) for i, s in enumerate(source)]
    raise TypeError(
        f"project_latents takes a LatentTrajectory, a Trace, a list of them or a dict "
        f"{{name: trajectory}}; got {type(source).__name__}"
    )


def project_latents(
    source,
    method: str = "pca",
    color_by: str = "step",
    *,
    state: str = "auto",
    layer: int = -1,
    n_components: int = 2,
    n_neighbors: int = 15,
    random_state: int = 0,
    **umap_kwargs,
) -> LatentProjection:
    """Project the latent states of one or several runs into a common 2-D space.

    Args:
        source: A :class:`LatentTrajectory`, an engine :class:`~workbench.engine.trace.Trace`,
            a list of them, or ``{method name: trajectory}`` (fitted jointly, so methods share
            the axes).
        method: ``"pca"`` (default) or ``"umap"`` (optional extra ``umap-learn``).
        color_by: ``"step"``, ``"correct"``, ``"method"`` or ``"example"`` (figure default).
        state: ``"hidden"`` (hidden state at ``layer``, every valid read), ``"embeds"`` (the
            embedding fed after each read), or ``"auto"``: hidden when recorded, else embeds.
        layer: Hidden-state layer (``-1``: the last, after the final norm; what Coconut feeds).
        n_components: Output dimensions (figures use the first two).
        n_neighbors, random_state, umap_kwargs: UMAP settings (``random_state`` fixed for
            reproducibility; a warning when there are fewer points than ``n_neighbors``).

    Returns:
        A :class:`LatentProjection` whose ``.figure()`` draws points and paths.
    """
    from workbench.engine.trace import Trace

    if method not in PROJECTION_METHODS:
        raise ValueError(f"method={method!r}; choose one of {PROJECTION_METHODS}")
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by={color_by!r}; choose one of {COLOR_BY}")
    if state not in ("auto", "hidden", "embeds"):
        raise ValueError(f"state={state!r}; use 'auto', 'hidden' or 'embeds'")
    srcs = _sources(source)
    if not srcs:
        raise ValueError("project_latents got no trajectories")
    if state == "auto":
        state = (
            "hidden"
            if all(getattr(s, "hidden_states", None) is not None for _, s in srcs)
            else "embeds"
        )
    vecs, rows = [], []
    for name, s in srcs:
        v, r = (_points_from_trace if isinstance(s, Trace) else _points_from_trajectory)(
            s, name, state, layer
        )
        vecs.append(v)
        rows += r
    x = np.concatenate(vecs, 0) if vecs else np.zeros((0, 0))
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 latent states to project, got {x.shape[0]}")
    ratio = None
    meta: dict[str, Any] = {"n_points": int(x.shape[0]), "dim": int(x.shape[1])}
    if method == "pca":
        coords, components, ratio = pca(x, n_components)
        meta["components"] = components
    else:
        coords = _umap(x, n_components, n_neighbors, random_state, **umap_kwargs)
        meta.update(n_neighbors=min(n_neighbors, x.shape[0] - 1), random_state=random_state)
    frame = pd.DataFrame(rows)
    names = ["x", "y"] + [f"c{i}" for i in range(2, n_components)]
    for i, n in enumerate(names[: coords.shape[1]]):
        frame[n] = coords[:, i]
    if "y" not in frame:
        frame["y"] = 0.0
    return LatentProjection(
        coords, frame, method, state, layer if state == "hidden" else None, ratio, color_by, meta
    )
