"""A plain NumPy ``.npz`` of a PersonaVector (:func:`export_numpy` / :func:`import_numpy`), bit-exact, every
layer (row L = the output of decoder block L). The zip container checks each member with its CRC-32, so a flipped
bit in the values or in the JSON metadata is refused on reading."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from persona_axes.activations.container import model_info
from persona_axes.core import ModelInfo
from persona_axes.errors import FileFormatError, InvalidInputError
from persona_axes.export.directions import check_vector
from persona_axes.files import FORMAT, FORMAT_VERSION, LEGACY_FORMAT_VERSIONS, atomic_write, package_version
from persona_axes.vectors.containers import VECTOR_KIND, PersonaVector


def export_numpy(vector: PersonaVector, path: str | os.PathLike) -> Path:
    """Write an ``.npz`` (atomically, to exactly ``path``): ``vector`` ``[n_layers, d]`` float32, bit-exact, and
    ``metadata``, a one-element unicode array holding a JSON object (format, kind, format_version,
    package_version, model, num_layers, hidden_size, layer_site, name, method, n_samples, metadata)."""
    vector = check_vector(vector)
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
    if md.get("format_version") != FORMAT_VERSION and md.get("format_version") not in LEGACY_FORMAT_VERSIONS:
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


__all__ = ["export_numpy", "import_numpy"]
