"""Small helpers shared by the steering tests (tiny model inputs, a test vector, hook counting)."""

from __future__ import annotations

import torch

import persona_axes as pa
from persona_axes.activations.readers.base import position_ids_from_mask

from helpers import conversations

D = 64


def hook_count(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def vec(seed=1, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(D, generator=g) * scale


def padded_prompts(tiny, n=3):
    rendered = [pa.render_chat(tiny.tokenizer, c[:2], add_generation_prompt=True) for c in conversations(n)]
    width = max(len(r) for r in rendered)
    ids = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rendered):  # left padding, as for generation
        ids[i, width - len(r):] = torch.tensor(r.input_ids)
        mask[i, width - len(r):] = 1
    return ids, mask


def logits(m, ids, mask):
    with torch.no_grad():
        return m(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits


def axis_and_reference(tiny):
    acts = pa.capture(tiny, conversations(6), which="messages", progress=False)
    axis = torch.randn(tiny.layers.n_layers, D, generator=torch.Generator().manual_seed(3))
    return acts, axis
