"""repeng's control vectors: the in-memory ``{"model_type", "directions"}`` (:func:`to_repeng` /
:func:`from_repeng`) and its GGUF file (:func:`export_repeng_gguf` / :func:`import_repeng_gguf`).

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

A repeng file is repeng's own layout, so it carries no checksum of ours: use the ``"gguf"`` format when the file
should protect itself.
"""

from __future__ import annotations

import json
import numbers
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from persona_axes.activations.container import model_info
from persona_axes.core import normalize_layers
from persona_axes.errors import FileFormatError, InvalidInputError, ModelMismatchError
from persona_axes.export.directions import check_label, check_scale, check_vector, fit_model, layer_rows, vector_from_rows
from persona_axes.export.gguf_io import GGUF_ARCH, gguf_directions, gguf_field, read_gguf
from persona_axes.files import atomic_path
from persona_axes.vectors.containers import PersonaVector


def repeng_layers(vector: PersonaVector, layers: Any) -> list[int]:
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
    vector = check_vector(vector)
    if model_type is None:
        model_type = vector.metadata.get("repeng_model_type", "llama")
    model_type = check_label(model_type, "model_type")
    rows = layer_rows(vector, repeng_layers(vector, layers), check_scale(scale), bool(normalize))
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

    with atomic_path(path) as tmp:
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
    fit_model(rows, info, "the repeng control vector")
    rows = dict(sorted(rows.items()))
    md = dict(metadata or {})
    if model_type is not None:
        md["repeng_model_type"] = str(model_type)
    md["repeng_layers"] = json.dumps(list(rows))
    return vector_from_rows(info, rows, name=name, method=method, n_samples=n_samples, metadata=md)


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
    fields, tensors = read_gguf(path)
    hint = gguf_field(fields, f"{GGUF_ARCH}.model_hint", "str", path, required=False)
    if hint is None:
        raise FileFormatError(f"{path}: controlvector.model_hint is missing (repeng requires it)")
    dirs = gguf_directions(tensors, path, allow_zero=True)
    try:
        return from_repeng({"model_type": hint, "directions": dirs}, model, name=name or path.stem or "repeng",
                           method=method)
    except ModelMismatchError as e:
        raise ModelMismatchError(f"{path}: {e}") from e


__all__ = ["to_repeng", "from_repeng", "export_repeng_gguf", "import_repeng_gguf", "repeng_layers"]
