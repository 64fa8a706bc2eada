"""Steering units (persona_axes.vectors.units): rel, sd and gap measured on a tiny random-init model and compared
with an independent NumPy computation; the statistics stored in a vector file and read back; errors when they are
missing; export baking the same units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import persona_axes as pa
from persona_axes.errors import FileFormatError, InvalidInputError
from persona_axes.files import RESERVED_KEYS, check_file, read_safetensors_metadata
from persona_axes.steering.interventions import Steer
from persona_axes.vectors.units import (
    STATS_KEY, UnitStats, layer_units, reference_norms, stats_of, steer_rows, unit_scales, unit_stats,
    with_unit_stats,
)

from helpers import conversations


@pytest.fixture(scope="module")
def groups(tiny):
    """Reply-mean activations of assistant replies: 'default' (assistant system prompt) and 'role' (pirate)."""
    convs = conversations(12)
    acts = pa.capture(tiny, convs, which="assistant", reduce="mean", progress=False)
    system = [convs[it["conversation"]][0]["content"] for it in acts.items]
    default = acts.select([i for i, s in enumerate(system) if "assistant" in s])
    role = acts.select([i for i, s in enumerate(system) if "pirate" in s])
    assert len(default) >= 3 and len(role) >= 3
    axis = pa.PersonaVector(vector=(default.values.double().mean(0) - role.values.double().mean(0)).float(),
                            model=default.model, name="axis", method="assistant_axis")
    return default, role, axis


def _np_stats(default, pos, neg, axis):
    """rel, sd, gap per layer, by NumPy from the raw arrays."""
    d = default.values.numpy().astype(np.float64)
    p, n = pos.values.numpy().astype(np.float64), neg.values.numpy().astype(np.float64)
    v = axis.vector.numpy().astype(np.float64)
    u = v / np.linalg.norm(v, axis=-1, keepdims=True)
    rel = np.linalg.norm(d, axis=-1).mean(0)
    sd = np.einsum("nld,ld->nl", d, u).std(0, ddof=1)
    gap = np.einsum("nld,ld->nl", p, u).mean(0) - np.einsum("nld,ld->nl", n, u).mean(0)
    return rel, sd, gap


def test_unit_stats_match_numpy(groups):
    default, role, axis = groups
    s = unit_stats(axis, default, negative=role)
    rel, sd, gap = _np_stats(default, default, role, axis)
    assert np.allclose(s.rel, rel, rtol=1e-5) and np.allclose(s.sd, sd, rtol=1e-9) and np.allclose(s.gap, gap, rtol=1e-9)
    # a mean difference of the two groups: the gap along it is its length
    assert np.allclose(s.gap, axis.norms().numpy(), rtol=1e-5)
    assert "default-assistant replies" in s.reference and s.n_layers == axis.n_layers
    no_gap = unit_stats(axis, default, reference_name="six replies")
    assert all(math.isnan(g) for g in no_gap.gap) and no_gap.reference == "six replies"


def test_rel_refuses_per_token_activations(tiny, groups):
    default, _, axis = groups
    per_token = pa.capture(tiny, conversations(3), which="assistant", reduce="all", progress=False)
    for call in (lambda: reference_norms(per_token, axis.model), lambda: unit_stats(axis, per_token),
                 lambda: Steer(tiny, axis, [1], 1.0, unit="rel", reference=per_token)):
        with pytest.raises(InvalidInputError, match="reduce='mean'"):
            call()


def test_stats_round_trip_through_save_and_load(tmp_path, groups):
    default, role, axis = groups
    assert STATS_KEY not in RESERVED_KEYS
    s = unit_stats(axis, default, negative=role)
    v = with_unit_stats(axis, s)
    assert stats_of(axis) is None and stats_of(v) == s and axis.metadata == {}
    path = v.save(tmp_path / "axis.safetensors")
    back = pa.PersonaVector.load(path)
    assert stats_of(back) == s and torch.equal(back.vector, axis.vector)
    assert check_file(path).status == "ok"
    # the statistics sit under the file's checksum: an edit is caught
    md = read_safetensors_metadata(path)
    assert STATS_KEY in md
    raw = path.read_bytes()
    old = repr(s.sd[0]).encode()  # as JSON writes it, free of quotes (escaped in the header)
    assert raw.count(old) == 1
    forged = old[:-1] + (b"1" if old[-1:] != b"1" else b"2")
    path.write_bytes(raw.replace(old, forged))
    with pytest.raises(FileFormatError, match="checksum"):
        pa.PersonaVector.load(path)


def test_nan_is_stored_as_null_and_read_back():
    s = UnitStats(rel=[1.0, None], sd=[2.0, float("nan")], gap=[None, None], reference="r")
    assert "null" in s.to_json() and "NaN" not in s.to_json()
    back = UnitStats.from_json(s.to_json())
    assert back.rel[0] == 1.0 and math.isnan(back.rel[1]) and math.isnan(back.gap[0])
    with pytest.raises(FileFormatError, match="unit_stats"):
        UnitStats.from_json('{"rel": [1]}')
    with pytest.raises(InvalidInputError, match="one length"):
        UnitStats(rel=[1.0], sd=[1.0, 2.0], gap=[1.0])


@pytest.mark.parametrize("unit", ["sd", "gap", "rel"])
def test_steer_in_a_unit_equals_raw_steer_times_the_stat(tiny, groups, unit):
    default, role, axis = groups
    s = unit_stats(axis, default, negative=role)
    v = with_unit_stats(axis, s)
    layers, coef = [1, 2], 1.7
    convs = conversations(2)
    with Steer(tiny, v, layers, coef, unit=unit) as st:
        got = pa.capture(tiny, convs, layers=[3], progress=False)
    raw = torch.zeros_like(axis.vector)
    for L in layers:
        raw[L] = axis.vector[L] * (coef * s.of(unit)[L] / float(axis.vector[L].double().norm()))
    with Steer(tiny, raw, layers, 1.0, unit="raw"):
        want = pa.capture(tiny, convs, layers=[3], progress=False)
    assert torch.allclose(got.values, want.values, rtol=1e-5, atol=1e-5)
    rec = st.record()
    assert rec["unit"] == unit
    assert rec["scale_per_layer"] == pytest.approx({str(L): s.of(unit)[L] / float(axis.vector[L].double().norm())
                                                    for L in layers}, rel=1e-6)


def test_reference_measures_rel_and_sd_for_a_vector_without_stats(tiny, groups):
    default, role, axis = groups
    rel, sd, _ = _np_stats(default, default, role, axis)
    for unit, want in (("rel", rel), ("sd", sd)):
        st = Steer(tiny, axis, [1, 3], 2.0, unit=unit, reference=default)
        n = axis.vector.double().norm(dim=-1).numpy()
        assert st.scale == pytest.approx({L: want[L] / n[L] for L in (1, 3)}, rel=1e-5)
    # sd on a [d] tensor used at every layer: the projection is onto that row
    row = axis.vector[2]
    sizes = layer_units("sd", axis.model, {2: row}, row, default)
    p = default.at(2).double().numpy() @ (row.double().numpy() / np.linalg.norm(row.double().numpy()))
    assert float(sizes[2]) == pytest.approx(p.std(ddof=1), rel=1e-9)


def test_missing_stats_say_what_and_how(tiny, groups):
    default, role, axis = groups
    for unit in ("rel", "sd"):
        with pytest.raises(InvalidInputError, match=f"unit='{unit}' needs .*reference="):
            Steer(tiny, axis, [1], 1.0, unit=unit)
    with pytest.raises(InvalidInputError, match="unit='gap' needs .*positive=.*negative="):
        Steer(tiny, axis, [1], 1.0, unit="gap")
    with pytest.raises(InvalidInputError, match="reference= cannot"):
        Steer(tiny, axis, [1], 1.0, unit="gap", reference=default)
    no_gap = with_unit_stats(axis, unit_stats(axis, default))
    with pytest.raises(InvalidInputError, match="no gap is known at layer 1"):
        Steer(tiny, no_gap, [1], 1.0, unit="gap")
    flipped = with_unit_stats(axis, unit_stats(axis, role, positive=role, negative=default))
    with pytest.raises(InvalidInputError, match="gap at layer 1 is -"):
        Steer(tiny, flipped, [1], 1.0, unit="gap")
    with pytest.raises(InvalidInputError, match="both groups"):
        unit_stats(axis, default, positive=default)
    with pytest.raises(InvalidInputError, match="at least 2"):
        unit_stats(axis, default.select([0]))
    with pytest.raises(InvalidInputError, match="reference= is only used"):
        Steer(tiny, axis, [1], 1.0, unit="unit", reference=default)
    with pytest.raises(InvalidInputError, match="covers|cover 3 layers"):
        with_unit_stats(axis, UnitStats(rel=[1.0] * 3, sd=[1.0] * 3, gap=[1.0] * 3))


def test_steer_rows_and_unit_scales_agree(groups):
    default, role, axis = groups
    v = with_unit_stats(axis, unit_stats(axis, default, negative=role))
    rows = {L: v.vector[L] for L in (1, 2)}
    got = steer_rows(rows, -0.5, "gap", None, v.model, vector=v)
    scales = unit_scales(rows, "gap", layer_units("gap", v.model, rows, v))
    for L in rows:
        assert torch.allclose(got[L], -0.5 * scales[L] * rows[L].double())
        assert float(got[L].norm()) == pytest.approx(0.5 * stats_of(v).gap[L], rel=1e-6)


def test_gguf_bakes_sd_and_gap_like_steer(tmp_path, tiny, groups):
    pytest.importorskip("gguf")
    from persona_axes.export import export_gguf_control_vector, read_gguf_directions

    default, role, axis = groups
    v = with_unit_stats(axis, unit_stats(axis, default, negative=role))
    for unit in ("sd", "gap"):
        path = export_gguf_control_vector(v, tmp_path / f"{unit}.gguf", layers=[1, 2], unit=unit, scale=-2.0)
        rows = read_gguf_directions(path)
        st = Steer(tiny, v, [1, 2], -2.0, unit=unit)
        for L in (1, 2):
            assert np.allclose(rows[L], (-2.0 * st.vectors[L]).numpy(), rtol=1e-5, atol=1e-6)
    # a vector without stats: sd from reference activations, the same as Steer with that reference
    path = export_gguf_control_vector(axis, tmp_path / "ref.gguf", layers=[2], unit="sd", scale=1.5, reference=default)
    st = Steer(tiny, axis, [2], 1.5, unit="sd", reference=default)
    assert np.allclose(read_gguf_directions(path)[2], (1.5 * st.vectors[2]).numpy(), rtol=1e-5, atol=1e-6)
