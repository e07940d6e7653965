"""Tiny recursive reasoners on Sudoku: TRM and Deep Improvement Supervision (RESEARCH Part B 4).

* :mod:`workbench.recursive.model`: :class:`RecursiveReasoner` (one shared tiny net, the (y, z)
  carry, T/n/N_sup, Q-head, DIS timestep embedding), its config and save/load;
* :mod:`workbench.recursive.train`: the deep-supervision loop (persistent batch, halting with
  exploration, EMA, DIS linear-path targets);
* :mod:`workbench.recursive.diagnostics`: per-step accuracy, advantage margin, NFP.

The puzzles come from :mod:`workbench.data.tasks.sudoku`.
"""

from workbench.recursive.model import (
    RecursiveConfig,
    RecursiveReasoner,
    load_model,
    preset,
    save_model,
)
from workbench.recursive.train import RecursiveTrainer, TrainConfig, linear_path

__all__ = [
    "RecursiveConfig",
    "RecursiveReasoner",
    "RecursiveTrainer",
    "TrainConfig",
    "linear_path",
    "load_model",
    "preset",
    "save_model",
]
