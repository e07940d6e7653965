"""Task generators: deterministic, and every answer is what the question and steps say."""

from __future__ import annotations

import random
import re
from collections import deque

import pytest

from workbench.data import datasets as ds
from workbench.data.tasks import arithmetic, graph_qa, multiplication
from workbench.data.tasks import generate as task_generate

TASKS = ("multiplication", "arithmetic", "graph")


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_examples_other_seed_differs(task):
    a = task_generate(task, 40, seed=7)
    b = task_generate(task, 40, seed=7)
    c = task_generate(task, 40, seed=8)
    assert a == b
    assert [e["question"] for e in a] != [e["question"] for e in c]


@pytest.mark.parametrize("task", TASKS)
def test_cache_files_are_byte_identical_for_the_same_seed(task, tmp_path):
    sizes = {"train": 30, "val": 10, "test": 10}
    ds.load_task_dataset(task, sizes, seed=3, cache_dir=tmp_path / "a")
    ds.load_task_dataset(task, sizes, seed=3, cache_dir=tmp_path / "b")
    ds.load_task_dataset(task, sizes, seed=4, cache_dir=tmp_path / "c")
    (fa,) = (tmp_path / "a").iterdir()
    (fb,) = (tmp_path / "b").iterdir()
    (fc,) = (tmp_path / "c").iterdir()
    names = sorted(p.name for p in fa.iterdir())
    assert names == ["meta.json", "test.jsonl", "train.jsonl", "val.jsonl"]
    for name in names:
        assert (fa / name).read_bytes() == (fb / name).read_bytes(), name
    assert (fa / "test.jsonl").read_bytes() != (fc / "test.jsonl").read_bytes()


# ---------------------------------------------------------------- multiplication


@pytest.mark.parametrize("digits", [3, 4, 5])
def test_multiplication_answers_and_partial_products_are_correct(digits):
    for ex in multiplication.generate(50, random.Random(digits), digits_a=digits):
        qa, qb = ex["question"].split("*")
        a, b = int(qa[::-1]), int(qb[::-1])
        assert len(str(a)) == digits and len(str(b)) == digits
        assert int(ex["answer"][::-1]) == a * b
        assert len(ex["answer"]) == 2 * digits
        assert len(ex["steps"]) == digits
        running = 0
        for i, step in enumerate(ex["steps"]):
            part = a * int(str(b)[::-1][i]) * 10**i
            running += part
            m = re.fullmatch(r"(\d+)(?:\((\d+)\))?", step)
            assert m is not None, step
            assert int(m.group(1)[::-1]) == part
            if i > 0:
                assert int(m.group(2)[::-1]) == running
        assert running == a * b


# ---------------------------------------------------------------- arithmetic

_FRACTIONS = {"half": 2, "a third": 3, "a quarter": 4, "a fifth": 5}


def _number_in(sentence: str) -> int:
    digits = re.findall(r"\d+", sentence)
    if digits:
        assert len(digits) == 1, sentence
        return int(digits[0])
    return next(k for word, k in _FRACTIONS.items() if f" {word} as many" in sentence)


def test_arithmetic_steps_compute_chain_and_follow_the_question():
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    seen_ops = set()
    for ex in arithmetic.generate(300, random.Random(0), max_value=20):
        sentences = re.findall(r"[^.?]+[.?]", ex["question"])
        assert len(sentences) == len(ex["steps"]) + 2  # start, one per step, the question
        assert sentences[-1].strip().startswith("How many")
        prev = _number_in(sentences[0])
        assert 2 <= prev <= 20
        for step, sentence in zip(ex["steps"], sentences[1:-1], strict=True):
            m = re.fullmatch(r"<<(\d+)([-+*/])(\d+)=(\d+)>>", step)
            assert m is not None, step
            left, op, right, result = int(m[1]), m[2], int(m[3]), int(m[4])
            seen_ops.add(op)
            assert left == prev, "each step must start from the previous result"
            assert right == _number_in(sentence), (sentence, step)
            if op == "/":
                assert left % right == 0 and left // right == result
            else:
                assert ops[op](left, right) == result
            assert 1 <= right <= 20 and 0 <= result <= 200
            prev = result
        assert ex["answer"] == str(prev)
        arithmetic.check_example(ex)
    assert seen_ops == {"+", "-", "*", "/"}


def test_arithmetic_difficulty_knobs():
    exs = arithmetic.generate(50, random.Random(1), min_steps=4, max_steps=4, max_value=9)
    assert all(len(e["steps"]) == 4 for e in exs)
    assert all(arithmetic.parse_step(s)[2] <= 9 for e in exs for s in e["steps"])
    lengths = {len(e["steps"]) for e in arithmetic.generate(200, random.Random(2))}
    assert lengths == {2, 3, 4, 5}
    with pytest.raises(ValueError, match="min_steps"):
        arithmetic.generate(1, random.Random(0), min_steps=3, max_steps=2)


def test_arithmetic_checker_rejects_a_broken_chain():
    ex = {"question": "q", "steps": ["<<2+3=5>>", "<<4*2=8>>"], "answer": "8"}
    with pytest.raises(ValueError, match="previous result"):
        arithmetic.check_example(ex)


# ---------------------------------------------------------------- graph


def _reach(edges, start):
    adj = {}
    for u, v in edges:
        adj.setdefault(u, []).append(v)
    seen, todo = {start}, deque([start])
    while todo:
        for v in adj.get(todo.popleft(), []):
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return seen


def _dist(edges, start, goal):
    adj = {}
    for u, v in edges:
        adj.setdefault(u, []).append(v)
    dist, todo = {start: 0}, deque([start])
    while todo:
        u = todo.popleft()
        for v in adj.get(u, []):
            if v not in dist:
                dist[v] = dist[u] + 1
                todo.append(v)
    return dist.get(goal)


def test_graph_answers_follow_from_the_edges():
    exs = graph_qa.generate(150, random.Random(0))
    for ex in exs:
        sym, edges = ex["idx_to_symbol"], ex["edges"]
        idx = {s: i for i, s in enumerate(sym)}
        assert len(idx) == len(sym), "symbols must be unique"
        root, target, neg = sym[ex["root"]], sym[ex["target"]], sym[ex["neg_target"]]
        reach = _reach(edges, ex["root"])
        assert ex["target"] in reach and ex["neg_target"] not in reach
        assert ex["answer"] == f"{root} is a {target}."
        assert ex["question"].endswith(
            (f"Is {root} a {target} or {neg}?", f"Is {root} a {neg} or {target}?")
        )
        # the question states exactly the edges
        facts = re.findall(r"(?:Every ([a-z]+)|([A-Z][a-z]+)) is a ([a-z]+)\.", ex["question"])
        stated = sorted([idx[a or b], idx[c]] for a, b, c in facts)
        assert stated == sorted(edges)
        # the steps are a path root -> target along stated edges, and a shortest one
        first = re.fullmatch(r"([A-Z][a-z]+) is a ([a-z]+)\.", ex["steps"][0])
        assert first is not None and first[1] == root
        node, edge_set = first[2], {tuple(e) for e in edges}
        assert (idx[root], idx[node]) in edge_set
        for step in ex["steps"][1:]:
            m = re.fullmatch(r"Every ([a-z]+) is a ([a-z]+)\.", step)
            assert m is not None and m[1] == node, (step, node)
            assert (idx[m[1]], idx[m[2]]) in edge_set
            node = m[2]
        assert node == target
        assert _dist(edges, ex["root"], ex["target"]) == len(ex["steps"])
        assert all(s in ex["question"] for s in ex["steps"])
        # people have no incoming edges; the graph is a DAG (every node reaches itself only)
        assert all(not sym[v][0].isupper() for _, v in edges)
        for u, v in edges:
            assert u not in _reach([e for e in edges if e != [u, v]], v)
    assert {len(e["steps"]) for e in exs} == {3, 4, 5, 6}
    # the true target is equally often the first and the second option
    firsts = sum(
        e["question"].endswith(f"a {e['idx_to_symbol'][e['target']]} or "
                               f"{e['idx_to_symbol'][e['neg_target']]}?")
        for e in exs
    )  # fmt: skip
    assert 45 <= firsts <= 105


def test_step_fact_rate_counts_only_facts_of_the_question():
    ex = graph_qa.generate(1, random.Random(3), min_depth=2, max_depth=2)[0]
    gold = " ".join(ex["steps"])
    assert graph_qa.step_fact_rate(ex["question"], gold) == 1.0
    first, second = ex["steps"]
    a, b = re.fullmatch(r"Every ([a-z]+) is a ([a-z]+)\.", second).groups()
    reversed_fact = f"Every {b} is a {a}."  # the edge backwards: never stated (a DAG)
    assert graph_qa.step_fact_rate(ex["question"], f"{first} {reversed_fact}") == 0.5
    assert graph_qa.step_fact_rate(ex["question"], "  ") is None
    answer = ex["answer"]
    texts = [
        f"{gold} <eot> {answer} <eos>",  # 1.0
        f"{first} {reversed_fact} <eot> {answer} <eos>",  # 0.5
        f"{answer} <eos>",  # no-CoT: skipped
        "<bot> <eot> " + answer,  # latent only: skipped
    ]
    assert graph_qa.mean_step_fact_rate([ex["question"]] * 4, texts) == 0.75
    assert graph_qa.mean_step_fact_rate([ex["question"]], [texts[2]]) is None


def test_graph_difficulty_knobs_and_errors():
    exs = graph_qa.generate(30, random.Random(1), n_concepts=14, min_depth=5, max_depth=5)
    assert all(len(e["steps"]) == 5 for e in exs)
    assert all(sum(not s[0].isupper() for s in e["idx_to_symbol"]) == 14 for e in exs)
    small = graph_qa.generate(30, random.Random(1), n_names=30)
    assert {s for e in small for s in e["idx_to_symbol"] if s.islower()} <= set(
        graph_qa.CONCEPT_NAMES[:30]
    )
    with pytest.raises(ValueError, match="n_concepts"):
        graph_qa.generate(1, random.Random(0), n_concepts=8, max_depth=6)


def test_graph_symbolic_format_states_the_same_edges_as_word_pairs():
    kw = dict(n_concepts=8, min_depth=2, max_depth=3)
    plain = graph_qa.generate(40, random.Random(5), **kw)
    sym = graph_qa.generate(40, random.Random(5), fact_format="symbolic", **kw)
    for p, s in zip(plain, sym, strict=True):
        # same graph and answer; the asking sentence is kept
        assert {k: v for k, v in p.items() if k not in ("question", "steps")} == {
            k: v for k, v in s.items() if k not in ("question", "steps")
        }
        assert s["question"].rpartition(". ")[2] == p["question"].rpartition(". ")[2]
        assert "Every" not in s["question"] and " is a " not in s["question"].rpartition(".")[0]
        idx = {x: i for i, x in enumerate(s["idx_to_symbol"])}
        facts = s["question"].rpartition(". Is ")[0].split(". ")
        pairs = sorted([idx[a], idx[b]] for a, b in (f.rstrip(".").split() for f in facts))
        assert pairs == s["edges"]
        # steps: the same path as word pairs, each a fact of the question
        assert s["steps"] == [
            re.sub(r"(?:Every )?(\w+) is a (\w+)\.", r"\1 \2.", step) for step in p["steps"]
        ]
        assert graph_qa.step_fact_rate(s["question"], " ".join(s["steps"])) == 1.0
    # a real (sentence) example converts to exactly what the generator writes
    assert [graph_qa.to_symbolic(p) for p in plain] == sym
    with pytest.raises(ValueError, match="fact_format='words'.*symbolic"):
        graph_qa.generate(1, random.Random(0), fact_format="words")
