"""Inference specs save and load whole: every registered rule's config and weights round-trip.

A spec rebuilt from its JSON (:func:`spec_to_dict` / :func:`spec_from_dict`) with its weights
loaded back (:func:`save_spec_parts` / :func:`load_spec_parts`) must drive the engine to exactly
the same tokens, latent counts and fed embeddings as the original. A setting that a rule's
``config()`` drops (e.g. CODI's ``proj_dim``) or a weight that is not saved (e.g. a learned stop
head's) breaks that.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from workbench.config import ConfigError
from workbench.data.layout import pad_prompts, prompt_ids, tokenize_examples
from workbench.data.tasks import generate
from workbench.data.tokenizer import build_char_tokenizer, special_ids
from workbench.engine.feedback import (
    FEEDBACK_RULES,
    GaussianFeedback,
    GumbelFeedback,
    HiddenFeedback,
    PauseFeedback,
    ProjectedFeedback,
    SuperpositionFeedback,
    make_feedback,
)
from workbench.engine.loop import run_latent
from workbench.engine.spec import (
    LEGACY_FEEDBACK_FILE,
    SPEC_PARTS_FILE,
    LatentSpec,
    load_spec_parts,
    save_spec_parts,
    spec_from_dict,
    spec_to_dict,
)
from workbench.engine.stop import (
    STOP_RULES,
    AnyOf,
    ArgmaxToken,
    EntropyColdStop,
    FixedSteps,
    LearnedStopHead,
    StepStopHead,
    make_stop,
)
from workbench.errors import CheckpointError
from workbench.models.build import ModelConfig, build_model

D = 32
MAX_LATENT = 5


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def setup(tok, one_thread):
    sp = special_ids(tok)
    model = build_model(ModelConfig(arch="gpt2", n_layer=1, d_model=D, n_head=2), tok, seed=3)
    model = model.float().eval()
    examples = generate("multiplication", 3, 0, digits_a=2) + generate(
        "multiplication", 3, 1, digits_a=3, digits_b=2
    )
    batch = pad_prompts([prompt_ids(t, sp) for t in tokenize_examples(examples, tok)], sp.pad)
    return model, sp, batch


def _stop_head(seed: int, min_steps: int = 1) -> LearnedStopHead:
    """A stop head with random, non-default weights (a fresh head would stop differently)."""
    head = LearnedStopHead(D, threshold=0.5, min_steps=min_steps)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.head.weight.copy_(torch.randn(1, D, generator=g) * 3 / math.sqrt(D))
        head.head.bias.copy_(torch.randn(1, generator=g))
    return head


def _pause_vector(seed: int) -> PauseFeedback:
    """A pause rule whose vector is not its init (rebuilt from its config alone it differs)."""
    fb = PauseFeedback(D, init_std=0.5, seed=seed)
    with torch.no_grad():
        fb.vector.add_(torch.randn(D, generator=torch.Generator().manual_seed(seed + 1)))
    return fb


def _gaussian(seed: int, mode: str) -> GaussianFeedback:
    """ATP's latent head with weights moved off their init."""
    torch.manual_seed(seed)
    fb = GaussianFeedback(D, mode=mode, init_logvar=-2.0)
    with torch.no_grad():
        for p in fb.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return fb


def _step_stop(seed: int) -> StepStopHead:
    """ATP's stop head, sharpened so that samples stop at different groups."""
    torch.manual_seed(seed)
    head = StepStopHead(D, group=2, min_steps=2)
    with torch.no_grad():
        head.net[2].weight.mul_(30.0)
    return head


def _feedback_cases():
    torch.manual_seed(0)
    return {
        "hidden": HiddenFeedback(),
        # proj_dim != d_model: rebuilt without proj_dim, the weights would not fit
        "projected": ProjectedFeedback(D, proj_dim=24, dropout=0.1),
        "superposition": SuperpositionFeedback(top_k=5, temperature=0.7),
        "gumbel": GumbelFeedback(top_k=6, temperature=0.9, gumbel_tau=0.4, noise_scale=0.8),
        "learned_constant": _pause_vector(seed=2),
        "gaussian": _gaussian(5, "sample"),  # last: it reseeds the global RNG
    }


def _stop_cases(sp):
    return {
        "fixed": FixedSteps(3),
        "argmax": ArgmaxToken(sp.eot, min_steps=1),
        "cold": EntropyColdStop(tau=100.0, k=2),
        # seeds picked so that the heads stop samples at different steps on this tiny model
        "learned": _stop_head(seed=7),
        "step_head": _step_stop(seed=1),
        "any": AnyOf(FixedSteps(4), _stop_head(seed=4, min_steps=2)),
    }


def _run(model, sp, batch, spec: LatentSpec):
    for rule in (spec.feedback, spec.stop):
        if rule is not None:
            rule.eval()
    return run_latent(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        sp,
        feedback=spec.feedback,
        stop=spec.stop,
        max_latent_steps=spec.max_latent_steps,
        max_new_tokens=4,
        append_eot=spec.append_eot,
        generator=torch.Generator().manual_seed(7),
    )


def _round_trip(spec: LatentSpec, folder) -> tuple[LatentSpec, dict, list[str]]:
    desc = json.loads(json.dumps(spec_to_dict(spec)))  # JSON-able, no default=str
    parts = save_spec_parts(spec, folder)
    back = spec_from_dict(desc, d_model=D)
    load_spec_parts(back, folder)
    return back, desc, parts


def test_every_registered_rule_has_a_case(tok):
    """New rules must be added to the round-trip cases below."""
    assert set(_feedback_cases()) == set(FEEDBACK_RULES)
    assert set(_stop_cases(special_ids(tok))) == set(STOP_RULES)
    for name, rule in {**_feedback_cases(), **_stop_cases(special_ids(tok))}.items():
        assert rule.name == name
        # config() holds every constructor argument (nothing like proj_dim gets lost)
        assert set(rule.config()) == set(type(rule).config_keys()), name


@pytest.mark.parametrize("name", sorted(FEEDBACK_RULES))
def test_feedback_rule_round_trip(setup, tmp_path, name):
    model, sp, batch = setup
    fb = _feedback_cases()[name]
    spec = LatentSpec(fb, ArgmaxToken(sp.eot, min_steps=2), MAX_LATENT, True)
    before = _run(model, sp, batch, spec)
    back, desc, parts = _round_trip(spec, tmp_path)
    assert desc["feedback"] == {"name": name, "config": fb.config()}
    assert type(back.feedback) is type(fb) and back.feedback.config() == fb.config()
    assert spec_to_dict(back) == desc
    assert parts == ([SPEC_PARTS_FILE] if list(fb.parameters()) else [])
    _assert_same_state(fb, back.feedback)
    _assert_same_run(before, _run(model, sp, batch, back))


@pytest.mark.parametrize("name", sorted(STOP_RULES))
def test_stop_rule_round_trip(setup, tmp_path, name):
    model, sp, batch = setup
    stop = _stop_cases(sp)[name]
    spec = LatentSpec(_feedback_cases()["projected"], stop, MAX_LATENT, True)
    before = _run(model, sp, batch, spec)
    back, desc, parts = _round_trip(spec, tmp_path)
    assert desc["stop"] == {"name": name, "config": stop.config()}
    assert type(back.stop) is type(stop) and back.stop.config() == stop.config()
    assert back.stop.describe() == stop.describe()
    assert spec_to_dict(back) == desc and parts == [SPEC_PARTS_FILE]
    with safe_open(str(tmp_path / SPEC_PARTS_FILE), "pt") as f:
        keys = set(f.keys())
    assert {k for k in keys if k.startswith("feedback.")} == {
        f"feedback.{k}" for k in spec.feedback.state_dict()
    }
    assert {k for k in keys if k.startswith("stop.")} == {f"stop.{k}" for k in stop.state_dict()}
    _assert_same_state(spec.feedback, back.feedback)
    _assert_same_state(stop, back.stop)
    after = _run(model, sp, batch, back)
    _assert_same_run(before, after)
    if name in ("learned", "any"):
        # the head's weights decide: samples stop at different steps, and a fresh head differs
        assert len(set(before.trace.n_latent.tolist())) > 1
        assert any(k.endswith("head.weight") for k in keys)
        flipped = spec_from_dict(desc, d_model=D)
        load_spec_parts(flipped, tmp_path)
        with torch.no_grad():
            for m in flipped.stop.modules():
                if isinstance(m, LearnedStopHead):  # p -> 1 - p: every decision flips
                    m.head.weight.neg_(), m.head.bias.neg_()
        other = _run(model, sp, batch, flipped)
        assert not torch.equal(other.trace.n_latent, before.trace.n_latent)


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _assert_same_run(a, b):
    assert torch.equal(a.generated, b.generated)
    assert torch.equal(a.n_generated, b.n_generated)
    assert torch.equal(a.trace.n_latent, b.trace.n_latent)
    assert torch.equal(a.trace.embeds, b.trace.embeds)
    assert a.trace.feedback == b.trace.feedback and a.trace.stop_rule == b.trace.stop_rule


def test_nothing_to_save(tmp_path):
    spec = LatentSpec(SuperpositionFeedback(), FixedSteps(2), 2, True)
    (tmp_path / SPEC_PARTS_FILE).write_bytes(b"stale")
    assert save_spec_parts(spec, tmp_path) == []
    assert not (tmp_path / SPEC_PARTS_FILE).exists()
    assert load_spec_parts(spec, tmp_path) == []
    assert spec_from_dict(spec_to_dict(LatentSpec()), d_model=D) == LatentSpec()


@pytest.mark.parametrize(
    "name, expect",
    [
        ("coconut", {"feedback": HiddenFeedback, "stop": FixedSteps, "n": 6, "max": 6}),
        ("latent_sft", {"feedback": SuperpositionFeedback, "stop": ArgmaxToken, "max": 16}),
    ],
)
def test_old_checkpoint_json_parses(repo_root, name, expect):
    desc = json.loads((repo_root / "checkpoints" / name / "workbench_method.json").read_text())
    assert "kind" in desc["spec"]["stop"]  # really the old format
    spec = spec_from_dict(desc["spec"], d_model=128)
    assert type(spec.feedback) is expect["feedback"] and type(spec.stop) is expect["stop"]
    assert spec.max_latent_steps == expect["max"] and spec.append_eot is True
    if "n" in expect:
        assert spec.stop.n == expect["n"]
    if name == "latent_sft":
        assert (spec.feedback.top_k, spec.feedback.temperature) == (10, 1.0)
        assert (spec.stop.token_id, spec.stop.min_steps) == (3, 0)
    # the new format describes the same spec
    again = spec_from_dict(json.loads(json.dumps(spec_to_dict(spec))), d_model=128)
    assert spec_to_dict(again) == spec_to_dict(spec)
    assert load_spec_parts(spec, repo_root / "checkpoints" / name) == []


def test_old_projected_feedback_loads(tmp_path):
    """Old format: ``{"name": "projected", "kwargs": {}}`` and un-prefixed feedback.safetensors."""
    torch.manual_seed(5)
    old = ProjectedFeedback(D)
    save_file(
        {k: v.contiguous() for k, v in old.state_dict().items()}, tmp_path / "feedback.safetensors"
    )
    desc = {
        "feedback": {"name": "projected", "kwargs": {}},
        "stop": {"kind": "cold", "tau": 0.5, "k": 3},
        "max_latent_steps": 4,
        "append_eot": False,
    }
    spec = spec_from_dict(desc, d_model=D)
    assert spec.feedback.config() == {"d_model": D, "proj_dim": None, "dropout": 0.0}
    assert (spec.stop.tau, spec.stop.k) == (0.5, 3)
    assert load_spec_parts(spec, tmp_path) == [LEGACY_FEEDBACK_FILE]
    _assert_same_state(old, spec.feedback)


def test_missing_or_wrong_weights_are_checkpoint_errors(tmp_path):
    spec = LatentSpec(ProjectedFeedback(D, proj_dim=8), _stop_head(0), 3, True)
    with pytest.raises(CheckpointError, match="no spec.safetensors"):
        load_spec_parts(spec, tmp_path)
    save_spec_parts(spec, tmp_path)
    # a spec whose projection has another width does not take these weights
    other = LatentSpec(ProjectedFeedback(D, proj_dim=16), _stop_head(0), 3, True)
    with pytest.raises(CheckpointError, match="feedback"):
        load_spec_parts(other, tmp_path)
    # a spec without the stop head does not silently ignore its weights
    with pytest.raises(CheckpointError, match="stop"):
        load_spec_parts(LatentSpec(ProjectedFeedback(D, proj_dim=8), FixedSteps(3), 3), tmp_path)


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: make_feedback("superposition", top_k=0), "SuperpositionFeedback.top_k = 0"),
        (lambda: make_feedback("superposition", temperature=0.0), "SuperpositionFeedback.temp"),
        (lambda: SuperpositionFeedback(top_k=2.5), "SuperpositionFeedback.top_k = 2.5"),
        (lambda: make_feedback("gumbel", top_k=0), "GumbelFeedback.top_k"),
        (lambda: make_feedback("gumbel", gumbel_tau=0.0), "GumbelFeedback.gumbel_tau"),
        (lambda: make_feedback("gumbel", noise_scale=-1.0), "GumbelFeedback.noise_scale"),
        (lambda: make_feedback("projected", d_model=0), "ProjectedFeedback.d_model"),
        (lambda: make_feedback("projected", d_model=D, proj_dim=0), "ProjectedFeedback.proj_dim"),
        (lambda: make_feedback("projected", d_model=D, dropout=1.0), "ProjectedFeedback.dropout"),
        (lambda: make_stop("fixed", n=-1), "FixedSteps.n = -1"),
        (lambda: make_stop("argmax", token_id=-2), "ArgmaxToken.token_id"),
        (lambda: make_stop("argmax", token_id=3, min_steps=-1), "ArgmaxToken.min_steps"),
        (lambda: make_stop("cold", tau=0.0), "EntropyColdStop.tau"),
        (lambda: make_stop("cold", k=0), "EntropyColdStop.k = 0"),
        (lambda: make_stop("learned", d_model=D, threshold=1.5), "LearnedStopHead.threshold"),
        (lambda: make_stop("learned", d_model=D, min_steps=-1), "LearnedStopHead.min_steps"),
        (lambda: make_stop("learned", d_model=0), "LearnedStopHead.d_model"),
        (lambda: make_stop("any", rules=[{"name": "cold", "config": {"k": 0}}]), "EntropyCold"),
        (lambda: make_feedback("superpositon"), "unknown feedback rule 'superpositon'"),
        (lambda: make_stop("fixed", n=2, steps=3), "unknown key(s) ['steps']"),
        (lambda: make_stop("learned"), "needs ['d_model']"),
    ],
)
def test_out_of_range_configs_raise_config_error(build, field):
    with pytest.raises(ConfigError) as err:
        build()
    assert field in str(err.value)
    assert isinstance(err.value, ValueError)


def test_config_error_message_style():
    with pytest.raises(ConfigError) as err:
        SuperpositionFeedback(top_k=0)
    assert str(err.value) == "SuperpositionFeedback.top_k = 0: expected a number >= 1"
    with pytest.raises(ConfigError, match=r"one of \['gaussian', 'gumbel', 'hidden'"):
        make_feedback("nope")


def test_unsaveable_and_mismatched_specs():
    with pytest.raises(ConfigError, match="per-sample"):
        FixedSteps(torch.tensor([1, 2])).config()
    with pytest.raises(ConfigError, match="per-sample"):
        spec_to_dict(LatentSpec(None, FixedSteps(torch.tensor([1, 2])), 2))
    desc = spec_to_dict(LatentSpec(None, LearnedStopHead(D), 3))
    with pytest.raises(ConfigError, match="hidden size 64"):
        spec_from_dict(desc, d_model=64)
    with pytest.raises(ConfigError, match="unknown key"):
        spec_from_dict({**desc, "stop_rule": None}, d_model=D)
    with pytest.raises(ConfigError, match="LatentSpec.max_latent_steps"):
        LatentSpec(max_latent_steps=-1)
