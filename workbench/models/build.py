"""Build the small causal LM the workbench trains from scratch, or load a local checkpoint.

One call, ``build_model``, covers both: a GPT-2 or Llama architecture from a
:class:`ModelConfig` (default about 3.2M parameters: 4 layers, d=256, which learns 3x3
multiplication with CoT in minutes on CPU), or ``model_name_or_path`` pointing to a local
folder (never a hub download: ``local_files_only=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from workbench.config import check_choice, check_range, check_that
from workbench.errors import CheckpointError, MissingFileError

ARCHITECTURES = ("gpt2", "llama")


@dataclass
class ModelConfig:
    """Shape of a from-scratch model (ignored when ``model_name_or_path`` is set)."""

    arch: str = "gpt2"
    """``gpt2`` (learned absolute positions, LayerNorm) or ``llama`` (RoPE, RMSNorm, SwiGLU)."""
    n_layer: int = 4
    """Transformer blocks."""
    d_model: int = 256
    """Hidden size; also the size of a continuous thought."""
    n_head: int = 4
    """Attention heads; must divide ``d_model``."""
    d_ff: int | None = None
    """MLP width; ``None`` means 4 * d_model (GPT-2) or 4 * d_model (Llama, SwiGLU)."""
    max_positions: int = 256
    """Longest sequence (question + reasoning + answer) the model sees."""
    dropout: float = 0.0
    """Dropout in attention, residual and embeddings (0 suits tiny synthetic tasks)."""
    tie_embeddings: bool = True
    """Share input embedding and LM head (then ``E`` for superpositions equals the LM head)."""
    model_name_or_path: str | None = None
    """A local folder with a saved HF causal LM; when set, the shape fields above are ignored."""
    attn_implementation: str = "sdpa"
    """``sdpa`` or ``eager``; custom 4-D masks force one of these (never flash attention)."""

    def __post_init__(self) -> None:
        check_choice(self, "arch", ARCHITECTURES)
        for name in ("n_layer", "d_model", "n_head", "max_positions"):
            check_range(self, name, ge=1)
        check_range(self, "d_ff", ge=1, allow_none=True)
        check_that(
            self, "d_model", self.d_model % self.n_head == 0, f"divisible by n_head={self.n_head}"
        )
        check_range(self, "dropout", ge=0.0, lt=1.0)
        check_choice(self, "attn_implementation", ("sdpa", "eager"))


def build_model(
    config: ModelConfig | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    model_name_or_path: str | Path | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """A causal LM built from ``config`` (init seeded by ``seed``) or loaded from a local folder.

    ``tokenizer`` fixes the vocabulary size and special ids of a new model; for a loaded
    model it resizes the embeddings when the tokenizer has gained tokens.
    """
    config = config or ModelConfig()
    path = model_name_or_path or config.model_name_or_path
    if path is not None:
        return load_local_model(path, tokenizer, attn_implementation=config.attn_implementation)
    if tokenizer is None:
        raise ValueError("build_model needs a tokenizer to size a new model (tokenizer=...)")
    vocab = len(tokenizer)
    ids = dict(
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    d_ff = config.d_ff or 4 * config.d_model
    if config.arch == "gpt2":
        hf = GPT2Config(
            vocab_size=vocab,
            n_positions=config.max_positions,
            n_embd=config.d_model,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_inner=d_ff,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            tie_word_embeddings=config.tie_embeddings,
            **ids,
        )
        cls = GPT2LMHeadModel
    else:
        hf = LlamaConfig(
            vocab_size=vocab,
            hidden_size=config.d_model,
            intermediate_size=d_ff,
            num_hidden_layers=config.n_layer,
            num_attention_heads=config.n_head,
            num_key_value_heads=config.n_head,
            max_position_embeddings=config.max_positions,
            attention_dropout=config.dropout,
            tie_word_embeddings=config.tie_embeddings,
            **ids,
        )
        cls = LlamaForCausalLM
    hf._attn_implementation = config.attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(hf)
    return model


def load_local_model(
    path: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype | str = torch.float32,
) -> PreTrainedModel:
    """Load a causal LM saved with ``save_pretrained`` from a local folder (no network).

    ``dtype`` defaults to fp32 (right for CPU work); pass ``"auto"`` to keep the stored dtype.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(
            f"model_name_or_path={str(path)!r} does not exist; the workbench loads local folders "
            "only (download the checkpoint yourself, then pass its folder)"
        )
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path}: no config.json; this is not a saved model folder")
    weights = sorted(path.glob("*.safetensors"))
    weights = [w for w in weights if w.name.startswith("model")]
    if not weights:
        raise CheckpointError(
            f"{path}: no model*.safetensors weights (only safetensors are loaded, never pickles); "
            "re-save the model with save_pretrained(safe_serialization=True)"
        )
    _diagnose_mismatch(path, _stored_shapes(weights))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            local_files_only=True,
            attn_implementation=attn_implementation,
            use_safetensors=True,
            dtype=dtype,
        )
    except (RuntimeError, ValueError, OSError) as err:
        raise CheckpointError(f"{path}: the model cannot be loaded ({err})") from err
    if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model


def _stored_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors headers (no tensor is read); a truncated or
    corrupt file is a :class:`CheckpointError` naming it and its size."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
                if handle.keys():
                    last = list(handle.keys())[-1]
                    handle.get_slice(last)[...]  # touches the end of the data: catches truncation
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(
                f"{f} ({f.stat().st_size:,} bytes) is truncated or corrupt ({err}); re-save the "
                "model, or rebuild the shipped checkpoints with `make checkpoints`"
            ) from err
    return shapes


def _diagnose_mismatch(path: Path, stored: dict[str, tuple[int, ...]]) -> None:
    """Raise a :class:`CheckpointError` naming the first tensor whose stored shape differs
    from what ``config.json`` builds."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    with torch.device("meta"):
        expected = AutoModelForCausalLM.from_config(config).state_dict()
    for name, tensor in expected.items():
        if name in stored and tuple(tensor.shape) != stored[name]:
            raise CheckpointError(
                f"{path}: config.json does not match the weights: tensor {name!r} is stored as "
                f"{list(stored[name])} but config.json builds {list(tensor.shape)}; fix "
                "config.json or re-save the model"
            )


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct trainable parameters (tied weights counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
