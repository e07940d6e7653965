"""The standard set of trajectory views, shared by notebook 05, the demo and the CLI.

One place decides which figures make up "the trajectory report" of a method, so the notebook,
``make demo`` and anything else that writes it show the same views under the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.lens.projection import project_latents
from workbench.lens.report import write_trajectory_report
from workbench.lens.trajectory import LatentTrajectory, compare_trajectories

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

__all__ = ["trajectory_of", "trajectory_figures", "write_standard_report"]


def trajectory_of(tm, examples, *, top_k: int = 10) -> LatentTrajectory:
    """Decode a :class:`~workbench.experiment.TrainedModel`'s latents on ``examples`` (logit lens
    included), aligned with the CoT as its method declares (the registry's
    :func:`~workbench.methods.lens_alignment`; a method without one is aligned by step), with
    the method's decoded step texts when it has a step decoder (:func:`~workbench.methods.
    step_texts`)."""
    from workbench.methods import lens_alignment, step_texts

    result = tm.evaluate(examples, record_trace=True, record_hidden=True, top_k=top_k)
    alignment = lens_alignment(tm.method, tm.meta)
    traj = LatentTrajectory.from_eval(result, tm.model, tm.tokenizer, examples, alignment=alignment)
    texts = step_texts(tm, examples)  # per caller's example; the trajectory is in engine order
    if texts is not None:
        traj.decoded_steps = [texts[i] for i in traj.example_index]
        traj.__post_init__()  # pad to the trajectory's reads
    return traj


def trajectory_figures(
    trajectories: Mapping[str, LatentTrajectory],
    method: str,
    *,
    top_k: int = 10,
    example: int = 0,
    projection: str = "pca",
) -> dict[str, go.Figure]:
    """``{section title: figure}`` for ``method``'s trajectory, plus the cross-method views.

    ``trajectories`` maps method names to trajectories built on the same examples; ``method``
    is the one shown in the per-method views. The projection covers every method given.
    """
    if method not in trajectories:
        raise KeyError(f"method={method!r} is not among the trajectories {sorted(trajectories)}")
    traj = trajectories[method]
    if not 0 <= example < traj.num_examples:
        raise IndexError(
            f"example={example} is out of range: the trajectory has {traj.num_examples} examples"
        )
    return {
        "Top-k tokens per latent step": traj.top_k(top_k).figure(example),
        "Logit lens: entropy": traj.layer_entropy().figure(example),
        "Logit lens: CoT-target probability": traj.layer_target_probability().figure(example),
        "Superposition": traj.superposition().figure(example),
        "CoT-target rank per latent": traj.target_rank().figure(),
        "Methods compared": compare_trajectories(
            trajectories, example=example, statistic="answer_probability"
        ),
        "Projection": project_latents(trajectories, method=projection, color_by="step").figure(),
    }


def write_standard_report(
    path: str | Path,
    trajectories: Mapping[str, LatentTrajectory],
    method: str,
    *,
    top_k: int = 10,
    example: int = 0,
    projection: str = "pca",
    collapse_threshold: float = 0.5,
    tables: Mapping | None = None,
) -> Path:
    """Write :func:`trajectory_figures` and the per-step summary as one offline HTML file."""
    figures = trajectory_figures(
        trajectories, method, top_k=top_k, example=example, projection=projection
    )
    all_tables = {
        "Per-step summary": trajectories[method].summary(threshold=collapse_threshold),
        **(tables or {}),
    }
    return write_trajectory_report(
        path, figures, title=f"Latent trajectories: {method}", tables=all_tables
    )
