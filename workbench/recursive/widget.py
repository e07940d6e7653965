"""A scrubber over the supervision steps of a recursive reasoner on one Sudoku puzzle.

:class:`RecursionScrubber` runs the model's full rollout once (all ``n_sup`` steps, no
halting), then an ``IntSlider`` picks the step whose readout is drawn by
:func:`workbench.recursive.diagnostics.grid_figure`: the predicted digit of each cell, its
confidence (softmax probability of that digit) as colour, givens in bold on grey, wrong cells
framed in red. Step 0 is the readout of the initial carry, before any reasoning.

Like :class:`workbench.viz.inspector.LatentInspector`, every callback is a plain method:
``scrubber.show(step)`` returns the figure of that step (and moves the slider), setting
``scrubber.slider.value`` calls :meth:`RecursionScrubber.on_step_change`; both work in plain
pytest without a browser. The figure is a ``go.FigureWidget`` updated in place when
``anywidget`` is importable, else a ``go.Figure`` shown through an ``Output`` widget.
"""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go
import torch

from workbench.data.tasks import sudoku
from workbench.recursive.diagnostics import advantage_margin, grid_figure
from workbench.recursive.model import RecursiveReasoner
from workbench.viz.inspector import _mime_bundle, figure_widgets_available

__all__ = ["RecursionScrubber", "StepReadout"]


class StepReadout:
    """Per-step readouts of one puzzle: ``pred`` / ``confidence`` ``[n_sup + 1, cells]``,
    ``margin`` ``[n_sup + 1]`` (NaN at step 0 or without a solution), ``q_halt`` (or None)."""

    def __init__(
        self, model: RecursiveReasoner, puzzle: torch.Tensor, solution: torch.Tensor | None
    ):
        was_training = model.training
        model.eval()
        try:
            roll = model.rollout(puzzle[None])
        finally:
            model.train(was_training)
        logits = roll.logits[:, 0]  # [K+1, cells, vocab]
        probs = logits.softmax(-1)
        self.pred = logits.argmax(-1)
        self.confidence = probs.max(-1).values
        self.margin = torch.full((len(logits),), float("nan"))
        if solution is not None:
            blank = puzzle == 0
            m = advantage_margin(logits[:-1], logits[1:], solution.expand(len(logits) - 1, -1))
            self.margin[1:] = (m * blank).sum(-1) / blank.sum().clamp(min=1)
        self.q_halt = roll.q_halt[:, 0] if roll.q_halt is not None else None

    @property
    def n_steps(self) -> int:
        """Supervision steps (the readouts are 0..n_steps)."""
        return len(self.pred) - 1


def _digits(grid) -> torch.Tensor:
    if isinstance(grid, str):
        return sudoku.encode([grid])[0]
    return torch.as_tensor(grid, dtype=torch.long).flatten()


class RecursionScrubber:
    """Slider over the supervision steps of ``model`` on one ``puzzle``.

    Args:
        model: A :class:`RecursiveReasoner` (any arm).
        puzzle: The puzzle (a grid string or ``cells`` digits, 0 = blank).
        solution: Its solution, to mark wrong cells and compute the advantage margin.
        step: The step shown first (default: the last).
        use_figure_widget: Force ``go.FigureWidget`` (True) or ``go.Figure`` in an ``Output``
            (False); default: FigureWidget when ``anywidget`` is importable.
        name: A label for the status line (e.g. the arm).
    """

    def __init__(
        self,
        model: RecursiveReasoner,
        puzzle,
        solution=None,
        *,
        step: int | None = None,
        use_figure_widget: bool | None = None,
        name: str = "",
    ):
        import ipywidgets as W

        self.puzzle = _digits(puzzle)
        self.solution = _digits(solution) if solution is not None else None
        if len(self.puzzle) != model.cfg.cells:
            raise ValueError(
                f"RecursionScrubber: the puzzle has {len(self.puzzle)} cells, the model "
                f"expects {model.cfg.cells}"
            )
        self.name = name
        self.readout = StepReadout(model, self.puzzle, self.solution)
        self.nfp_per_step = model.cfg.nfp_per_step
        self.use_figure_widget = (
            figure_widgets_available() if use_figure_widget is None else use_figure_widget
        )
        last = self.readout.n_steps
        self.slider = W.IntSlider(
            value=last if step is None else max(0, min(step, last)),
            min=0,
            max=last,
            description="step",
            continuous_update=True,
        )
        self.status = W.HTML(value="")
        self.figure: Any = None
        self.figure_box: Any = None
        self._widget = None
        self.slider.observe(self.on_step_change, names="value")
        self._render(self.slider.value)

    # --- callbacks ---------------------------------------------------------------------------
    @property
    def step(self) -> int:
        """The step shown."""
        return self.slider.value

    def figure_at(self, step: int) -> go.Figure:
        """The pure figure of ``step`` (0 = initial carry, n_sup = final answer)."""
        r = self.readout
        return grid_figure(
            self.puzzle, r.pred[step], r.confidence[step], self.solution, title=self.describe(step)
        )

    def describe(self, step: int) -> str:
        """One line about ``step``: cells right, margin, q_halt, NFP so far."""
        r = self.readout
        parts = [f"{self.name} step {step}/{r.n_steps}".strip()]
        blank = self.puzzle == 0
        if self.solution is not None:
            right = int(((r.pred[step] == self.solution) & blank).sum())
            parts.append(f"{right}/{int(blank.sum())} blanks right")
            if bool((r.pred[step] == self.solution).all()):
                parts.append("solved")
        if step > 0 and r.margin[step] == r.margin[step]:
            parts.append(f"margin {float(r.margin[step]):+.3f}")
        if step > 0 and r.q_halt is not None:
            parts.append(f"q_halt {float(r.q_halt[step - 1]):+.2f}")
        parts.append(f"NFP {step * self.nfp_per_step}")
        return " · ".join(parts)

    def show(self, step: int) -> go.Figure:
        """Move to ``step`` (clamped to 0..n_sup) and return its figure (the one displayed)."""
        step = max(0, min(int(step), self.readout.n_steps))
        if step != self.slider.value:
            self.slider.value = step  # calls on_step_change -> _render
        else:
            self._render(step)
        return self.figure

    def on_step_change(self, change: dict) -> None:
        """``IntSlider.observe`` callback."""
        self._render(change["new"])

    def _render(self, step: int) -> None:
        import ipywidgets as W

        fig = self.figure_at(step)
        self.status.value = html.escape(self.describe(step))
        if self.use_figure_widget:
            if self.figure is None:
                self.figure = self.figure_box = go.FigureWidget(fig)
                return
            with self.figure.batch_update():  # same traces at every step: update in place
                for old, new in zip(self.figure.data, fig.data, strict=True):
                    old.update(new.to_plotly_json(), overwrite=True)
                self.figure.layout = fig.layout
            return
        self.figure = fig
        if self.figure_box is None:
            self.figure_box = W.Output()
        self.figure_box.outputs = (_mime_bundle(fig),)

    # --- display -----------------------------------------------------------------------------
    @property
    def widget(self):
        """The top-level ``VBox``: slider, status line, figure."""
        if self._widget is None:
            import ipywidgets as W

            self._widget = W.VBox([self.slider, self.status, self.figure_box])
        return self._widget

    def display(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _ipython_display_(self) -> None:
        self.display()
