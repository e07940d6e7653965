"""The engine uses the current transformers API: none of its own calls warns of a deprecation.

transformers 5.24 renamed the models' ``past_key_values=`` argument to ``cache=`` and warns
(``FutureWarning``) on the old name; its ``output.past_key_values`` logs a deprecation
through the transformers logger. Both the inference loop and the training path run here with
such warnings turned into errors. The first test checks that this harness does catch the old
call, so a pass means something.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import pytest
import torch
import transformers
from transformers import DynamicCache

from workbench.data.layout import (
    build_sequence,
    collate,
    pad_prompts,
    prompt_ids,
    tokenize_examples,
)
from workbench.data.tasks import generate
from workbench.data.tokenizer import build_char_tokenizer, special_ids
from workbench.engine.feedback import make_feedback
from workbench.engine.forward import latent_forward, shifted_ce
from workbench.engine.loop import run_latent
from workbench.engine.stop import AnyOf, ArgmaxToken, FixedSteps, LearnedStopHead
from workbench.models.build import ModelConfig, build_model


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def no_deprecations():
    """FutureWarning / transformers' DeprecationWarning are errors; deprecation logs are failures.

    (``logger.warning_once`` logs a message once per process, so the log check can miss a call
    repeated after another test triggered it; the warnings check cannot.)
    """
    handler, tf_logger = _Records(), transformers.logging.get_logger("transformers")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    tf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.filterwarnings("error", category=DeprecationWarning, module=r"transformers")
            warnings.filterwarnings("error", category=DeprecationWarning, module=r"workbench")
            warnings.filterwarnings("error", ".*transformers", category=DeprecationWarning)
            yield
    finally:
        tf_logger.removeHandler(handler)
        transformers.logging.set_verbosity(verbosity)
    deprecated = [m for m in handler.messages if "deprecat" in m.lower()]
    assert not deprecated, deprecated


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _model(tok, arch):
    return build_model(ModelConfig(arch=arch, n_layer=1, d_model=32, n_head=2), tok, seed=0)


def _examples():
    return generate("multiplication", 2, 0, digits_a=2) + generate("multiplication", 2, 1)


def test_harness_catches_the_deprecated_cache_kwarg(tok):
    model = _model(tok, "gpt2").eval()
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(FutureWarning, match="past_key_values"), no_deprecations():
        model.base_model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_inference_loop_uses_current_api(tok, arch, one_thread):
    sp = special_ids(tok)
    model = _model(tok, arch).eval()
    batch = pad_prompts([prompt_ids(t, sp) for t in tokenize_examples(_examples(), tok)], sp.pad)
    rules = [
        (make_feedback("hidden"), FixedSteps(2)),
        (make_feedback("superposition", top_k=4), ArgmaxToken(sp.eot)),
        (make_feedback("gumbel", top_k=4), AnyOf(FixedSteps(3), LearnedStopHead(32))),
        (make_feedback("projected", d_model=32).eval(), None),
    ]
    with no_deprecations():
        for feedback, stop in rules:
            out = run_latent(
                model,
                batch["input_ids"],
                batch["attention_mask"],
                sp,
                feedback=feedback,
                stop=stop,
                max_latent_steps=3,
                max_new_tokens=4,
                record_hidden=True,
                record_logits=True,
                generator=torch.Generator().manual_seed(0),
            )
            assert out.generated.shape[0] == len(_examples())
        # plain decoding (CoT / no-CoT): no latents, the model writes its own <eot>
        run_latent(model, batch["input_ids"], batch["attention_mask"], sp, append_eot=False)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_training_path_uses_current_api(tok, arch, one_thread):
    sp = special_ids(tok)
    model = _model(tok, arch).train()
    texs = tokenize_examples(_examples(), tok)
    seqs = [
        build_sequence(t, sp, n_latent=n, first_step=min(n, len(t.steps)))
        for t, n in zip(texs, [0, 2, 1, 2], strict=True)
    ]
    batch = collate(seqs, sp.pad)
    feedback = make_feedback("projected", d_model=32)
    with no_deprecations():
        out = latent_forward(model, batch, feedback, torch.Generator().manual_seed(0))
        shifted_ce(out.logits, batch["labels"]).backward()
    assert out.latent_embeds is not None and out.latent_embeds.shape[1] == 2
