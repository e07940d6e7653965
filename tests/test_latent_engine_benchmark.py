"""``benchmarks/latent_engine.py`` end to end on a tiny budget: the ratio it reports is the
median reference time over the median engine time of the rounds it alternated."""

import json


def test_engine_benchmark_reports_a_ratio_per_round(load_benchmark, capsys):
    bench = load_benchmark("latent_engine")
    out = bench.main(["--batch", "4", "--batches", "4,8", "--test-size", "16", "--latents", "2",
                      "--ref-examples", "6", "--rollout-examples", "2", "--repeat", "3",
                      "--threads", "1"])  # fmt: skip
    printed = capsys.readouterr().out
    assert json.loads(printed.strip().splitlines()[-1]) == out
    assert "ratio per round" in printed
    for batch in ("4", "8"):
        e = out["engine"][batch]
        rounds = e["speedup_per_round"]
        assert len(rounds) == 3 and all(r > 0 for r in rounds)
        # with an odd number of rounds the ratio of medians lies within the rounds' ratios
        assert min(rounds) * 0.9999 <= e["speedup_vs_reference"] <= max(rounds) * 1.0001
        ms = out["reference_ms_per_example"] / e["speedup_vs_reference"]
        assert abs(ms - e["ms_per_example"]) < 1e-6 * ms
    # more rounds than reference examples: one round per example, none empty
    out = bench.main(["--batch", "2", "--batches", "2", "--test-size", "4", "--latents", "1",
                      "--ref-examples", "2", "--rollout-examples", "1", "--repeat", "5",
                      "--threads", "1"])  # fmt: skip
    assert len(out["engine"]["2"]["speedup_per_round"]) == 2
    assert out["attn"] == "sdpa"
    # the attention is a flag: eager attention runs the same measures
    out = bench.main(["--batch", "2", "--batches", "2", "--test-size", "4", "--latents", "1",
                      "--ref-examples", "2", "--rollout-examples", "1", "--repeat", "1",
                      "--threads", "1", "--attn", "eager"])  # fmt: skip
    assert out["attn"] == "eager" and out["engine"]["2"]["speedup_vs_reference"] > 0
