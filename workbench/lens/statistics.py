"""The statistics a :class:`~workbench.lens.trajectory.LatentTrajectory` returns: data only.

Each is a small dataclass of NumPy arrays over examples ``B`` and reads ``S`` (NaN on padded
steps), with its tables (``to_frame``), per-example views (``example``) and aggregates
(``mean``). Their ``.figure(...)`` methods are thin delegations to the pure figure builders
of :mod:`workbench.viz.trajectory_figures` (imported when called, so the lens never imports
plotly or the viz package on import).

* :class:`StepStatistic`: one number per example and read (entropy, target rank, ...);
* :class:`LayerStatistic`: one number per example, read and layer (the logit lens), with each
  cell's top-1 token;
* :class:`TopKTokens`: the top-k tokens of each read, flagged when they are alignment targets;
* :class:`Superposition`: the token weights a vocabulary feedback rule fed (or the read's
  top-k when the rule feeds none).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

__all__ = [
    "StepStatistic",
    "LayerStatistic",
    "TopKTokens",
    "Superposition",
    "read_labels",
    "quiet_nan",
]


def read_labels(n: int, fed: np.ndarray | None) -> list[str]:
    """Tick labels of reads ``0..n-1``: ``z{t+1}`` when a latent was fed after it, else ``end``."""
    return [f"z{t + 1}" if fed is None or bool(fed[t]) else "end" for t in range(n)]


class quiet_nan:
    """Silence numpy's all-NaN warnings inside a block."""

    def __enter__(self):
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


@dataclass
class StepStatistic:
    """One number per example and step (``values[b, t]``, NaN on padded steps).

    Attributes:
        name: What the values are (figure titles, column names).
        values: ``[B, S]`` array.
        valid: ``[B, S]`` bool, the steps each example really has.
        fed: ``[B, S]`` bool, a latent was fed after the read.
        units: Axis label suffix, e.g. ``"nats"``.
        method: Name of the method (legend).
    """

    name: str
    values: np.ndarray
    valid: np.ndarray
    fed: np.ndarray
    units: str = ""
    method: str = ""

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.shape != self.valid.shape or self.fed.shape != self.valid.shape:
            raise ValueError(
                f"{self.name}: values {self.values.shape}, valid {self.valid.shape} and fed "
                f"{self.fed.shape} must all be [B, S]"
            )
        self.values = np.where(self.valid, self.values, np.nan)

    @property
    def label(self) -> str:
        """``name (units)``, or the name alone (axis titles)."""
        return f"{self.name} ({self.units})" if self.units else self.name

    def example(self, b: int) -> np.ndarray:
        """Values of example ``b`` on its valid steps."""
        return self.values[b][self.valid[b]]

    def mean(self) -> np.ndarray:
        """Mean over examples per step (``[S]``; NaN values are skipped, NaN where none is left)."""
        with np.errstate(all="ignore"):
            counts = (~np.isnan(self.values)).sum(0)
            sums = np.nansum(self.values, 0)
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    def std(self) -> np.ndarray:
        """Standard deviation over examples per step (``[S]``, NaN where no value is left)."""
        with np.errstate(all="ignore"), quiet_nan():
            return np.nanstd(self.values, 0)

    def count(self) -> np.ndarray:
        """Examples with a value per step (``[S]``)."""
        return (~np.isnan(self.values)).sum(0)

    def to_frame(self) -> pd.DataFrame:
        """Long table: example, step, value (valid steps only)."""
        b, t = np.nonzero(self.valid)
        return pd.DataFrame({"example": b, "step": t, self.name: self.values[b, t]})

    def figure(self, example: int | None = None) -> go.Figure:
        """Line over steps for one example, or the mean +- std over examples (``example=None``).

        See :func:`workbench.viz.trajectory_figures.step_statistic_figure`.
        """
        from workbench.viz.trajectory_figures import step_statistic_figure

        return step_statistic_figure(self, example)


@dataclass
class LayerStatistic:
    """One number per example, step and layer (``values[b, t, l]``), with each cell's top-1 token.

    Attributes:
        name: What the values are.
        values: ``[B, S, L+1]`` array (layer 0 is the embedding output).
        top_tokens: ``[B, S, L+1]`` object array of the logit lens's top-1 token text.
        valid: ``[B, S]`` bool.
        fed: ``[B, S]`` bool.
        units: Colour-bar label suffix.
        method: Method name.
    """

    name: str
    values: np.ndarray
    top_tokens: np.ndarray
    valid: np.ndarray
    fed: np.ndarray
    units: str = ""
    method: str = ""

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.shape[:2] != self.valid.shape or self.top_tokens.shape != self.values.shape:
            raise ValueError(
                f"{self.name}: values {self.values.shape}, top_tokens {self.top_tokens.shape} "
                "must be "
                f"[B, S, L+1] with [B, S] = {self.valid.shape}"
            )
        self.values = np.where(self.valid[..., None], self.values, np.nan)

    @property
    def num_layers(self) -> int:
        """Number of transformer layers ``L`` (the values have ``L + 1`` entries)."""
        return self.values.shape[2] - 1

    @property
    def label(self) -> str:
        """``name (units)``, or the name alone (colour-bar titles)."""
        return f"{self.name} ({self.units})" if self.units else self.name

    def example(self, b: int) -> np.ndarray:
        """``[L+1, n_steps]`` matrix of example ``b`` (layers as rows)."""
        return self.values[b][self.valid[b]].T

    def example_tokens(self, b: int) -> np.ndarray:
        """``[L+1, n_steps]`` top-1 token text of example ``b`` (layers as rows)."""
        return self.top_tokens[b][self.valid[b]].T

    def to_frame(self) -> pd.DataFrame:
        """Long table: example, step, layer, value, top1_token (valid steps only)."""
        b, t = np.nonzero(self.valid)
        n_layers = self.values.shape[2]
        return pd.DataFrame(
            {
                "example": np.repeat(b, n_layers),
                "step": np.repeat(t, n_layers),
                "layer": np.tile(np.arange(n_layers), len(b)),
                self.name: self.values[b, t].reshape(-1),
                "top1_token": self.top_tokens[b, t].reshape(-1),
            }
        )

    def figure(self, example: int = 0, show_tokens: bool = True) -> go.Figure:
        """Layer x step heatmap of example ``example``; cells show the logit lens's top-1 token.

        See :func:`workbench.viz.trajectory_figures.layer_statistic_figure`.
        """
        from workbench.viz.trajectory_figures import layer_statistic_figure

        return layer_statistic_figure(self, example, show_tokens)


@dataclass
class TopKTokens:
    """The top-k tokens of each step's distribution (one layer of the logit lens, or the LM head).

    Attributes:
        ids: ``[B, S, k]`` token ids.
        probs: ``[B, S, k]`` probabilities.
        text: ``[B, S, k]`` object array of token text.
        is_target: ``[B, S, k]`` bool, the token is one of the step's alignment targets.
        valid: ``[B, S]`` bool.
        fed: ``[B, S]`` bool.
        layer: Logit-lens layer (``None``: the LM-head read).
        method: Method name.
    """

    ids: np.ndarray
    probs: np.ndarray
    text: np.ndarray
    is_target: np.ndarray
    valid: np.ndarray
    fed: np.ndarray
    layer: int | None = None
    method: str = ""

    def __post_init__(self) -> None:
        if not (self.ids.shape == self.probs.shape == self.text.shape == self.is_target.shape):
            raise ValueError(
                "TopKTokens: ids, probs, text and is_target must share a [B, S, k] shape"
            )
        if self.ids.shape[:2] != self.valid.shape:
            raise ValueError(
                f"TopKTokens: [B, S] of ids {self.ids.shape[:2]} != valid {self.valid.shape}"
            )

    @property
    def k(self) -> int:
        """Tokens per step."""
        return self.ids.shape[2]

    def to_frame(self, example: int | None = None) -> pd.DataFrame:
        """Long table: example, step, rank, token_id, token, prob, is_target (valid steps)."""
        rows = []
        for b in range(self.ids.shape[0]) if example is None else [example]:
            for t in np.nonzero(self.valid[b])[0]:
                for r in range(self.k):
                    rows.append(
                        {
                            "example": b,
                            "step": int(t),
                            "rank": r + 1,
                            "token_id": int(self.ids[b, t, r]),
                            "token": self.text[b, t, r],
                            "prob": float(self.probs[b, t, r]),
                            "is_target": bool(self.is_target[b, t, r]),
                        }
                    )
        return pd.DataFrame(rows)

    def figure(self, example: int = 0, highlight_targets: bool = True) -> go.Figure:
        """Heatmap: steps as columns, ranks 1..k as rows, colour = probability, cells = token text.

        Target tokens (the CoT step the latent replaced) are drawn bold. See
        :func:`workbench.viz.trajectory_figures.top_k_figure`.
        """
        from workbench.viz.trajectory_figures import top_k_figure

        return top_k_figure(self, example, highlight_targets)


@dataclass
class Superposition:
    """Token weights per step: what a vocabulary rule fed, or the read's top-k when it feeds none.

    Attributes:
        ids: ``[B, S, k]`` token ids.
        weights: ``[B, S, k]`` mixing weights (they sum to 1 over k for fed superpositions).
        text: ``[B, S, k]`` token text.
        valid: ``[B, S]`` bool: steps to draw (fed steps for ``source="fed"``).
        fed: ``[B, S]`` bool.
        source: ``"fed"`` (weights actually fed) or ``"read"`` (LM-head top-k).
        method: Method name.
    """

    ids: np.ndarray
    weights: np.ndarray
    text: np.ndarray
    valid: np.ndarray
    fed: np.ndarray
    source: str = "fed"
    method: str = ""

    def to_frame(self, example: int | None = None) -> pd.DataFrame:
        """Long table: example, step, rank, token_id, token, weight (steps in ``valid``)."""
        rows = []
        for b in range(self.ids.shape[0]) if example is None else [example]:
            for t in np.nonzero(self.valid[b])[0]:
                for r in range(self.ids.shape[2]):
                    rows.append(
                        {
                            "example": b,
                            "step": int(t),
                            "rank": r + 1,
                            "token_id": int(self.ids[b, t, r]),
                            "token": self.text[b, t, r],
                            "weight": float(self.weights[b, t, r]),
                        }
                    )
        return pd.DataFrame(rows)

    def figure(self, example: int = 0, step: int | None = None) -> go.Figure:
        """Bars of the weights at ``step``, or stacked bars over all steps (``step=None``).

        See :func:`workbench.viz.trajectory_figures.superposition_figure`.
        """
        from workbench.viz.trajectory_figures import superposition_figure

        return superposition_figure(self, example, step)
