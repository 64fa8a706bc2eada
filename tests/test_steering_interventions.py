"""Steer and Ablate (persona_axes.steering.interventions): edits equal hand-written hooks, per-row coefficients,
KV-cache generation, positions, composition, hook removal, relative units, every backend."""

import numpy as np
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


# -- bad inputs: every public argument is checked at the boundary, with a typed error naming it -------------------
def _neg50(tiny):
    return torch.full((tiny.layers.n_layers,), -50.0)


STEER_BAD = [
    # (id, kwargs changed from a good call, error class, a piece of the message naming the argument)
    ("model-not-a-model", {"model": "gpt"}, InvalidInputError, "expected a Backend"),
    ("vector-a-string", {"vector": "axis"}, InvalidInputError, "steering vector must be a PersonaVector or a tensor"),
    ("vector-a-list", {"vector": [1.0] * 64}, InvalidInputError, "steering vector must be"),
    ("vector-bool", {"vector": torch.ones(64, dtype=torch.bool)}, InvalidInputError, "steering vector must hold real"),
    ("vector-rows", {"vector": torch.ones(3, 64)}, InvalidInputError, "[n_layers=4, d]"),
    ("vector-inf", {"vector": torch.full((64,), float("inf"))}, InvalidInputError, "NaN or infinite"),
    ("layers-float", {"layers": 1.5}, InvalidInputError, "layers must be an integer"),
    ("layers-float-item", {"layers": [1.0]}, InvalidInputError, "layer indices must be integers"),
    ("layers-str-item", {"layers": ["1"]}, InvalidInputError, "layer indices must be integers"),
    ("layers-bool", {"layers": True}, InvalidInputError, "layers must be an integer"),
    ("layers-empty", {"layers": []}, InvalidInputError, "no layers"),
    ("layers-bad-spec", {"layers": "one"}, InvalidInputError, "invalid layer spec 'one'"),
    ("layers-range", {"layers": [4]}, LayerOutOfRangeError, "layer 4 is out of range"),
    ("coef-str", {"coef": "2"}, InvalidInputError, "coef must be a number"),
    ("coef-none", {"coef": None}, InvalidInputError, "coef must be a number"),
    ("coef-bool", {"coef": True}, InvalidInputError, "coef must be a number"),
    ("coef-complex", {"coef": 1j}, InvalidInputError, "coef must be a number"),
    ("coef-inf", {"coef": float("inf")}, InvalidInputError, "coef holds NaN or infinite"),
    ("coef-list-item", {"coef": [1.0, "a"]}, InvalidInputError, "coef[1] must be a number"),
    ("coef-list-nan", {"coef": [1.0, float("nan")]}, InvalidInputError, "coef holds NaN"),
    ("coef-empty", {"coef": torch.tensor([])}, InvalidInputError, "coef is empty"),
    ("coef-2d", {"coef": torch.ones(2, 1)}, InvalidInputError, "coef must be a number or a [batch] tensor"),
    ("coef-bool-tensor", {"coef": torch.tensor([True])}, InvalidInputError, "coef must hold real numbers"),
    ("coef-str-array", {"coef": np.array(["a"])}, InvalidInputError, "coef must hold real numbers"),
    ("unit-unknown", {"unit": "percent"}, InvalidInputError, "unit='percent' is not one of raw, unit, rel, sd, gap"),
    ("unit-int", {"unit": 1}, InvalidInputError, "unit=1 is not one of"),
    ("positions-unknown", {"positions": "middle"}, InvalidInputError, "positions='middle' is not one of"),
    ("positions-none", {"positions": None}, InvalidInputError, "positions=None is not one of"),
    ("prompt-length-str", {"prompt_length": "5"}, InvalidInputError, "prompt_length must be an integer"),
    ("prompt-length-float", {"prompt_length": 5.0}, InvalidInputError, "prompt_length must be an integer"),
    ("prompt-length-bool", {"prompt_length": True}, InvalidInputError, "prompt_length must be an integer"),
    ("prompt-length-zero", {"prompt_length": 0}, InvalidInputError, "prompt_length must be a positive integer"),
    ("reference-without-rel", {"reference": torch.ones(4)}, InvalidInputError, "reference= is only used with unit='rel' or 'sd'"),
    # was: steered the opposite way (negative norms) or by nothing (zero norms), silently
    ("rel-negative-reference", {"unit": "rel", "reference": _neg50}, InvalidInputError, "reference norm at layer 1 is -50"),
    ("rel-zero-reference", {"unit": "rel", "reference": lambda t: torch.zeros(4)}, InvalidInputError,
     "reference norm at layer 1 is 0"),
    ("rel-inf-reference", {"unit": "rel", "reference": lambda t: torch.full((4,), float("inf"))}, InvalidInputError,
     "reference norm at layer 1 is inf"),
    ("rel-reference-shape", {"unit": "rel", "reference": lambda t: torch.ones(3)}, InvalidInputError,
     "reference norms must have shape [4]"),
    ("rel-reference-str", {"unit": "rel", "reference": "acts.safetensors"}, InvalidInputError,
     "reference must be Activations or a [4] tensor"),
]


@pytest.mark.parametrize("change, error, needle", [pytest.param(*c[1:], id=c[0]) for c in STEER_BAD])
def test_steer_refuses_bad_arguments(tiny, change, error, needle):
    kw = {"model": tiny, "vector": sh.vec(), "layers": [1], "coef": 1.0}
    kw.update({k: (v(tiny) if callable(v) and not isinstance(v, torch.Tensor) else v) for k, v in change.items()})
    with pytest.raises(error) as e:
        Steer(kw.pop("model"), kw.pop("vector"), **kw)
    assert type(e.value) is error and needle in str(e.value), str(e.value)


@pytest.mark.parametrize("change, needle", [
    ({"vector": torch.zeros(D)}, "ablation vector has zero norm at layer 1"),
    ({"vector": "axis"}, "ablation vector must be a PersonaVector or a tensor"),
    ({"layers": [2.0]}, "layer indices must be integers"),
    ({"positions": "prefix"}, "positions='prefix' is not one of"),
    ({"prompt_length": -3}, "prompt_length must be a positive integer"),
])
def test_ablate_refuses_bad_arguments(tiny, change, needle):
    kw = {"vector": sh.vec(), "layers": [1], **change}
    with pytest.raises(InvalidInputError) as e:
        Ablate(tiny, kw.pop("vector"), **kw)
    assert needle in str(e.value)


def test_rel_units_with_valid_norms_scale_by_them(tiny):
    """The positive counterpart of the refusals above: a [n_layers] tensor of norms scales each layer by norm/|v|."""
    v = sh.vec()
    s = Steer(tiny, v, layers=[1, 2], coef=0.5, unit="rel", reference=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert s.scale == pytest.approx({1: 2.0 / float(v.norm()), 2: 3.0 / float(v.norm())}, rel=1e-6)
    assert torch.allclose(s.vectors[2].norm(), torch.tensor(3.0))


# -- dtype and placement -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_bf16", "tiny_fp16"])
def test_steer_in_half_precision_equals_a_float64_hook_rounded_once(request, fixture):
    """In a bf16/fp16 model the steered block output equals an independent hook's ``h + coef * v`` computed in float64
    from the same raw output and rounded once to the model's dtype. Tolerance: 1 ulp of that dtype (measured: 0)."""
    m = request.getfixturevalue(fixture)
    ids, mask = sh.padded_prompts(m, 3)
    v, coef = sh.vec(scale=3.0), torch.tensor([1.5, -2.0, 0.5])
    raw, got = sh.bracket_block(m, [1, 2], lambda: Steer(m, v, [1, 2], coef=coef), lambda: sh.logits(m.model, ids, mask))
    for L in (1, 2):
        assert got[L].dtype == m.model.dtype
        ref = raw[L].double() + coef.double().view(-1, 1, 1).to(raw[L].device) * v.double().to(raw[L].device)
        off, (diff, rel) = sh.ulps_off(got[L], ref), sh.max_diffs(got[L], ref)
        print(f"{fixture} Steer block {L}: {off:.3g} ulps of the result, max abs {diff:.3g}, max rel {rel:.3g}")
        assert off <= 1.0
        assert not torch.equal(got[L], raw[L])


def test_steer_on_a_model_dispatched_with_disk_offload_equals_the_plain_model(tiny, tiny_dispatched):
    """accelerate ``device_map`` with CPU + disk offload (blocks 1 and 3 on disk, carrying accelerate's hooks): a
    steered forward and a steered cached generate give the same numbers as on the undispatched model."""
    ids, mask = sh.padded_prompts(tiny, 2)
    v, coef = sh.vec(scale=6.0), torch.tensor([1.0, -1.0])
    out = {}
    for name, m in (("plain", tiny), ("dispatched", tiny_dispatched)):
        with Steer(m, v, layers=[1, 3], coef=coef, positions="generated"):
            logits = sh.logits(m.model, ids.cpu(), mask.cpu())
            gen = m.model.generate(input_ids=ids.cpu(), attention_mask=mask.cpu(), max_new_tokens=6, do_sample=False,
                                   pad_token_id=0)
        out[name] = (logits, gen)
    assert torch.equal(out["plain"][0], out["dispatched"][0])
    assert torch.equal(out["plain"][1], out["dispatched"][1])
    assert hasattr(tiny_dispatched.layers.blocks[1], "_hf_hook")
    assert not torch.allclose(out["dispatched"][0], sh.logits(tiny_dispatched.model, ids.cpu(), mask.cpu()))  # it acted


# -- a second real architecture: Gemma 3 270M (sliding-window + global attention, scaled embeddings) ---------------
@pytest.mark.slow
def test_steer_on_gemma3_equals_an_independent_hook_and_tracks_positions(gemma3):
    ids, mask = sh.gemma_prompt(gemma3)
    P = ids.shape[1]
    v = torch.randn(gemma3.layers.hidden_size, generator=torch.Generator().manual_seed(5)) * 4.0
    layers = [6, 12]
    raw, got = sh.bracket_block(gemma3, layers, lambda: Steer(gemma3, v, layers, coef=1.5),
                                lambda: sh.logits(gemma3.model, ids, mask))
    for L in layers:
        delta = 1.5 * v.double().to(raw[L].device)
        ref = raw[L].double() + delta
        # float32 model: one ulp of the operands (|h| + |delta|); the result's own ulp is no bound where they cancel
        off = sh.ulps_off(got[L], ref, raw[L].double().abs() + delta.abs())
        print(f"gemma3 Steer block {L} vs float64 edit: {off:.3g} ulps of the operands")
        assert off <= 1.0, L
    with Steer(gemma3, v, layers, coef=1.5):
        steered = sh.logits(gemma3.model, ids, mask)
    own = sh.logits_under_own_hooks(gemma3, {L: (lambda h: h + 1.5 * v.double().to(h.device)) for L in layers}, ids, mask)
    diff, rel = sh.max_diffs(steered, own)
    print(f"gemma3 Steer logits vs own hook: max abs {diff:.3g}, max rel {rel:.3g}")
    assert rel <= 1e-5
    assert not torch.allclose(steered, sh.logits(gemma3.model, ids, mask))  # it acted
    # the sliding-window cache reports its full length too: 'prompt' edits only the prompt forward
    for positions in ("prompt", "generated"):
        steps = _edits_per_forward(
            gemma3, 6, lambda: Steer(gemma3, v, [6], positions=positions),
            lambda: gemma3.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, min_new_tokens=3,
                                          do_sample=False))
        assert [s[0] for s in steps] == [0, P, P + 1]
        for offset, edited in steps:
            pos = torch.arange(offset, offset + edited.shape[1]).expand_as(edited).to(edited.device)
            assert torch.equal(edited, pos < P if positions == "prompt" else pos >= P - 1), (positions, offset)


def test_public_helpers_refuse_bad_arguments(tiny):
    from persona_axes.steering.interventions import cache_length, layer_vectors

    info = pa.make_backend(tiny).info
    with pytest.raises(InvalidInputError, match="info must be a ModelInfo"):
        layer_vectors(sh.vec(), "tiny-llama", [1], "vector")
    with pytest.raises(InvalidInputError, match="layer indices must be integers"):
        layer_vectors(sh.vec(), info, [1.5], "vector")
    assert sorted(layer_vectors(sh.vec(), info, [-1, 1], "vector")) == [1, 3]
    with pytest.raises(InvalidInputError, match="cache_length takes"):
        cache_length([], {})
    assert cache_length((), {"cache_position": torch.tensor([7, 8])}) == 7 and cache_length((), {}) == 0
