"""``benchmarks/associative_recall.py``: the batches ask every key once with its own value, the
metric reads exactly the queried values, and a tiny run prints its result as the last line."""

import json
import random
from types import SimpleNamespace

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("associative_recall")


def test_every_key_is_asked_once_after_the_pairs_with_its_value(bench):
    x = bench.recall_batch(random.Random(0), list(range(100, 140)), pairs=5, batch=16)
    assert x.shape == (16, 20)
    for row in x.tolist():
        facts = dict(zip(row[0:10:2], row[1:10:2], strict=True))
        asked = dict(zip(row[10::2], row[11::2], strict=True))
        assert len(set(row[:10])) == 10  # distinct names, so only the key tells the value
        assert asked == facts  # each key once, with its value, in some order


class _Oracle:
    """Logits that put all mass on the next token (``shift=1``) or on the current one (0)."""

    def __init__(self, shift: int, vocab: int = 200):
        self.shift, self.vocab = shift, vocab

    def __call__(self, input_ids):
        nxt = torch.roll(input_ids, -self.shift, dims=1)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, self.vocab).float() * 50)


def test_the_metric_scores_the_queried_values_only(bench):
    x = bench.recall_batch(random.Random(1), list(range(100, 140)), pairs=4, batch=8)
    loss, acc = bench.recall_loss(_Oracle(1), x, pairs=4)
    assert acc == 1.0 and float(loss) < 1e-6
    # echoing the key (what a model that ignores the context could do) scores nothing
    assert bench.recall_loss(_Oracle(0), x, pairs=4)[1] == 0.0


def test_a_tiny_run_prints_its_summary_last_and_bad_sizes_are_named(bench, capsys):
    out = bench.main(["--archs", "gpt2", "--steps", "3", "--eval-every", "2", "--pairs", "2",
                      "--d-model", "32", "--n-layer", "1"])  # fmt: skip
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == out
    assert [c[0] for c in out["runs"][0]["curve"]] == [2, 3] and out["names"] == 648
    with pytest.raises(SystemExit):
        bench.main(["--pairs", "400"])
    assert "--pairs 400 needs 800 names" in capsys.readouterr().err


def test_chained_pairs_use_other_keys_as_values_and_zero_keeps_the_plain_batches(bench):
    names = list(range(100, 140))
    x = bench.recall_batch(random.Random(2), names, pairs=5, batch=16, chained=3)
    for row in x.tolist():
        facts = dict(zip(row[0:10:2], row[1:10:2], strict=True))
        assert len(facts) == 5 and len(set(facts.values())) == 5
        assert len(set(facts) & set(facts.values())) == 3  # 3 values are keys too
        assert dict(zip(row[10::2], row[11::2], strict=True)) == facts
        # the chain has no cycle: following values from any key ends outside the keys
        for k in facts:
            seen = {k}
            while k in facts:
                k = facts[k]
                assert k not in seen
                seen.add(k)
    plain = bench.recall_batch(random.Random(2), names, pairs=5, batch=16)
    assert torch.equal(plain, bench.recall_batch(random.Random(2), names, 5, 16, chained=0))
    with pytest.raises(SystemExit):
        bench.main(["--pairs", "4", "--chained", "4"])
