"""persona_axes.files: the streamed safetensors writer, the checksum over tensors and metadata (against an
independent computation), the header reader and the append helper."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from persona_axes import files
from persona_axes.errors import FileFormatError

MD = {"model": "m", "num_layers": "2", "hidden_size": "3", "layer_site": "block_output", "note": "é"}


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"b": torch.randn(2, 3, generator=g), "a": torch.arange(5), "h": torch.randn(3, generator=g).half(),
            "bf": torch.randn(7, generator=g).bfloat16(), "flag": torch.tensor([True, False, True]),
            "empty": torch.zeros(0, 3)}


def test_written_once_and_read_by_safetensors_itself(tmp_path):
    t = _tensors()
    p = files.save_tensors(tmp_path / "f.safetensors", t, MD, kind="vector")
    back = load_file(p)
    assert set(back) == set(t) and all(torch.equal(back[k], t[k]) and back[k].dtype == t[k].dtype for k in t)
    with safe_open(p, "pt") as f:
        md = f.metadata()
    assert md["format_version"] == files.FORMAT_VERSION and md["note"] == "é"
    header = files.read_safetensors_header(p)
    start = 8 + int.from_bytes(p.read_bytes()[:8], "little")
    assert start % 8 == 0  # the data region is aligned, and each tensor is aligned for its own dtype
    for k, entry in header.items():
        if k != "__metadata__":
            assert entry["data_offsets"][0] % t[k].element_size() == 0


def test_checksum_against_an_independent_computation(tmp_path):
    t = _tensors()
    p = files.save_tensors(tmp_path / "f.safetensors", t, MD, kind="vector")
    md = files.read_safetensors_metadata(p)
    h = hashlib.sha256(b"persona_axes checksum v2\n")
    canon = json.dumps({k: md[k] for k in sorted(md) if k != "sha256"}, ensure_ascii=False,
                       separators=(",", ":")).encode()
    h.update(len(canon).to_bytes(8, "little") + canon)
    names = {torch.float32: "F32", torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16", torch.bool: "BOOL"}
    for k in sorted(t):
        desc = json.dumps([k, names[t[k].dtype], list(t[k].shape)]).encode()
        h.update(len(desc).to_bytes(8, "little") + desc)
        h.update(t[k].contiguous().view(torch.uint8).numpy().tobytes())
    assert md["sha256"] == h.hexdigest()


def test_every_metadata_value_and_tensor_property_is_covered():
    t, md = _tensors(), dict(MD)
    base = files.checksum(t, md)
    assert files.checksum(t, {**md, "note": "e"}) != base
    assert files.checksum(t, {**md, "extra": ""}) != base
    assert files.checksum(t, {**md, "sha256": "anything"}) == base  # the checksum key itself is left out
    assert files.checksum({**t, "b": t["b"].reshape(3, 2)}, md) != base  # same bytes, other shape
    assert files.checksum({**t, "a": t["a"].view(torch.float64)}, md) != base  # same bytes, other dtype
    assert files.checksum({("c" if k == "b" else k): v for k, v in t.items()}, md) != base  # renamed


def test_header_reader_refuses_garbage(tmp_path):
    for name, blob in {"empty": b"", "short": b"\x05\x00", "huge": (10**9).to_bytes(8, "little") + b"{}",
                       "notjson": (4).to_bytes(8, "little") + b"{oo}", "list": (2).to_bytes(8, "little") + b"[]"}.items():
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(FileFormatError, match=name):
            files.read_safetensors_header(p)


def test_reserved_keys_and_metadata_types(tmp_path):
    assert {"format", "kind", "format_version", "package_version", "model", "sha256"} <= files.RESERVED_KEYS
    with pytest.raises(TypeError, match="must be a string"):
        files.save_tensors(tmp_path / "x.safetensors", {"a": torch.zeros(1)}, {**MD, "n": 3}, kind="vector")
    assert not list(tmp_path.iterdir())


def test_append_durably(tmp_path):
    p = tmp_path / "log.jsonl"
    files.append_durably(p, b'{"a": 1}\n')
    files.append_durably(p, b'{"a": 2}\n')
    assert p.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
