"""Run a model's transformer layers through ``torch.compile`` inside a block (engine inference).

Why: at batch 256 a decode step on CPU is a few dozen small kernels per layer, and under bf16
autocast the elementwise ones (GELU's five ops, layer norm, the attention softmax and mask, the
residual adds) run at a fraction of fp32's speed on a CPU without bf16 vector units for them.
Inductor fuses each layer's elementwise work into a few C++ loops that compute in fp32. Measured
on a 2-core AMD EPYC host (default d=256 model, batch 256, 6 latents + 8 answer tokens):
``benchmarks/latent_engine.py --compile`` in bf16 1.79 -> 1.13-1.25 ms per example, the engine
59.6x faster per example than the batch-1 full-recompute reference (median of five runs, against
39.7-47.2x eager); in fp32 1.98 -> 1.57 ms (docs/results.md, engine speed).

Only the layers are compiled, not the whole model: the cache object, the mask construction and
the engine's own loop stay eager, so nothing of the engine changes and there is no graph break
to chase. One compiled function per layer class serves every model of that class, batch and cache
length; compiling costs 10-90 s on 2 CPU cores the first time a layer class and precision run in
a process (less when inductor's on-disk cache has the kernels), against 0.4-0.7 ms saved per
example at batch 256, so it pays off from tens of thousands of examples in a process (models of
one class share the compiled code), not on a handful. The layers get their own ``forward`` back
when the block ends, so training (``latent_forward``) never runs compiled code.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers (HF's ``GradientCheckpointingLayer``: GPT-2, Llama, ...)."""
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise TypeError(
            f"{type(model).__name__} has no transformers decoder layers "
            "(GradientCheckpointingLayer) to compile; pass compile_layers=False"
        )
    return layers


RECOMPILE_LIMIT = 64
"""Compiled variants one layer class may keep: about three per layer index (the cache is a Python
list indexed by it: prefill, first decode step, then decode with a dynamic cache length), for each
precision used in the process; models of the same class share them."""


@functools.cache
def _compiled_forward(layer_class: type):
    # The class's own forward, under transformers' wrappers (gradient checkpointing, renamed
    # kwargs: neither acts on the model's own calls at inference), so each layer class has its
    # own code object and compile cache. dynamic=None: the first shapes compile static, a dim
    # that changes is made dynamic at its recompile (about 3 graphs per layer); dynamic=True
    # failed in dynamo's guard builder on Llama layers now and then (torch 2.13).
    return torch.compile(inspect.unwrap(layer_class.forward), dynamic=None)


@contextlib.contextmanager
def compiled_layers(model: nn.Module, enabled: bool = True):
    """Inside the block every decoder layer of ``model`` runs its compiled ``forward``."""
    if not enabled:
        yield
        return
    layers = transformer_layers(model)
    for layer in layers:
        layer.forward = functools.partial(_compiled_forward(type(layer)), layer)
    try:
        # suppress_errors: a compiler failure runs that call eager (dynamo logs it) instead of
        # ending the run; compiling is a speed option, never a reason to lose an evaluation
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, suppress_errors=True):
            yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
