"""Reading GGUF control-vector files (llama.cpp's and repeng's layout), shared by both importers and by
``persona-axes info``: key/values, ``direction.N`` tensors keyed by layer N (the output of decoder block N,
0-based), and the checksum our own exports carry over their directions and metadata."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from persona_axes.errors import FileFormatError

GGUF_ARCH = "controlvector"
NS = "persona_axes."
"""Prefix of the keys our own GGUF exports add (llama.cpp ignores them)."""
CHECKSUM_FIELD = NS + "checksum"
_DIRECTION_RE = re.compile(r"direction\.(0|[1-9][0-9]*)")
_CHECKSUM_DOMAIN = b"persona_axes gguf checksum v2\n"

Fields = dict[str, tuple[tuple[int, ...], Any]]
Tensors = list[tuple[str, int, tuple[int, ...], np.ndarray]]


def read_gguf(path: str | os.PathLike, *, check_arch: bool = True) -> tuple[Fields, Tensors]:
    """All key/values ``{key: (types, value)}`` and tensors ``[(name, ggml_type, shape, data copy)]`` of a GGUF
    file, read with :class:`gguf.GGUFReader`; FileFormatError for anything it cannot parse, or (``check_arch``)
    for a file whose ``general.architecture`` is not ``controlvector``."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    try:
        reader = gguf.GGUFReader(path)
        fields = {}
        for key, f in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            fields[key] = (tuple(int(t) for t in f.types), f.contents())
        if check_arch:  # before copying any tensor data: a foreign file may be a multi-GB model
            require_control_vector(fields, path)
        tensors = [
            (t.name, int(t.tensor_type), tuple(int(x) for x in t.shape), np.array(t.data, copy=True))
            for t in reader.tensors
        ]
    except FileFormatError:
        raise
    except Exception as e:  # GGUFReader raises ValueError/IndexError/KeyError/UnicodeError on bad input
        raise FileFormatError(f"{path}: not a readable GGUF file (corrupt, truncated or not GGUF?): {e}") from e
    finally:
        reader = None  # drop the memory map
    return fields, tensors


def gguf_field(fields: dict, key: str, kind: str, path: Any, *, required: bool = True) -> Any:
    """The value of ``key`` checked to be of ``kind`` (``str``, ``int``, ``float``, ``bool``, ``int_list``)."""
    from gguf import GGUFValueType as T

    ints = {T.UINT8, T.INT8, T.UINT16, T.INT16, T.UINT32, T.INT32, T.UINT64, T.INT64}
    if key not in fields:
        if required:
            raise FileFormatError(f"{path}: metadata key {key!r} is missing")
        return None
    types, value = fields[key]
    ok = bool(types) and {
        "str": lambda: types == (T.STRING,),
        "int": lambda: len(types) == 1 and types[0] in ints,
        "float": lambda: types in ((T.FLOAT32,), (T.FLOAT64,)),
        "bool": lambda: types == (T.BOOL,),
        "int_list": lambda: len(types) == 2 and types[0] == T.ARRAY and types[1] in ints,
    }[kind]()
    if not ok:
        raise FileFormatError(f"{path}: metadata key {key!r} has GGUF type(s) {list(types)}, expected {kind}")
    return value


def require_control_vector(fields: dict, path: Any) -> None:
    arch = gguf_field(fields, "general.architecture", "str", path, required=False)
    if arch != GGUF_ARCH:
        raise FileFormatError(
            f"{path}: general.architecture is {arch!r}, not {GGUF_ARCH!r}: this is not a control-vector file "
            "(a model GGUF, say)"
        )


def gguf_directions(tensors: list, path: Any, *, allow_zero: bool) -> dict[int, np.ndarray]:
    """``{N: [d] float32}`` from ``direction.N`` tensors, checked the way llama.cpp's loader checks them
    (plus canonical names and finite values). ``allow_zero``: accept ``direction.0`` (repeng can hold one)."""
    from gguf import GGMLQuantizationType as Q

    accepted = {int(Q.F32)} if not allow_zero else {int(Q.F32), int(Q.F16), int(Q.F64)}
    if not tensors:
        raise FileFormatError(f"{path}: the file holds no direction tensors")
    out: dict[int, np.ndarray] = {}
    d = None
    for name, ttype, shape, data in tensors:
        m = _DIRECTION_RE.fullmatch(name)
        if m is None:
            raise FileFormatError(f"{path}: tensor {name!r} is not named 'direction.N' (N a layer index)")
        idx = int(m.group(1))
        if idx == 0 and not allow_zero:
            raise FileFormatError(f"{path}: tensor 'direction.0' is invalid in a llama.cpp control vector "
                                  "(llama.cpp refuses layer index 0)")
        if ttype not in accepted:
            raise FileFormatError(f"{path}: tensor {name!r} has GGML type {ttype}, expected F32")
        if len(shape) != 1 or shape[0] == 0:
            raise FileFormatError(f"{path}: tensor {name!r} has shape {list(shape)}, expected one non-empty dimension")
        if d is None:
            d = shape[0]
        elif shape[0] != d:
            raise FileFormatError(f"{path}: tensor {name!r} has length {shape[0]}, the others {d}")
        row = np.asarray(data, dtype=np.float32).reshape(-1).copy()
        if not np.isfinite(row).all():
            raise FileFormatError(f"{path}: tensor {name!r} holds NaN or infinite values")
        out[idx] = row
    return dict(sorted(out.items()))


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """``{key: value}`` of a GGUF file's key/values (any architecture), FileFormatError if it cannot be parsed."""
    fields, _ = read_gguf(path, check_arch=False)
    return {k: v for k, (_, v) in fields.items()}


def read_gguf_directions(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """``{N: [d] float32}`` of a control-vector file's ``direction.N`` tensors, keyed by LAYER N (not by their
    position in the file), ascending; tensors with other names are ignored. No architecture check, so files of
    other tools read too; FileFormatError if the file cannot be parsed."""
    _, tensors = read_gguf(path, check_arch=False)
    out = {}
    for name, _, _, data in tensors:
        m = _DIRECTION_RE.fullmatch(name)
        if m is not None:
            out[int(m.group(1))] = np.asarray(data, dtype=np.float32).reshape(-1).copy()
    return dict(sorted(out.items()))


def _canonical(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        return repr(value)  # exact for float64; JSON has no inf/nan
    return value


def gguf_checksum(directions: Mapping[int, np.ndarray], metadata: Mapping[str, Any]) -> str:
    """SHA-256 over the metadata values (every key but the checksum itself, sorted, canonical JSON) and, in layer
    order, each direction's layer index and float32 bytes."""
    h = hashlib.sha256(_CHECKSUM_DOMAIN)
    md = {k: _canonical(metadata[k]) for k in sorted(metadata) if k != CHECKSUM_FIELD}
    blob = json.dumps(md, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
    h.update(len(blob).to_bytes(8, "little") + blob)
    for L in sorted(directions):
        h.update(int(L).to_bytes(8, "little") + np.ascontiguousarray(directions[L], dtype="<f4").tobytes())
    return h.hexdigest()


def legacy_directions_sha256(rows: Mapping[int, np.ndarray]) -> str:
    """The checksum of version-1 exports (``persona_axes.sha256``): the layer indices and float32 bytes only."""
    h = hashlib.sha256()
    for L in sorted(rows):
        h.update(int(L).to_bytes(4, "little") + np.ascontiguousarray(rows[L], dtype="<f4").tobytes())
    return h.hexdigest()


__all__ = ["GGUF_ARCH", "NS", "CHECKSUM_FIELD", "read_gguf", "gguf_field", "require_control_vector", "gguf_directions",
           "read_gguf_metadata", "read_gguf_directions", "gguf_checksum", "legacy_directions_sha256"]
