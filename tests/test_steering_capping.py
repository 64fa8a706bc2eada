"""Activation capping (persona_axes.steering.capping): calibration against numpy, the clamp and its orthogonal
part, no-op in range, save/load, bad inputs."""

import numpy as np
import pytest
import torch

import persona_axes as pa
from persona_axes.core import ModelInfo
from persona_axes.errors import FileFormatError, InvalidInputError, ModelMismatchError
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


# -- bad inputs: every public argument is checked at the boundary, with a typed error naming it -------------------
def _good(tiny):
    return dict(axis={1: sh.vec(), 2: sh.vec(2)}, thresholds={1: 0.5, 2: -1.0}, kind="floor", model=tiny_info(tiny))


CAPCONFIG_BAD = [
    ("kind-unknown", {"kind": "middle"}, "kind must be 'floor' or 'ceiling', got 'middle'"),
    ("kind-int", {"kind": 0}, "kind must be 'floor' or 'ceiling', got 0"),
    ("model-not-info", {"model": "tiny-llama"}, "model must be a ModelInfo"),
    ("axis-not-dict", {"axis": [sh.vec(), sh.vec(2)]}, "axis and thresholds must be dicts"),
    ("axis-layer-str", {"axis": {"1": sh.vec(), 2: sh.vec(2)}}, "axis layer must be an integer"),
    ("axis-layer-range", {"axis": {1: sh.vec(), 9: sh.vec(2)}, "thresholds": {1: 0.0, 9: 0.0}}, "axis layer must be <= 3"),
    ("axis-not-tensor", {"axis": {1: [0.0] * 64, 2: sh.vec(2)}}, "axis[1] must be a real tensor"),
    ("axis-width", {"axis": {1: torch.ones(65), 2: sh.vec(2)}}, "axis at layer 1 has shape (65,)"),
    ("axis-nan", {"axis": {1: torch.full((64,), float("nan")), 2: sh.vec(2)}}, "capping axis holds NaN"),
    ("threshold-str", {"thresholds": {1: "0.5", 2: 0.0}}, "thresholds[1] must be a number"),
    ("threshold-inf", {"thresholds": {1: float("inf"), 2: 0.0}}, "threshold at layer 1 is inf"),
    ("threshold-nan-tensor", {"thresholds": {1: torch.tensor(float("nan")), 2: 0.0}}, "thresholds[1] must be finite"),
    ("layers-empty", {"axis": {}, "thresholds": {}}, "same, non-empty set of layers"),
    ("percentile-range", {"percentile": 101.0}, "percentile must be in [0, 100], got 101"),
    ("percentile-str", {"percentile": "25"}, "percentile must be a number"),
    ("percentile-nan", {"percentile": float("nan")}, "percentile must be finite"),
    ("reference-not-str", {"reference": 3}, "reference must be a string"),
    ("name-not-str", {"name": None}, "name must be a string"),
    ("extra-not-str", {"extra": {"note": 1}}, "extra must be a dict of strings"),
    ("extra-reserved", {"extra": {"cap_kind": "ceiling"}}, "extra uses reserved metadata keys ['cap_kind']"),
    ("extra-reserved-file-key", {"extra": {"sha256": "0"}}, "extra uses reserved metadata keys ['sha256']"),
]


@pytest.mark.parametrize("change, needle", [pytest.param(*c[1:], id=c[0]) for c in CAPCONFIG_BAD])
def test_capconfig_refuses_bad_fields(tiny, change, needle):
    with pytest.raises(InvalidInputError) as e:
        CapConfig(**{**_good(tiny), **change})
    assert needle in str(e.value), str(e.value)


def test_fields_edited_after_construction_are_refused_before_use(tiny, tmp_path):
    """NaN must never be saved or applied: validate() runs again in save() and ActivationCap()."""
    cfg = CapConfig(**_good(tiny))
    cfg.thresholds[1] = float("nan")
    with pytest.raises(InvalidInputError, match="threshold at layer 1 is nan"):
        cfg.save(tmp_path / "cap.safetensors")
    assert not (tmp_path / "cap.safetensors").exists()
    with pytest.raises(InvalidInputError, match="threshold at layer 1 is nan"):
        ActivationCap(tiny, cfg)
    cfg = CapConfig(**_good(tiny))
    cfg.axis[2] = cfg.axis[2] * 3
    with pytest.raises(InvalidInputError, match="axis at layer 2 is not a unit vector"):
        ActivationCap(tiny, cfg)
    cfg = CapConfig(**_good(tiny))
    cfg.kind = "sideways"
    with pytest.raises(InvalidInputError, match="kind must be 'floor' or 'ceiling'"):
        cfg.save(tmp_path / "cap.safetensors")


@pytest.mark.parametrize("change, needle", [
    ({"percentile": 150}, "percentile must be in [0, 100]"),
    ({"percentile": -0.5}, "percentile must be in [0, 100]"),
    ({"percentile": "25"}, "percentile must be a number"),
    ({"percentile": float("inf")}, "percentile must be finite"),
    ({"kind": "lid"}, "kind must be 'floor' or 'ceiling'"),
    ({"reference_name": 7}, "reference_name must be a string"),
    ({"reference": "acts.safetensors"}, "reference must be Activations"),
    ({"layers": []}, "no layers were requested"),
    ({"layers": [1.5]}, "layer indices must be integers"),
    ({"axis": "assistant"}, "capping axis must be a PersonaVector or a tensor"),
    ({"axis": torch.zeros(4, D)}, "capping axis has zero norm at layer 1"),
])
def test_calibrate_cap_refuses_bad_arguments(tiny, change, needle):
    acts, axis = sh.axis_and_reference(tiny)
    kw = {"axis": axis, "reference": acts, "layers": [1, 2], **change}
    with pytest.raises(InvalidInputError) as e:
        calibrate_cap(kw.pop("axis"), kw.pop("reference"), kw.pop("layers"), **kw)
    assert needle in str(e.value), str(e.value)


@pytest.mark.parametrize("change, needle", [
    ({"config": "capping.safetensors"}, "config must be a CapConfig"),
    ({"layers": [3]}, "no threshold for layers [3]"),
    ({"layers": ["1"]}, "layer indices must be integers"),
    ({"positions": "all-of-them"}, "positions='all-of-them' is not one of"),
    ({"prompt_length": 2.5}, "prompt_length must be an integer"),
])
def test_activation_cap_refuses_bad_arguments(tiny, change, needle):
    kw = {"config": CapConfig(**_good(tiny)), **change}
    with pytest.raises(InvalidInputError) as e:
        ActivationCap(tiny, kw.pop("config"), **kw)
    assert needle in str(e.value), str(e.value)


def _saved_parts(tiny, tmp_path):
    from persona_axes.files import load_tensors

    p = CapConfig(**_good(tiny), percentile=25.0).save(tmp_path / "good.safetensors")
    return load_tensors(p, kind="capping")


@pytest.mark.parametrize("md_change, tensor_change, needle", [
    ({"cap_kind": "middle"}, {}, "kind must be 'floor' or 'ceiling', got 'middle'"),
    ({"cap_kind": None}, {}, "no cap_kind"),
    ({"percentile": "a quarter"}, {}, "could not convert"),
    ({"percentile": "250.0"}, {}, "percentile must be in [0, 100]"),
    ({"percentile": "nan"}, {}, "percentile must be finite"),
    ({}, {"thresholds": torch.tensor([float("nan"), 0.0])}, "NaN or infinite"),
    ({}, {"axis": torch.zeros(2, D)}, "zero norm at layer 1"),
    ({"capped_layers": "[1, 9]"}, {"layers": torch.tensor([1, 9])}, "axis layer must be <= 3"),
    ({"num_layers": "four"}, {}, "num_layers"),
])
def test_values_read_back_from_a_file_are_checked(tiny, tmp_path, md_change, tensor_change, needle):
    """A file whose checksum is right (written by us or by a tool that re-stamps it) but whose values are not:
    every field is checked as if passed by hand, and refused as a FileFormatError naming the file."""
    from persona_axes.files import save_tensors

    tensors, md = _saved_parts(tiny, tmp_path)
    for k, v in md_change.items():
        md.pop(k) if v is None else md.__setitem__(k, v)
    tensors.update(tensor_change)
    p = save_tensors(tmp_path / "edited.safetensors", tensors, md, kind="capping")
    with pytest.raises(FileFormatError) as e:
        CapConfig.load(p)
    assert str(p) in str(e.value) and needle in str(e.value), str(e.value)


# -- dtype and placement -------------------------------------------------------------------------------------------
def _float64_cap(h: torch.Tensor, cfg: CapConfig, L: int) -> torch.Tensor:
    u = cfg.axis[L].double().to(h.device)
    p = h.double() @ u
    shift = (cfg.thresholds[L] - p).clamp_min(0) if cfg.kind == "floor" else -(p - cfg.thresholds[L]).clamp_min(0)
    return h.double() + shift.unsqueeze(-1) * u


def _cap_operands(h: torch.Tensor, cfg: CapConfig, L: int) -> torch.Tensor:
    """Elementwise magnitude of what goes into a capped element: |h_i| + |delta_i| + (|h| . |u|) |u_i| (the last
    term bounds the float32 rounding of the projection, carried into every element along u)."""
    u = cfg.axis[L].double().to(h.device)
    h64 = h.double()
    return h64.abs() + (_float64_cap(h, cfg, L) - h64).abs() + (h64.abs() @ u.abs()).unsqueeze(-1) * u.abs()


@pytest.mark.parametrize("fixture", ["tiny_bf16", "tiny_fp16"])
@pytest.mark.parametrize("kind", ["floor", "ceiling"])
def test_cap_in_half_precision_equals_a_float64_hook_rounded_once(request, tiny, fixture, kind):
    """In a bf16/fp16 model the capped block output equals an independent float64 cap of the same raw output,
    rounded once to the model's dtype. Tolerance: 1 ulp of that dtype per element (measured: <= 0.8)."""
    m = request.getfixturevalue(fixture)
    acts, axis = sh.axis_and_reference(tiny)
    cfg = calibrate_cap(axis, acts, layers=[1, 2], percentile=75 if kind == "floor" else 25, kind=kind)
    ids, mask = sh.padded_prompts(m, 3)
    raw, got = sh.bracket_block(m, [1, 2], lambda: ActivationCap(m, cfg), lambda: sh.logits(m.model, ids, mask))
    for L in (1, 2):
        assert got[L].dtype == m.model.dtype
        ref = _float64_cap(raw[L], cfg, L)
        off, (diff, rel) = sh.ulps_off(got[L], ref), sh.max_diffs(got[L], ref)
        print(f"{fixture} ActivationCap ({kind}) block {L}: {off:.3g} ulps of the result, max abs {diff:.3g}, "
              f"max rel {rel:.3g}")
        assert off <= 1.0
        assert not torch.equal(got[L], raw[L])  # the cap acted


def test_cap_on_a_model_dispatched_with_disk_offload_equals_the_plain_model(tiny, tiny_dispatched):
    """accelerate ``device_map`` with CPU + disk offload: capped forward and cached generate give the same numbers
    as on the undispatched model."""
    acts, axis = sh.axis_and_reference(tiny)
    cfg = calibrate_cap(axis, acts, layers=[1, 3], percentile=75)
    ids, mask = sh.padded_prompts(tiny, 2)
    ids, mask = ids.cpu(), mask.cpu()
    out = {}
    for name, m in (("plain", tiny), ("dispatched", tiny_dispatched)):
        with ActivationCap(m, cfg):
            out[name] = (sh.logits(m.model, ids, mask),
                         m.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                          pad_token_id=0))
    assert torch.equal(out["plain"][0], out["dispatched"][0])
    assert torch.equal(out["plain"][1], out["dispatched"][1])
    assert not torch.allclose(out["dispatched"][0], sh.logits(tiny_dispatched.model, ids, mask))  # the cap acted


# -- a second real architecture: Gemma 3 270M ------------------------------------------------------------------------
@pytest.mark.slow
def test_cap_on_gemma3_equals_an_independent_hook(gemma3):
    convs = [[{"role": "user", "content": "Tell me about the sea."}, {"role": "assistant", "content": "It is wide and deep."}],
             [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}]]
    layers = [6, 12]
    acts = pa.capture(gemma3, convs, layers=layers, which="messages", progress=False)
    axis = torch.randn(gemma3.layers.n_layers, gemma3.layers.hidden_size, generator=torch.Generator().manual_seed(4))
    cfg = calibrate_cap(axis, acts, layers=layers, percentile=75)
    ids, mask = sh.gemma_prompt(gemma3)
    raw, got = sh.bracket_block(gemma3, layers, lambda: ActivationCap(gemma3, cfg), lambda: sh.logits(gemma3.model, ids, mask))
    for L in layers:
        # float32 model: the projection sums 640 rounded products, so allow a few ulps of the operands (measured 1.2)
        off = sh.ulps_off(got[L], _float64_cap(raw[L], cfg, L), _cap_operands(raw[L], cfg, L))
        print(f"gemma3 ActivationCap block {L} vs float64 cap: {off:.3g} ulps of the operands")
        assert off <= 4.0, L
        assert not torch.equal(got[L], raw[L])  # the cap acted
    with ActivationCap(gemma3, cfg):
        capped = sh.logits(gemma3.model, ids, mask)
    own = sh.logits_under_own_hooks(gemma3, {L: (lambda h, L=L: _float64_cap(h, cfg, L)) for L in layers}, ids, mask)
    diff, rel = sh.max_diffs(capped, own)
    print(f"gemma3 ActivationCap logits vs own hook: max abs {diff:.3g}, max rel {rel:.3g}")
    assert rel <= 1e-5


def test_from_official_release_layout(tmp_path):
    """``CapConfig.from_official`` on a ``capping_config.pt`` written here in the release's layout (the official
    rule caps the role-ward vector v from above at ``cap``; ours is the same cap as a floor on u = -v/|v| at -cap)."""
    base = tmp_path / "qwen-3-32b"  # the folder names the model (64 layers, d=5120)
    base.mkdir()
    g = torch.Generator().manual_seed(2)
    vectors = {f"layer_{L}/contrast_role_pos3_default1": {"vector": torch.randn(5120, generator=g).to(torch.bfloat16),
                                                          "layer": L} for L in range(46, 54)}
    caps = {L: -1.25 + 0.01 * L for L in range(46, 54)}
    experiments = [{"id": "layers_46:54-p0.25", "interventions": [
        {"vector": f"layer_{L}/contrast_role_pos3_default1", "cap": caps[L]} for L in range(46, 54)]}]
    torch.save({"vectors": vectors, "experiments": experiments}, base / "capping_config.pt")
    cfg = CapConfig.from_official(base / "capping_config.pt", experiment="layers_46:54-p0.25")
    assert cfg.layers == list(range(46, 54)) and cfg.kind == "floor" and cfg.model.hidden_size == 5120
    h = torch.randn(20, 5120, generator=g) * 3
    for L in (46, 53):
        v = vectors[f"layer_{L}/contrast_role_pos3_default1"]["vector"].double()
        v = v / v.norm()
        official = h.double() - (h.double() @ v - caps[L]).clamp(min=0)[:, None] * v
        u, tau = cfg.axis[L].double(), cfg.thresholds[L]
        ours = h.double() + (tau - h.double() @ u).clamp(min=0)[:, None] * u
        assert float((ours - official).abs().max()) < 1e-4
        assert bool(((h.double() @ v) > caps[L]).any())  # the cap acts on some rows


def test_save_and_load_refuse_a_path_that_is_not_one(tiny):
    cfg = CapConfig(**_good(tiny))
    with pytest.raises(InvalidInputError, match="path must be a file path"):
        cfg.save(42)
    with pytest.raises(InvalidInputError, match="path must be a file path"):
        CapConfig.load(None)
