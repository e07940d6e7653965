"""Pause tokens under Coconut's curriculum: the control for "does the fed state carry anything?".

RESEARCH Part A 7 (item 3, "Controls make a result interpretable"): a third-party "pause as
thought" run with Coconut's 7-stage curriculum reached 96.6 on ProsQA against Coconut's 97.0, so
much of the graph gain comes from the curriculum and the extra positions, not from the fed-back
hidden state (Coconut's own Table 1, RESEARCH Part A 2.3: "pause as thought" 24.1 / 100.0 /
96.6 against Coconut 34.1 / 99.8 / 97.0 on GSM8k / ProntoQA / ProsQA).

Everything is Coconut's (RESEARCH Part A 2.1: layout, collator, loss, stages, optimizer resets,
``uniform_prob``, final-stage inference with a forced ``<eot>``): :func:`train` calls
:func:`workbench.methods.coconut.train` with a :class:`PauseConfig`, whose only difference is the
feedback rule, :class:`~workbench.engine.feedback.PauseFeedback`: one learned vector fed at every
latent slot whatever the hidden state. It trains with the model and is saved with the spec
(``spec.safetensors``).

Deviation from the Coconut paper's "pause as thought": there the latent slots hold the
``<latent>`` token, whose embedding is a row of the (trained) embedding matrix; here the vector
is a separate parameter of the feedback rule, so the token embedding stays what the CoT base
had and the ablations of :mod:`workbench.eval.ablations` can tell the two apart.

Measured on the graph recipe (row ``pause_l2``, from the 97.4% CoT, Coconut's 1,000 + 2,000
steps, one latent per step): 66.0% (no-CoT 63.6%), against plain Coconut's 69.0% and
step-supervised Coconut's 89.6%: here the fed state, once supervised, is what carries the gain.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from workbench.config import ConfigError, check_range, check_that
from workbench.engine.feedback import FeedbackRule, PauseFeedback
from workbench.engine.spec import LatentSpec
from workbench.lens.alignment import Alignment
from workbench.methods import coconut
from workbench.methods.base import MethodRecord
from workbench.methods.coconut import CoconutConfig

NAME = "pause"


@dataclass
class PauseConfig(CoconutConfig):
    """Coconut's curriculum settings (see :class:`~workbench.methods.coconut.CoconutConfig`)
    with every latent input one learned vector."""

    feedback: str = PauseFeedback.name
    """Fixed: the engine rule that feeds one learned vector (any other value is refused)."""
    pause_init_std: float = 0.02
    """Std of the pause vector's seeded normal init (``seed`` seeds it; 0: zeros)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_that(
            self,
            "feedback",
            self.feedback == PauseFeedback.name,
            f"{PauseFeedback.name!r} (the pause method feeds one learned vector; other feedback "
            "rules belong to CoconutConfig)",
        )
        check_range(self, "pause_init_std", ge=0.0)

    def make_feedback(self, d_model: int) -> FeedbackRule:
        """The pause rule, its init seeded by ``seed``."""
        return PauseFeedback(d_model, init_std=self.pause_init_std, seed=self.seed)

    def inference_spec(self, feedback: FeedbackRule | None = None) -> LatentSpec:
        """Coconut's final-stage spec fed by the trained pause rule (which must be given)."""
        if feedback is None:
            raise ValueError(
                "the pause spec needs the trained PauseFeedback (its learned vector); pass the "
                "TrainedModel's spec.feedback"
            )
        return super().inference_spec(feedback)


def train(
    data,
    base=None,
    *,
    config: PauseConfig | None = None,
    train_config=None,
    model_config=None,
    callbacks=None,
    seed: int = 0,
    time_budget_s: float | None = None,
):
    """Coconut's curriculum (:func:`workbench.methods.coconut.train`) with pause latents, from a
    CoT-trained ``base`` (copied, never modified); returns a ``TrainedModel`` named ``pause``.

    Step-bounded like Coconut: ``time_budget_s`` raises.
    """
    if time_budget_s is not None:
        raise ConfigError(
            "pause trains Coconut's step-bounded curriculum: set PauseConfig.steps_per_stage "
            "instead of a time budget"
        )
    pc = config or PauseConfig(seed=seed)
    if not isinstance(pc, PauseConfig):
        raise TypeError(f"config = {type(pc).__name__}: expected a PauseConfig")
    tm = coconut.train(
        data,
        base,
        config=pc,
        train_config=train_config,
        model_config=model_config,
        callbacks=callbacks,
        seed=seed,
    )
    tm.method = NAME
    return tm


def alignment(meta: dict) -> Alignment:
    """By step, as Coconut: latent ``j`` sits where reasoning step ``j // c`` was."""
    cfg = meta.get("config") or {}
    return Alignment(latents_per_step=int(cfg.get("c_thought", PauseConfig.c_thought)))


def quick_config(seed: int = 0) -> dict:
    """Coconut's short curriculum (:func:`workbench.methods.coconut.quick_config`), pause-fed."""
    quick = coconut.quick_config(seed)
    settings = {**asdict(quick["config"]), "feedback": PauseFeedback.name}
    return {**quick, "config": PauseConfig(**settings)}


RECORD = MethodRecord(
    name=NAME,
    summary="pause tokens: one learned vector at every latent, under Coconut's curriculum",
    train=train,
    config_cls=PauseConfig,
    inference_spec=lambda cfg, tokenizer, feedback=None: cfg.inference_spec(feedback),
    alignment=alignment,
    quick_config=quick_config,
    needs_base=True,
    notebook="01_coconut.ipynb",
)
