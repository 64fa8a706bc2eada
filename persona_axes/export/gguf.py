"""llama.cpp control vectors (GGUF): :func:`export_gguf_control_vector` / :func:`import_gguf_control_vector`.

Use the file with ``llama-cli --control-vector FILE`` (strength 1) or ``--control-vector-scaled FILE:SCALE``
(llama.cpp multiplies every direction by SCALE at load time). **Export what ``steer`` does**: with ``layers``,
``scale`` (the coefficient) and ``unit`` (``"raw"``, ``"unit"``, ``"rel"``, ``"sd"``, ``"gap"``) the file holds
``direction.L = scale * unit_scale[L] * v[L]`` at exactly the chosen layers — the vector
:class:`~persona_axes.steering.interventions.Steer` adds there with ``coef=scale`` and the same unit (the unit
scale is computed by :mod:`persona_axes.vectors.units` for both) — and nothing elsewhere, so a plain
``--control-vector FILE`` reproduces ``persona-axes steer`` (steer edits every position, as llama.cpp does).

Layer conventions (verified against the sources): "layer L" is the output of decoder block L, 0-based
(``hidden_states[L + 1]`` in HF terms). llama.cpp (read in ``common/common.cpp``
``common_control_vector_load_one`` / ``common_control_vector_load``, ``src/llama-adapter.cpp``
``llama_adapter_cvec::init`` / ``apply`` / ``tensor_for`` / ``apply_to``, ``src/llama-graph.cpp``
``llm_graph_context::build_cvec``, and the per-architecture graph builders):
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


Files we write also carry ``persona_axes.*`` keys (model identity, name, method, extras, scale, unit, layers) and
``persona_axes.checksum``, a SHA-256 over the directions and every other key/value, so a flipped bit anywhere is
refused on import. Files written before it (``persona_axes.format_version = "1"``) import with a warning.
Limitations: F32 only (llama.cpp needs it), so a round trip is exact per exported layer only for ``scale=1`` in
raw units; layers not in the file (always layer 0) come back as zeros.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from persona_axes.activations.container import model_info
from persona_axes.core import ModelInfo, Unit, as_choice, normalize_layers
from persona_axes.errors import FileFormatError, InvalidInputError
from persona_axes.export.directions import check_label, check_scale, check_vector, fit_model, layer_rows, vector_from_rows
from persona_axes.export.gguf_io import (
    CHECKSUM_FIELD,
    GGUF_ARCH,
    NS,
    gguf_checksum,
    gguf_directions,
    gguf_field,
    legacy_directions_sha256,
    read_gguf,
)
from persona_axes.files import (
    FORMAT,
    FORMAT_VERSION,
    LEGACY_FORMAT_VERSIONS,
    LegacyFileWarning,
    atomic_path,
    package_version,
)
from persona_axes.vectors.containers import VECTOR_KIND, PersonaVector
from persona_axes.vectors.units import layer_units, unit_scales


def gguf_layers(vector: PersonaVector, layers: Any) -> list[int]:
    """The layers a llama.cpp control vector of ``vector`` holds for ``layers`` (``None``: 1 .. n_layers-1);
    layer 0 is dropped with a warning (llama.cpp cannot steer the output of block 0), or refused if alone."""
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
    unit: Unit | str = "raw",
    reference: Any = None,
    model_hint: str = "llama",
) -> Path:
    """Write ``vector`` as a llama.cpp control vector (GGUF), atomically, with ordinary file permissions.

    One F32 tensor ``direction.L`` per exported layer L, which llama.cpp adds to the output of block L (our layer
    L). ``layers``: ``None`` for every layer llama.cpp can express (1 .. n_layers-1), or a subset (negative counts
    from the end); layer 0 is dropped with a warning, or refused if it is the only one. ``scale`` is a steer's
    coefficient in ``unit``: ``direction.L = scale * unit_scale[L] * v[L]`` with unit scale 1 (``"raw"``),
    ``1/|v[L]|`` (``"unit"``, same as ``normalize=True``) or ``size[L] / |v[L]|`` for ``"rel"``, ``"sd"``,
    ``"gap"`` (the vector's stored unit statistics, or ``rel``/``sd`` measured on ``reference`` activations of
    default-assistant replies; :mod:`persona_axes.vectors.units`) — what ``Steer(model, vector, layers,
    coef=scale, unit=unit, reference=reference)`` adds. Run it with ``llama-cli --control-vector FILE``;
    ``--control-vector-scaled FILE:S`` multiplies by ``S`` once more. ``model_hint``: the model's GGUF
    architecture string (``"llama"``, ``"qwen2"``, ...).

    Besides llama.cpp's keys the file records ``persona_axes.*`` metadata (model identity, name, method,
    n_samples, extras, scale, unit, per-layer unit scales, layers) and ``persona_axes.checksum`` over all of it
    and the directions, so :func:`import_gguf_control_vector` can rebuild the vector and refuse a damaged file.
    """
    import gguf

    vector = check_vector(vector)
    model_hint = check_label(model_hint, "model_hint")
    scale = check_scale(scale)
    u = as_choice(Unit, unit, "unit")
    if normalize and u != Unit.RAW:
        raise InvalidInputError(f"normalize=True is unit='unit'; it cannot be combined with unit={u.value!r}")
    u = Unit.UNIT if normalize else u
    sel = gguf_layers(vector, layers)
    rows = layer_rows(vector, sel, scale, False, unit=u.value, reference=reference)
    sel_rows = {L: vector.vector[L] for L in sel}
    sizes = layer_units(u, vector.model, sel_rows, vector, reference, f"vector {vector.name!r}")
    unit_scale = unit_scales(sel_rows, u, sizes, f"vector {vector.name!r}")
    per_layer = [unit_scale[L] for L in sel]
    info = vector.model
    T = gguf.GGUFValueType
    values: list[tuple[str, Any, Any, Any]] = [
        ("general.architecture", GGUF_ARCH, None, None),  # written by GGUFWriter itself; listed for the checksum
        (f"{GGUF_ARCH}.model_hint", model_hint, T.STRING, None),
        (f"{GGUF_ARCH}.layer_count", len(rows), T.INT32, None),
        (NS + "format", FORMAT, T.STRING, None),
        (NS + "kind", VECTOR_KIND, T.STRING, None),
        (NS + "format_version", FORMAT_VERSION, T.STRING, None),
        (NS + "package_version", package_version(), T.STRING, None),
        (NS + "model", info.name, T.STRING, None),
        (NS + "num_layers", info.n_layers, T.UINT32, None),
        (NS + "hidden_size", info.hidden_size, T.UINT32, None),
        (NS + "layer_site", info.layer_site, T.STRING, None),
        (NS + "name", vector.name, T.STRING, None),
        (NS + "method", vector.method, T.STRING, None),
        (NS + "n_samples", vector.n_samples, T.UINT64, None),
        (NS + "metadata", json.dumps(vector.metadata, ensure_ascii=False, sort_keys=True), T.STRING, None),
        (NS + "scale", scale, T.FLOAT64, None),
        (NS + "normalize", u == Unit.UNIT, T.BOOL, None),
        (NS + "unit", u.value, T.STRING, None),
        (NS + "unit_scales", per_layer, T.ARRAY, T.FLOAT64),
        (NS + "layers", list(rows), T.ARRAY, T.INT32),
    ]
    digest = gguf_checksum(rows, {k: v for k, v, _, _ in values})
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, GGUF_ARCH)
        try:
            # add_key_value, not add_string: the latter silently drops empty strings
            for key, value, vtype, sub in values[1:]:
                w.add_key_value(key, value, vtype, sub_type=sub)
            w.add_key_value(CHECKSUM_FIELD, digest, T.STRING)
            for L, row in rows.items():
                w.add_tensor(f"direction.{L}", row)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()
    return Path(path)


def _check_ours(fields: dict, dirs: dict, path: Path) -> str:
    """Check the format, version and checksum of one of our files; returns its format version."""
    fmt, kind = gguf_field(fields, NS + "format", "str", path), gguf_field(fields, NS + "kind", "str", path)
    if fmt != FORMAT or kind != VECTOR_KIND:
        raise FileFormatError(f"{path}: persona_axes.format/kind are not {FORMAT!r}/{VECTOR_KIND!r}")
    version = gguf_field(fields, NS + "format_version", "str", path)
    if version in LEGACY_FORMAT_VERSIONS:
        digest = gguf_field(fields, NS + "sha256", "str", path, required=False)  # absent in the oldest files
        if digest is not None and digest != legacy_directions_sha256(dirs):
            raise FileFormatError(f"{path}: the direction tensors fail their SHA-256 checksum; the file is corrupt "
                                  "(or its values were edited): export it again")
        warnings.warn(f"{path} was exported before persona_axes checksummed GGUF metadata (format version "
                      f"{version}): an edit to it would not be detected; export it again", LegacyFileWarning,
                      stacklevel=4)
        return version
    if version != FORMAT_VERSION:
        raise FileFormatError(f"{path}: format version {version!r} is not {FORMAT_VERSION}; upgrade persona_axes")
    digest = gguf_field(fields, CHECKSUM_FIELD, "str", path, required=False)
    if digest is None:
        raise FileFormatError(f"{path}: no {CHECKSUM_FIELD} key; the file is corrupt or was edited")
    if digest != gguf_checksum(dirs, {k: v for k, (_, v) in fields.items()}):
        raise FileFormatError(f"{path}: the direction tensors or metadata fail their SHA-256 checksum; the file is "
                              "corrupt (or was edited): export it again")
    return version


def import_gguf_control_vector(
    path: str | os.PathLike, model: Any = None, *, strict_name: bool = True
) -> PersonaVector:
    """Read a llama.cpp control vector (with :class:`gguf.GGUFReader`) back into a PersonaVector.

    ``direction.N`` becomes our layer N; layers absent from the file are zeros. Files we wrote carry their model
    identity, name, method and extras, and are checked against their checksum; with ``model`` (a ModelInfo,
    Backend or LoadedModel) a vector made for a model of another shape (or name, if ``strict_name``) is refused
    with ModelMismatchError. Files from other tools (no ``persona_axes.*`` keys) need ``model``.

    The values are what llama.cpp adds (``scale`` and the unit applied); the metadata records ``gguf_layers``
    (JSON list of the layers in the file), ``gguf_model_hint`` and, for our files, ``gguf_scale`` /
    ``gguf_normalize`` / ``gguf_unit``. FileFormatError for corrupt, truncated or foreign files.
    """
    path = Path(path)
    fields, tensors = read_gguf(path)
    dirs = gguf_directions(tensors, path, allow_zero=False)
    d = len(next(iter(dirs.values())))
    hint = gguf_field(fields, f"{GGUF_ARCH}.model_hint", "str", path, required=False)
    extra: dict[str, str]
    if NS + "format" in fields:
        _check_ours(fields, dirs, path)
        info = ModelInfo(
            name=gguf_field(fields, NS + "model", "str", path),
            n_layers=int(gguf_field(fields, NS + "num_layers", "int", path)),
            hidden_size=int(gguf_field(fields, NS + "hidden_size", "int", path)),
            layer_site=gguf_field(fields, NS + "layer_site", "str", path),
        )
        if info.n_layers < 1 or info.hidden_size != d:
            raise FileFormatError(
                f"{path}: the metadata says num_layers={info.n_layers}, hidden_size={info.hidden_size} but the "
                f"direction tensors have length {d}; the file is corrupt or was edited"
            )
        layers = [int(x) for x in gguf_field(fields, NS + "layers", "int_list", path)]
        if sorted(layers) != list(dirs) or any(L >= info.n_layers for L in layers):
            raise FileFormatError(
                f"{path}: persona_axes.layers={layers} does not match the direction tensors {list(dirs)} "
                f"of a {info.n_layers}-layer model; the file is corrupt or was edited"
            )
        count = gguf_field(fields, f"{GGUF_ARCH}.layer_count", "int", path)
        if count != len(dirs):
            raise FileFormatError(f"{path}: controlvector.layer_count={count} but the file has {len(dirs)} directions")
        try:
            extra = json.loads(gguf_field(fields, NS + "metadata", "str", path))
        except json.JSONDecodeError as e:
            raise FileFormatError(f"{path}: persona_axes.metadata is not JSON: {e}") from e
        if not isinstance(extra, dict):
            raise FileFormatError(f"{path}: persona_axes.metadata is not a JSON object")
        name = gguf_field(fields, NS + "name", "str", path)
        method = gguf_field(fields, NS + "method", "str", path)
        n_samples = int(gguf_field(fields, NS + "n_samples", "int", path))
        extra = dict(extra)
        extra["gguf_scale"] = repr(float(gguf_field(fields, NS + "scale", "float", path)))
        extra["gguf_normalize"] = "true" if gguf_field(fields, NS + "normalize", "bool", path) else "false"
        unit = gguf_field(fields, NS + "unit", "str", path, required=False)
        if unit is not None:
            try:
                extra["gguf_unit"] = as_choice(Unit, unit, "persona_axes.unit").value
            except InvalidInputError as e:
                raise FileFormatError(f"{path}: {e}") from e
        if model is not None:
            info.check_compatible(model_info(model), what=f"the control vector in {path}", strict_name=strict_name)
    else:
        if any(k.startswith(NS) for k in fields):
            raise FileFormatError(f"{path}: has persona_axes.* keys but no persona_axes.format; the file is corrupt "
                                  "or was edited: export it again")
        if model is None:
            raise InvalidInputError(
                f"{path} is a control vector without persona_axes metadata (written by another tool); pass "
                "model=... (a ModelInfo, Backend or LoadedModel) to say which model it belongs to"
            )
        info = model_info(model)
        fit_model(dirs, info, path)
        name, method, n_samples, extra = path.stem or "control_vector", "gguf_control_vector", 0, {}
    extra["gguf_layers"] = json.dumps(list(dirs))
    if hint is not None:
        extra["gguf_model_hint"] = hint
    try:
        return vector_from_rows(info, dirs, name=name, method=method, n_samples=n_samples, metadata=extra)
    except InvalidInputError as e:
        raise FileFormatError(f"{path}: {e}") from e


__all__ = ["export_gguf_control_vector", "import_gguf_control_vector", "gguf_layers"]
