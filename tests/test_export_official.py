"""Importing the Assistant Axis release (export/official.py), on files the test writes in the release's layout:
raw bf16 ``[n_layers, d]`` tensors (``assistant_axis.pt``, ``default_vector.pt``, ``role_vectors/<role>.pt``) and
``capping_config.pt`` = ``{"vectors": {"layer_<L>/contrast_role_pos3_default1": {"vector", "layer"}},
"experiments": [{"id": "layers_<a>:<b>-p<q>", "interventions": [{"vector", "cap"}]}]}``, saved with torch.save."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import persona_axes as pa
from persona_axes.errors import FileFormatError, InvalidInputError
from persona_axes.export.official import (
    import_official_axis,
    import_official_capping,
    import_official_roles,
    import_official_vector,
)
from persona_axes.steering.capping import CapConfig

N, D = 64, 5120  # Qwen3-32B's real shape: the folder name alone tells the importer the model


def write_release(root: Path, folder: str = "qwen-3-32b", n: int = N, d: int = D, roles=("pirate", "ghost", "sage"),
                  windows=((46, 54), (32, 36)), qs=(0.25, 0.5), seed: int = 0) -> dict:
    """Our own writer of the release layout; returns what it wrote, for the assertions."""
    g = torch.Generator().manual_seed(seed)
    base = root / folder
    (base / "role_vectors").mkdir(parents=True)
    offset = torch.randn(n, d, generator=g) * 4
    toward = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    default = (offset + 2 * toward).to(torch.bfloat16)
    role_vecs = {r: (offset - toward + 0.7 * torch.randn(n, d, generator=g)).to(torch.bfloat16) for r in roles}
    axis = (default.float() - torch.stack([v.float() for v in role_vecs.values()]).mean(0)).to(torch.bfloat16)
    torch.save(axis, base / "assistant_axis.pt")
    torch.save(default, base / "default_vector.pt")
    for r, v in role_vecs.items():
        torch.save(v, base / "role_vectors" / f"{r}.pt")
    vectors = {f"layer_{L}/contrast_role_pos3_default1": {"vector": (-axis[L]).clone(), "layer": L} for L in range(n)}
    caps = {q: {L: float(-1.0 - q + 0.01 * L) for L in range(n)} for q in qs}
    experiments = [{"id": f"layers_{a}:{b}-p{q}",
                    "interventions": [{"vector": f"layer_{L}/contrast_role_pos3_default1", "cap": caps[q][L]}
                                      for L in range(a, b)]} for a, b in windows for q in qs]
    cfg = {"vectors": vectors, "experiments": experiments}
    torch.save(cfg, base / "capping_config.pt")
    return {"base": base, "axis": axis, "default": default, "roles": role_vecs, "caps": caps, "config": cfg}


@pytest.fixture
def release(tmp_path):
    return write_release(tmp_path)


def test_axis_is_read_raw_with_our_layer_convention(release):
    v = import_official_axis(release["base"] / "assistant_axis.pt")  # the folder names the model
    assert (v.model.name, v.model.n_layers, v.model.hidden_size) == ("Qwen/Qwen3-32B", N, D)
    assert v.name == "assistant_axis" and v.metadata["official_dtype"] == "bfloat16"
    assert torch.equal(v.vector, release["axis"].float())  # row L = layer L, no shift, bf16 -> float32 exactly
    roles = import_official_roles(release["base"])
    assert roles.names == ["ghost", "pirate", "sage"]
    assert torch.equal(roles.vectors["pirate"], release["roles"]["pirate"].float())
    default = import_official_vector(release["base"] / "default_vector.pt")
    mean_roles = torch.stack([roles.vectors[r] for r in roles.names]).double().mean(0)
    np.testing.assert_allclose((default.vector.double() - mean_roles).numpy(), v.vector.double().numpy(), atol=0.2)


def test_axis_with_an_extra_row_is_refused_not_shifted(tmp_path):
    info = pa.ModelInfo("m", 8, 16)
    torch.save(torch.randn(9, 16, dtype=torch.bfloat16), tmp_path / "assistant_axis.pt")
    with pytest.raises(FileFormatError, match="9 rows for a 8-layer model.*embedding row"):
        import_official_axis(tmp_path / "assistant_axis.pt", model=info)
    torch.save(torch.randn(7, 16), tmp_path / "short.pt")
    with pytest.raises(FileFormatError, match="7 rows"):
        import_official_vector(tmp_path / "short.pt", model=info)
    with pytest.raises(InvalidInputError, match="pass model="):
        import_official_vector(tmp_path / "short.pt")


def test_pipeline_dict_layouts(tmp_path):
    info = pa.ModelInfo("m", 4, 8)
    t = torch.randn(4, 8)
    torch.save({"axis": t, "metadata": {"n_roles": 3}}, tmp_path / "a.pt")
    torch.save({"vector": t, "type": "pos_3", "role": "pirate"}, tmp_path / "r.pt")
    assert torch.equal(import_official_axis(tmp_path / "a.pt", model=info).vector, t)
    r = import_official_vector(tmp_path / "r.pt", model=info)
    assert r.name == "pirate" and r.metadata["official_type"] == "pos_3"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_only_weights_only_loading(tmp_path):
    """A pickled object of another class is refused, never unpickled."""

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Payload(), f)
    with pytest.raises(FileFormatError, match="weights_only"):
        import_official_axis(tmp_path / "evil.pt", model=pa.ModelInfo("m", 4, 8))


def test_capping_is_a_floor_on_the_unit_axis(release):
    cap = import_official_capping(release["base"] / "capping_config.pt", axis=release["base"] / "assistant_axis.pt")
    assert cap.experiment == "layers_46:54-p0.25" and sorted(cap.axis) == list(range(46, 54))  # recommended
    assert cap.percentile == 75.0 and cap.kind == "floor"
    axis = release["axis"].float()
    for L in range(46, 54):
        assert cap.thresholds[L] == -release["caps"][0.25][L]
        np.testing.assert_allclose(cap.axis[L].numpy(), (axis[L] / axis[L].norm()).numpy(), atol=1e-6)
    config = CapConfig(**cap.cap_config_fields())
    assert config.layers == list(range(46, 54)) and config.kind == "floor"
    # the official rule (a ceiling on the stored role-ward vector v) equals our floor, on random activations
    g = torch.Generator().manual_seed(1)
    h = torch.randn(50, D, generator=g) * 5
    for L in (46, 53):
        v = release["config"]["vectors"][f"layer_{L}/contrast_role_pos3_default1"]["vector"].float()
        vh = v / v.norm()
        official = h - (h @ vh - release["caps"][0.25][L]).clamp(min=0)[:, None] * vh
        u, tau = config.axis[L], config.thresholds[L]
        ours = h + (tau - h @ u).clamp(min=0)[:, None] * u
        torch.testing.assert_close(ours, official, atol=1e-4, rtol=0)


def test_capping_choices_and_refusals(release, tmp_path):
    path = release["base"] / "capping_config.pt"
    c = import_official_capping(path, experiment="layers_32:36-p0.5")
    assert sorted(c.axis) == [32, 33, 34, 35] and c.percentile == 50.0
    assert import_official_capping(path, experiment=0).experiment == "layers_46:54-p0.25"
    with pytest.raises(InvalidInputError, match="is not in"):
        import_official_capping(path, experiment="layers_1:2-p0.3")
    flipped = pa.PersonaVector(-release["axis"].float(), pa.ModelInfo("Qwen/Qwen3-32B", N, D), "x", "y")
    with pytest.raises(InvalidInputError, match="do not point along -axis"):
        import_official_capping(path, axis=flipped)
    other = tmp_path / "m" / "capping_config.pt"
    other.parent.mkdir()
    cfg = release["config"]
    cfg["vectors"]["layer_47/contrast_role_pos3_default1"]["layer"] = 48
    torch.save(cfg, other)
    with pytest.raises(FileFormatError, match="its name says 47"):
        import_official_capping(other, experiment=0, model=pa.ModelInfo("q", N, D))
    with pytest.raises(InvalidInputError, match="pass experiment="):
        import_official_capping(other, model=pa.ModelInfo("q", N, D))
