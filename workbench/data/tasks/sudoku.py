"""4x4 and 9x9 Sudoku with a unique solution, generated here (RESEARCH Part B 4.3, step 1).

TRM and DIS (RESEARCH Part B 4.1-4.2) train on Sudoku-Extreme, which downloads from the Hugging
Face Hub; the workbench generates its own puzzles instead:

* a bitmask backtracking solver (most-constrained cell first) that counts solutions up to a
  limit, so uniqueness is a count of 1;
* a generator that fills a random grid, then removes givens in random order, keeping a removal
  only while the puzzle still has exactly one solution, until a target number of givens is
  reached. Difficulty is that number (:data:`DIFFICULTY`): an ``"easy"`` and a ``"hard"`` split
  per size. Everything is deterministic in the ``random.Random`` passed in;
* :func:`augment`, the validity-preserving augmentations of TRM's
  ``dataset/build_sudoku_dataset.py`` (digit permutation, band/stack shuffles, row/column
  shuffles within bands/stacks, transpose), batched in torch for the training hot path;
* :func:`load_csv` for the common public ``puzzle,solution`` CSV format, whose errors name the
  row and the problem.

Grids are strings of ``size * size`` digits, row by row, ``0`` for a blank (``.`` is accepted
on input). As a task: question = puzzle, answer = solution, no steps.
Deviation from TRM's dataset: difficulty is set by the number of givens, not by a solver rating.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Sequence
from pathlib import Path

import torch

from workbench.config import ConfigError
from workbench.data.schema import DatasetFormatError, Example
from workbench.errors import MissingFileError

NAME = "sudoku"
TOKENIZER_KIND = "char"

SIZES = (4, 9)
DIFFICULTY: dict[int, dict[str, tuple[int, int]]] = {
    4: {"easy": (8, 10), "hard": (4, 6)},
    9: {"easy": (36, 45), "hard": (24, 30)},
}
"""``{size: {split: (min_givens, max_givens)}}``; 4 and 17 are the known minima."""

Grid = list[int]


def box_side(size: int) -> int:
    """Side of one box: 2 for 4x4, 3 for 9x9."""
    if size not in SIZES:
        raise ConfigError(f"sudoku size = {size!r}: expected one of {list(SIZES)}")
    return math.isqrt(size)


def size_of(n_cells: int) -> int:
    """Grid side for a grid of ``n_cells`` cells (16 -> 4, 81 -> 9)."""
    for s in SIZES:
        if s * s == n_cells:
            return s
    raise ValueError(f"a sudoku grid has {' or '.join(str(s * s) for s in SIZES)} cells")


def parse_grid(text: str) -> Grid:
    """``"1.30..."`` -> ``[1, 0, 3, 0, ...]`` (``.`` and ``0`` are blanks)."""
    return [0 if ch == "." else int(ch) for ch in text]


def grid_to_str(grid: Sequence[int]) -> str:
    return "".join(str(v) for v in grid)


# ----------------------------------------------------------------------------- solver


def _search(grid: Sequence[int], limit: int, rng: random.Random | None = None) -> list[Grid]:
    """Up to ``limit`` solutions of ``grid`` (candidates tried in random order if ``rng``)."""
    size = size_of(len(grid))
    box = box_side(size)
    full = (1 << (size + 1)) - 2  # bits 1..size
    rows, cols, boxes = [0] * size, [0] * size, [0] * size
    empties: list[tuple[int, int, int, int]] = []
    for i, v in enumerate(grid):
        r, c = divmod(i, size)
        b = (r // box) * box + c // box
        if v:
            bit = 1 << v
            if (rows[r] | cols[c] | boxes[b]) & bit:
                return []  # the givens already clash
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
        else:
            empties.append((i, r, c, b))
    g = list(grid)
    found: list[Grid] = []

    def rec(todo: list[tuple[int, int, int, int]]) -> bool:
        if not todo:
            found.append(g.copy())
            return len(found) >= limit
        best, best_mask, best_n = 0, 0, size + 1
        for k, (_, r, c, b) in enumerate(todo):  # most constrained cell first
            mask = full & ~(rows[r] | cols[c] | boxes[b])
            n = mask.bit_count()
            if n < best_n:
                best, best_mask, best_n = k, mask, n
                if n <= 1:
                    break
        if best_n == 0:
            return False
        i, r, c, b = todo[best]
        rest = todo[:best] + todo[best + 1 :]
        digits = [d for d in range(1, size + 1) if best_mask >> d & 1]
        if rng is not None:
            rng.shuffle(digits)
        for d in digits:
            bit = 1 << d
            g[i] = d
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            stop = rec(rest)
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
            if stop:
                return True
        g[i] = 0
        return False

    rec(empties)
    return found


def count_solutions(grid: Sequence[int] | str, limit: int = 2) -> int:
    """Number of solutions of ``grid``, counted up to ``limit`` (2 is enough for uniqueness)."""
    return len(_search(parse_grid(grid) if isinstance(grid, str) else grid, limit))


def solve(grid: Sequence[int] | str) -> Grid | None:
    """One solution of ``grid``, or None if it has none."""
    sols = _search(parse_grid(grid) if isinstance(grid, str) else grid, 1)
    return sols[0] if sols else None


def rule_violation(grid: Sequence[int]) -> str | None:
    """What breaks the Sudoku rules in a filled ``grid`` ("row 2 repeats 5"), or None."""
    size = size_of(len(grid))
    box = box_side(size)
    if any(not 1 <= v <= size for v in grid):
        return f"has a cell outside 1..{size}"
    units = {
        "row": [[r * size + c for c in range(size)] for r in range(size)],
        "column": [[r * size + c for r in range(size)] for c in range(size)],
        "box": [
            [(br + r) * size + bc + c for r in range(box) for c in range(box)]
            for br in range(0, size, box)
            for bc in range(0, size, box)
        ],
    }
    for kind, cells_list in units.items():
        for k, cells in enumerate(cells_list):
            seen: set[int] = set()
            for i in cells:
                if grid[i] in seen:
                    return f"{kind} {k + 1} repeats {grid[i]}"
                seen.add(grid[i])
    return None


# -------------------------------------------------------------------------- generator


def make_puzzle(rng: random.Random, size: int, min_givens: int, max_givens: int) -> Example:
    """One puzzle with a unique solution and between ``min_givens`` and ``max_givens`` givens.

    A removal that would allow a second solution is undone; if the random removal order gets
    stuck above ``max_givens`` (a minimal puzzle with many givens), a new grid is drawn.
    """
    n_cells = size * size
    while True:
        (solution,) = _search([0] * n_cells, 1, rng)
        target = rng.randint(min_givens, max_givens)
        puzzle = solution.copy()
        order = list(range(n_cells))
        rng.shuffle(order)
        givens = n_cells
        for i in order:
            if givens == target:
                break
            puzzle[i] = 0
            if count_solutions(puzzle) == 1:
                givens -= 1
            else:
                puzzle[i] = solution[i]
        if givens <= max_givens:
            return {"question": grid_to_str(puzzle), "steps": [], "answer": grid_to_str(solution)}


def generate(
    n: int,
    rng: random.Random,
    size: int = 9,
    difficulty: str = "easy",
    min_givens: int | None = None,
    max_givens: int | None = None,
) -> list[Example]:
    """``n`` puzzles of ``size`` (4 or 9) at ``difficulty`` (a key of :data:`DIFFICULTY`).

    ``min_givens`` / ``max_givens`` override the split's range of givens.
    """
    box_side(size)
    if difficulty not in DIFFICULTY[size]:
        raise ConfigError(
            f"sudoku difficulty = {difficulty!r}: expected one of {sorted(DIFFICULTY[size])}"
        )
    lo, hi = DIFFICULTY[size][difficulty]
    lo = lo if min_givens is None else min_givens
    hi = hi if max_givens is None else max_givens
    if not 1 <= lo <= hi <= size * size:
        raise ConfigError(
            f"sudoku givens: need 1 <= min_givens <= max_givens <= {size * size}, got {lo}, {hi}"
        )
    return [make_puzzle(rng, size, lo, hi) for _ in range(n)]


# ----------------------------------------------------------------------- tensors, augment


def encode(grids: Sequence[str]) -> torch.Tensor:
    """Grid strings -> a ``[B, cells]`` long tensor of digits (0 = blank)."""
    return torch.tensor([parse_grid(g) for g in grids], dtype=torch.long)


def decode(grids: torch.Tensor) -> list[str]:
    """A ``[B, cells]`` digit tensor -> grid strings."""
    return [grid_to_str(row) for row in grids.tolist()]


def _line_order(batch: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Per example, a row (or column) order that shuffles bands and the lines within each."""
    box = math.isqrt(size)
    bands = torch.rand(batch, box, generator=g).argsort(1)
    within = torch.rand(batch, box, box, generator=g).argsort(2)
    return (bands[:, :, None] * box + within).reshape(batch, size)


def augment(
    puzzles: torch.Tensor, solutions: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one random validity-preserving transform per example, the same to both grids.

    Band/stack order, rows within bands, columns within stacks, a transpose (probability 1/2)
    and a digit permutation (blanks stay 0). All batched: ``[B, cells]`` in, ``[B, cells]`` out.
    """
    batch, n_cells = puzzles.shape
    size = size_of(n_cells)
    rows = _line_order(batch, size, generator)
    cols = _line_order(batch, size, generator)
    src = rows[:, :, None] * size + cols[:, None, :]  # new cell (i, j) <- old (rows[i], cols[j])
    flip = torch.rand(batch, generator=generator) < 0.5
    src = torch.where(flip[:, None, None], src.transpose(1, 2), src).reshape(batch, n_cells)
    digits = torch.rand(batch, size, generator=generator).argsort(1) + 1
    digit_map = torch.cat([torch.zeros(batch, 1, dtype=torch.long), digits], 1)

    def apply(grid: torch.Tensor) -> torch.Tensor:
        return digit_map.gather(1, grid.gather(1, src))

    return apply(puzzles), apply(solutions)


# ---------------------------------------------------------------------------- CSV loader

PUZZLE_COLUMNS = ("puzzle", "puzzles", "quizzes", "quiz", "question")
SOLUTION_COLUMNS = ("solution", "solutions", "answer")


def _check_row(puzzle: str, solution: str, source: str, row: int, check_unique: bool) -> None:
    def fail(field: str, problem: str, fix: str = "") -> None:
        raise DatasetFormatError(source, row, field, problem, fix)

    for field, text, blanks in (("puzzle", puzzle, "0."), ("solution", solution, "")):
        if len(text) not in (16, 81):
            fail(field, f"has {len(text)} characters, expected 16 (4x4) or 81 (9x9)")
        allowed = blanks + "".join(str(d) for d in range(1, size_of(len(text)) + 1))
        for pos, ch in enumerate(text):
            if ch not in allowed:
                fail(field, f"invalid character {ch!r} at position {pos + 1} (allowed: {allowed})")
    if len(puzzle) != len(solution):
        fail("solution", f"has {len(solution)} cells but the puzzle has {len(puzzle)}")
    p, s = parse_grid(puzzle), parse_grid(solution)
    size = size_of(len(p))
    broken = rule_violation(s)
    if broken:
        fail("solution", f"breaks the sudoku rules: {broken}")
    for i, (given, value) in enumerate(zip(p, s, strict=True)):
        if given and given != value:
            r, c = divmod(i, size)
            fail(
                "solution",
                f"contradicts the given {given} at row {r + 1}, column {c + 1} (it has {value})",
            )
    if check_unique and count_solutions(p) > 1:
        fail("puzzle", "has more than one solution", "drop the row or add givens")


def load_csv(path: str | Path, check_unique: bool = True) -> list[Example]:
    """Read a ``puzzle,solution`` CSV (optional header) into task examples, validating each row.

    A first line without digits is a header; its ``puzzle``/``quizzes``/``question`` and
    ``solution``/``solutions``/``answer`` columns are used (else the first two columns). A bad
    row raises :class:`DatasetFormatError` naming the line number (1 = the first line of the
    file) and the problem. ``check_unique`` runs the solver on every puzzle (slow for very large
    9x9 files; turn it off for files known to be unique).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such sudoku CSV file")
    source = str(path)
    out: list[Example] = []
    with open(path, newline="") as f:
        cols = (0, 1)
        for row_no, fields in enumerate(csv.reader(f), start=1):
            if not fields or all(not x.strip() for x in fields):
                continue
            if row_no == 1 and not any(ch.isdigit() for ch in "".join(fields)):
                names = [x.strip().lower() for x in fields]
                pick = [next((names.index(c) for c in group if c in names), None)
                        for group in (PUZZLE_COLUMNS, SOLUTION_COLUMNS)]  # fmt: skip
                cols = (pick[0], pick[1]) if None not in pick else (0, 1)
                continue
            if len(fields) <= max(cols):
                raise DatasetFormatError(
                    source, row_no, None, f"has {len(fields)} column(s), expected puzzle,solution"
                )
            puzzle, solution = fields[cols[0]].strip(), fields[cols[1]].strip()
            _check_row(puzzle, solution, source, row_no, check_unique)
            out.append({"question": puzzle.replace(".", "0"), "steps": [], "answer": solution})
    if not out:
        raise DatasetFormatError(source, None, None, "has no puzzle rows")
    return out
