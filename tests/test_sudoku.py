"""Sudoku task: unique puzzles (checked by an independent solver), augmentation, CSV loader."""

from __future__ import annotations

import random

import pytest
import torch

from workbench.config import ConfigError
from workbench.data.schema import DatasetFormatError, validate_example
from workbench.data.tasks import generate as task_generate
from workbench.data.tasks import get_task, sudoku

torch.set_num_threads(1)


# ------------------------------------------------- an independent checker and solution counter


def _units(size: int) -> list[list[int]]:
    box = {4: 2, 9: 3}[size]
    rows = [[r * size + c for c in range(size)] for r in range(size)]
    cols = [[r * size + c for r in range(size)] for c in range(size)]
    boxes = [
        [(br * box + r) * size + bc * box + c for r in range(box) for c in range(box)]
        for br in range(box)
        for bc in range(box)
    ]
    return rows + cols + boxes


def _valid_solution(grid: list[int]) -> bool:
    size = {16: 4, 81: 9}[len(grid)]
    return all(sorted(grid[i] for i in unit) == list(range(1, size + 1)) for unit in _units(size))


def _count(grid: list[int], limit: int = 3) -> int:
    """Plain first-empty-cell backtracking (no bitmasks, no heuristics), counting to ``limit``."""
    size = {16: 4, 81: 9}[len(grid)]
    peers = [set() for _ in grid]
    for unit in _units(size):
        for i in unit:
            peers[i].update(j for j in unit if j != i)
    g = list(grid)

    def rec() -> int:
        try:
            i = g.index(0)
        except ValueError:
            return 1
        total = 0
        for d in range(1, size + 1):
            if all(g[j] != d for j in peers[i]):
                g[i] = d
                total += rec()
                g[i] = 0
                if total >= limit:
                    break
        return total

    return min(rec(), limit)


def _grid(s: str) -> list[int]:
    return [int(c) for c in s]


# ------------------------------------------------------------------------------ generator


@pytest.mark.parametrize(
    "size,difficulty,n", [(4, "easy", 40), (4, "hard", 40), (9, "easy", 4), (9, "hard", 2)]
)
def test_every_generated_puzzle_has_exactly_its_solution(size, difficulty, n):
    lo, hi = sudoku.DIFFICULTY[size][difficulty]
    for ex in sudoku.generate(n, random.Random(size * 10 + n), size=size, difficulty=difficulty):
        validate_example(ex)
        p, s = _grid(ex["question"]), _grid(ex["answer"])
        assert len(p) == size * size and ex["steps"] == []
        assert lo <= sum(v != 0 for v in p) <= hi
        assert _valid_solution(s)
        assert all(v in (0, w) for v, w in zip(p, s, strict=True))
        assert _count(p) == 1


def test_hard_split_has_fewer_givens_than_easy():
    for size in (4, 9):
        assert sudoku.DIFFICULTY[size]["hard"][1] < sudoku.DIFFICULTY[size]["easy"][0]


def test_generation_is_deterministic_and_registered():
    a = task_generate("sudoku", 10, seed=3, size=4)
    assert a == task_generate("sudoku", 10, seed=3, size=4)
    assert [e["question"] for e in a] != [e["question"] for e in task_generate("sudoku", 10, 4)]
    mod = get_task("sudoku")
    assert (mod.NAME, mod.TOKENIZER_KIND) == ("sudoku", "char")


def test_solver_counts_agree_with_the_independent_counter():
    rng = random.Random(0)
    for ex in sudoku.generate(10, rng, size=4, difficulty="hard"):
        p = _grid(ex["question"])
        for i in [i for i, v in enumerate(p) if v][:3]:  # remove givens: often non-unique
            q = list(p)
            q[i] = 0
            assert sudoku.count_solutions(q, limit=3) == _count(q, limit=3)
        assert sudoku.grid_to_str(sudoku.solve(p)) == ex["answer"]
    clash = [1, 1] + [0] * 14
    assert sudoku.count_solutions(clash) == 0 and sudoku.solve(clash) is None


def test_bad_generator_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="size"):
        sudoku.generate(1, random.Random(0), size=5)
    with pytest.raises(ConfigError, match="difficulty"):
        sudoku.generate(1, random.Random(0), size=4, difficulty="medium")
    with pytest.raises(ConfigError, match="givens"):
        sudoku.generate(1, random.Random(0), size=4, min_givens=9, max_givens=5)


# --------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("size", [4, 9])
def test_augmentation_preserves_validity_and_maps_puzzle_and_solution_together(size):
    exs = sudoku.generate(12 if size == 4 else 3, random.Random(size), size=size)
    p, s = sudoku.encode([e["question"] for e in exs]), sudoku.encode([e["answer"] for e in exs])
    g = torch.Generator().manual_seed(0)
    changed = 0
    for _ in range(4):
        ap, as_ = sudoku.augment(p, s, g)
        changed += int((as_ != s).any(1).sum())
        for pi, api, asi in zip(p.tolist(), ap.tolist(), as_.tolist(), strict=True):
            assert _valid_solution(asi)
            assert all(v in (0, w) for v, w in zip(api, asi, strict=True))  # givens agree
            assert api.count(0) == pi.count(0)
            if size == 4:
                assert _count(api) == 1
    assert changed > 0


def test_augmentation_is_one_transform_applied_to_both_grids():
    # A fully given puzzle must come out equal to its solution, and a relabelled copy of a
    # solution must be relabelled the same way (the digit map is shared by both grids).
    exs = sudoku.generate(8, random.Random(1), size=9)
    s = sudoku.encode([e["answer"] for e in exs])
    ap, as_ = sudoku.augment(s.clone(), s, torch.Generator().manual_seed(5))
    assert torch.equal(ap, as_)
    # the cell permutation is shared: blanking one cell keeps exactly that value's cell blank
    p = s.clone()
    p[:, 0] = 0
    ap, as_ = sudoku.augment(p, s, torch.Generator().manual_seed(5))
    blank = ap == 0
    assert torch.equal(blank.sum(1), torch.ones(8, dtype=torch.long))
    assert torch.equal(as_[~blank].view(8, -1), ap[~blank].view(8, -1))


def test_augmentation_covers_transpose_and_digit_permutations():
    s = sudoku.encode([sudoku.generate(1, random.Random(2), size=4)[0]["answer"]] * 200)
    _, out = sudoku.augment(s, s, torch.Generator().manual_seed(0))
    assert len({tuple(r) for r in out.tolist()}) > 50  # many distinct grids from one
    first_rows = {tuple(r[:4]) for r in out.tolist()}
    assert len(first_rows) == 24  # every digit order appears in the first row


# ----------------------------------------------------------------------------- CSV loader


def _unique_4x4() -> tuple[str, str]:
    ex = sudoku.generate(1, random.Random(7), size=4, difficulty="easy")[0]
    return ex["question"], ex["answer"]


def _write(tmp_path, lines):
    path = tmp_path / "puzzles.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_loader_reads_header_dots_and_named_columns(tmp_path):
    p, s = _unique_4x4()
    dotted = p.replace("0", ".")
    rows = sudoku.load_csv(_write(tmp_path, ["puzzle,solution", f"{dotted},{s}", f"{p},{s}"]))
    assert rows == [{"question": p, "steps": [], "answer": s}] * 2
    # the sudoku-extreme column layout: source,question,answer,rating
    path = _write(tmp_path, ["source,question,answer,rating", f"x,{dotted},{s},3"])
    assert sudoku.load_csv(path)[0]["question"] == p
    assert len(sudoku.load_csv(_write(tmp_path, [f"{p},{s}"]))) == 1  # no header


def _error(tmp_path, bad_row: str, **kw) -> str:
    p, s = _unique_4x4()
    with pytest.raises(DatasetFormatError) as info:
        sudoku.load_csv(_write(tmp_path, ["puzzle,solution", f"{p},{s}", bad_row]), **kw)
    msg = str(info.value)
    assert "row 3" in msg, msg
    return msg


def test_csv_errors_name_the_row_and_the_problem(tmp_path):
    p, s = _unique_4x4()
    assert "invalid character 'x' at position 2" in _error(tmp_path, f"{p[0]}x{p[2:]},{s}")
    assert "invalid character '5'" in _error(tmp_path, f"5{p[1:]},{s}")  # 5 is not a 4x4 digit
    assert "has 15 characters" in _error(tmp_path, f"{p[1:]},{s}")
    assert "column" in _error(tmp_path, p)
    # a solution that repeats a digit in row 1
    broken = s[1] + s[1:]
    assert "breaks the sudoku rules" in _error(tmp_path, f"{'0' * 16},{broken}")
    # a valid solution that contradicts a given: relabel digits 1 <-> 2 in the solution
    swapped = s.translate(str.maketrans("12", "21"))
    given = next(i for i, c in enumerate(p) if c in "12")
    msg = _error(tmp_path, f"{p},{swapped}")
    assert "contradicts the given" in msg and f"row {given // 4 + 1}, column" in msg


def test_csv_non_unique_puzzle_is_refused_unless_the_check_is_off(tmp_path):
    _, s = _unique_4x4()
    loose = s[:4] + "0" * 12  # one given row: many solutions
    msg = _error(tmp_path, f"{loose},{s}")
    assert "more than one solution" in msg and "'puzzle'" in msg
    path = tmp_path / "puzzles.csv"
    assert len(sudoku.load_csv(path, check_unique=False)) == 2


def test_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such sudoku CSV"):
        sudoku.load_csv(tmp_path / "nope.csv")
