"""Arithmetic word problems in the GSM8k-Aug format (RESEARCH Part A 2.2, Part B 1(b)).

GSM8k-Aug (the iCoT augmentation of GSM8k that Coconut, CODI, Latent-SFT and ATP-Latent train
on) writes every chain-of-thought step as one calculator string such as ``<<600*30/100=180>>``
and the answer as the bare final number. This generator produces short templated problems in
that format which a small model can learn from scratch on a CPU:

* question: a few English sentences about a person and a kind of object, ending in a question,
  e.g. ``"Mia has 12 apples. She buys 5 more apples. Then she splits her apples into 3 equal
  groups and keeps one group. How many apples does Mia have now?"``;
* steps: one binary calculator string per sentence, ``["<<12+5=17>>", ...]``; the left operand
  of step i is the result of step i-1, so the steps must be computed in order;
* answer: the last result as a string, ``"17"``.

Two template families alternate at random: one person whose pile changes event by event, and a
chain of people each compared with the previous one ("Tom has 3 times as many apples as Mia.").
Every result is a positive integer (so non-negative, and never a dead-end 0), divisions are
exact, operands are at most ``max_value`` and results at most ``max_result``.
Deviation from GSM8k-Aug: steps are always binary (``<<a op b=c>>``), never ``<<a-b-c=d>>``.
"""

from __future__ import annotations

import random
import re

from workbench.config import ConfigError
from workbench.data.schema import Example

NAME = "arithmetic"
TOKENIZER_KIND = "word"

OPS = ("+", "-", "*", "/")

_SHE, _HE = ("she", "her"), ("he", "his")
PEOPLE: tuple[tuple[str, str, str], ...] = tuple(
    (name, *pron)
    for name, pron in zip(
        ("Mia", "Tom", "Ava", "Ben", "Lily", "Sam", "Emma", "Leo", "Nora", "Omar",
         "Zoe", "Jack", "Ruby", "Max", "Ella", "Noah", "Ivy", "Liam", "Grace", "Owen"),
        [_SHE, _HE] * 10,
        strict=True,
    )
)  # fmt: skip
"""(name, subject pronoun, possessive pronoun)."""
# fmt: off
OBJECTS = (
    "apples", "marbles", "stickers", "cookies", "books", "pencils", "coins", "shells",
    "cards", "stamps", "eggs", "candies", "flowers", "balloons", "toys", "beads",
)
# fmt: on
# Family B writes "x / k" as a fraction word; other divisors are not used there.
FRACTION_WORDS = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth"}
MAX_FACTOR = 10
"""Largest multiplier or divisor (GSM-style small factors; operands may still be larger)."""

STEP_RE = re.compile(r"^<<(\d+)([-+*/])(\d+)=(\d+)>>$")


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _feasible(
    prev: int, max_value: int, max_result: int, fraction_only: bool
) -> dict[str, list[int]]:
    """For each operator, the right operands that keep the result a positive integer in range."""
    top = min(max_value, MAX_FACTOR)
    out = {
        "+": list(range(1, min(max_value, max_result - prev) + 1)),
        "-": list(range(1, min(max_value, prev - 1) + 1)),
        "*": [k for k in range(2, top + 1) if prev * k <= max_result],
        "/": [k for k in range(2, top + 1) if prev % k == 0],
    }
    if fraction_only:
        out["/"] = [k for k in out["/"] if k in FRACTION_WORDS]
    return {op: ks for op, ks in out.items() if ks}


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if a % b:
        raise ValueError(f"{a}/{b} is not exact")
    return a // b


def _event_sentence(
    op: str,
    k: int,
    obj: str,
    friend: str,
    pron: tuple[str, str, str],
    variant: int,
    first: bool,
) -> str:
    """Family A: one event that changes the person's pile."""
    _, he, his = pron
    lead = _cap(he) if first else "Then " + he
    if op == "+":
        if variant:
            return f"{lead} gets {k} more {obj} from {friend}."
        return f"{lead} buys {k} more {obj}."
    if op == "-":
        if variant:
            return f"{lead} loses {k} of {his} {obj}."
        return f"{lead} gives {k} {obj} to {friend}."
    if op == "*":
        return f"{lead} ends up with {k} times as many {obj} as before."
    return f"{lead} splits {his} {obj} into {k} equal groups and keeps one group."


def _compare_sentence(op: str, k: int, obj: str, who: str, than: str) -> str:
    """Family B: ``who`` has some function of what ``than`` has."""
    if op == "+":
        return f"{who} has {k} more {obj} than {than}."
    if op == "-":
        return f"{who} has {k} fewer {obj} than {than}."
    if op == "*":
        return f"{who} has {k} times as many {obj} as {than}."
    return f"{who} has {FRACTION_WORDS[k]} as many {obj} as {than}."


def make_example(rng: random.Random, n_steps: int, max_value: int, max_result: int) -> Example:
    """One problem with exactly ``n_steps`` chained calculator steps."""
    family = rng.choice(("events", "chain"))
    obj = rng.choice(OBJECTS)
    people = rng.sample(PEOPLE, n_steps + 1)
    value = rng.randint(2, max_value)
    sentences = [f"{people[0][0]} has {value} {obj}."]
    steps: list[str] = []
    for i in range(n_steps):
        options = _feasible(value, max_value, max_result, fraction_only=(family == "chain"))
        op = rng.choice(sorted(options))
        k = rng.choice(options[op])
        new = _apply(value, op, k)
        steps.append(f"<<{value}{op}{k}={new}>>")
        if family == "events":
            friend = people[1 + i][0]
            sentences.append(
                _event_sentence(op, k, obj, friend, people[0], rng.randrange(2), first=(i == 0))
            )
        else:
            sentences.append(_compare_sentence(op, k, obj, people[i + 1][0], people[i][0]))
        value = new
    if family == "events":
        sentences.append(f"How many {obj} does {people[0][0]} have now?")
    else:
        sentences.append(f"How many {obj} does {people[n_steps][0]} have?")
    return {"question": " ".join(sentences), "steps": steps, "answer": str(value)}


def generate(
    n: int,
    rng: random.Random,
    min_steps: int = 2,
    max_steps: int = 5,
    max_value: int = 20,
    max_result: int | None = None,
) -> list[Example]:
    """``n`` problems with a uniform number of steps in ``[min_steps, max_steps]``.

    ``max_value`` bounds the starting amount and every right operand (difficulty knob for
    operand size); ``max_result`` bounds every intermediate result (default ``10 * max_value``).
    """
    max_result = 10 * max_value if max_result is None else max_result
    if not 1 <= min_steps <= max_steps:
        raise ConfigError(
            f"need 1 <= min_steps <= max_steps, got min_steps={min_steps}, max_steps={max_steps}"
        )
    if max_steps + 1 > len(PEOPLE):
        raise ConfigError(
            f"max_steps={max_steps} needs more than the {len(PEOPLE)} names available; "
            f"use max_steps <= {len(PEOPLE) - 1}"
        )
    if max_value < 2:
        raise ConfigError(f"max_value must be >= 2, got {max_value}")
    if max_result < max_value + 1:
        raise ConfigError(
            f"max_result={max_result} must exceed max_value={max_value} so every chain can continue"
        )
    return [
        make_example(rng, rng.randint(min_steps, max_steps), max_value, max_result)
        for _ in range(n)
    ]


def parse_step(step: str) -> tuple[int, str, int, int]:
    """Invert a calculator string: ``'<<12+5=17>>'`` -> ``(12, '+', 5, 17)``."""
    m = STEP_RE.match(step)
    if m is None:
        raise ValueError(f"not a binary calculator step: {step!r}")
    return int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))


def check_example(ex: Example) -> None:
    """Raise ``ValueError`` unless every step computes correctly, chains, and ends at the answer."""
    prev = None
    for i, step in enumerate(ex["steps"]):
        a, op, b, c = parse_step(step)
        if b == 0 and op == "/" or _apply(a, op, b) != c:
            raise ValueError(f"step {i} {step!r} is wrong")
        if prev is not None and a != prev:
            raise ValueError(f"step {i} {step!r} does not start from the previous result {prev}")
        prev = c
    if prev is None or str(prev) != ex["answer"]:
        raise ValueError(f"answer {ex['answer']!r} is not the last result {prev}")
