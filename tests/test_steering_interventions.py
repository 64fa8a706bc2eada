"""Steer and Ablate (persona_axes.steering.interventions): edits equal hand-written hooks, per-row coefficients,
KV-cache generation, positions, composition, hook removal, relative units, every backend."""

import pytest
import torch

import persona_axes as pa
from persona_axes.activations.readers.base import position_ids_from_mask
from persona_axes.errors import InvalidInputError, LayerOutOfRangeError, ModelMismatchError
from persona_axes.steering.interventions import Ablate, Steer

import steering_helpers as sh
from helpers import conversations
from steering_helpers import D


def test_steer_equals_hand_written_hook(tiny):
    m = tiny.model
    ids, mask = sh.padded_prompts(tiny)
    v = sh.vec()
    with Steer(tiny, v, layers=[1, 2], coef=2.5):
        steered = sh.logits(m, ids, mask)
    handles = [tiny.layers.blocks[L].register_forward_hook(lambda mod, a, o: o + 2.5 * v) for L in (1, 2)]
    try:
        ref = sh.logits(m, ids, mask)
    finally:
        [h.remove() for h in handles]
    assert torch.equal(steered, ref)
    assert not torch.allclose(steered, sh.logits(m, ids, mask))


def test_per_row_coefficients_equal_separate_runs(tiny):
    m = tiny.model
    ids, mask = sh.padded_prompts(tiny, 3)
    v = sh.vec()
    coefs = torch.tensor([0.0, 4.0, -3.0])
    with Steer(tiny, v, layers=[2], coef=coefs):
        batched = sh.logits(m, ids, mask)
    for i, c in enumerate(coefs.tolist()):
        with Steer(tiny, v, layers=[2], coef=c):
            single = sh.logits(m, ids[i : i + 1], mask[i : i + 1])
        real = mask[i].bool()
        assert torch.allclose(batched[i][real], single[0][real], atol=1e-5)


def test_kv_cache_generation_equals_recomputing_the_prefix(tiny):
    m = tiny.model
    ids, mask = sh.padded_prompts(tiny, 2)
    v = sh.vec(scale=6.0)
    n_new = 6
    with Steer(tiny, v, layers=[1, 3], coef=torch.tensor([1.0, -1.0]), positions="generated"):
        cached = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False, pad_token_id=0)
    plain = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False, pad_token_id=0)
    # recompute the whole prefix every step, no cache
    seq, msk = ids.clone(), mask.clone()
    with Steer(tiny, v, layers=[1, 3], coef=torch.tensor([1.0, -1.0]), positions="generated", prompt_length=ids.shape[1]):
        for _ in range(n_new):
            with torch.no_grad():
                logits = m(input_ids=seq, attention_mask=msk, position_ids=position_ids_from_mask(msk), use_cache=False).logits
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            seq, msk = torch.cat([seq, nxt], 1), torch.cat([msk, torch.ones_like(nxt)], 1)
    assert torch.equal(cached, seq)
    # the first generated token is steered too (it comes from the last prompt position)
    first_steered = _first_token_logits(tiny, ids, mask, v)
    assert not torch.allclose(first_steered, sh.logits(m, ids, mask)[:, -1])
    assert not torch.equal(cached, plain)


def _first_token_logits(tiny, ids, mask, v):
    with Steer(tiny, v, layers=[1, 3], coef=torch.tensor([1.0, -1.0]), positions="generated"):
        return sh.logits(tiny.model, ids, mask)[:, -1]


def test_prompt_and_generated_positions(tiny):
    m = tiny.model
    ids, mask = sh.padded_prompts(tiny, 1)
    seen = {}
    v = sh.vec()
    base = {}
    h = tiny.layers.blocks[1].register_forward_hook(lambda mod, a, o: base.__setitem__("o", o.clone()))
    sh.logits(m, ids, mask)
    h.remove()
    P = ids.shape[1] - 2
    for positions in ("prompt", "generated"):
        with Steer(tiny, v, layers=[1], coef=1.0, positions=positions, prompt_length=P):
            h = tiny.layers.blocks[1].register_forward_hook(lambda mod, a, o: seen.__setitem__(positions, o.clone()))
            try:
                sh.logits(m, ids, mask)
            finally:
                h.remove()
        changed = (seen[positions] - base["o"]).abs().amax(-1)[0] > 0
        expect = torch.arange(ids.shape[1]) < P if positions == "prompt" else torch.arange(ids.shape[1]) >= P - 1
        assert torch.equal(changed, expect)


def test_ablate_removes_the_direction_and_composes_with_steer(tiny):
    ids, mask = sh.padded_prompts(tiny, 2)
    v = sh.vec()
    u = v / v.norm()
    out = {}
    with Ablate(tiny, v, layers=[2]):
        h = tiny.layers.blocks[2].register_forward_hook(lambda mod, a, o: out.__setitem__("a", o.clone()))
        sh.logits(tiny.model, ids, mask)
        h.remove()
    assert (out["a"] @ u).abs().max() < 1e-4
    with Ablate(tiny, v, layers=[2]), Steer(tiny, v, layers=[2], coef=2.0, unit="unit"):
        h = tiny.layers.blocks[2].register_forward_hook(lambda mod, a, o: out.__setitem__("b", o.clone()))
        sh.logits(tiny.model, ids, mask)
        h.remove()
    assert torch.allclose(out["b"] @ u, torch.full(out["b"].shape[:2], 2.0), atol=1e-4)  # ablate, then add 2u


def test_no_hook_survives_exception_or_generate(tiny):
    n = sh.hook_count(tiny.model)
    ids, mask = sh.padded_prompts(tiny, 2)
    with pytest.raises(RuntimeError, match="inside"):
        with Steer(tiny, sh.vec(), layers=[0, 1], coef=1.0):
            assert sh.hook_count(tiny.model) > n
            raise RuntimeError("inside")
    assert sh.hook_count(tiny.model) == n
    with pytest.raises(InvalidInputError, match="3 entries but the batch has 2 rows"):
        with Steer(tiny, sh.vec(), layers=[1], coef=torch.ones(3)):
            sh.logits(tiny.model, ids, mask)
    assert sh.hook_count(tiny.model) == n
    with Steer(tiny, sh.vec(), layers=[1], coef=1.0, positions="generated"):
        tiny.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert sh.hook_count(tiny.model) == n


def test_bad_inputs(tiny):
    with pytest.raises(ModelMismatchError, match="hidden size is 64"):
        Steer(tiny, torch.ones(65), layers=[1])
    with pytest.raises(LayerOutOfRangeError):
        Steer(tiny, sh.vec(), layers=[9])
    with pytest.raises(InvalidInputError, match="zero norm"):
        Ablate(tiny, torch.zeros(D), layers=[1])
    with pytest.raises(InvalidInputError, match="positions"):
        Steer(tiny, sh.vec(), layers=[1], positions="middle")
    with pytest.raises(InvalidInputError, match="NaN"):
        Steer(tiny, sh.vec(), layers=[1], coef=float("nan"))
    with pytest.raises(InvalidInputError, match="reference"):
        Steer(tiny, sh.vec(), layers=[1], unit="rel")


def test_relative_units(tiny):
    acts, _ = sh.axis_and_reference(tiny)
    v = sh.vec()
    s = Steer(tiny, v, layers=[2], coef=1.5, unit="rel", reference=acts)
    expected = acts.at(2).norm(dim=-1).mean() / v.norm()
    assert s.scale[2] == pytest.approx(float(expected), rel=1e-6)
    assert s.record()["unit"] == "rel"


@pytest.mark.parametrize("kind", ["tlens", "nnsight"])
def test_steering_acts_the_same_under_every_backend(tiny, kind):
    """The hooks sit on the shared HF blocks, so a forward driven by TL or nnsight is steered identically
    (compared at layers after the steered one: nnsight reads a block's output before that block's own hooks)."""
    convs = conversations(3)
    v = sh.vec()
    with Steer(tiny, v, layers=[1], coef=torch.tensor(2.0)):
        ref = pa.capture(tiny, convs, layers=[2, 3], progress=False)
        got = pa.capture(tiny, convs, layers=[2, 3], backend=kind, progress=False)
    plain = pa.capture(tiny, convs, layers=[2, 3], progress=False)
    assert not torch.allclose(ref.values, plain.values, atol=1e-3)  # the steer really acted
    rel = (got.values - ref.values).norm(dim=-1) / ref.values.norm(dim=-1)
    assert rel.max() <= 1e-4


def _edits_per_forward(tiny, layer, make_intervention, run):
    """For each forward pass of the decoder body during ``run()``: ``(offset, edited)`` where ``edited[b, s]`` says
    whether position ``offset + s`` of row ``b`` was changed by the intervention at ``layer``. Two hooks of the
    test's own bracket ours on the block: one registered before the intervention sees the raw output, one after
    sees the edited output of the same forward."""
    block = tiny.layers.blocks[layer]
    raw, steps = [], []
    h_raw = block.register_forward_hook(lambda mod, a, o: raw.append(o.clone()))
    try:
        with make_intervention():
            h_after = block.register_forward_hook(lambda mod, a, o: steps.append(o.clone()))
            try:
                run()
            finally:
                h_after.remove()
    finally:
        h_raw.remove()
    out, offset = [], 0
    for before, after in zip(raw, steps, strict=True):
        out.append((offset, (after - before).abs().amax(-1) > 0))
        offset += before.shape[1]
    return out


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_positions_during_cached_generate(tiny, positions, cache):
    """With a KV cache, the prompt is the first forward and every later forward is one generated token: 'prompt'
    edits only the first forward, 'generated' the last prompt position and every later one, 'all' everything.
    (Under transformers 5.24 the body gets the cache as ``cache=``; the old hook looked for ``past_key_values=``
    only, saw no past at any step, and 'prompt' edited every generated token.)"""
    ids, mask = sh.padded_prompts(tiny, 2)
    P, n_new = ids.shape[1], 5
    extra = {"cache_implementation": "static"} if cache == "static" else {}
    steps = _edits_per_forward(
        tiny, 2, lambda: Steer(tiny, sh.vec(scale=4.0), layers=[2], coef=1.0, positions=positions),
        lambda: tiny.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new,
                                    do_sample=False, pad_token_id=0, **extra))
    assert [s[0] for s in steps] == [0] + [P + i for i in range(n_new - 1)]  # one prompt forward, then one token each
    for offset, edited in steps:
        pos = torch.arange(offset, offset + edited.shape[1]).expand_as(edited)
        expect = {"all": torch.ones_like(edited), "prompt": pos < P, "generated": pos >= P - 1}[positions]
        assert torch.equal(edited, expect), (positions, offset, edited)


def test_positions_do_not_depend_on_the_cache_keyword(tiny):
    """The past is found by the cache object's type, so a body called with the older keyword
    (``past_key_values=``) is tracked the same as with ``cache=``."""
    from transformers import DynamicCache

    ids, mask = sh.padded_prompts(tiny, 1)
    P = ids.shape[1]
    body = tiny.layers.body

    def decode(keyword):
        def run():
            cache = DynamicCache(config=tiny.model.config)
            with torch.no_grad():
                body(input_ids=ids, **{keyword: cache}, use_cache=True)
                for i in range(3):
                    body(input_ids=ids[:, -1:], position_ids=torch.tensor([[P + i]]), **{keyword: cache}, use_cache=True)
        return run

    for keyword in ("cache", "past_key_values"):
        steps = _edits_per_forward(tiny, 1, lambda: Steer(tiny, sh.vec(), layers=[1], positions="prompt"), decode(keyword))
        assert [bool(e.any()) for _, e in steps] == [True, False, False, False], keyword
        assert bool(steps[0][1].all())
