"""The latent lens: statistics on synthetic distributions, the logit lens on a tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from workbench.data.tokenizer import build_char_tokenizer
from workbench.engine.feedback import make_feedback
from workbench.eval.evaluator import LatentSpec, evaluate
from workbench.lens.report import resolve_out_dir, write_trajectory_report
from workbench.lens.trajectory import (
    LatentTrajectory,
    compare_trajectories,
    final_norm,
    targets_by_step,
    targets_fixed_rate,
)
from workbench.methods.layout import TokenizedExample, tokenize_examples
from workbench.models.build import ModelConfig, build_model

V = 8


def _dist(rows: list[list[float]]) -> torch.Tensor:
    """log-probs [S, V] from probability rows (normalised)."""
    p = torch.tensor(rows, dtype=torch.float64)
    p = p / p.sum(-1, keepdim=True)
    return p.clamp_min(1e-30).log().float()


def _constructed() -> LatentTrajectory:
    """One example, 4 reads; token 3 is the answer and its probability rises 0.1 -> 0.9."""
    rows = []
    for p_ans in (0.1, 0.3, 0.6, 0.9):
        rest = (1 - p_ans) / (V - 1)
        r = [rest] * V
        r[3] = p_ans
        r[5] = rest * 1.5  # token 5 is ahead of the rest (but behind 3 from read 1 on)
        rows.append(r)
    lp = _dist(rows)
    targets = [[[5], [5, 3], [1], []]]
    return LatentTrajectory(
        log_probs=lp,
        aligned_targets=targets,
        answer_ids=[[3, 1]],
        token_text=[f"t{i}" for i in range(V)],
        questions=["q"],
        method="m",
    )


# ----- statistics ---------------------------------------------------------------------------


def test_uniform_and_one_hot_entropy():
    uniform = torch.full((2, 3, V), -math.log(V))
    tr = LatentTrajectory(log_probs=uniform)
    assert np.allclose(tr.entropy().values, math.log(V), atol=1e-5)
    one_hot = torch.full((2, 3, V), -1e9)
    one_hot[..., 2] = 0.0
    tr = LatentTrajectory(log_probs=one_hot)
    assert np.allclose(tr.entropy().values, 0.0, atol=1e-6)
    assert (tr.topk_ids[..., 0] == 2).all() and torch.allclose(
        tr.topk_probs[..., 0], torch.ones(2, 3)
    )


def test_single_example_gets_batch_dim_and_shapes_are_checked():
    tr = LatentTrajectory(log_probs=torch.full((4, V), -math.log(V)))
    assert (tr.num_examples, tr.num_steps, tr.vocab_size) == (1, 4, V)
    assert tr.fed.tolist() == [
        [True, True, True, False]
    ]  # default: every valid read but the last feeds
    with pytest.raises(ValueError, match="log_probs"):
        LatentTrajectory()
    with pytest.raises(ValueError, match="disagree"):
        LatentTrajectory(
            log_probs=torch.zeros(2, 3, V),
            topk_ids=torch.zeros(2, 4, 2),
            topk_probs=torch.zeros(2, 4, 2),
        )
    with pytest.raises(ValueError, match="aligned_targets"):
        LatentTrajectory(log_probs=torch.zeros(2, 3, V), aligned_targets=[[[1]]])
    with pytest.raises(ValueError, match="steps"):
        LatentTrajectory(log_probs=torch.zeros(1, 2, V), aligned_targets=[[[1], [2], [3]]])
    with pytest.raises(ValueError, match="not valid"):
        LatentTrajectory(
            log_probs=torch.zeros(1, 2, V),
            valid=torch.tensor([[True, False]]),
            fed=torch.tensor([[True, True]]),
        )
    with pytest.raises(ValueError, match="weight"):
        LatentTrajectory(
            log_probs=torch.zeros(1, 2, V), weight_ids=torch.zeros(1, 2, 3, dtype=torch.long)
        )


def test_ranks_and_target_probability():
    tr = _constructed()
    rank = tr.target_rank().values[0]  # best rank of the step's targets
    assert (
        rank[0] == 1
    )  # read 0: token 5 (1.5x the rest) is the argmax; the answer t3 (0.1) is last
    assert rank[1] == 1  # read 1: targets {5, 3}, token 3 is the argmax
    assert rank[2] == 3  # token 1 ties with the rest behind 3 and 5 -> rank 3
    assert np.isnan(rank[3])  # final read: no target
    mean_rank = tr.target_rank(reduce="mean").values[0]
    assert mean_rank[1] == pytest.approx(1.5)
    p = torch.exp(tr.log_probs[0]).double().numpy()
    prob = tr.target_probability().values[0]
    assert prob[0] == pytest.approx(p[0, 5], rel=1e-5)
    assert prob[1] == pytest.approx(
        p[1, 5] + p[1, 3], rel=1e-5
    )  # sum over the step's distinct tokens
    assert tr.target_probability(reduce="max").values[0, 1] == pytest.approx(p[1, 3], rel=1e-5)
    assert tr.answer_rank().values[0].tolist() == [V, 1, 1, 1]
    with pytest.raises(ValueError, match="reduce"):
        tr.target_rank(reduce="median")


def test_collapse_step_criteria():
    tr = _constructed()
    assert tr.collapse_step(0.5).tolist() == [2]
    assert tr.collapse_step(0.25).tolist() == [1]
    assert tr.collapse_step(0.95).tolist() == [-1]
    assert tr.collapse_step(criterion="argmax").tolist() == [1]
    # nucleus: at read 0 the answer is last, with ~0.906 of the mass above it
    assert tr.collapse_step(criterion="top_p", top_p=0.95).tolist() == [0]
    assert tr.collapse_step(criterion="top_p", top_p=0.5).tolist() == [1]
    assert tr.collapsed(0.5).values[0].tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="criterion"):
        tr.collapse_step(criterion="nope")
    # answer never ranked first -> the argmax criterion never fires
    lp = _dist([[1, 5, 1, 1, 1, 1, 1, 1]] * 3)
    tr2 = LatentTrajectory(log_probs=lp, answer_ids=[[0]])
    assert tr2.collapse_step(criterion="argmax").tolist() == [-1]


def test_padded_steps_are_nan_and_skipped():
    lp = torch.full((2, 3, V), -math.log(V))
    valid = torch.tensor([[True, True, True], [True, True, False]])
    tr = LatentTrajectory(log_probs=lp, valid=valid, answer_ids=[[1], [1]])
    ent = tr.entropy()
    assert np.isnan(ent.values[1, 2]) and not np.isnan(ent.values[0, 2])
    assert tr.fed.tolist() == [[True, True, False], [True, False, False]]
    assert len(tr.summary()) == 5
    assert tr.step_labels(1) == ["z1", "end"]
    assert np.allclose(ent.mean()[:2], math.log(V), atol=1e-5)
    no_targets = LatentTrajectory(log_probs=lp, valid=valid, aligned_targets=[[[], []], [[], []]])
    assert np.isnan(no_targets.target_rank().mean()).all()  # nothing to average: NaN, not 0
    assert len(no_targets.target_rank().figure().data[0].x) == 0


def test_topk_only_fallback():
    ids = torch.tensor([[[3, 1, 0], [2, 3, 1]]])
    probs = torch.tensor([[[0.6, 0.3, 0.1], [0.5, 0.4, 0.05]]])
    tr = LatentTrajectory(
        topk_ids=ids,
        topk_probs=probs,
        entropies=torch.zeros(1, 2),
        aligned_targets=[[[1], [7]]],
        answer_ids=[[3]],
    )
    assert tr.target_rank().values[0, 0] == 2
    assert np.isnan(tr.target_rank().values[0, 1])  # outside the top-k: unknown rank
    assert tr.target_probability().values[0, 0] == pytest.approx(0.3)
    assert tr.collapse_step(0.5).tolist() == [0]


def test_alignment_helpers():
    tex = TokenizedExample(question=[1], steps=[[10, 11], [12], [13, 14, 15]], answer=[9], sep=[0])
    assert targets_by_step(tex, 6, 2) == [
        [10, 11],
        [10, 11],
        [12],
        [12],
        [13, 14, 15],
        [13, 14, 15],
    ]
    assert targets_by_step(tex, 4, 1) == [[10, 11], [12], [13, 14, 15], []]
    assert targets_fixed_rate(tex, 3) == [[10, 11, 0], [12, 0, 13], [14, 15]]
    with pytest.raises(ValueError):
        targets_by_step(tex, 2, 0)
    with pytest.raises(ValueError):
        targets_fixed_rate(tex, 0)


# ----- figures --------------------------------------------------------------------------------


def test_topk_heatmap_contents():
    tr = _constructed()
    fig = tr.top_k(3).figure(0)
    assert isinstance(fig, go.Figure) and len(fig.data) == 1
    heat = fig.data[0]
    assert heat.type == "heatmap" and heat.texttemplate == "%{text}"
    z = np.asarray(heat.z)
    assert z.shape == (3, 4)  # ranks x steps
    probs = tr.log_probs[0].exp().sort(-1, descending=True).values[:, :3].T.numpy()
    assert np.allclose(z, probs, atol=1e-6)
    text = np.asarray(heat.text)
    assert text[0, 2] == "t3" and text[1, 2] == "t5"  # read 2: its target is t1, nothing bold
    assert text[0, 0] == "<b>t5</b>"  # read 0's target t5 is its argmax, highlighted
    assert text[0, 1] == "<b>t3</b>" and text[1, 1] == "<b>t5</b>"  # read 1 targets {t5, t3}
    assert list(heat.x) == ["z1", "z2", "z3", "end"]


def test_step_statistic_figures():
    tr = LatentTrajectory(log_probs=torch.randn(3, 4, V).log_softmax(-1))
    fig = tr.entropy().figure()
    assert len(fig.data) == 1 and fig.data[0].error_y.array is not None
    one = tr.entropy().figure(example=1)
    assert np.allclose(one.data[0].y, tr.entropy().values[1])
    frame = tr.entropy().to_frame()
    assert len(frame) == 12 and set(frame.columns) == {"example", "step", "entropy"}


def test_superposition_figure_and_compare():
    tr = _constructed()
    sup = tr.superposition(k=4)
    assert sup.source == "read"
    assert len(sup.figure(0).data) == 4  # stacked: one bar trace per rank slot
    with pytest.raises(ValueError, match="fed no superposition"):
        tr.superposition("fed")
    w_ids = torch.tensor([[[3, 5], [3, 5], [3, 1], [0, 0]]])
    w_p = torch.tensor([[[0.7, 0.3], [0.6, 0.4], [0.9, 0.1], [0.0, 0.0]]])
    tr2 = LatentTrajectory(
        log_probs=tr.log_probs,
        weight_ids=w_ids,
        weight_probs=w_p,
        token_text=tr.token_text,
        questions=["q"],
        answer_ids=[[3]],
    )
    sup2 = tr2.superposition()
    assert sup2.source == "fed"
    bar = sup2.figure(0, step=1)
    assert len(bar.data) == 1 and list(bar.data[0].y) == pytest.approx([0.6, 0.4])
    stacked = sup2.figure(0)
    assert len(stacked.data) == 2 and list(stacked.data[0].x) == [
        "z1",
        "z2",
        "z3",
    ]  # fed steps only
    cmp = compare_trajectories({"a": tr, "b": tr2}, example=0, statistic="answer_probability")
    assert [t.name for t in cmp.data] == ["a", "b"]
    other = LatentTrajectory(log_probs=tr.log_probs, questions=["different"])
    with pytest.raises(ValueError, match="same question"):
        compare_trajectories({"a": tr, "c": other})
    with pytest.raises(ValueError, match="statistic"):
        compare_trajectories({"a": tr}, statistic="nope")


def test_statistic_figures_delegate_to_viz():
    from workbench.viz import trajectory_figures as tf

    tr = _constructed()
    lay = LatentTrajectory(
        layer_log_probs=torch.randn(2, 3, 3, V).log_softmax(-1), token_text=tr.token_text
    )
    pairs = [
        (tr.entropy().figure(), tf.step_statistic_figure(tr.entropy())),
        (tr.entropy().figure(0), tf.step_statistic_figure(tr.entropy(), 0)),
        (tr.top_k(3).figure(0, False), tf.top_k_figure(tr.top_k(3), 0, False)),
        (tr.superposition(k=3).figure(0, 1), tf.superposition_figure(tr.superposition(k=3), 0, 1)),
        (lay.layer_entropy().figure(1), tf.layer_statistic_figure(lay.layer_entropy(), 1)),
    ]
    for a, b in pairs:
        assert isinstance(a, go.Figure) and a.to_json() == b.to_json()
    frame = lay.layer_entropy().to_frame()
    assert len(frame) == 2 * 3 * 3 and list(frame.columns) == [
        "example",
        "step",
        "layer",
        "entropy",
        "top1_token",
    ]
    assert frame["entropy"].tolist() == pytest.approx(lay.layer_entropy().values.reshape(-1))
    sup = tr.superposition(k=2).to_frame()
    assert len(sup) == 4 * 2 and sup["weight"].tolist()[:2] == pytest.approx(
        tr.top_k(2).probs[0, 0].tolist()
    )


def test_lens_and_inspector_name_no_method():
    """Alignment comes from the method registry: no method name as a string literal here."""
    import ast
    from pathlib import Path

    import workbench.lens
    import workbench.viz

    names = {"cot", "nocot", "coconut", "latent_sft"}
    files = sorted(Path(workbench.lens.__file__).parent.glob("*.py"))
    files.append(Path(workbench.viz.__file__).parent / "inspector.py")
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names, f"{path.name}:{node.lineno} names {node.value!r}"


# ----- a real (tiny, untrained) model -----------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _examples():
    from workbench.data.tasks import generate

    # 3-digit questions first: evaluate() sorts by question length, so its trace rows are permuted
    return generate("multiplication", 3, 0, digits_a=3) + generate(
        "multiplication", 2, 1, digits_a=2
    )


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_logit_lens_matches_manual_norm_and_head(tok, arch):
    from workbench.data.tokenizer import special_ids
    from workbench.engine.loop import run_latent
    from workbench.methods.layout import pad_prompts, prompt_ids

    model = (
        build_model(ModelConfig(arch=arch, n_layer=2, d_model=32, n_head=2), tok, seed=1)
        .float()
        .eval()
    )
    sp = special_ids(tok)
    texs = tokenize_examples(_examples(), tok)
    batch = pad_prompts([prompt_ids(t, sp) for t in texs], sp.pad)
    out = run_latent(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        sp,
        max_latent_steps=3,
        record_hidden=True,
        record_logits=True,
        max_new_tokens=4,
    )
    trace = out.trace
    tr = LatentTrajectory.from_trace(trace, model, tok, layers=True)
    hs = trace.hidden_states
    norm, head = final_norm(model), model.get_output_embeddings()
    L = hs.shape[2] - 1
    assert tr.layer_log_probs.shape == (len(texs), trace.num_steps, L + 1, len(tok))
    with torch.no_grad():
        for layer in range(L + 1):
            h = hs[:, :, layer]
            manual = head(norm(h) if layer < L else h).float().log_softmax(-1)
            assert torch.allclose(tr.layer_log_probs[:, :, layer], manual, atol=1e-5), layer
        # the last entry is already normed: the final lens layer is the LM-head read, no 2nd norm
        assert torch.allclose(tr.layer_log_probs[:, :, -1], trace.logits.log_softmax(-1), atol=1e-5)
        twice = head(norm(hs[:, :, -1])).float().log_softmax(-1)
        assert not torch.allclose(tr.layer_log_probs[:, :, -1], twice, atol=1e-4)
    assert torch.equal(torch.as_tensor(tr.top_k(5).ids)[..., 0], trace.topk_ids[..., 0])
    lay = tr.layer_entropy()
    fig = lay.figure(0)
    assert np.asarray(fig.data[0].z).shape == (L + 1, tr.steps_of(0))
    assert np.asarray(fig.data[0].text).shape == (L + 1, tr.steps_of(0))
    assert list(fig.data[0].y)[-1] == f"{L} (final)"
    # no hidden states -> a clear error for layers=True
    no_hs = trace.select(slice(None))
    no_hs.hidden_states = None
    with pytest.raises(ValueError, match="record_hidden"):
        LatentTrajectory.from_trace(no_hs, model, tok)


def test_from_eval_reorders_rows_and_keeps_fed_weights(tok):
    ex = _examples()
    model = build_model(ModelConfig(n_layer=2, d_model=32, n_head=2), tok, seed=2).float()
    spec = LatentSpec(make_feedback("superposition", top_k=4), None, 4)
    res = evaluate(model, tok, ex, spec=spec, record_trace=True, record_hidden=True, method="sft")
    assert res.trace.meta["example_index"] != list(range(len(ex)))  # the evaluator did permute rows
    tr = LatentTrajectory.from_eval(res, model, tok, ex, latents_per_step=1)
    assert tr.questions == [e["question"] for e in ex]
    assert tr.correct == res.per_example["correct"].tolist()
    texs = tokenize_examples(ex, tok)
    assert tr.aligned_targets[0][:3] == [list(s) for s in texs[0].steps]
    assert tr.aligned_targets[0][4] == []  # the final read replaced nothing
    assert tr.answer_ids[3] == texs[3].answer
    assert tr.weight_ids.shape[-1] == 4 and torch.allclose(
        tr.weight_probs[tr.fed].sum(-1), torch.ones(1), atol=1e-5
    )
    assert tr.superposition().source == "fed"
    df = tr.summary()
    assert len(df) == int(tr.valid.sum())
    assert {"entropy", "top1_token", "target_rank", "target_prob", "collapsed", "correct"} <= set(
        df.columns
    )
    assert df.loc[(df.example == 0) & (df.step == 0), "targets"].item() == tok.decode(
        texs[0].steps[0]
    )
    m = tr.metrics(k=5)
    json.dumps(m)  # JSON-able
    assert len(m["target_rank_by_latent"]) == tr.num_steps and m["n_examples"] == len(ex)
    sub = tr.select([1, 3])
    assert sub.questions == [ex[1]["question"], ex[3]["question"]] and sub.example_index == [1, 3]


def test_from_eval_alignment_keyword_and_shorthands(tok):
    from workbench.lens.alignment import Alignment

    ex = _examples()
    model = build_model(ModelConfig(n_layer=1, d_model=16, n_head=2), tok, seed=3).float()
    res = evaluate(model, tok, ex, spec=LatentSpec(None, None, 4), record_trace=True)
    texs = tokenize_examples(ex, tok)

    def targets(**kw):
        return LatentTrajectory.from_eval(res, model, tok, ex, layers=False, **kw).aligned_targets

    by_step = targets(alignment=Alignment(latents_per_step=2))
    assert by_step == targets(latents_per_step=2)
    assert by_step[0][:4] == [texs[0].steps[j // 2] for j in range(4)]
    fixed = targets(alignment=Alignment(tokens_per_latent=3))
    assert fixed == targets(fixed_rate=3)
    assert [t for seg in fixed[0] for t in seg] == texs[0].reasoning()[: 3 * 4]
    # nothing declared: by step with c = max(1, n_latent // n_steps), per example
    inferred = targets()
    for b, tex in enumerate(texs):
        c = max(1, 4 // len(tex.steps))
        assert inferred[b][:4] == Alignment(latents_per_step=c).targets(tex, 4)
    assert {max(1, 4 // len(t.steps)) for t in texs} == {1, 2}  # both cases occur
    with pytest.raises(ValueError, match="not both"):
        targets(alignment=Alignment(latents_per_step=2), latents_per_step=2)
    with pytest.raises(TypeError, match="Alignment"):
        targets(alignment=2)


# ----- report -------------------------------------------------------------------------------------


def test_report_inlines_plotly_once(tmp_path):
    tr = _constructed()
    figs = {
        "Top-k": tr.top_k(3).figure(0),
        "Entropy": tr.entropy().figure(0),
        "Superposition": tr.superposition().figure(0),
    }
    path = write_trajectory_report(
        tmp_path / "sub" / "report.html",
        figs,
        title="Test <report>",
        tables={"Summary": tr.summary()},
    )
    text = path.read_text(encoding="utf-8")
    assert text.count("plotly.js v") == 1  # the bundle's banner: inlined exactly once
    assert text.count("Plotly.newPlot") == 3
    assert "Test &lt;report&gt;" in text and "<table" in text and "t3" in text
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file left behind
    assert path.stat().st_mode & 0o044  # readable by others (not mkstemp's 0600)


def test_resolve_out_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(tmp_path))
    assert resolve_out_dir("runs/05_x") == tmp_path / "05_x"
    assert resolve_out_dir(tmp_path / "abs") == tmp_path / "abs"


def test_standard_report_has_every_view_for_two_methods(tok, tmp_path):
    """The report the notebook and the demo write: all views, both methods in the overlay."""
    from workbench.lens.views import trajectory_figures, write_standard_report

    ex = _examples()
    model = build_model(ModelConfig(n_layer=2, d_model=32, n_head=2), tok, seed=2).float()
    trajs = {}
    for name, spec in {
        "sft": LatentSpec(make_feedback("superposition", top_k=4), None, 4),
        "coconut": LatentSpec(None, None, 3),
    }.items():
        res = evaluate(
            model, tok, ex, spec=spec, record_trace=True, record_hidden=True, method=name
        )
        trajs[name] = LatentTrajectory.from_eval(res, model, tok, ex, latents_per_step=1)
    figs = trajectory_figures(trajs, "sft", top_k=3, example=1)
    assert len(figs) == 7 and all(isinstance(f, go.Figure) for f in figs.values())
    assert {tr.name for tr in figs["Methods compared"].data} >= {"sft", "coconut"}
    with pytest.raises(KeyError, match="cot"):
        trajectory_figures(trajs, "cot")
    with pytest.raises(IndexError, match="example=99"):
        trajectory_figures(trajs, "sft", example=99)
    path = write_standard_report(tmp_path / "r.html", trajs, "sft", top_k=3)
    text = path.read_text(encoding="utf-8")
    assert text.count("Plotly.newPlot") == 7 and "Per-step summary" in text


def test_metrics_report_alignment_against_another_examples_segments():
    """A latent aligned to its own CoT segment ranks it first.

    The control (another example's segment) does not.
    """
    rows = []
    for tok in (1, 6):
        r = [0.1 / (V - 1)] * V
        r[tok] = 0.9
        rows.append([r, r, r])
    lp = torch.stack([_dist(x) for x in rows])
    tr = LatentTrajectory(log_probs=lp, aligned_targets=[[[1], [1], []], [[6], [6], []]])
    m = tr.metrics(k=3)
    assert m["mean_target_rank"] == 1.0 and m["mean_target_prob"] == pytest.approx(0.9, rel=1e-4)
    assert m["control_mean_target_rank"] > 1.0 and m["control_mean_target_prob"] < 0.05


def test_run_files_are_readable_by_others(tmp_path):
    """Atomic writes must not keep mkstemp's 0600: results are meant to be shared."""
    from workbench.runs import write_json

    path = write_json(tmp_path / "metrics.json", {"a": 1})
    assert path.stat().st_mode & 0o044 and json.loads(path.read_text()) == {"a": 1}
