"""Read the real ProsQA files as they are and compare them with our ProsQA-style generator.

Why: the workbench claims it reads a foreign dataset with no conversion step
(``load_coconut_json``), and that its ``graph`` generator produces the same kind of problem.
This prints, per real split and for 500 generated examples (default difficulty), the size,
steps per example, question length, facts per question, word-level vocabulary, whether every
answer has the form "<root> is a <target>." and whether the graph agrees with it (target
reachable from the root, the distractor not). The last line is one JSON object.

Usage: ``python benchmarks/prosqa_real.py [--path FOLDER] [--n-generated 500] [--seed 0]``.
The folder defaults to ``shared_dir()/data/prosqa``; when it is absent the script says so,
prints ``{"skipped": true, ...}`` as its last line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

try:
    import workbench  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.data.loaders import load_coconut_json
from workbench.data.schema import Example
from workbench.data.tasks import generate
from workbench.data.tasks.graph_qa import reachable, shortest_paths
from workbench.paths import shared_dir

_WORD_RE = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]")
_FACT_RE = re.compile(r"(?:Every [a-z]+|[A-Z][a-z]+) is an? [a-z]+\.")


def word_tokens(text: str) -> list[str]:
    """The word-level split the workbench uses: words, each digit, each punctuation mark."""
    return _WORD_RE.findall(text)


def answer_ok(ex: Example) -> bool:
    """The answer is exactly "<root> is a <target>." and the target is one of the two options."""
    sym = ex["idx_to_symbol"]
    root, target, neg = sym[ex["root"]], sym[ex["target"]], sym[ex["neg_target"]]
    asked = ex["question"].rsplit("?", 1)[0].rsplit(". ", 1)[-1]
    options_ok = asked in (f"Is {root} a {target} or {neg}", f"Is {root} a {neg} or {target}")
    return ex["answer"] == f"{root} is a {target}." and options_ok


def graph_ok(ex: Example) -> bool:
    """Target reachable from the root, distractor not, and the steps are a shortest path."""
    seen = reachable(ex["edges"], ex["root"])
    if ex["target"] not in seen or ex["neg_target"] in seen:
        return False
    return any(
        len(p) - 1 == len(ex["steps"])
        for p in shortest_paths(ex["edges"], ex["root"], ex["target"])
    )


def stats(examples: list[Example]) -> dict[str, float | int]:
    """The numbers compared in the table."""
    n_steps = [len(e["steps"]) for e in examples]
    vocab = {
        t
        for e in examples
        for t in word_tokens(" ".join([e["question"], *e["steps"], e["answer"]]))
    }
    return {
        "examples": len(examples),
        "steps_mean": round(statistics.mean(n_steps), 3),
        "steps_min": min(n_steps),
        "steps_max": max(n_steps),
        "question_words_mean": round(
            statistics.mean(len(e["question"].split()) for e in examples), 1
        ),
        "facts_mean": round(
            statistics.mean(len(_FACT_RE.findall(e["question"])) for e in examples), 2
        ),
        "facts_equal_edges": round(
            statistics.mean(
                len(_FACT_RE.findall(e["question"])) == len(e["edges"]) for e in examples
            ),
            4,
        ),
        "vocab_size": len(vocab),
        "answer_format_ok": round(statistics.mean(answer_ok(e) for e in examples), 4),
        "graph_consistent": round(statistics.mean(graph_ok(e) for e in examples), 4),
    }


def vocab_of(examples: list[Example]) -> set[str]:
    return {
        t
        for e in examples
        for t in word_tokens(" ".join([e["question"], *e["steps"], e["answer"]]))
    }


def print_table(columns: dict[str, dict[str, float | int]]) -> None:
    names = list(columns)
    keys = list(next(iter(columns.values())))
    width = max(len(k) for k in keys) + 2
    print("".ljust(width) + "".join(n.rjust(14) for n in names))
    for k in keys:
        print(k.ljust(width) + "".join(str(columns[n][k]).rjust(14) for n in names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, default=None, help="folder with prosqa_*.json")
    parser.add_argument(
        "--n-generated", type=int, default=500, help="generated examples to compare"
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    args = parser.parse_args(argv)
    folder = args.path if args.path is not None else shared_dir() / "data" / "prosqa"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        print(f"ProsQA data not found: no *.json in {folder}.")
        print("Pass --path FOLDER or set WORKBENCH_SHARED_DIR to read it; skipping.")
        print(json.dumps({"skipped": True, "reason": "ProsQA folder absent", "path": str(folder)}))
        return 0

    columns: dict[str, dict[str, float | int]] = {}
    real_vocab: set[str] = set()
    for f in files:
        examples = load_coconut_json(f)  # the released files, read as they are
        columns[f.stem.removeprefix("prosqa_")] = stats(examples)
        real_vocab |= vocab_of(examples)
    generated = generate("graph", args.n_generated, seed=args.seed)
    columns["generated"] = stats(generated)
    coverage = len(real_vocab & vocab_of(generated)) / len(real_vocab)

    print(f"ProsQA real splits from {folder}")
    print(f"vs. our 'graph' generator ({args.n_generated} examples, default difficulty)")
    print_table(columns)
    missing = sorted(real_vocab - vocab_of(generated))
    print(f"real vocabulary covered by the generated examples: {coverage:.1%}", end="")
    print(f" (missing: {missing[:10]})" if missing else "")
    print(
        json.dumps(
            {
                "skipped": False,
                "path": str(folder),
                "splits": columns,
                "real_vocab_coverage": round(coverage, 4),
            },
            sort_keys=True,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
