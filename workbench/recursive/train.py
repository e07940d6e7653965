"""Deep-supervision training of a :class:`RecursiveReasoner`, TRM- or DIS-style.

RESEARCH Part B 4.1(b) (TRM) and 4.2(b) (DIS), at the CPU scale of 4.3. The loop keeps TRM's
persistent batch: each row carries its own (y, z), input tokens and step count; one optimizer
step is one supervision step of every row, with the carry detached in between. Rows that halt
(the Q-head says so, or they reached ``n_sup``) are replaced by fresh, freshly augmented
puzzles, so one batch mixes supervision depths. Loss per step:

* TRM: mean cell CE against the solution + ``halt_loss_weight`` * BCE(q_halt, exactly right);
  during training a row halts when ``q_halt > 0``, except that with probability
  ``halt_explore_prob`` it must first run a random 2..n_sup steps (exploration);
* DIS: mean cell CE against the intermediate target of the row's step (:func:`linear_path`),
  no halting; the row's next input is its own argmax prediction.

EMA weights (``ema_decay``) are the ones :attr:`RecursiveTrainer.eval_model` returns and
:meth:`RecursiveTrainer.save` writes.

Deviations from RESEARCH 4.1-4.2: AdamW instead of AdamATan2; softmax CE in float32 instead of
stablemax in float64; no bf16 (``TrainConfig.device`` puts the model and the batch on a GPU, in
fp32); examples are drawn with replacement rather than by epochs; the DIS path schedule reveals
``max(s, floor(s * n_diff / n_sup))`` cells at step s (capped at n_diff), so that every step
moves strictly closer even when a puzzle has fewer blanks than n_sup (the DIS code's ``floor``
alone would repeat a target); a row's exploration depth is drawn once when it enters the batch
(TRM redraws it every step); the gradient norm is clipped at 1.0 by default (TRM does not clip).
The default lr/wd/EMA/batch follow 4.3.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from workbench.config import check_range, check_that
from workbench.data.schema import Example
from workbench.data.tasks import sudoku
from workbench.recursive.model import RecursiveConfig, RecursiveReasoner, save_model


@dataclass
class TrainConfig:
    """Optimisation settings; one ``seed`` fixes the model init, the data order and augmentation."""

    steps: int = 2000
    """Optimizer steps (one supervision step of the whole batch each)."""
    max_seconds: float | None = None
    """Stop after this much wall-clock time even if ``steps`` are left (None: no limit)."""
    batch_size: int = 128
    """Rows in the persistent batch."""
    lr: float = 1e-4
    """AdamW learning rate (after warm-up; constant, as in TRM)."""
    weight_decay: float = 1.0
    """AdamW decoupled weight decay (TRM Sudoku: 1.0)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2 (TRM: 0.95)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    ema_decay: float | None = 0.999
    """EMA of the weights, used for evaluation and saving (None: no EMA)."""
    halt_loss_weight: float = 0.5
    """Weight of the Q-head's BCE (halting models only)."""
    halt_explore_prob: float = 0.1
    """Probability that a row must run a random 2..n_sup steps before it may halt."""
    augment: bool = True
    """Augment every fresh puzzle (digits, bands/stacks, rows/columns, transpose)."""
    grad_clip: float | None = 1.0
    """Clip the gradient norm to this (None: no clipping)."""
    log_every: int = 50
    """Append a record to ``log_history`` (and call the callbacks) every this many steps."""
    seed: int = 0
    """Seeds the model init, the sampling of puzzles and the augmentations."""
    device: str | None = None
    """``cpu``, ``cuda`` or ``cuda:N`` for the model and the batch (None: ``cuda`` when one is
    available, else ``cpu``). Puzzles are sampled and augmented on the CPU either way, so a seed
    draws the same puzzles on every device."""

    def __post_init__(self):
        check_range(self, "steps", ge=1, integer=True)
        check_range(self, "max_seconds", gt=0, allow_none=True)
        check_range(self, "batch_size", ge=1, integer=True)
        check_range(self, "lr", gt=0)
        check_range(self, "weight_decay", ge=0)
        check_range(self, "beta1", ge=0, lt=1)
        check_range(self, "beta2", ge=0, lt=1)
        check_range(self, "warmup_steps", ge=0, integer=True)
        check_range(self, "ema_decay", gt=0, lt=1, allow_none=True)
        check_range(self, "halt_loss_weight", ge=0)
        check_range(self, "halt_explore_prob", ge=0, le=1)
        check_that(self, "augment", isinstance(self.augment, bool), "True or False")
        check_range(self, "grad_clip", gt=0, allow_none=True)
        check_range(self, "log_every", ge=1, integer=True)
        check_range(self, "seed", ge=0, integer=True)
        check_that(
            self,
            "device",
            self.device is None or self.device == "cpu" or str(self.device).startswith("cuda"),
            "None, 'cpu', 'cuda' or 'cuda:N'",
        )


def linear_path(
    puzzles: torch.Tensor,
    solutions: torch.Tensor,
    ranks: torch.Tensor,
    step: torch.Tensor,
    n_sup: int,
) -> torch.Tensor:
    """DIS intermediate targets y†_s: the puzzle with the first k_s blanks (in ``ranks``) filled.

    ``ranks`` [B, cells] is a random order of the cells (resampled per example); the cells that
    differ between puzzle and solution are revealed in that order, ``k_s`` of them at ``step``
    s (1-based, [B]): ``max(s, floor(s * n_diff / n_sup))`` capped at n_diff, so the Hamming
    distance to the solution falls strictly at every step until it is 0 at s = n_sup.
    """
    diff = puzzles != solutions
    n_diff = diff.sum(1)
    k = torch.minimum(torch.maximum(step, step * n_diff // n_sup), n_diff)
    # rank of each differing cell among the differing cells, in the random order
    order = torch.where(diff, ranks, ranks + ranks.shape[1]).argsort(1)
    position = order.argsort(1)
    reveal = diff & (position < k[:, None])
    return torch.where(reveal, solutions, puzzles)


def random_ranks(batch: int, cells: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of 0..cells-1 per row: the reveal order of :func:`linear_path`."""
    return torch.rand(batch, cells, generator=generator).argsort(1)


Callback = Callable[["RecursiveTrainer", dict], bool | None]
"""Called with ``(trainer, record)`` after each logged record; a true return stops training."""


class RecursiveTrainer:
    """Trains one :class:`RecursiveReasoner` on Sudoku examples (``{question, answer}`` grids)."""

    def __init__(
        self, model_cfg: RecursiveConfig, train_cfg: TrainConfig, examples: Sequence[Example]
    ):
        self.model_cfg, self.cfg = model_cfg, train_cfg
        self.puzzles = sudoku.encode([e["question"] for e in examples])
        self.solutions = sudoku.encode([e["answer"] for e in examples])
        check_that(
            model_cfg,
            "size",
            self.puzzles.shape[1] == model_cfg.cells,
            f"the examples' size ({sudoku.size_of(self.puzzles.shape[1])})",
        )
        torch.manual_seed(train_cfg.seed)
        self.generator = torch.Generator().manual_seed(train_cfg.seed)
        self.device = torch.device(
            train_cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.model = RecursiveReasoner(model_cfg).to(self.device)
        self.ema = None
        if train_cfg.ema_decay is not None:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=train_cfg.lr,
            betas=(train_cfg.beta1, train_cfg.beta2),
            weight_decay=train_cfg.weight_decay,
        )
        warm = train_cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
        )
        self.log_history: list[dict] = []
        self.global_step = 0
        self.seconds = 0.0
        self._batch = self._fresh_batch()

    @property
    def eval_model(self) -> RecursiveReasoner:
        """The weights to evaluate and save: the EMA copy when enabled, else the raw model."""
        return self.ema if self.ema is not None else self.model

    # ------------------------------------------------------------------ the persistent batch

    def _fresh_batch(self) -> dict[str, torch.Tensor]:
        b, cells, dev = self.cfg.batch_size, self.model_cfg.cells, self.device
        y, z = self.model.initial_carry(b)
        return {
            "y": y,
            "z": z,
            "puzzle": torch.zeros(b, cells, dtype=torch.long, device=dev),
            "solution": torch.zeros(b, cells, dtype=torch.long, device=dev),
            "tokens": torch.zeros(b, cells, dtype=torch.long, device=dev),
            "ranks": torch.zeros(b, cells, dtype=torch.long, device=dev),
            "steps": torch.zeros(b, dtype=torch.long, device=dev),
            "min_steps": torch.zeros(b, dtype=torch.long, device=dev),
            "halted": torch.ones(b, dtype=torch.bool, device=dev),
        }

    def _refill(self, st: dict[str, torch.Tensor]) -> None:
        """Replace the halted rows by fresh puzzles with a fresh carry (all rows at once)."""
        new = st["halted"]
        k = int(new.sum())
        if k == 0:
            return
        g, dev = self.generator, self.device  # sampled on the CPU: the same draws on any device
        idx = torch.randint(len(self.puzzles), (k,), generator=g)
        puzzle, solution = self.puzzles[idx], self.solutions[idx]
        if self.cfg.augment:
            puzzle, solution = sudoku.augment(puzzle, solution, g)
        puzzle, solution = puzzle.to(dev), solution.to(dev)
        y0, z0 = self.model.initial_carry(k)
        st["y"][new], st["z"][new] = y0, z0
        st["puzzle"][new], st["solution"][new], st["tokens"][new] = puzzle, solution, puzzle
        st["ranks"][new] = random_ranks(k, self.model_cfg.cells, g).to(dev)
        st["steps"][new] = 0
        explore = torch.rand(k, generator=g) < self.cfg.halt_explore_prob
        lo, hi = min(2, self.model_cfg.n_sup), self.model_cfg.n_sup
        depth = torch.where(explore, torch.randint(lo, hi + 1, (k,), generator=g), 0)
        st["min_steps"][new] = depth.to(dev)

    def train_step(self) -> dict[str, float]:
        """One supervision step of every row and one optimizer step.

        Returns the batch's losses, cell accuracy (blank cells) and exact accuracy at the rows'
        current steps, and the number and total depth of the rows that halted.
        """
        cfg, mcfg, st = self.cfg, self.model_cfg, self._batch
        self._refill(st)
        st["steps"] += 1
        carry, logits, q = self.model.step((st["y"], st["z"]), st["tokens"], st["steps"])
        if mcfg.dis:
            target = linear_path(st["puzzle"], st["solution"], st["ranks"], st["steps"], mcfg.n_sup)
        else:
            target = st["solution"]
        lm_loss = F.cross_entropy(logits.transpose(1, 2), target)
        pred = logits.detach().argmax(-1)
        exact = (pred == st["solution"]).all(1)
        loss, halt_loss = lm_loss, torch.zeros((), device=lm_loss.device)
        if q is not None:
            halt_loss = F.binary_cross_entropy_with_logits(q, exact.float())
            loss = loss + cfg.halt_loss_weight * halt_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                    e.lerp_(p, 1 - cfg.ema_decay)
        with torch.no_grad():
            halted = st["steps"] >= mcfg.n_sup
            if q is not None:
                halted |= (q.detach() > 0) & (st["steps"] >= st["min_steps"])
            st["y"], st["z"] = carry
            st["tokens"] = self.model.next_tokens(st["puzzle"], pred)
            st["halted"] = halted
            blank = st["puzzle"] == 0
            cell_acc = ((pred == st["solution"]) & blank).sum() / blank.sum().clamp(min=1)
        return {
            "loss": loss.item(),
            "lm_loss": lm_loss.item(),
            "halt_loss": halt_loss.item(),
            "cell_acc": cell_acc.item(),
            "exact_acc": exact.float().mean().item(),
            "n_halted": int(halted.sum()),
            "halted_depth": int(st["steps"][halted].sum()),
        }

    # --------------------------------------------------------------------------- the loop

    def fit(self, callbacks: Sequence[Callback] = ()) -> list[dict]:
        """Train until ``steps`` or ``max_seconds`` (counted across calls); returns the log.

        A record averages the steps since the previous one; the last, partial window is
        logged too when the time budget ends it.
        """
        cfg = self.cfg
        t0 = time.perf_counter() - self.seconds
        sums: dict[str, float] = {}
        n = 0
        self.model.train()
        while self.global_step < cfg.steps:
            if cfg.max_seconds is not None and time.perf_counter() - t0 >= cfg.max_seconds:
                break
            for key, value in self.train_step().items():
                sums[key] = sums.get(key, 0.0) + value
            n += 1
            self.global_step += 1
            self.seconds = time.perf_counter() - t0
            if self.global_step % cfg.log_every == 0 or self.global_step == cfg.steps:
                stop = self._log(sums, n, callbacks)
                sums, n = {}, 0
                if stop:
                    break
        if n:
            self._log(sums, n, callbacks)
        return self.log_history

    def _log(self, sums: dict[str, float], n: int, callbacks: Sequence[Callback]) -> bool:
        """Append the mean of ``n`` steps' metrics; True if a callback asks to stop."""
        n_halted, depth = sums.pop("n_halted"), sums.pop("halted_depth")
        record = {
            "step": self.global_step,
            "seconds": round(self.seconds, 3),
            "lr": self.scheduler.get_last_lr()[0],
            **{k: v / n for k, v in sums.items()},
            "halt_depth": depth / n_halted if n_halted else float("nan"),
        }
        self.log_history.append(record)
        return any([bool(cb(self, record)) for cb in callbacks])

    def save(self, path: str | Path) -> Path:
        """Save :attr:`eval_model` (EMA weights when enabled) to folder ``path``."""
        return save_model(self.eval_model, path)
