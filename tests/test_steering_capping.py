"""Activation capping (persona_axes.steering.capping): calibration against numpy, the clamp and its orthogonal
part, no-op in range, save/load, bad inputs."""

import numpy as np
import pytest
import torch

import persona_axes as pa
from persona_axes.core import ModelInfo
from persona_axes.errors import InvalidInputError, ModelMismatchError
from persona_axes.steering.capping import ActivationCap, CapConfig, calibrate_cap

import steering_helpers as sh
from steering_helpers import D


def test_calibrate_cap_matches_numpy_percentile(tiny, tmp_path):
    acts, axis = sh.axis_and_reference(tiny)
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
    acts, axis = sh.axis_and_reference(tiny)
    cfg = calibrate_cap(axis, acts, layers=[1, 2], percentile=75 if kind == "floor" else 25, kind=kind)
    ids, mask = sh.padded_prompts(tiny, 3)
    raw, capped = {}, {}
    # a hook registered before the cap sees the raw block output of the same forward; one after sees the capped
    pre = [tiny.layers.blocks[L].register_forward_hook(lambda mod, a, o, L=L: raw.__setitem__(L, o.clone())) for L in (1, 2)]
    try:
        with ActivationCap(tiny, cfg):
            post = [tiny.layers.blocks[L].register_forward_hook(lambda mod, a, o, L=L: capped.__setitem__(L, o.clone())) for L in (1, 2)]
            try:
                sh.logits(tiny.model, ids, mask)
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
    acts, axis = sh.axis_and_reference(tiny)
    cfg = calibrate_cap(axis, acts, layers=[1, 2], percentile=50)
    cfg.thresholds = {L: -1e6 for L in cfg.thresholds}
    ids, mask = sh.padded_prompts(tiny)
    with ActivationCap(tiny, cfg):
        capped = sh.logits(tiny.model, ids, mask)
    assert torch.equal(capped, sh.logits(tiny.model, ids, mask))


def test_bad_inputs(tiny):
    other = ModelInfo(name="another-model", n_layers=4, hidden_size=D)
    with pytest.raises(InvalidInputError, match="finite"):
        CapConfig(axis={1: sh.vec()}, thresholds={1: float("nan")}, kind="floor", model=tiny_info(tiny))
    cfg = CapConfig(axis={1: sh.vec()}, thresholds={1: 0.0}, kind="floor", model=other)
    with pytest.raises(ModelMismatchError, match="another-model"):
        ActivationCap(tiny, cfg)
    with pytest.raises(InvalidInputError, match="zero norm"):
        CapConfig(axis={1: torch.zeros(D)}, thresholds={1: 0.0}, kind="floor", model=tiny_info(tiny))


def tiny_info(tiny):
    return pa.make_backend(tiny).info
