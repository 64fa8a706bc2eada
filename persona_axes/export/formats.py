"""Export and import a :class:`~persona_axes.vectors.containers.PersonaVector` in the formats other tools read.

Four formats, all round-tripping through this module:

``"safetensors"``
    Our own file (:meth:`PersonaVector.save` / :meth:`PersonaVector.load`), bit-exact, every layer.
``"gguf"``
    A llama.cpp control vector (:func:`export_gguf_control_vector` / :func:`import_gguf_control_vector`), usable
    with ``llama-cli --control-vector FILE`` (or ``--control-vector-scaled FILE STRENGTH``).
``"repeng"``
    repeng's control-vector file (:func:`export_repeng_gguf` / :func:`import_repeng_gguf`), and its in-memory form
    ``{"model_type", "directions"}`` (:func:`to_repeng` / :func:`from_repeng`).
``"numpy"``
    A plain ``.npz`` (:func:`export_numpy` / :func:`import_numpy`), bit-exact, every layer.

:func:`export_vector` / :func:`import_vector` dispatch on a format name (the importer guesses it from the file's
first bytes, then from its suffix).

Layer conventions (verified against the sources)
-------------------------------------------------
persona_axes: "layer L" is the output of decoder block L, 0-based (``hidden_states[L + 1]`` in HF terms).

llama.cpp (read in ``common/common.cpp`` ``common_control_vector_load_one`` / ``common_control_vector_load``,
``src/llama-adapter.cpp`` ``llama_adapter_cvec::init`` / ``apply`` / ``tensor_for`` / ``apply_to``,
``src/llama-graph.cpp`` ``llm_graph_context::build_cvec``, and the per-architecture graph builders):

- The loader takes *every* tensor of the file, parses its name as ``direction.<int>`` and refuses the whole file
  (logs an error and ignores it) if any tensor has another name, an index ``< 0``, the index ``0``
  ("invalid (zero) direction tensor layer index"), a type other than F32, more than one dimension, or a length
  different from the other tensors. Key/value metadata is *not* checked at all (``general.architecture``,
  ``controlvector.model_hint`` and ``controlvector.layer_count`` are informational), so our extra
  ``persona_axes.*`` keys are harmless. Each tensor is multiplied by the strength (1 for ``--control-vector``)
  and stored at ``data[n_embd * (N - 1)]``; tensors with the same index (from several files) are summed.
- ``apply`` copies ``data[n_embd * (il - 1)]`` into the tensor of layer ``il`` for ``il = 1 .. n_layer - 1``
  (there is never a tensor for layer 0; an index ``>= n_layer`` is silently unused).
- Every graph builder loops ``for il in 0 .. n_layer - 1`` over the decoder blocks and, after the block's last
  residual add, does ``cur = build_cvec(cur, il)`` (``cvec->apply_to``: ``cur + tensor_for(il)``) right before
  naming the result ``"l_out"`` and feeding it to the next block. So **``direction.N`` is added to the output of
  block N (0-based)** — exactly our layer N — for N in the inclusive range ``--control-vector-layer-range``
  (``common_init_from_params`` defaults it to ``1 .. n_layer``). Our layer 0 cannot be expressed;
  :func:`export_gguf_control_vector` drops it (warning if it was asked for explicitly, error if it was the only
  layer asked for).
- llama.cpp's own writer (``examples/cvector-generator/cvector-generator.cpp`` ``export_gguf``) writes
  ``general.architecture = "controlvector"``, ``controlvector.model_hint`` = the model's
  ``general.architecture`` (e.g. ``"llama"``), ``controlvector.layer_count`` as INT32 = the number of direction
  tensors, and F32 tensors ``direction.1 .. direction.{n_layer-1}``. We write the same keys and types. (Caution:
  that generator collects the ``"l_out"`` of blocks ``0 .. n_layer-2`` and names the one from block ``il``
  ``direction.{il+1}`` (``mean.hpp`` / ``pca.hpp``), so *its* directions are measured one block before where
  llama.cpp adds them. We follow the loader and the graph, not the generator's naming: our layer N is written
  as ``direction.N``.)

repeng 0.4.0 (read in ``repeng/extract.py`` ``ControlVector`` / ``export_gguf`` / ``import_gguf`` /
``read_representations`` / ``batched_get_hiddens`` and ``repeng/control.py`` ``ControlModel`` / ``ControlModule``
/ ``model_layer_list``):

- ``ControlVector(model_type: str, directions: dict[int, np.ndarray])``; ``model_type`` is HF's
  ``config.model_type`` (``"llama"``, ``"mistral"``, ``"qwen2"`` ...).
- ``directions[i]`` is added by ``ControlModel`` to the first output of ``model.model.layers[i]`` (GPT-2 style:
  ``model.transformer.h[i]``) through a wrapping ``ControlModule`` — the output of decoder block i — and
  ``read_representations`` trains it on ``hidden_states[i + 1]``, the same activation. So **repeng's key i is our
  layer i**. Its default layer set is ``range(-1, -num_hidden_layers, -1)``, i.e. every block but block 0.
- ``export_gguf`` writes, with ``gguf.GGUFWriter(path, "controlvector")``: ``controlvector.model_hint`` =
  ``model_type`` (``add_string``), ``controlvector.layer_count`` = ``len(directions)`` as UINT32, then one tensor
  ``direction.{i}`` **with the same i** per entry, in the dict's order, of the arrays' own dtype (float32 from
  training). Since llama.cpp also adds ``direction.N`` to block N's output, the three indexings agree; only
  repeng can hold a ``direction.0`` (llama.cpp refuses such a file).
- ``import_gguf`` warns (does not fail) on another ``general.architecture``, raises if ``model_hint`` is missing,
  skips tensors not starting with ``direction.``, and keys the rest by ``int(name.split(".")[1])``.

Limitations: GGUF files hold F32 only (llama.cpp needs it), so a GGUF round trip is exact per exported layer only
for ``scale=1`` and ``normalize=False``; layers not in the file (always layer 0 for llama.cpp) come back as zeros.
A repeng file carries no model identity, so importing one needs ``model=``. ``--control-vector`` files written
by other tools import fine with ``model=`` given, but tensor names must be canonical (``direction.7``, not
``direction.07``).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import numbers
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from persona_axes.activations.container import model_info
from persona_axes.core import ModelInfo, normalize_layers
from persona_axes.errors import FileFormatError, InvalidInputError, ModelMismatchError
from persona_axes.files import FORMAT, FORMAT_VERSION, atomic_write, package_version
from persona_axes.vectors.containers import VECTOR_KIND, PersonaVector

FORMATS = ("safetensors", "gguf", "repeng", "numpy")
"""Names accepted by :func:`export_vector` / :func:`import_vector`."""

_ALIASES = {"st": "safetensors", "llama.cpp": "gguf", "llamacpp": "gguf", "npz": "numpy"}
_SUFFIXES = {".safetensors": "safetensors", ".gguf": "gguf", ".npz": "numpy"}

GGUF_ARCH = "controlvector"
_NS = "persona_axes."
_DIRECTION_RE = re.compile(r"direction\.(0|[1-9][0-9]*)")


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------------


def _check_vector(vector: Any) -> PersonaVector:
    if not isinstance(vector, PersonaVector):
        raise InvalidInputError(f"expected a PersonaVector, got {type(vector).__name__}")
    return vector


def _check_scale(scale: Any) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not np.isfinite(float(scale)):
        raise InvalidInputError(f"scale must be a finite real number, got {scale!r}")
    return float(scale)


def _check_label(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _rows(vector: PersonaVector, layers: list[int], scale: float, normalize: bool) -> dict[int, np.ndarray]:
    """``{layer: [d] float32}`` for ``layers`` (ascending): unit-normalised if asked, then times ``scale``.

    With ``scale == 1`` and no normalisation the rows are bit-exact copies; otherwise the arithmetic is float64,
    rounded once to float32.
    """
    v = vector.vector[layers].numpy()
    if normalize or scale != 1.0:
        v64 = v.astype(np.float64)
        if normalize:
            norms = np.linalg.norm(v64, axis=-1, keepdims=True)
            zero = [L for L, n in zip(layers, norms[:, 0]) if n == 0]
            if zero:
                raise InvalidInputError(
                    f"the vector {vector.name!r} has zero norm at layer(s) {zero}, so it cannot be normalised; "
                    "leave those layers out with layers=..."
                )
            v64 = v64 / norms
        with np.errstate(over="ignore"):
            v = (v64 * scale).astype(np.float32)
        if not np.isfinite(v).all():
            raise InvalidInputError(f"scale={scale!r} overflows float32 for the vector {vector.name!r}")
    return {L: np.ascontiguousarray(v[i], dtype=np.float32).copy() for i, L in enumerate(layers)}


@contextlib.contextmanager
def _atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that open files themselves; fsync + rename on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _new_vector(info: ModelInfo, directions: Mapping[int, np.ndarray], **fields: Any) -> PersonaVector:
    t = torch.zeros(info.n_layers, info.hidden_size, dtype=torch.float32)
    for L, row in directions.items():
        t[L] = torch.from_numpy(np.asarray(row, dtype=np.float32).copy())
    return PersonaVector(vector=t, model=info, **fields)


# ---------------------------------------------------------------------------------------------------------------
# GGUF reading (shared by the llama.cpp and repeng importers)
# ---------------------------------------------------------------------------------------------------------------


_Fields = dict[str, tuple[tuple[int, ...], Any]]
_Tensors = list[tuple[str, int, tuple[int, ...], np.ndarray]]


def _read_gguf(path: str | os.PathLike, *, check_arch: bool = True) -> tuple[_Fields, _Tensors]:
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
            _check_arch(fields, path)
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


def _field(fields: dict, key: str, kind: str, path: Any, *, required: bool = True) -> Any:
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


def _check_arch(fields: dict, path: Any) -> None:
    arch = _field(fields, "general.architecture", "str", path, required=False)
    if arch != GGUF_ARCH:
        raise FileFormatError(
            f"{path}: general.architecture is {arch!r}, not {GGUF_ARCH!r}: this is not a control-vector file "
            "(a model GGUF, say)"
        )


def _directions(tensors: list, path: Any, *, allow_zero: bool) -> dict[int, np.ndarray]:
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


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp control vectors
# ---------------------------------------------------------------------------------------------------------------


def _gguf_layers(vector: PersonaVector, layers: Any) -> list[int]:
    n = vector.model.n_layers
    if layers is None:
        sel = list(range(1, n))
        if not sel:
            raise InvalidInputError("this model has a single layer (0), which a llama.cpp control vector cannot hold")
        return sel
    sel = normalize_layers(layers, n)
    if 0 in sel:
        if sel == [0]:
            raise InvalidInputError(
                "layer 0 cannot be exported to a llama.cpp control vector: llama.cpp refuses direction.0 "
                "(direction.N is added to the output of block N, N >= 1); pick other layers"
            )
        warnings.warn(
            "layer 0 cannot be expressed in a llama.cpp control vector (llama.cpp refuses direction.0); "
            "it is left out of the file", UserWarning, stacklevel=3,
        )
        sel = [L for L in sel if L != 0]
    return sel


def export_gguf_control_vector(
    vector: PersonaVector,
    path: str | os.PathLike,
    *,
    layers: int | Iterable[int] | None = None,
    scale: float = 1.0,
    normalize: bool = False,
    model_hint: str = "llama",
) -> Path:
    """Write ``vector`` as a llama.cpp control vector (GGUF), atomically.

    One F32 tensor ``direction.L`` per exported layer L, which llama.cpp adds to the output of block L (our layer
    L). ``layers``: ``None`` for every layer llama.cpp can express (1 .. n_layers-1), or a subset (negative counts
    from the end); layer 0 is dropped with a warning, or refused if it is the only one. ``normalize``: unit norm
    per layer first; ``scale``: multiply before writing (llama.cpp's ``--control-vector-scaled`` multiplies
    again at load time). ``model_hint``: the model's GGUF architecture string (``"llama"``, ``"qwen2"``, ...).

    Besides llama.cpp's keys the file records ``persona_axes.*`` metadata (model identity, name, method,
    n_samples, extras, scale, normalize, layers) so :func:`import_gguf_control_vector` can rebuild the vector.
    """
    import gguf

    vector = _check_vector(vector)
    model_hint = _check_label(model_hint, "model_hint")
    scale = _check_scale(scale)
    sel = _gguf_layers(vector, layers)
    rows = _rows(vector, sel, scale, bool(normalize))
    S = gguf.GGUFValueType.STRING
    info = vector.model
    with _atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, GGUF_ARCH)
        try:
            w.add_key_value(f"{GGUF_ARCH}.model_hint", model_hint, S)
            w.add_int32(f"{GGUF_ARCH}.layer_count", len(rows))
            # add_key_value, not add_string: the latter silently drops empty strings
            w.add_key_value(_NS + "format", FORMAT, S)
            w.add_key_value(_NS + "kind", VECTOR_KIND, S)
            w.add_key_value(_NS + "format_version", FORMAT_VERSION, S)
            w.add_key_value(_NS + "package_version", package_version(), S)
            w.add_key_value(_NS + "model", info.name, S)
            w.add_uint32(_NS + "num_layers", info.n_layers)
            w.add_uint32(_NS + "hidden_size", info.hidden_size)
            w.add_key_value(_NS + "layer_site", info.layer_site, S)
            w.add_key_value(_NS + "name", vector.name, S)
            w.add_key_value(_NS + "method", vector.method, S)
            w.add_uint64(_NS + "n_samples", vector.n_samples)
            w.add_key_value(_NS + "metadata", json.dumps(vector.metadata, ensure_ascii=False, sort_keys=True), S)
            w.add_float64(_NS + "scale", scale)
            w.add_bool(_NS + "normalize", bool(normalize))
            w.add_key_value(_NS + "layers", list(rows), gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)
            w.add_key_value(_NS + "sha256", _directions_sha256(rows), S)
            for L, row in rows.items():
                w.add_tensor(f"direction.{L}", row)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()
    return Path(path)


def import_gguf_control_vector(
    path: str | os.PathLike, model: Any = None, *, strict_name: bool = True
) -> PersonaVector:
    """Read a llama.cpp control vector (with :class:`gguf.GGUFReader`) back into a PersonaVector.

    ``direction.N`` becomes our layer N; layers absent from the file are zeros. Files we wrote carry their model
    identity, name, method and extras; with ``model`` (a ModelInfo, Backend or LoadedModel) a vector made for a
    model of another shape (or name, if ``strict_name``) is refused with ModelMismatchError. Files from other
    tools (no ``persona_axes.*`` keys) need ``model`` to say which model they belong to.

    The values are what llama.cpp adds (``scale`` / ``normalize`` applied); the metadata records
    ``gguf_layers`` (JSON list of the layers in the file), ``gguf_model_hint`` and, for our files,
    ``gguf_scale`` / ``gguf_normalize``. FileFormatError for corrupt, truncated or foreign files.
    """
    path = Path(path)
    fields, tensors = _read_gguf(path)
    dirs = _directions(tensors, path, allow_zero=False)
    d = len(next(iter(dirs.values())))
    hint = _field(fields, f"{GGUF_ARCH}.model_hint", "str", path, required=False)
    extra: dict[str, str]
    if _NS + "format" in fields:
        fmt, kind = _field(fields, _NS + "format", "str", path), _field(fields, _NS + "kind", "str", path)
        if fmt != FORMAT or kind != VECTOR_KIND:
            raise FileFormatError(f"{path}: persona_axes.format/kind are not {FORMAT!r}/{VECTOR_KIND!r}")
        version = _field(fields, _NS + "format_version", "str", path)
        if version != FORMAT_VERSION:
            raise FileFormatError(f"{path}: format version {version!r} is not {FORMAT_VERSION}; upgrade persona_axes")
        info = ModelInfo(
            name=_field(fields, _NS + "model", "str", path),
            n_layers=int(_field(fields, _NS + "num_layers", "int", path)),
            hidden_size=int(_field(fields, _NS + "hidden_size", "int", path)),
            layer_site=_field(fields, _NS + "layer_site", "str", path),
        )
        if info.n_layers < 1 or info.hidden_size != d:
            raise FileFormatError(
                f"{path}: the metadata says num_layers={info.n_layers}, hidden_size={info.hidden_size} but the "
                f"direction tensors have length {d}; the file is corrupt or was edited"
            )
        layers = [int(x) for x in _field(fields, _NS + "layers", "int_list", path)]
        if sorted(layers) != list(dirs) or any(L >= info.n_layers for L in layers):
            raise FileFormatError(
                f"{path}: persona_axes.layers={layers} does not match the direction tensors {list(dirs)} "
                f"of a {info.n_layers}-layer model; the file is corrupt or was edited"
            )
        count = _field(fields, f"{GGUF_ARCH}.layer_count", "int", path)
        if count != len(dirs):
            raise FileFormatError(f"{path}: controlvector.layer_count={count} but the file has {len(dirs)} directions")
        digest = _field(fields, _NS + "sha256", "str", path, required=False)  # absent in files from before it
        if digest is not None and digest != _directions_sha256(dirs):
            raise FileFormatError(f"{path}: the direction tensors fail their SHA-256 checksum; the file is corrupt "
                                  "(or its values were edited): export it again")
        try:
            extra = json.loads(_field(fields, _NS + "metadata", "str", path))
        except json.JSONDecodeError as e:
            raise FileFormatError(f"{path}: persona_axes.metadata is not JSON: {e}") from e
        if not isinstance(extra, dict):
            raise FileFormatError(f"{path}: persona_axes.metadata is not a JSON object")
        name = _field(fields, _NS + "name", "str", path)
        method = _field(fields, _NS + "method", "str", path)
        n_samples = int(_field(fields, _NS + "n_samples", "int", path))
        extra = dict(extra)
        extra["gguf_scale"] = repr(float(_field(fields, _NS + "scale", "float", path)))
        extra["gguf_normalize"] = "true" if _field(fields, _NS + "normalize", "bool", path) else "false"
        if model is not None:
            info.check_compatible(model_info(model), what=f"the control vector in {path}", strict_name=strict_name)
    else:
        if model is None:
            raise InvalidInputError(
                f"{path} is a control vector without persona_axes metadata (written by another tool); pass "
                "model=... (a ModelInfo, Backend or LoadedModel) to say which model it belongs to"
            )
        info = model_info(model)
        _fit_model(dirs, info, path)
        name, method, n_samples, extra = path.stem or "control_vector", "gguf_control_vector", 0, {}
    extra["gguf_layers"] = json.dumps(list(dirs))
    if hint is not None:
        extra["gguf_model_hint"] = hint
    try:
        return _new_vector(info, dirs, name=name, method=method, n_samples=n_samples, metadata=extra)
    except InvalidInputError as e:
        raise FileFormatError(f"{path}: {e}") from e


def _directions_sha256(rows: Mapping[int, np.ndarray]) -> str:
    """SHA-256 over the layer indices and float32 bytes of the directions, in layer order."""
    h = hashlib.sha256()
    for L in sorted(rows):
        h.update(int(L).to_bytes(4, "little") + np.ascontiguousarray(rows[L], dtype="<f4").tobytes())
    return h.hexdigest()


def _fit_model(dirs: Mapping[int, np.ndarray], info: ModelInfo, where: Any) -> None:
    d = {len(v) for v in dirs.values()}
    if d != {info.hidden_size}:
        raise ModelMismatchError(
            f"the directions in {where} have length {sorted(d)} but {info.name!r} has hidden size {info.hidden_size}"
        )
    bad = [L for L in dirs if not 0 <= L < info.n_layers]
    if bad:
        raise ModelMismatchError(
            f"{where} has directions for layer(s) {bad} but {info.name!r} has only {info.n_layers} layers "
            f"(0..{info.n_layers - 1})"
        )


# ---------------------------------------------------------------------------------------------------------------
# repeng
# ---------------------------------------------------------------------------------------------------------------


def _repeng_layers(vector: PersonaVector, layers: Any) -> list[int]:
    if layers is None:  # repeng's own default: range(-1, -num_hidden_layers, -1), i.e. every block but 0
        return list(range(1, vector.model.n_layers)) or [0]
    return normalize_layers(layers, vector.model.n_layers)


def to_repeng(
    vector: PersonaVector,
    layers: int | Iterable[int] | None = None,
    *,
    model_type: str | None = None,
    scale: float = 1.0,
    normalize: bool = False,
) -> dict[str, Any]:
    """``{"model_type": str, "directions": {layer: [d] float32 ndarray}}`` — the fields of repeng's
    ``ControlVector`` (``repeng.ControlVector(**to_repeng(v))``).

    repeng's key i is our layer i (``ControlModel`` adds ``directions[i]`` to the output of ``model.layers[i]``).
    ``layers``: ``None`` for repeng's own default set (every layer but 0), or any subset (layer 0 allowed: repeng
    can steer it, llama.cpp cannot). ``model_type``: HF's ``config.model_type``; defaults to the vector's
    ``repeng_model_type`` metadata (set by :func:`from_repeng`), else ``"llama"``. Keys are ascending.
    """
    vector = _check_vector(vector)
    if model_type is None:
        model_type = vector.metadata.get("repeng_model_type", "llama")
    model_type = _check_label(model_type, "model_type")
    rows = _rows(vector, _repeng_layers(vector, layers), _check_scale(scale), bool(normalize))
    return {"model_type": model_type, "directions": rows}


def export_repeng_gguf(
    vector: PersonaVector,
    path: str | os.PathLike,
    *,
    layers: int | Iterable[int] | None = None,
    model_type: str | None = None,
    scale: float = 1.0,
    normalize: bool = False,
) -> Path:
    """Write the file repeng 0.4's ``ControlVector.export_gguf`` writes for ``to_repeng(vector, ...)``,
    atomically: ``general.architecture = "controlvector"``, ``controlvector.model_hint`` = model_type,
    ``controlvector.layer_count`` (UINT32) = number of directions, one tensor ``direction.{i}`` per key — nothing
    else. ``repeng.ControlVector.import_gguf`` reads it back; llama.cpp reads it too unless layer 0 is in it.
    """
    data = to_repeng(vector, layers, model_type=model_type, scale=scale, normalize=normalize)
    if 0 in data["directions"]:
        warnings.warn(
            "the file holds direction.0: repeng reads it, but llama.cpp refuses files with layer index 0",
            UserWarning, stacklevel=2,
        )
    return _write_repeng(data["model_type"], data["directions"], path)


def _write_repeng(model_type: str, directions: Mapping[int, np.ndarray], path: str | os.PathLike) -> Path:
    import gguf

    with _atomic_path(path) as tmp:
        # The same calls, in the same order, as repeng's export_gguf.
        w = gguf.GGUFWriter(tmp, GGUF_ARCH)
        try:
            w.add_string(f"{GGUF_ARCH}.model_hint", model_type)
            w.add_uint32(f"{GGUF_ARCH}.layer_count", len(directions))
            for layer in directions.keys():
                w.add_tensor(f"direction.{layer}", directions[layer])
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()
    return Path(path)


def from_repeng(
    control: Any,
    model: Any,
    *,
    name: str = "repeng",
    method: str = "repeng",
    n_samples: int = 0,
    metadata: Mapping[str, str] | None = None,
) -> PersonaVector:
    """A PersonaVector from repeng's ``{"model_type", "directions"}`` (a dict, or a ``repeng.ControlVector`` or
    anything with those attributes), for ``model`` (a ModelInfo, Backend or LoadedModel — repeng does not
    record the model's shape). ``directions[i]`` becomes our layer i (negative keys count from the end); layers
    it lacks are zeros. The metadata records ``repeng_model_type`` and ``repeng_layers``. A direction whose
    length or layer does not fit ``model`` raises ModelMismatchError.
    """
    info = model_info(model)
    if isinstance(control, Mapping):
        directions, model_type = control.get("directions"), control.get("model_type")
    else:
        directions, model_type = getattr(control, "directions", None), getattr(control, "model_type", None)
    if not isinstance(directions, Mapping) or not directions:
        raise InvalidInputError("expected repeng's control vector: a non-empty 'directions' mapping {layer: array}")
    rows: dict[int, np.ndarray] = {}
    for k, v in directions.items():
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise InvalidInputError(f"repeng direction keys must be layer integers, got {k!r}")
        L = int(k) + info.n_layers if int(k) < 0 else int(k)
        if L in rows:
            raise InvalidInputError(f"repeng directions name layer {L} twice (keys {sorted(directions)})")
        if isinstance(v, torch.Tensor):
            v = v.detach().to("cpu", torch.float32).numpy()
        try:
            row = np.asarray(v, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"repeng direction for layer {k} is not numeric: {e}") from e
        if row.ndim != 1:
            raise InvalidInputError(f"repeng direction for layer {k} has shape {row.shape}, expected one dimension")
        if not np.isfinite(row).all():
            raise InvalidInputError(f"repeng direction for layer {k} holds NaN or infinite values")
        rows[L] = row
    _fit_model(rows, info, "the repeng control vector")
    rows = dict(sorted(rows.items()))
    md = dict(metadata or {})
    if model_type is not None:
        md["repeng_model_type"] = str(model_type)
    md["repeng_layers"] = json.dumps(list(rows))
    return _new_vector(info, rows, name=name, method=method, n_samples=n_samples, metadata=md)


def import_repeng_gguf(
    path: str | os.PathLike,
    model: Any = None,
    *,
    name: str | None = None,
    method: str = "repeng",
) -> PersonaVector:
    """Read a control-vector file the way repeng's ``ControlVector.import_gguf`` does, but strictly: the file must
    say ``general.architecture = "controlvector"`` and hold ``controlvector.model_hint``, and every tensor must be
    a finite 1-D ``direction.N`` (F32, or F16/F64 converted to float32) of one length — else FileFormatError.
    ``model`` is required (the file has no model shape); ``name`` defaults to the file's stem. Files written by
    llama.cpp's ``cvector-generator`` (same layout) read the same way.
    """
    path = Path(path)
    if model is None:
        raise InvalidInputError(
            f"a repeng control-vector file does not record the model's shape; pass model=... to read {path}"
        )
    fields, tensors = _read_gguf(path)
    hint = _field(fields, f"{GGUF_ARCH}.model_hint", "str", path, required=False)
    if hint is None:
        raise FileFormatError(f"{path}: controlvector.model_hint is missing (repeng requires it)")
    dirs = _directions(tensors, path, allow_zero=True)
    try:
        return from_repeng({"model_type": hint, "directions": dirs}, model, name=name or path.stem or "repeng",
                           method=method)
    except ModelMismatchError as e:
        raise ModelMismatchError(f"{path}: {e}") from e


# ---------------------------------------------------------------------------------------------------------------
# NumPy
# ---------------------------------------------------------------------------------------------------------------


def export_numpy(vector: PersonaVector, path: str | os.PathLike) -> Path:
    """Write an ``.npz`` (atomically, to exactly ``path``): ``vector`` ``[n_layers, d]`` float32, bit-exact, and
    ``metadata``, a one-element unicode array holding a JSON object (format, kind, format_version,
    package_version, model, num_layers, hidden_size, layer_site, name, method, n_samples, metadata)."""
    vector = _check_vector(vector)
    info = vector.model
    meta = {
        "format": FORMAT, "kind": VECTOR_KIND, "format_version": FORMAT_VERSION,
        "package_version": package_version(), "model": info.name, "num_layers": info.n_layers,
        "hidden_size": info.hidden_size, "layer_site": info.layer_site, "name": vector.name,
        "method": vector.method, "n_samples": vector.n_samples, "metadata": dict(vector.metadata),
    }
    with atomic_write(path) as f:
        np.savez(f, vector=vector.vector.numpy(), metadata=np.array([json.dumps(meta, ensure_ascii=False)]))
    return Path(path)


def import_numpy(path: str | os.PathLike, model: Any = None, *, strict_name: bool = True) -> PersonaVector:
    """Read a file written by :func:`export_numpy`, bit-exactly. With ``model``, refuse a vector made for a model
    of another shape (or name, if ``strict_name``) with ModelMismatchError. FileFormatError for corrupt,
    truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("vector", "metadata") if k not in z.files]
            if missing:
                raise FileFormatError(f"{path}: the archive lacks {missing} (found {sorted(z.files)})")
            arr = np.array(z["vector"], copy=True)
            md_arr = np.array(z["metadata"], copy=True)
    except FileFormatError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, EOFError ...
        raise FileFormatError(f"{path}: not a readable .npz file (corrupt, truncated or foreign?): {e}") from e
    if md_arr.dtype.kind != "U" or md_arr.shape != (1,):
        raise FileFormatError(
            f"{path}: 'metadata' must be a one-element string array, got {md_arr.dtype} {md_arr.shape}"
        )
    try:
        md = json.loads(str(md_arr[0]))
    except json.JSONDecodeError as e:
        raise FileFormatError(f"{path}: 'metadata' is not JSON: {e}") from e
    if not isinstance(md, dict) or md.get("format") != FORMAT or md.get("kind") != VECTOR_KIND:
        raise FileFormatError(f"{path}: not a persona_axes vector file")
    if md.get("format_version") != FORMAT_VERSION:
        raise FileFormatError(f"{path}: format version {md.get('format_version')!r} is not {FORMAT_VERSION}; "
                              "upgrade persona_axes")
    types = {"model": str, "num_layers": int, "hidden_size": int, "layer_site": str, "name": str, "method": str,
             "n_samples": int, "metadata": dict}
    bad = [k for k, t in types.items() if not isinstance(md.get(k), t) or isinstance(md.get(k), bool)]
    if bad:
        raise FileFormatError(f"{path}: metadata fields {bad} are missing or of the wrong type")
    info = ModelInfo(name=md["model"], n_layers=md["num_layers"], hidden_size=md["hidden_size"],
                     layer_site=md["layer_site"])
    if arr.dtype != np.float32 or arr.shape != (info.n_layers, info.hidden_size):
        raise FileFormatError(
            f"{path}: 'vector' is {arr.dtype} {arr.shape}, expected float32 ({info.n_layers}, {info.hidden_size})"
        )
    if not np.isfinite(arr).all():
        raise FileFormatError(f"{path}: 'vector' holds NaN or infinite values")
    if model is not None:
        info.check_compatible(model_info(model), what=f"the vector in {path}", strict_name=strict_name)
    try:
        return PersonaVector(vector=torch.from_numpy(arr), model=info, name=md["name"], method=md["method"],
                             n_samples=md["n_samples"], metadata=md["metadata"])
    except InvalidInputError as e:
        raise FileFormatError(f"{path}: {e}") from e


# ---------------------------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------------------------


def _format_name(format: Any) -> str:
    key = format.lower() if isinstance(format, str) else format
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise InvalidInputError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    return key


def _call(fn: Callable[..., Any], args: tuple, opts: dict, fixed: int, what: str) -> Any:
    params = list(inspect.signature(fn).parameters)[fixed:]
    unknown = sorted(set(opts) - set(params))
    if unknown:
        raise InvalidInputError(f"{what} takes no option(s) {unknown}; its options are {params or 'none'}")
    return fn(*args, **opts)


def _save_safetensors(vector: PersonaVector, path: str | os.PathLike) -> Path:
    return _check_vector(vector).save(path)


def _load_safetensors(path: str | os.PathLike, model: Any = None, *, strict_name: bool = True) -> PersonaVector:
    return PersonaVector.load(path, model=model, strict_name=strict_name)


_EXPORTERS: dict[str, Callable[..., Path]] = {
    "safetensors": _save_safetensors, "gguf": export_gguf_control_vector, "repeng": export_repeng_gguf,
    "numpy": export_numpy,
}
_IMPORTERS: dict[str, Callable[..., PersonaVector]] = {
    "safetensors": _load_safetensors, "gguf": import_gguf_control_vector, "repeng": import_repeng_gguf,
    "numpy": import_numpy,
}


def export_vector(vector: PersonaVector, path: str | os.PathLike, format: str = "safetensors", **opts: Any) -> Path:
    """Write ``vector`` to ``path`` in ``format`` (one of :data:`FORMATS`; ``"npz"`` and ``"llama.cpp"`` are
    aliases), passing ``opts`` to that format's exporter (e.g. ``layers``, ``scale``, ``normalize``,
    ``model_hint`` for ``"gguf"``). Unknown formats or options raise InvalidInputError."""
    fmt = _format_name(format)
    return _call(_EXPORTERS[fmt], (vector, path), opts, 2, f"export format {fmt!r}")


def guess_format(path: str | os.PathLike) -> str:
    """The format of an existing file, from its first bytes, else its suffix. A GGUF file is ``"gguf"`` if it
    carries our ``persona_axes.*`` metadata and ``"repeng"`` (a bare control vector) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if head[:4] == b"GGUF":
        try:
            fields, _ = _read_gguf(path)
        except FileFormatError:
            return "gguf"  # let the importer report the problem
        return "gguf" if _NS + "format" in fields else "repeng"
    if head[:4] == b"PK\x03\x04":
        return "numpy"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise FileFormatError(
            f"{path}: cannot tell its format from its contents or suffix; pass format= (one of {', '.join(FORMATS)})"
        )
    return fmt


def import_vector(path: str | os.PathLike, format: str | None = None, **opts: Any) -> PersonaVector:
    """Read a PersonaVector from ``path`` in ``format`` (guessed by :func:`guess_format` when ``None``), passing
    ``opts`` to that format's importer (``model``, ``strict_name``; ``name``/``method`` for ``"repeng"``, which
    needs ``model``)."""
    fmt = guess_format(path) if format is None else _format_name(format)
    return _call(_IMPORTERS[fmt], (path,), opts, 1, f"import format {fmt!r}")


__all__ = [
    "FORMATS",
    "GGUF_ARCH",
    "export_vector",
    "import_vector",
    "guess_format",
    "export_gguf_control_vector",
    "import_gguf_control_vector",
    "to_repeng",
    "from_repeng",
    "export_repeng_gguf",
    "import_repeng_gguf",
    "export_numpy",
    "import_numpy",
]
