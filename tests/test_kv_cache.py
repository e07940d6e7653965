"""The preallocated KV cache computes what ``DynamicCache`` computes, without reallocating."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from workbench.data.tokenizer import build_char_tokenizer
from workbench.engine.cache import PreallocatedCache
from workbench.models.build import ModelConfig, build_model


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_preallocated_cache_equals_dynamic_cache_step_by_step(arch):
    tok = build_char_tokenizer()
    model = build_model(ModelConfig(arch=arch, n_layer=2, d_model=64, n_head=2), tok).eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, len(tok), (3, 5), generator=g)
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[0, :2] = 0  # a left-padded row
    caches = {"dynamic": DynamicCache(), "preallocated": PreallocatedCache(9)}
    logits = {}
    for name, cache in caches.items():
        m, pos = mask.clone(), (mask.cumsum(1) - 1).clamp(min=0)
        out = model(input_ids=prompt, attention_mask=m, position_ids=pos, cache=cache)
        steps = [out.logits[:, -1]]
        nxt, p = out.logits[:, -1].argmax(-1), pos[:, -1]
        for _ in range(4):
            m, p = torch.cat([m, torch.ones(3, 1, dtype=torch.long)], 1), p + 1
            out = model(input_ids=nxt[:, None], attention_mask=m, position_ids=p[:, None],
                        cache=cache)  # fmt: skip
            steps.append(out.logits[:, -1])
            nxt = out.logits[:, -1].argmax(-1)
        logits[name] = torch.stack(steps)
    torch.testing.assert_close(logits["preallocated"], logits["dynamic"], rtol=0, atol=1e-6)
    layer = caches["preallocated"].layers[0]
    assert layer.keys.shape[-2] == 9 and caches["preallocated"].get_seq_length() == 9
    # the keys handed to attention are a view of the one buffer allocated at the first update
    assert layer.keys.data_ptr() == layer.key_buffer.data_ptr()


def test_preallocated_cache_refuses_to_grow_past_its_capacity():
    cache = PreallocatedCache(3)
    kv = torch.zeros(1, 2, 2, 4)
    cache.update(kv, kv, 0)
    with pytest.raises(ValueError, match="holds 3 positions and this step needs 4"):
        cache.update(kv, kv, 0)
