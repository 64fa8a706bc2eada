"""Import the vectors published with the Assistant Axis paper (Lu et al. 2026): the per-model ``assistant_axis.pt``
(and the role / trait / default vectors beside it) and ``capping_config.pt``.

The release (a Hugging Face dataset with one folder per model: ``gemma-2-27b``, ``qwen-3-32b``,
``llama-3.3-70b``) stores pickled PyTorch objects. They are read here with ``torch.load(weights_only=True)`` only
(plain tensors, dicts, lists, strings and numbers; never arbitrary code), and every field is checked.

- A vector file is a ``[n_layers, d]`` tensor (bf16 in the release), or ``{"axis": tensor, ...}`` /
  ``{"vector": tensor, "type", "role"}`` as the official pipeline writes them. It becomes a float32
  :class:`~persona_axes.vectors.containers.PersonaVector`, raw (not normalised: the official steering adds the raw
  row), bf16 -> float32 exactly.
- **Layer convention, checked**: the official code hooks ``model.model.layers[L]`` and keeps its output, so row L
  is the output of decoder block L (0-based), no embedding row — our "layer L" exactly, no shift. A file with
  ``n_layers + 1`` rows (an embedding row first, as ``output_hidden_states`` would give) or any other count is
  refused, not shifted.
- ``capping_config.pt`` is ``{"vectors": {name: {"vector": [d], "layer": L}}, "experiments": [{"id":
  "layers_<a>:<b>-p<q>", "interventions": [{"vector": name, "cap": float}, ...]}]}``; the official hook keeps the
  projection onto the unit stored vector ``v`` at or *below* ``cap`` (a ceiling), and ``v`` points towards
  role-play (about ``-axis``). A ceiling at ``cap`` on ``unit(v)`` is identically a floor at ``-cap`` on
  ``-unit(v)``, so :func:`import_official_capping` returns a floor on the unit Assistant Axis, in the fields of
  :class:`~persona_axes.steering.capping.CapConfig` (``CapConfig(**cap.cap_config_fields())``; this module sits
  below steering, so it returns plain typed data). ``p<q>`` is a quantile of projections onto ``v``; after the
  flip the floor is the ``1 - q`` quantile along the axis, so ``percentile = 100 * (1 - q)``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from persona_axes.activations.container import model_info
from persona_axes.core import ModelInfo, cosine64, unit
from persona_axes.errors import FileFormatError, InvalidInputError
from persona_axes.vectors.containers import PersonaVector, VectorSet

#: The release's model folders: HF model id, n_layers, hidden size, recommended capping experiment (None: none).
RELEASE_MODELS = {
    "gemma-2-27b": ("google/gemma-2-27b-it", 46, 4608, None),
    "qwen-3-32b": ("Qwen/Qwen3-32B", 64, 5120, "layers_46:54-p0.25"),
    "llama-3.3-70b": ("meta-llama/Llama-3.3-70B-Instruct", 80, 8192, "layers_56:72-p0.25"),
}
_EXPERIMENT = re.compile(r"layers_(\d+):(\d+)-p([0-9.]+)")
_VECTOR_LAYER = re.compile(r"layer_(\d+)/")


def _load(path: str | os.PathLike) -> tuple[Path, Any]:
    import pickle

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    try:
        return path, torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a global that weights_only refuses: never fall back to full unpickling
        raise FileFormatError(f"{path}: holds Python objects that torch.load(weights_only=True) refuses to "
                              f"unpickle, so it is not read: {e}") from e
    except Exception as e:  # noqa: BLE001 — zip/pickle errors of a corrupt or foreign file
        raise FileFormatError(f"{path}: not a readable PyTorch file (corrupt, truncated or foreign?): {e}") from e


def release_model(path: str | os.PathLike) -> ModelInfo | None:
    """The ModelInfo of a release folder (``.../qwen-3-32b/assistant_axis.pt`` -> Qwen3-32B), or None."""
    for part in reversed(Path(path).resolve().parts):
        if part in RELEASE_MODELS:
            name, n, d, _ = RELEASE_MODELS[part]
            return ModelInfo(name=name, n_layers=n, hidden_size=d)
    return None


def _model(model: Any, path: Path) -> ModelInfo:
    if model is not None:
        return model_info(model)
    info = release_model(path)
    if info is None:
        raise InvalidInputError(f"cannot tell which model {path} belongs to (its folder is not one of the release's "
                                f"{', '.join(RELEASE_MODELS)}); pass model=... (a ModelInfo, Backend or LoadedModel)")
    return info


def import_official_vector(path: str | os.PathLike, model: Any = None, *, name: str | None = None,
                           method: str = "official") -> PersonaVector:
    """A PersonaVector from an official vector file (axis, default, role or trait vector), checked against
    ``model`` (default: the release folder's model). Row L = our layer L (see the module docstring)."""
    path, obj = _load(path)
    info = _model(model, path)
    md = {"source": path.name, "official_layout": "tensor"}
    if isinstance(obj, dict):
        key = "axis" if "axis" in obj else "vector" if "vector" in obj else None
        if key is None:
            raise FileFormatError(f"{path}: a dict without an 'axis' or 'vector' tensor (keys {sorted(map(str, obj))})")
        md["official_layout"] = f"dict[{key!r}]"
        for k in ("type", "role"):
            if isinstance(obj.get(k), str):
                md[f"official_{k}"] = obj[k]
        name = name or (obj["role"] if isinstance(obj.get("role"), str) and obj["role"] else None)
        obj = obj[key]
    if not isinstance(obj, torch.Tensor) or not obj.is_floating_point():
        raise FileFormatError(f"{path}: expected a floating-point tensor, got {type(obj).__name__}")
    if obj.ndim != 2 or obj.shape[1] != info.hidden_size:
        raise FileFormatError(f"{path}: shape {list(obj.shape)} is not [n_layers, {info.hidden_size}] for "
                              f"{info.name!r}")
    rows = obj.shape[0]
    if rows == info.n_layers + 1:
        raise FileFormatError(
            f"{path}: {rows} rows for a {info.n_layers}-layer model: the release has one row per decoder block "
            "(row L = output of block L); a row too many looks like an embedding row (hidden_states[0]). It is "
            "not shifted silently: drop that row yourself if you know that is what it is")
    if rows != info.n_layers:
        raise FileFormatError(f"{path}: {rows} rows, but {info.name!r} has {info.n_layers} layers (one row each)")
    md["official_dtype"] = str(obj.dtype).removeprefix("torch.")
    t = obj.detach().to(torch.float32)
    if not torch.isfinite(t).all():
        raise FileFormatError(f"{path}: holds NaN or infinite values")
    return PersonaVector(vector=t, model=info, name=name or path.stem, method=method, metadata=md)


def import_official_axis(path: str | os.PathLike, model: Any = None) -> PersonaVector:
    """The release's ``assistant_axis.pt`` as a PersonaVector named ``"assistant_axis"`` (method
    ``"assistant_axis"``): mean(default) - mean(roles) per layer, raw, pointing towards the Assistant."""
    return import_official_vector(path, model, name="assistant_axis", method="assistant_axis")


def import_official_roles(folder: str | os.PathLike, model: Any = None, *, kind: str = "role_vectors") -> VectorSet:
    """Every ``<folder>/<kind>/*.pt`` (``role_vectors`` or ``trait_vectors``) as one VectorSet, by file stem."""
    base = Path(folder) / kind
    paths = sorted(base.glob("*.pt"))
    if not paths:
        raise FileFormatError(f"{base}: no .pt files")
    vecs = [import_official_vector(p, model if model is not None else _model(None, Path(folder)), name=p.stem)
            for p in paths]
    return VectorSet.from_vectors(vecs, method="official_" + kind.removesuffix("_vectors"), name=kind)


@dataclass
class OfficialCapping:
    """An official capping experiment as a floor on the unit Assistant Axis (see the module docstring).

    ``axis[L]``: unit ``[d]`` float32 (= ``-unit(stored vector)``); ``thresholds[L]`` = ``-cap``; ``kind`` is
    ``"floor"``; ``percentile`` = ``100 * (1 - q)`` along the axis (None if the id has no ``p<q>``).
    """

    axis: dict[int, torch.Tensor]
    thresholds: dict[int, float]
    model: ModelInfo
    experiment: str
    percentile: float | None
    kind: str = "floor"
    reference: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def cap_config_fields(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~persona_axes.steering.capping.CapConfig`."""
        return {"axis": dict(self.axis), "thresholds": dict(self.thresholds), "kind": self.kind,
                "model": self.model, "percentile": self.percentile, "reference": self.reference,
                "name": "assistant_axis", "extra": dict(self.extra)}


def _experiment(cfg: dict, experiment: str | int | None, path: Path) -> dict:
    exps = cfg["experiments"]
    if experiment is None:
        rec = next((v[3] for k, v in RELEASE_MODELS.items() if k in Path(path).resolve().parts), None)
        if rec is None:
            raise InvalidInputError(f"pass experiment=... (an id or an index) to choose one of the {len(exps)} "
                                    f"experiments in {path}, e.g. {[e.get('id') for e in exps[:3]]}")
        experiment = rec
    if isinstance(experiment, bool) or not isinstance(experiment, (str, int)):
        raise InvalidInputError(f"experiment must be an id string or an index, got {experiment!r}")
    if isinstance(experiment, int):
        if not 0 <= experiment < len(exps):
            raise InvalidInputError(f"experiment={experiment} is out of range: {path} has {len(exps)} experiments")
        return exps[experiment]
    for e in exps:
        if e.get("id") == experiment:
            return e
    raise InvalidInputError(f"experiment {experiment!r} is not in {path}; it has {len(exps)}, e.g. "
                            f"{[e.get('id') for e in exps[:4]]}")


def _check_config(cfg: Any, path: Path) -> None:
    if not isinstance(cfg, dict) or not isinstance(cfg.get("vectors"), dict) \
            or not isinstance(cfg.get("experiments"), list):
        raise FileFormatError(f"{path}: not a capping config (a dict with 'vectors' and 'experiments')")
    for e in cfg["experiments"]:
        if not isinstance(e, dict) or not isinstance(e.get("id"), str) or not isinstance(e.get("interventions"), list):
            raise FileFormatError(f"{path}: an experiment is not {{'id': str, 'interventions': list}}: {e!r:.100}")


def import_official_capping(path: str | os.PathLike, *, experiment: str | int | None = None,
                            axis: PersonaVector | str | os.PathLike | None = None, model: Any = None,
                            min_cosine: float = 0.99) -> OfficialCapping:
    """One experiment of an official ``capping_config.pt`` as a floor on the unit Assistant Axis.

    ``experiment``: its id (``"layers_46:54-p0.25"``: layers 46..53, q = 0.25) or index; default: the release's
    recommended one for the folder's model. ``axis`` (the release's ``assistant_axis.pt`` or a PersonaVector),
    if given, is checked to agree: ``cos(-v_L, axis[L]) >= min_cosine`` at every capped layer, else
    InvalidInputError — the sign is never flipped silently. ``model``: as for :func:`import_official_vector`.
    """
    path, cfg = _load(path)
    _check_config(cfg, path)
    exp = _experiment(cfg, experiment, path)
    m = _EXPERIMENT.fullmatch(exp["id"])
    id_layers = list(range(int(m.group(1)), int(m.group(2)))) if m else None
    q = float(m.group(3)) if m else None
    axis_rows: dict[int, torch.Tensor] = {}
    thresholds: dict[int, float] = {}
    for iv in exp["interventions"]:
        if not isinstance(iv, dict) or "cap" not in iv:
            continue  # the official loader skips interventions without a cap (they steer, not cap)
        ref = cfg["vectors"].get(iv.get("vector"))
        if not isinstance(ref, dict) or not isinstance(ref.get("vector"), torch.Tensor) \
                or isinstance(ref.get("layer"), bool) or not isinstance(ref.get("layer"), int):
            raise FileFormatError(f"{path}: experiment {exp['id']!r} names vector {iv.get('vector')!r}, which is not "
                                  "{'vector': tensor, 'layer': int} in 'vectors'")
        L, v, cap = ref["layer"], ref["vector"], iv["cap"]
        named = _VECTOR_LAYER.match(str(iv["vector"]))
        if named and int(named.group(1)) != L:
            raise FileFormatError(f"{path}: vector {iv['vector']!r} says layer {L}; its name says {named.group(1)}")
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not abs(float(cap)) < float("inf"):
            raise FileFormatError(f"{path}: the cap of {iv['vector']!r} is {cap!r}, not a finite number")
        if L in axis_rows:
            raise FileFormatError(f"{path}: experiment {exp['id']!r} caps layer {L} twice; one cap per layer is "
                                  "supported")
        if v.ndim != 1 or not v.is_floating_point():
            raise FileFormatError(f"{path}: vector {iv['vector']!r} has shape {list(v.shape)}, expected [d]")
        try:
            axis_rows[L] = -unit(v.to(torch.float32), f"capping vector {iv['vector']!r}", L)
        except InvalidInputError as e:
            raise FileFormatError(f"{path}: {e}") from e
        thresholds[L] = -float(cap)
    if not axis_rows:
        raise FileFormatError(f"{path}: experiment {exp['id']!r} has no intervention with a cap")
    if id_layers is not None and sorted(axis_rows) != id_layers:
        raise FileFormatError(f"{path}: experiment {exp['id']!r} caps layers {sorted(axis_rows)}, not the "
                              f"{id_layers[0]}..{id_layers[-1]} its id says")
    if isinstance(axis, (str, os.PathLike)):
        axis = import_official_axis(axis, model)
    info = axis.model if isinstance(axis, PersonaVector) and model is None else _model(model, path)
    d = {int(a.shape[0]) for a in axis_rows.values()}
    if d != {info.hidden_size} or max(axis_rows) >= info.n_layers:
        raise FileFormatError(f"{path}: capping vectors of length {sorted(d)} at layers up to {max(axis_rows)} do "
                              f"not fit {info.name!r} ({info.n_layers} layers, d={info.hidden_size})")
    if axis is not None:
        if not isinstance(axis, PersonaVector):
            raise InvalidInputError(f"axis must be a PersonaVector or a path, got {type(axis).__name__}")
        axis.model.check_compatible(info, what="the axis")
        bad = {L: round(float(cosine64(axis_rows[L], axis.vector[L])), 4) for L in axis_rows
               if not float(cosine64(axis_rows[L], axis.vector[L])) >= min_cosine}
        if bad:
            raise InvalidInputError(f"the capping vectors of {path} do not point along -axis at layer(s) "
                                    f"{sorted(bad)} (cos(-v, axis) = {bad}); they are not this axis's config")
    extra = {"source": path.name, "official_experiment": exp["id"], "official_frame":
             "ceiling on the stored role-ward vector, imported as a floor on -unit(v) at -cap"}
    if q is not None:
        extra["official_q"] = repr(q)
    return OfficialCapping(axis=axis_rows, thresholds=thresholds, model=info, experiment=exp["id"],
                           percentile=None if q is None else 100.0 * (1.0 - q),
                           reference="Assistant Axis release capping_config.pt (calibration set not published)",
                           extra=extra)


__all__ = ["RELEASE_MODELS", "release_model", "import_official_vector", "import_official_axis",
           "import_official_roles", "OfficialCapping", "import_official_capping"]
