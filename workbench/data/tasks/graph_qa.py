"""ProsQA-style graph reachability (Coconut's "ProsQA", RESEARCH Part A 2.2).

Each problem is a small random DAG of fictional concepts ("Every wumpus is a yumpus.") plus a
few people ("Tom is a wumpus."). The question lists every edge as a fact, in shuffled order,
then asks ``"Is Tom a A or B?"``: exactly one of A, B (the ``target``) is reachable from the
person (the ``root``), the other (``neg_target``) is not. ``steps`` are the sentences of the
shortest root->target path and the answer is ``"Tom is a A."``, as in the released data. The
graph travels along in the same extra keys as the real files (``edges``, ``idx_to_symbol`` as a
list indexed by node id, ``root``, ``target``, ``neg_target``).

How the answer is guaranteed (not just checked):

* concepts are split into a root side R and a distractor side U; edges never go R -> U and the
  root only points into R, so nothing in U (where ``neg_target`` lives) is reachable;
* R concepts carry a level; the path node ``c_i`` has level ``i`` and an edge may raise the
  level by at most one, so no path reaches the target in fewer than ``depth`` steps; the only
  level-(i-1) node allowed to point at ``c_i`` is ``c_{i-1}``, so the shortest path is unique;
* both sides are ordered (level, then a random rank) and edges only go forward within a side,
  so the graph is acyclic. ``target`` and ``neg_target`` are sinks, as in the real data.

The distractor chain (another person -> ... -> ``neg_target``) has about the same length as the
true path, so path length is no shortcut. Concept names come from a syllable grammar
(onset + vowel + m/r/l + "pus"), so no real data is copied. Deviation: the released generator is
not public; sizes follow the real valid/test statistics (about 20 concepts, 2-6 people, 36
edges, 3-6 steps) but the exact edge distribution is our own.

``fact_format="symbolic"`` writes every fact (in the question and the steps) as two words,
``"Tom wumpus."`` and ``"wumpus yumpus."`` (:func:`to_symbolic`), keeping the question's last
sentence and the answer. It is a difficulty knob of our own, not ProsQA's: a d=128 model from
scratch learns the lookup of a fact's object by its subject far sooner when the subject is the
word right before it (docs/results.md, graph; ``benchmarks/associative_recall.py``).
"""

from __future__ import annotations

import random
import re
from collections import deque
from itertools import pairwise, product

from workbench.config import ConfigError
from workbench.data.schema import Example
from workbench.data.tokenizer import EOT

NAME = "graph"
TOKENIZER_KIND = "word"

# fmt: off
_ONSETS = ("", "b", "bl", "br", "ch", "d", "dr", "f", "fl", "g", "gl", "gr", "gw", "h", "j", "k",
           "l", "m", "n", "p", "pl", "qu", "r", "s", "sc", "scr", "sh", "sl", "st", "t", "tr", "v",
           "w", "y", "z", "zh")
# fmt: on
_VOWELS = ("a", "e", "i", "o", "u", "oo")
_CODAS = ("m", "r", "l")


def _name_pool() -> tuple[str, ...]:
    names = [o + v + c + "pus" for o, v, c in product(_ONSETS, _VOWELS, _CODAS)]
    random.Random(20241206).shuffle(names)  # fixed order, so any prefix (n_names) is varied
    return tuple(names)


CONCEPT_NAMES: tuple[str, ...] = _name_pool()
"""The full pool of fictional concept names (648), in a fixed shuffled order."""

# Common first names; the list includes the handful ProsQA uses, so that a word-level vocabulary
# built on generated data also covers the real benchmark's questions and answers.
# fmt: off
PEOPLE_NAMES = (
    "Alex", "Amy", "Ben", "Bob", "Carol", "Chris", "Davis", "Emma", "Eva", "Fae", "Gabriel",
    "Jack", "Jane", "Leo", "Lily", "Max", "Mia", "Nina", "Oliver", "Polly", "Rex", "Rosa",
    "Sally", "Sam", "Stella", "Tom", "Wren", "Zoe",
)
# fmt: on


def _person_fact(person: str, concept: str) -> str:
    return f"{person} is a {concept}."


def _concept_fact(a: str, b: str) -> str:
    return f"Every {a} is a {b}."


FACT_FORMATS = ("sentence", "symbolic")
"""The two fact formats: ProsQA's sentences, or subject-object word pairs."""

_EVERY = re.compile(r"Every (\w+) is a (\w+)\.")
_PERSON = re.compile(r"\b([A-Z]\w*) is a (\w+)\.")


def _symbolic_facts(text: str) -> str:
    return _PERSON.sub(r"\1 \2.", _EVERY.sub(r"\1 \2.", text))


def to_symbolic(example: Example) -> Example:
    """``example`` with its facts written as ``"subject object."`` (question and steps).

    The question's last sentence (``"Is Tom a A or B?"``) and the answer stay as they are, so a
    real ProsQA example converts to what a ``fact_format="symbolic"`` model was trained on.
    """
    facts, sep, ask = example["question"].rpartition(". Is ")
    question = _symbolic_facts(facts + ".") + " Is " + ask if sep else example["question"]
    return {
        **example,
        "question": question,
        "steps": [_symbolic_facts(s) for s in example["steps"]],
    }


def reachable(edges: list[list[int]] | list[tuple[int, int]], start: int) -> set[int]:
    """Node ids reachable from ``start`` (including it) following ``[u, v]`` = "u is a v"."""
    adj: dict[int, list[int]] = {}
    for u, v in edges:
        adj.setdefault(u, []).append(v)
    seen, todo = {start}, deque([start])
    while todo:
        for v in adj.get(todo.popleft(), ()):
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return seen


def shortest_paths(
    edges: list[list[int]] | list[tuple[int, int]], start: int, goal: int
) -> list[list[int]]:
    """All shortest node paths from ``start`` to ``goal`` (empty when unreachable)."""
    adj: dict[int, list[int]] = {}
    for u, v in edges:
        adj.setdefault(u, []).append(v)
    dist, todo = {start: 0}, deque([start])
    while todo:
        u = todo.popleft()
        for v in adj.get(u, ()):
            if v not in dist:
                dist[v] = dist[u] + 1
                todo.append(v)
    if goal not in dist:
        return []
    parents: dict[int, list[int]] = {}
    for u, v in edges:
        if u in dist and dist.get(v) == dist[u] + 1:
            parents.setdefault(v, []).append(u)

    def back(node: int) -> list[list[int]]:
        if node == start:
            return [[start]]
        return [p + [node] for par in parents.get(node, ()) for p in back(par)]

    return back(goal)


def make_example(
    rng: random.Random,
    depth: int,
    n_concepts: int,
    n_people: int,
    n_edges: int,
    names: tuple[str, ...],
) -> Example:
    """One problem whose unique shortest root->target path has ``depth`` steps."""
    people = rng.sample(PEOPLE_NAMES, n_people)
    concepts = rng.sample(names, n_concepts)
    # Node ids while building: people 0..P-1 (0 = root, 1 = distractor person), then concepts.
    P = n_people
    cid = list(range(P, P + n_concepts))
    rng.shuffle(cid)
    neg_depth = max(1, min(depth + rng.choice((-1, 0, 0, 1)), n_concepts - depth - 1))
    path, neg_chain, rest = cid[:depth], cid[depth : depth + neg_depth], cid[depth + neg_depth :]
    side: dict[int, str] = {}
    level: dict[int, int] = {}
    for i, c in enumerate(path, 1):
        side[c], level[c] = "R", i
    for i, c in enumerate(neg_chain, 1):
        side[c], level[c] = "U", i
    for c in rest:
        side[c] = rng.choice("RU")
        level[c] = rng.randint(1, depth if side[c] == "R" else neg_depth)
    rank = {c: rng.random() for c in cid}
    target, neg_target = path[-1], neg_chain[-1]
    path_index = {c: i for i, c in enumerate(path, 1)}

    def allowed(u: int, v: int) -> bool:
        if v < P or u == v or u in (target, neg_target):
            return False
        if u == 0:  # the root person: only level-1 concepts of its own side
            return side[v] == "R" and level[v] == 1
        if u < P:  # other people may point anywhere
            return True
        if side[u] == "R" and side[v] == "U":
            return False
        if side[u] != side[v]:  # U -> R: cannot create a cycle or make U reachable from the root
            return True
        if (level[v], rank[v]) <= (level[u], rank[u]) or level[v] > level[u] + 1:
            return False
        i = path_index.get(v)
        return not (i is not None and i >= 2 and level[u] == i - 1 and u != path[i - 2])

    edges: set[tuple[int, int]] = {(0, path[0]), (1, neg_chain[0])}
    edges.update(pairwise(path))
    edges.update(pairwise(neg_chain))
    for person in range(2, P):  # every extra person gets at least one fact
        edges.add((person, rng.choice(cid)))
    sources = list(range(P)) + cid
    tries = 0
    while len(edges) < n_edges and tries < 40 * n_edges:
        tries += 1
        u, v = rng.choice(sources), rng.choice(cid)
        if allowed(u, v):
            edges.add((u, v))
    used = {x for e in edges for x in e}
    for c in cid:  # no concept is left out of the story
        if c not in used:
            edges.add((rng.choice([u for u in sources if allowed(u, c)]), c))

    # Renumber nodes in a random order so ids leak nothing about roles.
    nodes = list(range(P + n_concepts))
    rng.shuffle(nodes)
    new_id = {old: i for i, old in enumerate(nodes)}
    sym_of = dict(enumerate(people + concepts))  # concepts is a random sample: names carry no role
    idx_to_symbol = [sym_of[old] for old in nodes]
    out_edges = sorted([new_id[u], new_id[v]] for u, v in edges)

    facts = [
        _person_fact(sym_of[u], sym_of[v]) if u < P else _concept_fact(sym_of[u], sym_of[v])
        for u, v in sorted(edges)
    ]
    rng.shuffle(facts)
    root_name = people[0]
    options = [sym_of[target], sym_of[neg_target]]
    rng.shuffle(options)
    question = " ".join(facts) + f" Is {root_name} a {options[0]} or {options[1]}?"
    steps = [_person_fact(root_name, sym_of[path[0]])]
    steps += [_concept_fact(sym_of[a], sym_of[b]) for a, b in pairwise(path)]
    return {
        "question": question,
        "steps": steps,
        "answer": f"{root_name} is a {sym_of[target]}.",
        "edges": out_edges,
        "idx_to_symbol": idx_to_symbol,
        "root": new_id[0],
        "target": new_id[target],
        "neg_target": new_id[neg_target],
    }


def generate(
    n: int,
    rng: random.Random,
    n_concepts: int = 20,
    min_depth: int = 3,
    max_depth: int = 6,
    min_people: int = 2,
    max_people: int = 4,
    edges_per_concept: float = 1.75,
    n_names: int | None = None,
    fact_format: str = "sentence",
) -> list[Example]:
    """``n`` problems; the depth (number of steps) is uniform in ``[min_depth, max_depth]``.

    Each graph has ``n_concepts`` concepts, ``min_people..max_people`` people (the first asked
    about, the second owning the distractor chain) and about ``edges_per_concept * n_concepts``
    facts. ``n_names`` restricts names to the first ``n_names`` of :data:`CONCEPT_NAMES` (a
    smaller vocabulary); ``None`` uses all 648. ``fact_format``: ``"sentence"`` (ProsQA's) or
    ``"symbolic"`` (:func:`to_symbolic`).
    """
    if fact_format not in FACT_FORMATS:
        raise ConfigError(
            f"fact_format={fact_format!r} is not one of {FACT_FORMATS}: use 'sentence' (ProsQA's "
            "'Every wumpus is a yumpus.') or 'symbolic' ('wumpus yumpus.')"
        )
    if not 1 <= min_depth <= max_depth:
        raise ConfigError(
            f"need 1 <= min_depth <= max_depth, got min_depth={min_depth}, max_depth={max_depth}"
        )
    if n_concepts < 2 * max_depth + 1:
        raise ConfigError(
            f"n_concepts={n_concepts} is too small for max_depth={max_depth}: "
            f"use n_concepts >= {2 * max_depth + 1} (a path plus a distractor chain)"
        )
    if not 2 <= min_people <= max_people <= len(PEOPLE_NAMES):
        raise ConfigError(
            f"need 2 <= min_people <= max_people <= {len(PEOPLE_NAMES)}, "
            f"got min_people={min_people}, max_people={max_people}"
        )
    if edges_per_concept <= 0:
        raise ConfigError(f"edges_per_concept must be > 0, got {edges_per_concept}")
    names = CONCEPT_NAMES if n_names is None else CONCEPT_NAMES[:n_names]
    if len(names) < n_concepts:
        raise ConfigError(
            f"n_names={n_names} is smaller than n_concepts={n_concepts}; raise n_names"
        )
    n_edges = round(edges_per_concept * n_concepts)
    convert = to_symbolic if fact_format == "symbolic" else (lambda ex: ex)
    return [
        convert(
            make_example(
                rng,
                rng.randint(min_depth, max_depth),
                n_concepts,
                rng.randint(min_people, max_people),
                n_edges,
                names,
            )
        )
        for _ in range(n)
    ]


def step_fact_rate(question: str, reasoning: str) -> float | None:
    """Share of the sentences of ``reasoning`` that are facts stated in ``question``.

    The question of a shortest-path CoT is a list of facts, so a correct rationale consists of
    facts only; a model that writes plausible sentences without looking them up ("Tom is a
    zalpus." where the question says "Tom is a gurpus.") scores low even when its final answer is
    right. ``None`` when ``reasoning`` has no sentence (latent or no-CoT models).
    """
    facts = {s.strip() for s in question.split(".") if s.strip()}
    said = [s.strip() for s in reasoning.split(".") if s.strip()]
    if not said:
        return None
    return sum(s in facts for s in said) / len(said)


def mean_step_fact_rate(questions, generated) -> float | None:
    """Mean :func:`step_fact_rate` over generated texts that write a rationale before ``EOT``.

    Special tokens (``<bot>``, latent markers) are dropped; texts without ``<eot>`` (no-CoT) or
    with nothing but special tokens before it (latent methods) are skipped; ``None`` if all are.
    """
    rates = []
    for question, text in zip(questions, generated, strict=True):
        rationale, eot, _ = text.partition(EOT)
        if not eot:
            continue
        words = [w for w in rationale.split() if not w.startswith("<")]
        rate = step_fact_rate(question, " ".join(words))
        if rate is not None:
            rates.append(rate)
    return sum(rates) / len(rates) if rates else None
