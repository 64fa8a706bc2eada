"""Export/import of PersonaVectors: llama.cpp GGUF control vectors, repeng's format, .npz and safetensors.

Files are inspected independently with gguf.GGUFReader / numpy, never only through our own importers.
"""

from __future__ import annotations

import json
import os
import warnings

import gguf
import numpy as np
import pytest
import torch

from persona_axes.core import ModelInfo
from persona_axes.errors import FileFormatError, InvalidInputError, LayerOutOfRangeError, ModelMismatchError
from persona_axes.export import (
    FORMATS,
    export_gguf_control_vector,
    export_numpy,
    export_repeng_gguf,
    export_vector,
    from_repeng,
    guess_format,
    import_gguf_control_vector,
    import_numpy,
    import_repeng_gguf,
    import_vector,
    to_repeng,
)
from persona_axes.vectors.containers import PersonaVector

T, D = 6, 32
INFO = ModelInfo(name="synthetic", n_layers=T, hidden_size=D)
SUFFIX = {"safetensors": ".safetensors", "gguf": ".gguf", "repeng": ".gguf", "numpy": ".npz"}


@pytest.fixture
def vec() -> PersonaVector:
    g = torch.Generator().manual_seed(1234)
    return PersonaVector(vector=torch.randn(T, D, generator=g), model=INFO, name="pirate", method="mean_diff",
                         n_samples=42, metadata={"trait": "pirate", "note": "é"})


def _read(path):
    """Independent view of a GGUF file: ({key: (types, value)}, {tensor name: (type, shape, data)}, order)."""
    r = gguf.GGUFReader(path)
    fields = {k: (list(f.types), f.contents()) for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (t.tensor_type, [int(x) for x in t.shape], np.array(t.data)) for t in r.tensors}
    return fields, tensors, [t.name for t in r.tensors]


def _write_cv(path, tensors: dict, arch="controlvector", hint="llama", layer_count=None):
    """A control-vector file written directly with GGUFWriter, the way other tools write them."""
    w = gguf.GGUFWriter(path, arch)
    if hint is not None:
        w.add_string(f"{arch}.model_hint", hint)
    w.add_int32(f"{arch}.layer_count", len(tensors) if layer_count is None else layer_count)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --------------------------------------------------------------------------- bit-exact formats


@pytest.mark.parametrize("fmt", ["safetensors", "numpy"])
def test_bit_exact_round_trip(tmp_path, vec, fmt):
    p = tmp_path / f"v{SUFFIX[fmt]}"
    assert export_vector(vec, p, format=fmt) == p
    for back in (import_vector(p), import_vector(p, format=fmt, model=INFO)):
        assert back.vector.dtype == torch.float32
        assert torch.equal(back.vector, vec.vector)
        assert (back.name, back.method, back.n_samples, back.metadata) == ("pirate", "mean_diff", 42, vec.metadata)
        assert back.model == INFO
    assert sorted(os.listdir(tmp_path)) == [p.name]  # no temporary file left behind


def test_numpy_layout(tmp_path, vec):
    p = export_numpy(vec, tmp_path / "v.npz")
    with np.load(p, allow_pickle=False) as z:
        assert sorted(z.files) == ["metadata", "vector"]
        assert z["vector"].dtype == np.float32 and z["vector"].shape == (T, D)
        np.testing.assert_array_equal(z["vector"], vec.vector.numpy())
        assert z["metadata"].dtype.kind == "U" and z["metadata"].shape == (1,)
        md = json.loads(str(z["metadata"][0]))
    assert md["model"] == "synthetic" and md["num_layers"] == T and md["hidden_size"] == D
    assert md["name"] == "pirate" and md["method"] == "mean_diff" and md["n_samples"] == 42
    assert md["metadata"] == vec.metadata and md["format"] == "persona_axes"


# --------------------------------------------------------------------------- llama.cpp GGUF


def test_gguf_layout_and_round_trip(tmp_path, vec):
    p = export_gguf_control_vector(vec, tmp_path / "v.gguf", model_hint="qwen2")
    fields, tensors, order = _read(p)
    assert fields["general.architecture"][1] == "controlvector"
    assert fields["controlvector.model_hint"][1] == "qwen2"
    assert fields["controlvector.layer_count"] == ([gguf.GGUFValueType.INT32], T - 1)
    # llama.cpp adds direction.N to the output of block N; N = 0 is refused, so layer 0 is left out
    assert order == [f"direction.{L}" for L in range(1, T)]
    for L in range(1, T):
        ttype, shape, data = tensors[f"direction.{L}"]
        assert ttype == gguf.GGMLQuantizationType.F32 and shape == [D]
        np.testing.assert_array_equal(data, vec.vector[L].numpy())
    assert fields["persona_axes.model"][1] == "synthetic"
    assert fields["persona_axes.num_layers"][1] == T and fields["persona_axes.hidden_size"][1] == D
    assert fields["persona_axes.scale"][1] == 1.0
    assert fields["persona_axes.layers"][1] == list(range(1, T))

    back = import_gguf_control_vector(p)
    assert torch.equal(back.vector[1:], vec.vector[1:])
    assert torch.count_nonzero(back.vector[0]) == 0
    assert (back.name, back.method, back.n_samples, back.model) == ("pirate", "mean_diff", 42, INFO)
    assert {k: back.metadata[k] for k in vec.metadata} == vec.metadata
    assert json.loads(back.metadata["gguf_layers"]) == list(range(1, T))
    assert back.metadata["gguf_model_hint"] == "qwen2" and back.metadata["gguf_normalize"] == "false"
    assert guess_format(p) == "gguf"
    assert torch.equal(import_vector(p, model=INFO).vector, back.vector)


def test_gguf_layer_subset_and_layer_zero(tmp_path, vec):
    p = tmp_path / "v.gguf"
    with pytest.warns(UserWarning, match="layer 0"):
        export_gguf_control_vector(vec, p, layers=[0, 2, -1])
    _, tensors, order = _read(p)
    assert order == ["direction.2", "direction.5"]
    back = import_gguf_control_vector(p)
    for L in range(T):
        expected = vec.vector[L] if L in (2, 5) else torch.zeros(D)
        assert torch.equal(back.vector[L], expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_gguf_control_vector(vec, p, layers=3)  # no warning without layer 0
    assert _read(p)[2] == ["direction.3"]
    with pytest.raises(InvalidInputError, match="layer 0"):
        export_gguf_control_vector(vec, tmp_path / "zero.gguf", layers=[0])
    with pytest.raises(LayerOutOfRangeError):
        export_gguf_control_vector(vec, tmp_path / "oob.gguf", layers=[T])
    assert not (tmp_path / "zero.gguf").exists() and not (tmp_path / "oob.gguf").exists()


def test_gguf_scale_and_normalize(tmp_path, vec):
    v64 = vec.vector.numpy().astype(np.float64)
    unit = v64 / np.linalg.norm(v64, axis=-1, keepdims=True)
    cases = {
        (2.5, False): (v64 * 2.5).astype(np.float32),
        (1.0, True): unit.astype(np.float32),
        (-4.0, True): (unit * -4.0).astype(np.float32),
    }
    for (scale, norm), expected in cases.items():
        p = export_gguf_control_vector(vec, tmp_path / "s.gguf", scale=scale, normalize=norm)
        _, tensors, _ = _read(p)
        for L in range(1, T):
            np.testing.assert_array_equal(tensors[f"direction.{L}"][2], expected[L])
        back = import_gguf_control_vector(p)
        np.testing.assert_array_equal(back.vector[1:].numpy(), expected[1:])
        assert float(back.metadata["gguf_scale"]) == scale
        assert back.metadata["gguf_normalize"] == ("true" if norm else "false")
    np.testing.assert_allclose(np.linalg.norm(cases[(1.0, True)][1:], axis=-1), 1.0, rtol=1e-6)

    zero = PersonaVector(vector=vec.vector.clone(), model=INFO, name="z", method="m")
    zero.vector[3] = 0
    with pytest.raises(InvalidInputError, match="zero norm"):
        export_gguf_control_vector(zero, tmp_path / "z.gguf", normalize=True)
    export_gguf_control_vector(zero, tmp_path / "z.gguf", normalize=True, layers=[1, 2, 4])  # fine without it
    for bad in (float("nan"), float("inf"), "2", True):
        with pytest.raises(InvalidInputError, match="scale"):
            export_gguf_control_vector(vec, tmp_path / "bad.gguf", scale=bad)
    with pytest.raises(InvalidInputError, match="overflow"):
        export_gguf_control_vector(vec, tmp_path / "bad.gguf", scale=1e300)
    with pytest.raises(InvalidInputError, match="model_hint"):
        export_gguf_control_vector(vec, tmp_path / "bad.gguf", model_hint="")
    assert not (tmp_path / "bad.gguf").exists()


def test_gguf_from_another_tool(tmp_path, vec):
    """A file laid out like llama.cpp's cvector-generator output (no persona_axes keys)."""
    p = tmp_path / "other.gguf"
    _write_cv(p, {f"direction.{L}": vec.vector[L].numpy() for L in (1, 4)})
    with pytest.raises(InvalidInputError, match="model="):
        import_gguf_control_vector(p)
    back = import_gguf_control_vector(p, model=INFO)
    assert back.model == INFO and back.name == "other"
    for L in range(T):
        assert torch.equal(back.vector[L], vec.vector[L] if L in (1, 4) else torch.zeros(D))
    with pytest.raises(ModelMismatchError):
        import_gguf_control_vector(p, model=ModelInfo("synthetic", T, D * 2))
    with pytest.raises(ModelMismatchError):
        import_gguf_control_vector(p, model=ModelInfo("synthetic", 4, D))  # direction.4 does not exist there
    # auto-detection treats a bare control vector as repeng/llama.cpp layout (needs model=)
    assert guess_format(p) == "repeng"
    assert torch.equal(import_vector(p, model=INFO).vector, back.vector)


@pytest.mark.parametrize("fmt", ["gguf", "numpy", "safetensors"])
def test_model_mismatch_on_import(tmp_path, vec, fmt):
    p = export_vector(vec, tmp_path / f"v{SUFFIX[fmt]}", format=fmt)
    with pytest.raises(ModelMismatchError):
        import_vector(p, model=ModelInfo("synthetic", T, D + 1))
    with pytest.raises(ModelMismatchError):
        import_vector(p, model=ModelInfo("synthetic", T + 1, D))
    with pytest.raises(ModelMismatchError):
        import_vector(p, model=ModelInfo("other-model", T, D))
    assert import_vector(p, model=ModelInfo("org/Synthetic", T, D)).name == "pirate"
    assert import_vector(p, model=ModelInfo("other-model", T, D), strict_name=False).name == "pirate"


# --------------------------------------------------------------------------- refusing bad files


def _bad_gguf_files(tmp_path, vec):
    good = export_gguf_control_vector(vec, tmp_path / "good.gguf")
    data = good.read_bytes()
    files = {}
    for cut in sorted({1, 4, 8, 16, 24, 40, 100, 300, len(data) // 2, len(data) - 200, len(data) - 5, len(data) - 1}):
        files[f"cut{cut}"] = data[:cut]
    files["empty"] = b""
    files["random"] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    files["random_after_magic"] = b"GGUF" + np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    files["safetensors"] = (tmp_path / "x").read_bytes() if vec.save(tmp_path / "x") else b""
    out = {k: tmp_path / f"{k}.gguf" for k in files}
    for k, b in files.items():
        out[k].write_bytes(b)
    # well-formed GGUF files that are not (valid) control vectors
    w = gguf.GGUFWriter(tmp_path / "model.gguf", "llama")
    w.add_block_count(2)
    w.add_tensor("token_embd.weight", np.ones((4, D), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    out["model"] = tmp_path / "model.gguf"
    row = vec.vector[1].numpy()
    specs = {
        "direction0": {"direction.0": row, "direction.1": row},
        "nan": {"direction.1": np.full(D, np.nan, np.float32)},
        "badname": {"direction.1": row, "bias.2": row},
        "noncanonical": {"direction.01": row},
        "f16": {"direction.1": row.astype(np.float16)},
        "2d": {"direction.1": np.ones((2, D), np.float32)},
        "lengths": {"direction.1": row, "direction.2": row[:-1]},
        "notensor": {},
    }
    for k, t in specs.items():
        _write_cv(tmp_path / f"{k}.gguf", t)
        out[k] = tmp_path / f"{k}.gguf"
    return out


def test_corrupt_truncated_and_foreign_gguf_refused(tmp_path, vec):
    for kind, p in _bad_gguf_files(tmp_path, vec).items():
        with pytest.raises(FileFormatError):
            import_gguf_control_vector(p, model=INFO)
            pytest.fail(f"{kind} was accepted")
        if kind not in ("direction0", "f16"):  # repeng's layout accepts these two
            with pytest.raises(FileFormatError):
                import_repeng_gguf(p, INFO)
                pytest.fail(f"{kind} was accepted as repeng")
    with pytest.raises(FileFormatError):
        import_gguf_control_vector(tmp_path / "missing.gguf")


def test_edited_metadata_refused(tmp_path, vec):
    """Our keys are cross-checked against the tensors."""
    good = export_gguf_control_vector(vec, tmp_path / "good.gguf")
    fields, tensors, _ = _read(good)

    def rewrite(name, **changes):
        """A copy with ``changes``, re-stamped (so each case meets the cross-check it is about, not the checksum)."""
        from persona_axes.export.gguf_io import gguf_checksum

        kept = {t: d for t, (_, _, d) in tensors.items() if t not in changes.get("_drop", ())}
        values = {k: changes.get(k, v) for k, (_, v) in fields.items()}
        if "persona_axes.checksum" not in changes:
            changes["persona_axes.checksum"] = gguf_checksum({int(t.split(".")[1]): d for t, d in kept.items()}, values)
        w = gguf.GGUFWriter(tmp_path / name, "controlvector")
        for k, (types, val) in fields.items():
            if k == "general.architecture":
                continue
            val = changes.get(k, val)
            if types[0] == gguf.GGUFValueType.ARRAY:
                w.add_key_value(k, val, types[0], sub_type=types[-1])
            else:
                w.add_key_value(k, val, types[0])
        for tname, (_, _, data) in tensors.items():
            if tname not in changes.get("_drop", ()):
                w.add_tensor(tname, data)
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
        return tmp_path / name

    assert torch.equal(import_gguf_control_vector(rewrite("same.gguf")).vector, import_gguf_control_vector(good).vector)
    for bad in (
        rewrite("hidden.gguf", **{"persona_axes.hidden_size": D + 1}),
        rewrite("layers.gguf", **{"persona_axes.layers": [1, 2, 3]}),
        rewrite("nlayers.gguf", **{"persona_axes.num_layers": 3}),
        rewrite("count.gguf", **{"controlvector.layer_count": 2}),
        rewrite("version.gguf", **{"persona_axes.format_version": "99"}),
        rewrite("md.gguf", **{"persona_axes.metadata": "{not json"}),
        rewrite("drop.gguf", _drop=("direction.3",)),
        rewrite("name.gguf", **{"persona_axes.name": "edited", "persona_axes.checksum": fields[
            "persona_axes.checksum"][1]}),  # an edited value under the old checksum
    ):
        with pytest.raises(FileFormatError, match="checksum" if bad.name == "name.gguf" else "^(?!.*checksum)"):
            import_gguf_control_vector(bad)
            pytest.fail(f"{bad.name} was accepted")


def test_corrupt_and_foreign_npz_refused(tmp_path, vec):
    good = export_numpy(vec, tmp_path / "good.npz")
    data = good.read_bytes()
    bad = {f"cut{c}.npz": data[:c] for c in (0, 10, len(data) // 2, len(data) - 10)}
    bad["random.npz"] = os.urandom(2048)
    for name, b in bad.items():
        (tmp_path / name).write_bytes(b)
    np.savez(tmp_path / "foreign.npz", weights=np.ones(3))
    np.savez(tmp_path / "pickled.npz", vector=vec.vector.numpy(), metadata=np.array([{"a": 1}], dtype=object))
    md = json.loads(str(np.load(good)["metadata"][0]))
    np.savez(tmp_path / "shape.npz", vector=vec.vector.numpy()[:, :-1], metadata=np.array([json.dumps(md)]))
    np.savez(tmp_path / "f64.npz", vector=vec.vector.numpy().astype(np.float64), metadata=np.array([json.dumps(md)]))
    nan = vec.vector.numpy().copy()
    nan[2, 3] = np.nan
    np.savez(tmp_path / "nan.npz", vector=nan, metadata=np.array([json.dumps(md)]))
    np.savez(tmp_path / "kind.npz", vector=vec.vector.numpy(), metadata=np.array([json.dumps({**md, "kind": "x"})]))
    np.savez(tmp_path / "noname.npz", vector=vec.vector.numpy(), metadata=np.array([json.dumps({**md, "name": ""})]))
    for name in [*bad, "foreign.npz", "pickled.npz", "shape.npz", "f64.npz", "nan.npz", "kind.npz", "noname.npz"]:
        with pytest.raises(FileFormatError):
            import_numpy(tmp_path / name)
            pytest.fail(f"{name} was accepted")


# --------------------------------------------------------------------------- repeng


def test_to_and_from_repeng(vec):
    data = to_repeng(vec)
    assert data["model_type"] == "llama"
    assert list(data["directions"]) == list(range(1, T))  # repeng's default layer set: every block but 0
    for L, arr in data["directions"].items():
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.shape == (D,)
        np.testing.assert_array_equal(arr, vec.vector[L].numpy())
    sub = to_repeng(vec, layers=[0, -1], model_type="mistral", scale=-2.0)
    assert sub["model_type"] == "mistral" and list(sub["directions"]) == [0, T - 1]
    np.testing.assert_array_equal(sub["directions"][0], (vec.vector[0].double() * -2).float().numpy())

    back = from_repeng(data, INFO, name="pirate")
    assert torch.equal(back.vector[1:], vec.vector[1:]) and torch.count_nonzero(back.vector[0]) == 0
    assert back.metadata["repeng_model_type"] == "llama"
    assert json.loads(back.metadata["repeng_layers"]) == [1, 2, 3, 4, 5]

    class ControlVectorLike:  # repeng.ControlVector's fields, duck-typed
        model_type = "qwen2"
        directions = {-1: vec.vector[T - 1].numpy(), 0: vec.vector[0]}

    obj = from_repeng(ControlVectorLike(), INFO)
    assert torch.equal(obj.vector[T - 1], vec.vector[T - 1]) and torch.equal(obj.vector[0], vec.vector[0])
    assert to_repeng(obj)["model_type"] == "qwen2"  # remembered from the metadata

    with pytest.raises(ModelMismatchError):
        from_repeng({"model_type": "llama", "directions": {1: np.ones(D + 1, np.float32)}}, INFO)
    with pytest.raises(ModelMismatchError):
        from_repeng({"model_type": "llama", "directions": {T: np.ones(D, np.float32)}}, INFO)
    for bad in ({"directions": {}}, {"directions": {1.5: np.ones(D)}}, {"directions": {1: np.full(D, np.inf)}},
                {"directions": {1: np.ones((2, D))}}, {"directions": {1: np.ones(D), 1 - T: np.ones(D)}}, {}):
        with pytest.raises(InvalidInputError):
            from_repeng(bad, INFO)


def test_repeng_gguf_layout(tmp_path, vec):
    p = export_repeng_gguf(vec, tmp_path / "r.gguf", model_type="qwen2")
    fields, tensors, order = _read(p)
    # exactly what repeng 0.4's ControlVector.export_gguf writes: three keys, one tensor per direction
    assert set(fields) == {"general.architecture", "controlvector.model_hint", "controlvector.layer_count"}
    assert fields["general.architecture"][1] == "controlvector"
    assert fields["controlvector.model_hint"] == ([gguf.GGUFValueType.STRING], "qwen2")
    assert fields["controlvector.layer_count"] == ([gguf.GGUFValueType.UINT32], T - 1)
    assert order == [f"direction.{L}" for L in range(1, T)]
    for L in range(1, T):
        assert tensors[f"direction.{L}"][0] == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(tensors[f"direction.{L}"][2], vec.vector[L].numpy())

    with pytest.raises(InvalidInputError, match="model="):
        import_repeng_gguf(p)
    back = import_repeng_gguf(p, INFO)
    assert torch.equal(back.vector[1:], vec.vector[1:]) and back.name == "r"
    assert back.metadata["repeng_model_type"] == "qwen2"
    assert guess_format(p) == "repeng"
    assert torch.equal(import_vector(p, model=INFO).vector, back.vector)
    with pytest.raises(ModelMismatchError):
        import_repeng_gguf(p, ModelInfo("synthetic", T, D + 2))

    with pytest.warns(UserWarning, match="direction.0"):
        export_repeng_gguf(vec, p, layers=[0, 2])
    assert _read(p)[2] == ["direction.0", "direction.2"]
    back = import_vector(p, format="repeng", model=INFO)
    assert torch.equal(back.vector[0], vec.vector[0]) and torch.equal(back.vector[2], vec.vector[2])
    with pytest.raises(FileFormatError, match="direction.0"):
        import_gguf_control_vector(p, model=INFO)  # llama.cpp refuses layer index 0
    with pytest.raises(FileFormatError, match="model_hint"):
        _write_cv(tmp_path / "nohint.gguf", {"direction.1": vec.vector[1].numpy()}, hint=None)
        import_repeng_gguf(tmp_path / "nohint.gguf", INFO)


def test_repeng_itself_reads_our_file(tmp_path, vec, monkeypatch):
    """Optional: repeng's own ControlVector.import_gguf/export_gguf (skipped unless repeng is importable)."""
    monkeypatch.setattr(np, "float_", np.float64, raising=False)  # repeng 0.4's annotations predate numpy 2
    try:
        import repeng
    except Exception as e:  # not installed, or its torch/transformers imports fail
        pytest.skip(f"repeng is not importable: {e}")
    p = export_repeng_gguf(vec, tmp_path / "ours.gguf", model_type="llama")
    cv = repeng.ControlVector.import_gguf(str(p))
    assert cv.model_type == "llama" and sorted(cv.directions) == list(range(1, T))
    for L, arr in cv.directions.items():
        np.testing.assert_array_equal(arr, vec.vector[L].numpy())
    repeng.ControlVector(**to_repeng(vec)).export_gguf(str(tmp_path / "theirs.gguf"))
    assert (tmp_path / "theirs.gguf").read_bytes() == p.read_bytes()


# --------------------------------------------------------------------------- dispatch


def test_dispatch_errors(tmp_path, vec):
    with pytest.raises(InvalidInputError) as e:
        export_vector(vec, tmp_path / "v.onnx", format="onnx")
    assert all(f in str(e.value) for f in FORMATS)
    with pytest.raises(InvalidInputError, match="safetensors"):
        import_vector(tmp_path / "v.onnx", format="onnx")
    with pytest.raises(InvalidInputError, match="scale"):
        export_vector(vec, tmp_path / "v.npz", format="numpy", scale=2.0)
    with pytest.raises(InvalidInputError):
        export_vector("not a vector", tmp_path / "v.npz", format="numpy")
    p = export_vector(vec, tmp_path / "v.gguf", format="llama.cpp", layers=[1, 2], scale=3.0)
    assert _read(p)[2] == ["direction.1", "direction.2"]
    (tmp_path / "mystery.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(FileFormatError, match="cannot tell its format") as e:
        import_vector(tmp_path / "mystery.bin")
    assert "format=" not in str(e.value)  # issue 15: the CLI has no such option, so the message must not offer it
    with pytest.raises(FileFormatError):
        import_vector(tmp_path / "absent.npz")
    # the content wins over the suffix
    export_numpy(vec, tmp_path / "actually_numpy.gguf")
    assert guess_format(tmp_path / "actually_numpy.gguf") == "numpy"
    vec.save(tmp_path / "st.bin")
    assert torch.equal(import_vector(tmp_path / "st.bin").vector, vec.vector)


# ----------------------------------------------------------------------------------------- export what steer does


def _reference(n=5, seed=9):
    from persona_axes.activations.container import Activations

    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, T, D, generator=g) * torch.arange(1, T + 1).view(1, T, 1)  # norms grow with depth
    return Activations(values=values, layers=tuple(range(T)), items=[{"i": i} for i in range(n)], model=INFO)


@pytest.mark.parametrize("unit", ["raw", "unit", "rel"])
def test_gguf_bakes_a_steer_in(tmp_path, vec, unit):
    """Issue 15: the file holds coef x scale x v at the chosen layers and nothing elsewhere, read back with the
    gguf package itself; scale computed here independently (1, 1/|v|, mean residual norm / |v|)."""
    ref = _reference()
    coef = 0.3
    p = export_gguf_control_vector(vec, tmp_path / "steer.gguf", layers=[2, 4], scale=coef, unit=unit,
                                   reference=ref if unit == "rel" else None)
    fields, tensors, names = _read(p)
    assert names == ["direction.2", "direction.4"]  # absent at every other layer
    v = vec.vector.double()
    for L in (2, 4):
        u = v[L] / v[L].norm()
        want = {"raw": coef * v[L], "unit": coef * u,
                "rel": coef * ref.values[:, L].double().norm(dim=-1).mean() * u}[unit]
        np.testing.assert_allclose(tensors[f"direction.{L}"][2], want.numpy(), rtol=1e-6, atol=1e-7)
    assert fields["persona_axes.unit"][1] == unit
    back = import_gguf_control_vector(p)
    assert back.metadata["gguf_unit"] == unit
    assert not back.vector[[0, 1, 3, 5]].any()


def test_gguf_steer_equals_what_steer_adds(tmp_path, tiny):
    """The same numbers Steer adds: the file's direction.L equals coef x Steer(..., coef=1).vectors[L] (the
    unit scale is computed once, in persona_axes.vectors.units, for both)."""
    from persona_axes.activations.batch import capture
    from persona_axes.activations.container import model_info
    from persona_axes.steering.interventions import Steer
    from helpers import conversations

    info = model_info(tiny)
    g = torch.Generator().manual_seed(2)
    v = PersonaVector(torch.randn(info.n_layers, info.hidden_size, generator=g), info, "axis", "mean_diff")
    ref = capture(tiny, conversations(3), progress=False)
    p = export_gguf_control_vector(v, tmp_path / "s.gguf", layers=[2], scale=-0.6, unit="rel", reference=ref)
    steer = Steer(tiny, v, [2], 1.0, unit="rel", reference=ref)
    _, tensors, names = _read(p)
    assert names == ["direction.2"]
    np.testing.assert_allclose(tensors["direction.2"][2], (-0.6 * steer.vectors[2].double()).numpy(),
                               rtol=1e-6, atol=1e-7)


def test_gguf_steer_refuses_what_it_cannot_bake(tmp_path, vec):
    with pytest.raises(InvalidInputError, match="reference"):
        export_gguf_control_vector(vec, tmp_path / "x.gguf", layers=[2], scale=0.3, unit="rel")
    with pytest.raises(InvalidInputError, match="unit"):
        export_gguf_control_vector(vec, tmp_path / "x.gguf", layers=[2], unit="percent")
    with pytest.raises(InvalidInputError, match="positive and finite"):
        export_gguf_control_vector(vec, tmp_path / "x.gguf", layers=[2], unit="rel", reference=torch.full((T,), -5.0))
    with pytest.raises(InvalidInputError, match="normalize"):
        export_gguf_control_vector(vec, tmp_path / "x.gguf", layers=[2], unit="rel", normalize=True,
                                   reference=torch.ones(T))
    assert not list(tmp_path.iterdir())


def test_read_gguf_directions_keys_by_layer(tmp_path, vec):
    """Issue 15 (info reported 'layer 28' for direction.29): the reader keys by the N in direction.N."""
    from persona_axes.export import read_gguf_directions, read_gguf_metadata

    p = tmp_path / "gap.gguf"
    _write_cv(p, {"direction.5": np.full(D, 3.0, np.float32), "direction.2": np.ones(D, np.float32)})
    dirs = read_gguf_directions(p)
    assert list(dirs) == [2, 5] and float(np.linalg.norm(dirs[5])) == pytest.approx(3.0 * D ** 0.5)
    assert read_gguf_metadata(p)["controlvector.model_hint"] == "llama"


def test_legacy_gguf_export_loads_with_a_warning(tmp_path, vec):
    """A version-1 export (checksum over the directions only) still imports, with a LegacyFileWarning; its
    directions are still checked."""
    from persona_axes.export.gguf_io import legacy_directions_sha256
    from persona_axes.files import LegacyFileWarning

    good = export_gguf_control_vector(vec, tmp_path / "good.gguf", layers=[1, 2])
    fields, tensors, _ = _read(good)

    def old_file(name, row_scale=1.0):
        w = gguf.GGUFWriter(tmp_path / name, "controlvector")
        for k, (types, val) in fields.items():
            if k in ("general.architecture", "persona_axes.checksum", "persona_axes.unit", "persona_axes.unit_scales"):
                continue
            val = "1" if k == "persona_axes.format_version" else val
            w.add_key_value(k, val, types[0], sub_type=types[-1] if types[0] == gguf.GGUFValueType.ARRAY else None)
        dirs = {int(t.split(".")[1]): d for t, (_, _, d) in tensors.items()}
        w.add_key_value("persona_axes.sha256", legacy_directions_sha256(dirs), gguf.GGUFValueType.STRING)
        for t, (_, _, d) in tensors.items():
            w.add_tensor(t, d * np.float32(row_scale))
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
        return tmp_path / name

    with pytest.warns(LegacyFileWarning, match="export it again"):
        back = import_gguf_control_vector(old_file("v1.gguf"))
    assert torch.equal(back.vector[[1, 2]], vec.vector[[1, 2]])
    with pytest.raises(FileFormatError, match="fail their SHA-256 checksum"):
        import_gguf_control_vector(old_file("v1_edited.gguf", row_scale=2.0))
