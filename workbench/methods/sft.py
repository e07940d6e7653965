"""Plain teacher-forced SFT on a token layout: the loop the explicit baselines share.

CoT (question, steps, answer) and no-CoT (question, answer) differ only in the layout; both
train a new or given model with next-token cross-entropy through the shared Trainer.
"""

from __future__ import annotations

from workbench.data.layout import SequenceCollator, tokenize_examples
from workbench.methods.base import (
    default_train_config,
    starting_model,
    val_accuracy_fn,
    with_time_budget,
)


def train_sft(
    name: str,
    data,
    base=None,
    *,
    with_steps: bool,
    config=None,
    train_config=None,
    model_config=None,
    callbacks=None,
    seed: int = 0,
    time_budget_s: float | None = None,
):
    """SFT with (``with_steps``) or without the reasoning steps; returns a ``TrainedModel``.

    With ``time_budget_s`` training runs for that wall time: the lr schedule follows the
    elapsed time (``TrainConfig.schedule_by_time``), so it completes whatever the machine's speed.
    """
    from workbench.config import ConfigError
    from workbench.models.build import count_parameters

    if config is not None:
        raise ConfigError(f"{name} has no settings of its own: pass train_config, not config")
    from workbench.train import Trainer
    from workbench.trained import TrainedModel

    tok = data.tokenizer
    model = starting_model(base, tok, model_config, seed)
    cfg = with_time_budget(train_config or default_train_config(seed=seed), time_budget_s)
    eval_fn = val_accuracy_fn(tok, data.val, lambda: None) if data.val and cfg.eval_every else None
    items = tokenize_examples(data.train, tok)
    collator = SequenceCollator(tok, with_steps=with_steps)
    trainer = Trainer(model, items, collator, cfg, eval_fn=eval_fn, callbacks=callbacks)
    trainer.train()
    hist = trainer.log_history.to_pandas()
    meta = {
        "params": count_parameters(model),
        "train_steps": trainer.step,
        "seed": seed,
        "data": data.describe(),
    }
    return TrainedModel(name, trainer.unwrapped_model, tok, None, hist, data.task, data.test, meta)
