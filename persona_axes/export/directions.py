"""Per-layer rows of a :class:`~persona_axes.vectors.containers.PersonaVector` and back: the common ground of the
control-vector formats (llama.cpp GGUF, repeng), which store ``{layer: [d] float32}`` rather than a full
``[n_layers, d]`` tensor. Layer L is the output of decoder block L (0-based) everywhere here."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from persona_axes.core import ModelInfo
from persona_axes.errors import InvalidInputError, ModelMismatchError
from persona_axes.vectors.containers import PersonaVector
from persona_axes.vectors.units import steer_rows


def check_vector(vector: Any) -> PersonaVector:
    if not isinstance(vector, PersonaVector):
        raise InvalidInputError(f"expected a PersonaVector, got {type(vector).__name__}")
    return vector


def check_scale(scale: Any) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not np.isfinite(float(scale)):
        raise InvalidInputError(f"scale must be a finite real number, got {scale!r}")
    return float(scale)


def check_label(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{what} must be a non-empty string, got {value!r}")
    return value


def layer_rows(vector: PersonaVector, layers: list[int], scale: float, normalize: bool, *,
               unit: str = "raw", reference: Any = None) -> dict[int, np.ndarray]:
    """``{layer: [d] float32}`` for ``layers`` (ascending): what a steer with coefficient ``scale`` in ``unit``
    (``"raw"``, ``"unit"``, ``"rel"``, ``"sd"``, ``"gap"``: the vector's stored unit statistics, or ``reference``
    activations for ``"rel"``/``"sd"``; see :mod:`persona_axes.vectors.units`) adds there.
    ``normalize=True`` is ``unit="unit"``.

    With ``scale == 1`` in raw units the rows are bit-exact copies; otherwise the arithmetic is float64, rounded
    once to float32.
    """
    if normalize:
        if unit != "raw":
            raise InvalidInputError(f"normalize=True is unit='unit'; it cannot be combined with unit={unit!r}")
        unit = "unit"
    if unit == "raw" and scale == 1.0:
        v = vector.vector[layers].numpy()
        return {L: np.ascontiguousarray(v[i], dtype=np.float32).copy() for i, L in enumerate(layers)}
    rows = steer_rows({L: vector.vector[L] for L in layers}, scale, unit, reference, vector.model,
                      f"vector {vector.name!r}", vector=vector)
    out = {}
    for L, r in rows.items():
        with np.errstate(over="ignore"):
            row = r.numpy().astype(np.float32)
        if not np.isfinite(row).all():
            raise InvalidInputError(f"scale={scale!r} overflows float32 for the vector {vector.name!r}")
        out[L] = row
    return out


def vector_from_rows(info: ModelInfo, directions: Mapping[int, np.ndarray], **fields: Any) -> PersonaVector:
    """A PersonaVector with ``directions[L]`` at layer L and zeros elsewhere."""
    t = torch.zeros(info.n_layers, info.hidden_size, dtype=torch.float32)
    for L, row in directions.items():
        t[L] = torch.from_numpy(np.asarray(row, dtype=np.float32).copy())
    return PersonaVector(vector=t, model=info, **fields)


def fit_model(dirs: Mapping[int, np.ndarray], info: ModelInfo, where: Any) -> None:
    """ModelMismatchError unless every direction has the model's hidden size and a layer it has."""
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


__all__ = ["check_vector", "check_scale", "check_label", "layer_rows", "vector_from_rows", "fit_model"]
