import numpy as np
import pytest
import torch

import persona_axes as pa
from persona_axes.activations.readers.base import position_ids_from_mask
from persona_axes.core import ModelInfo
from persona_axes.errors import InvalidInputError, LayerOutOfRangeError, ModelMismatchError
from persona_axes.steering.interventions import Ablate, ActivationCap, CapConfig, Steer, calibrate_cap

from helpers import conversations

D = 64


def _hooks(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _vec(seed=1, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(D, generator=g) * scale


def _ids(tiny, n=3):
    rendered = [pa.render_chat(tiny.tokenizer, c[:2], add_generation_prompt=True) for c in conversations(n)]
    width = max(len(r) for r in rendered)
    ids = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rendered):  # left padding, as for generation
        ids[i, width - len(r):] = torch.tensor(r.input_ids)
        mask[i, width - len(r):] = 1
    return ids, mask


def _logits(m, ids, mask):
    with torch.no_grad():
        return m(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits


def test_steer_equals_hand_written_hook(tiny):
    m = tiny.model
    ids, mask = _ids(tiny)
    v = _vec()
    with Steer(tiny, v, layers=[1, 2], coef=2.5):
        steered = _logits(m, ids, mask)
    handles = [tiny.layers.blocks[L].register_forward_hook(lambda mod, a, o: o + 2.5 * v) for L in (1, 2)]
    try:
        ref = _logits(m, ids, mask)
    finally:
        [h.remove() for h in handles]
    assert torch.equal(steered, ref)
    assert not torch.allclose(steered, _logits(m, ids, mask))


def test_per_row_coefficients_equal_separate_runs(tiny):
    m = tiny.model
    ids, mask = _ids(tiny, 3)
    v = _vec()
    coefs = torch.tensor([0.0, 4.0, -3.0])
    with Steer(tiny, v, layers=[2], coef=coefs):
        batched = _logits(m, ids, mask)
    for i, c in enumerate(coefs.tolist()):
        with Steer(tiny, v, layers=[2], coef=c):
            single = _logits(m, ids[i : i + 1], mask[i : i + 1])
        real = mask[i].bool()
        assert torch.allclose(batched[i][real], single[0][real], atol=1e-5)


def test_kv_cache_generation_equals_recomputing_the_prefix(tiny):
    m = tiny.model
    ids, mask = _ids(tiny, 2)
    v = _vec(scale=6.0)
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
    assert not torch.allclose(first_steered, _logits(m, ids, mask)[:, -1])
    assert not torch.equal(cached, plain)


def _first_token_logits(tiny, ids, mask, v):
    with Steer(tiny, v, layers=[1, 3], coef=torch.tensor([1.0, -1.0]), positions="generated"):
        return _logits(tiny.model, ids, mask)[:, -1]


def test_prompt_and_generated_positions(tiny):
    m = tiny.model
    ids, mask = _ids(tiny, 1)
    seen = {}
    v = _vec()
    base = {}
    h = tiny.layers.blocks[1].register_forward_hook(lambda mod, a, o: base.__setitem__("o", o.clone()))
    _logits(m, ids, mask)
    h.remove()
    P = ids.shape[1] - 2
    for positions in ("prompt", "generated"):
        with Steer(tiny, v, layers=[1], coef=1.0, positions=positions, prompt_length=P):
            h = tiny.layers.blocks[1].register_forward_hook(lambda mod, a, o: seen.__setitem__(positions, o.clone()))
            try:
                _logits(m, ids, mask)
            finally:
                h.remove()
        changed = (seen[positions] - base["o"]).abs().amax(-1)[0] > 0
        expect = torch.arange(ids.shape[1]) < P if positions == "prompt" else torch.arange(ids.shape[1]) >= P - 1
        assert torch.equal(changed, expect)


def test_ablate_removes_the_direction_and_composes_with_steer(tiny):
    ids, mask = _ids(tiny, 2)
    v = _vec()
    u = v / v.norm()
    out = {}
    with Ablate(tiny, v, layers=[2]):
        h = tiny.layers.blocks[2].register_forward_hook(lambda mod, a, o: out.__setitem__("a", o.clone()))
        _logits(tiny.model, ids, mask)
        h.remove()
    assert (out["a"] @ u).abs().max() < 1e-4
    with Ablate(tiny, v, layers=[2]), Steer(tiny, v, layers=[2], coef=2.0, unit="unit"):
        h = tiny.layers.blocks[2].register_forward_hook(lambda mod, a, o: out.__setitem__("b", o.clone()))
        _logits(tiny.model, ids, mask)
        h.remove()
    assert torch.allclose(out["b"] @ u, torch.full(out["b"].shape[:2], 2.0), atol=1e-4)  # ablate, then add 2u


def _axis_and_reference(tiny):
    acts = pa.capture(tiny, conversations(6), which="messages", progress=False)
    axis = torch.randn(tiny.layers.n_layers, D, generator=torch.Generator().manual_seed(3))
    return acts, axis


def test_calibrate_cap_matches_numpy_percentile(tiny, tmp_path):
    acts, axis = _axis_and_reference(tiny)
    cfg = calibrate_cap(axis, acts, layers=[1, 2], percentile=30)
    for L in (1, 2):
        u = (axis[L] / axis[L].norm()).numpy().astype(np.float64)
        ref = np.percentile(acts.at(L).numpy().astype(np.float64) @ u, 30)
        assert abs(cfg.thresholds[L] - ref) < 1e-4
    p = cfg.save(tmp_path / "capping.safetensors")
    back = CapConfig.load(p, model=tiny)
    assert back.thresholds == pytest.approx(cfg.thresholds) and back.kind == "floor" and back.percentile == 30
    assert all(torch.equal(back.axis[L], cfg.axis[L]) for L in (1, 2))


@pytest.mark.parametrize("kind", ["floor", "ceiling"])
def test_cap_clamps_projection_and_keeps_orthogonal_part(tiny, kind):
    acts, axis = _axis_and_reference(tiny)
    cfg = calibrate_cap(axis, acts, layers=[1, 2], percentile=75 if kind == "floor" else 25, kind=kind)
    ids, mask = _ids(tiny, 3)
    raw, capped = {}, {}
    # a hook registered before the cap sees the raw block output of the same forward; one after sees the capped
    pre = [tiny.layers.blocks[L].register_forward_hook(lambda mod, a, o, L=L: raw.__setitem__(L, o.clone())) for L in (1, 2)]
    try:
        with ActivationCap(tiny, cfg):
            post = [tiny.layers.blocks[L].register_forward_hook(lambda mod, a, o, L=L: capped.__setitem__(L, o.clone())) for L in (1, 2)]
            try:
                _logits(tiny.model, ids, mask)
            finally:
                [h.remove() for h in post]
    finally:
        [h.remove() for h in pre]
    real = mask.bool()
    for L in (1, 2):
        u, tau = cfg.axis[L], cfg.thresholds[L]
        p_raw, p_cap = raw[L] @ u, capped[L] @ u
        if kind == "floor":
            assert (p_cap[real] >= tau - 1e-4).all()
            assert torch.allclose(p_cap, torch.clamp(p_raw, min=tau), atol=1e-4)
            assert (p_raw[real] < tau).any()  # the cap really acted
        else:
            assert (p_cap[real] <= tau + 1e-4).all()
            assert torch.allclose(p_cap, torch.clamp(p_raw, max=tau), atol=1e-4)
        orth = lambda h: h - (h @ u).unsqueeze(-1) * u  # noqa: E731
        assert torch.allclose(orth(capped[L]), orth(raw[L]), atol=1e-4)


def test_cap_is_a_no_op_when_in_range(tiny):
    acts, axis = _axis_and_reference(tiny)
    cfg = calibrate_cap(axis, acts, layers=[1, 2], percentile=50)
    cfg.thresholds = {L: -1e6 for L in cfg.thresholds}
    ids, mask = _ids(tiny)
    with ActivationCap(tiny, cfg):
        capped = _logits(tiny.model, ids, mask)
    assert torch.equal(capped, _logits(tiny.model, ids, mask))


def test_no_hook_survives_exception_or_generate(tiny):
    n = _hooks(tiny.model)
    ids, mask = _ids(tiny, 2)
    with pytest.raises(RuntimeError, match="inside"):
        with Steer(tiny, _vec(), layers=[0, 1], coef=1.0):
            assert _hooks(tiny.model) > n
            raise RuntimeError("inside")
    assert _hooks(tiny.model) == n
    with pytest.raises(InvalidInputError, match="3 entries but the batch has 2 rows"):
        with Steer(tiny, _vec(), layers=[1], coef=torch.ones(3)):
            _logits(tiny.model, ids, mask)
    assert _hooks(tiny.model) == n
    with Steer(tiny, _vec(), layers=[1], coef=1.0, positions="generated"):
        tiny.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert _hooks(tiny.model) == n


def test_bad_inputs(tiny):
    with pytest.raises(ModelMismatchError, match="hidden size is 64"):
        Steer(tiny, torch.ones(65), layers=[1])
    with pytest.raises(LayerOutOfRangeError):
        Steer(tiny, _vec(), layers=[9])
    with pytest.raises(InvalidInputError, match="zero norm"):
        Ablate(tiny, torch.zeros(D), layers=[1])
    with pytest.raises(InvalidInputError, match="positions"):
        Steer(tiny, _vec(), layers=[1], positions="middle")
    with pytest.raises(InvalidInputError, match="NaN"):
        Steer(tiny, _vec(), layers=[1], coef=float("nan"))
    with pytest.raises(InvalidInputError, match="reference"):
        Steer(tiny, _vec(), layers=[1], unit="rel")
    other = ModelInfo(name="another-model", n_layers=4, hidden_size=D)
    with pytest.raises(InvalidInputError, match="finite"):
        CapConfig(axis={1: _vec()}, thresholds={1: float("nan")}, kind="floor", model=tiny_info(tiny))
    cfg = CapConfig(axis={1: _vec()}, thresholds={1: 0.0}, kind="floor", model=other)
    with pytest.raises(ModelMismatchError, match="another-model"):
        ActivationCap(tiny, cfg)
    with pytest.raises(InvalidInputError, match="zero norm"):
        CapConfig(axis={1: torch.zeros(D)}, thresholds={1: 0.0}, kind="floor", model=tiny_info(tiny))


def tiny_info(tiny):
    return pa.make_backend(tiny).info


def test_relative_units(tiny):
    acts, _ = _axis_and_reference(tiny)
    v = _vec()
    s = Steer(tiny, v, layers=[2], coef=1.5, unit="rel", reference=acts)
    expected = acts.at(2).norm(dim=-1).mean() / v.norm()
    assert s.scale[2] == pytest.approx(float(expected), rel=1e-6)
    assert s.record()["unit"] == "rel"


@pytest.mark.parametrize("kind", ["tlens", "nnsight"])
def test_steering_acts_the_same_under_every_backend(tiny, kind):
    """The hooks sit on the shared HF blocks, so a forward driven by TL or nnsight is steered identically
    (compared at layers after the steered one: nnsight reads a block's output before that block's own hooks)."""
    convs = conversations(3)
    v = _vec()
    with Steer(tiny, v, layers=[1], coef=torch.tensor(2.0)):
        ref = pa.capture(tiny, convs, layers=[2, 3], progress=False)
        got = pa.capture(tiny, convs, layers=[2, 3], backend=kind, progress=False)
    plain = pa.capture(tiny, convs, layers=[2, 3], progress=False)
    assert not torch.allclose(ref.values, plain.values, atol=1e-3)  # the steer really acted
    rel = (got.values - ref.values).norm(dim=-1) / ref.values.norm(dim=-1)
    assert rel.max() <= 1e-4
