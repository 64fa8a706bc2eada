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
    dev = tiny.model.get_input_embeddings().weight.device  # the model's input device (pytest --device)
    return ids.to(dev), mask.to(dev)


def logits(m, ids, mask):
    with torch.no_grad():
        return m(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits


def axis_and_reference(tiny):
    acts = pa.capture(tiny, conversations(6), which="messages", progress=False)
    axis = torch.randn(tiny.layers.n_layers, D, generator=torch.Generator().manual_seed(3))
    return acts, axis


def bracket_block(loaded, layers, make_intervention, run):
    """Run ``run()`` under ``make_intervention()`` with two hooks of the test's own on each block of ``layers``: one
    registered before the intervention (it sees the raw block output) and one after (it sees the edited output of
    the same forward). Returns ``(raw, edited)``: ``{layer: output}`` of the last forward."""
    raw, edited = {}, {}
    pre = [loaded.layers.blocks[L].register_forward_hook(lambda mod, a, o, L=L: raw.__setitem__(L, o.clone()))
           for L in layers]
    try:
        with make_intervention():
            post = [loaded.layers.blocks[L].register_forward_hook(lambda mod, a, o, L=L: edited.__setitem__(L, o.clone()))
                    for L in layers]
            try:
                run()
            finally:
                [h.remove() for h in post]
    finally:
        [h.remove() for h in pre]
    return raw, edited


def ulps_off(got: torch.Tensor, ref64: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    """Largest elementwise ``|got - ref|`` in ulps of ``got``'s dtype: units of ``eps * scale``, with ``scale`` the
    magnitude of the operands that went into each element (default ``|ref|``: the result's own ulp). Rounding the
    exact edit to ``got``'s dtype once is <= 0.5 of the result's ulp; float32 arithmetic on operands of magnitude
    ``scale`` adds at most about ``eps32 * scale``."""
    eps = torch.finfo(got.dtype).eps
    scale = ref64.abs() if scale is None else scale.double()
    diff = (got.double() - ref64).abs()
    return float((diff / (eps * scale).clamp_min(torch.finfo(got.dtype).tiny)).max())


def gemma_prompt(gemma):
    """One rendered user turn (with the generation prompt) for Gemma 3, as ``(ids, mask)`` on the model's device."""
    r = pa.render_chat(gemma.tokenizer, [{"role": "user", "content": "Tell me about the sea, please."}],
                       add_generation_prompt=True)
    ids = torch.tensor([r.input_ids], device=gemma.model.get_input_embeddings().weight.device)
    return ids, torch.ones_like(ids)


def logits_under_own_hooks(loaded, edits, ids, mask):
    """Logits with the test's own forward hooks doing ``edits[L](h) -> h'`` (float64 in, rounded to h's dtype)."""
    handles = [loaded.layers.blocks[L].register_forward_hook(lambda mod, a, o, f=f: f(o.double()).to(o.dtype))
               for L, f in edits.items()]
    try:
        return logits(loaded.model, ids, mask)
    finally:
        [h.remove() for h in handles]


def max_diffs(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """``(max |a - b|, max |a - b| / max |b|)``."""
    d = (a.double() - b.double()).abs().max()
    return float(d), float(d / b.double().abs().max())
