"""Multi-digit multiplication in the iCoT format (RESEARCH "Definitions": iCoT multiplication).

Operands, partial products and the answer are written least-significant digit first at a
fixed width; that is what makes the task learnable from scratch by a tiny transformer.

For ``a * b`` with ``a`` of ``n`` digits and ``b`` of ``m`` digits:

* question: ``rev(a)*rev(b)`` e.g. ``123*456`` is written ``321*654``;
* step 0: ``rev(a*b_0)`` at width n+1;
* step i>0: ``rev(a*b_i*10^i)`` at width n+1+i, then the running sum in parentheses,
  ``rev(sum_{j<=i} a*b_j*10^j)`` at width n+1+i;
* answer: ``rev(a*b)`` at width n+m.

So 3x3 has three steps, one per digit of ``b``, which is what Coconut replaces stage by stage.
"""

from __future__ import annotations

import random

from workbench.config import ConfigError
from workbench.data.schema import Example

NAME = "multiplication"
TOKENIZER_KIND = "char"


def _rev(x: int, width: int) -> str:
    s = str(x).zfill(width)
    if len(s) > width:
        raise ValueError(f"{x} does not fit in width {width}")
    return s[::-1]


def make_example(a: int, b: int) -> Example:
    """The iCoT example for ``a * b`` (operands without leading zeros)."""
    n, m = len(str(a)), len(str(b))
    b_digits = [int(c) for c in str(b)[::-1]]
    steps, running = [], 0
    for i, d in enumerate(b_digits):
        part = a * d * 10**i
        running += part
        w = n + 1 + i
        steps.append(_rev(part, w) if i == 0 else f"{_rev(part, w)}({_rev(running, w)})")
    return {"question": f"{_rev(a, n)}*{_rev(b, m)}", "steps": steps, "answer": _rev(a * b, n + m)}


def generate(
    n: int, rng: random.Random, digits_a: int = 3, digits_b: int | None = None
) -> list[Example]:
    """``n`` random problems with ``digits_a`` x ``digits_b`` digit operands (difficulty knob)."""
    digits_b = digits_a if digits_b is None else digits_b
    if digits_a < 1 or digits_b < 1:
        raise ConfigError(f"digits must be >= 1, got digits_a={digits_a}, digits_b={digits_b}")
    lo_a, hi_a = 10 ** (digits_a - 1), 10**digits_a - 1
    lo_b, hi_b = 10 ** (digits_b - 1), 10**digits_b - 1
    return [make_example(rng.randint(lo_a, hi_a), rng.randint(lo_b, hi_b)) for _ in range(n)]


def parse_question(question: str) -> tuple[int, int]:
    """Invert the question format: ``'321*654'`` -> ``(123, 456)``."""
    ra, rb = question.split("*")
    return int(ra[::-1]), int(rb[::-1])
