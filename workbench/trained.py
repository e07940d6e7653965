"""A model trained with one method: weights, tokenizer, inference spec, history, in one folder.

Every method's train function returns a :class:`TrainedModel`; notebooks, the CLI and the demo
evaluate, inspect and save it the same way. A saved folder holds ``save_pretrained``
safetensors, the tokenizer, ``spec.safetensors`` (every trainable part of the inference spec:
a projection, a learned stop head), ``parts/<name>/`` for each auxiliary model a method keeps
(ATP-Latent's step decoder), and ``workbench_method.json`` (method, task, spec rules by name and
config, meta), written atomically as one folder. Nothing is unpickled on load.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from workbench import __version__
from workbench.data.schema import Example
from workbench.engine.spec import (
    LatentSpec,
    load_spec_parts,
    save_spec_parts,
    spec_from_dict,
    spec_to_dict,
)
from workbench.errors import CheckpointError, MissingFileError
from workbench.io import atomic_folder
from workbench.models.build import load_local_model

PARTS_DIR = "parts"
"""Sub-folder of the auxiliary models (:attr:`TrainedModel.parts`)."""
METHOD_FILE = "workbench_method.json"
"""The method description inside a saved folder."""
FORMAT_VERSION = 1
"""Version of the saved-folder layout; a folder from a newer layout is refused by name."""


@dataclass
class TrainedModel:
    """A model trained with one method, ready to evaluate, inspect, save."""

    method: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: LatentSpec | None = None
    history: pd.DataFrame | None = None
    task: str = "multiplication"
    test_examples: list[Example] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    parts: dict[str, PreTrainedModel] = field(default_factory=dict)
    """Auxiliary models the method keeps beside the LM, by name (ATP-Latent's
    ``step_decoder``); each is saved under ``parts/<name>/`` with ``save_pretrained``."""

    def evaluate(self, examples=None, **kwargs):
        """Evaluate on ``examples`` (default: the test split it was trained with); ``spec=``
        overrides the model's own (e.g. ATP's sampled mode)."""
        from workbench.eval.evaluator import evaluate

        examples = examples if examples is not None else self.test_examples
        kwargs.setdefault("spec", self.spec)
        return evaluate(self.model, self.tokenizer, examples, method=self.method, **kwargs)

    def save(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write model, tokenizer, spec parts and method description to ``path`` atomically.

        ``dtype`` (e.g. ``torch.float16``) stores the weights smaller; loading returns fp32.
        """
        path = Path(path)
        with atomic_folder(path) as tmp:
            model = self.model if dtype is None else copy.deepcopy(self.model).to(dtype)
            model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            parts = save_spec_parts(self.spec, tmp) if self.spec is not None else []
            for name, part in self.parts.items():
                part = part if dtype is None else copy.deepcopy(part).to(dtype)
                part.save_pretrained(tmp / PARTS_DIR / name, safe_serialization=True)
            desc = {
                "format_version": FORMAT_VERSION,
                "workbench_version": __version__,
                "method": self.method,
                "task": self.task,
                "spec": spec_to_dict(self.spec),
                "spec_parts": parts,
                "parts": sorted(self.parts),
                "meta": self.meta,
            }
            (tmp / METHOD_FILE).write_text(json.dumps(desc, indent=2, default=str))
            if self.history is not None:
                self.history.to_csv(tmp / "history.csv", index=False)
        return path

    @classmethod
    def load(
        cls,
        path: str | Path,
        test_examples: list[Example] | None = None,
        *,
        method: str | None = None,
    ) -> TrainedModel:
        """Load a folder written by :meth:`save`; ``method`` (optional) is checked against it.

        Every problem is a :class:`~workbench.errors.CheckpointError` naming the folder, the
        file and the fix.
        """
        path = Path(path)
        if not path.is_dir():
            raise MissingFileError(
                f"{path}: no such checkpoint folder (fix: check the path; a model is saved by "
                "`workbench train --out DIR` or TrainedModel.save)"
            )
        desc = read_method_file(path)
        if method is not None and desc["method"] != method:
            raise CheckpointError(
                f"{path} holds a {desc['method']!r} model, not {method!r}; "
                f"pass a folder saved by the {method!r} method"
            )
        fix = "re-save the model with TrainedModel.save, or `make checkpoints` for the shipped ones"
        if not (path / "tokenizer.json").exists():
            raise CheckpointError(f"{path}: the tokenizer is missing (no tokenizer.json); {fix}")
        try:
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(
                f"{path}: the tokenizer cannot be loaded ({first}); {fix}"
            ) from err
        model = load_local_model(path, tok)
        try:
            spec = spec_from_dict(desc.get("spec"), d_model=model.config.hidden_size)
            if spec is not None:
                load_spec_parts(spec, path)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{path}/{METHOD_FILE}: the inference spec cannot be rebuilt ({err}); re-save the "
                "model with this workbench version"
            ) from err
        parts = {}
        for name in desc.get("parts", []):
            where = path / PARTS_DIR / str(name)
            if not (where / "config.json").exists():
                raise CheckpointError(
                    f"{path}/{METHOD_FILE} lists the part {name!r}, but {where} holds no model; "
                    f"{fix}"
                )
            parts[str(name)] = load_local_model(where, tok)
        hist_file = path / "history.csv"
        hist = pd.read_csv(hist_file) if hist_file.exists() else None
        return cls(
            desc["method"],
            model,
            tok,
            spec,
            hist,
            desc.get("task", ""),
            test_examples or [],
            desc.get("meta", {}),
            parts,
        )


def read_method_file(path: Path) -> dict:
    """The parsed ``workbench_method.json`` of a saved folder, checked for layout and fields."""
    desc_file = path / METHOD_FILE
    if not desc_file.exists():
        raise CheckpointError(
            f"{path} has no {METHOD_FILE}: it was not saved by TrainedModel.save (for a plain "
            "transformers folder use workbench.models.build.load_local_model)"
        )
    try:
        desc = json.loads(desc_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{desc_file} is not valid JSON ({err}); the file is damaged: re-save the model"
        ) from err
    if not isinstance(desc, dict) or "method" not in desc:
        raise CheckpointError(f"{desc_file} has no 'method' field; re-save the model")
    version = desc.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{desc_file} was written by workbench {desc.get('workbench_version', '?')} in layout "
            f"version {version}; this workbench ({__version__}) reads up to {FORMAT_VERSION}: "
            "upgrade the workbench"
        )
    return desc
