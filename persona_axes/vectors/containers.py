"""Containers of persona directions: :class:`PersonaVector` (one ``[d]`` direction per model layer) and
:class:`VectorSet` (several made the same way, one per role, say), and their files.

``vector[L]`` is "layer L" = the output of decoder block L (0-based), always covering *every* layer of the model.
Files are safetensors written through :func:`persona_axes.files.save_tensors` (checksummed over tensors and
metadata); loading checks the model identity and the shapes against the metadata. How vectors are made lives in
:mod:`persona_axes.vectors.methods`, purification in :mod:`persona_axes.vectors.purify`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from persona_axes.activations.container import model_info
from persona_axes.core import ModelInfo, cosine64, normalize_layers, unit
from persona_axes.errors import FileFormatError, InvalidInputError
from persona_axes.files import RESERVED_KEYS, json_meta, load_tensors, parse_json_meta, save_tensors

VECTOR_KIND = "vector"
VECTOR_SET_KIND = "vector_set"
_VECTOR_KEYS = RESERVED_KEYS | {"name", "method", "n_samples"}
_SET_KEYS = _VECTOR_KEYS | {"names", "families"}


# ---------------------------------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------------------------------


def _check_metadata(metadata: Mapping[str, str], reserved: frozenset[str], what: str) -> dict[str, str]:
    out = {}
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidInputError(f"{what} metadata must map strings to strings; {k!r}: {v!r} is not")
        if k in reserved:
            raise InvalidInputError(
                f"{what} metadata key {k!r} is reserved (it is written from the object's own fields); rename it"
            )
        out[k] = v
    return out


def _as_layer_tensor(t: Any, model: ModelInfo, what: str) -> torch.Tensor:
    """``[n_layers, d]`` float32, CPU, contiguous, finite — or InvalidInputError."""
    if not isinstance(t, torch.Tensor):
        raise InvalidInputError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    expected = (model.n_layers, model.hidden_size)
    if tuple(t.shape) != expected:
        raise InvalidInputError(
            f"{what} must have shape [n_layers={model.n_layers}, d={model.hidden_size}] (one row per model layer), "
            f"got {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        raise InvalidInputError(f"{what} must be a floating-point tensor, got {t.dtype}")
    t = t.detach().to("cpu", torch.float32).contiguous()
    bad = (~torch.isfinite(t)).any(-1).nonzero().flatten().tolist()
    if bad:
        raise InvalidInputError(f"{what} holds NaN or infinite values at layer(s) {bad}")
    return t


def _layer(layer: int, n_layers: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise InvalidInputError(f"layer must be an integer, got {layer!r}")
    return normalize_layers(layer, n_layers)[0]


@dataclass
class PersonaVector:
    """One direction per model layer.

    ``vector``: ``[n_layers, d]`` float32 covering all ``model.n_layers`` layers (row ``L`` = layer ``L``).
    ``method``: how it was made (``"mean_diff"``, ``"pca_diff"``, ``"probe"``, ``"role_mean"``, ``"default_mean"``,
    ``"assistant_axis"``, ``"purified"``, ...). ``n_samples``: how many activation rows went into it.
    ``metadata``: free string extras, saved with the vector.
    """

    vector: torch.Tensor
    model: ModelInfo
    name: str
    method: str
    n_samples: int = 0
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.model, ModelInfo):
            self.model = model_info(self.model)
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInputError(f"a PersonaVector needs a non-empty string name, got {self.name!r}")
        if not isinstance(self.method, str) or not self.method:
            raise InvalidInputError(f"a PersonaVector needs a non-empty string method, got {self.method!r}")
        self.vector = _as_layer_tensor(self.vector, self.model, f"the vector {self.name!r}")
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, int) or self.n_samples < 0:
            raise InvalidInputError(f"n_samples must be a non-negative integer, got {self.n_samples!r}")
        self.metadata = _check_metadata(self.metadata, _VECTOR_KEYS, f"the vector {self.name!r}")

    def __repr__(self) -> str:
        return (
            f"PersonaVector(name={self.name!r}, method={self.method!r}, n_layers={self.model.n_layers}, "
            f"d={self.model.hidden_size}, n_samples={self.n_samples}, model={self.model.name!r})"
        )

    @property
    def n_layers(self) -> int:
        return self.model.n_layers

    def norms(self) -> torch.Tensor:
        """``[n_layers]`` Euclidean norm at each layer."""
        return self.vector.to(torch.float64).norm(dim=-1).to(torch.float32)

    def at(self, layer: int) -> torch.Tensor:
        """``[d]`` the direction at model layer ``layer`` (negative counts from the last layer)."""
        return self.vector[_layer(layer, self.model.n_layers)]

    def unit(self, layer: int | None = None) -> torch.Tensor:
        """Unit-normalised direction: ``[d]`` at ``layer``, or ``[n_layers, d]`` (each row unit) when ``None``.

        Raises :class:`InvalidInputError` if a requested row has zero norm (it has no direction).
        """
        if layer is not None:
            return unit(self.at(layer), f"vector {self.name!r}", layer)
        zero = (self.vector.norm(dim=-1) == 0).nonzero().flatten().tolist()
        if zero:
            raise InvalidInputError(f"the vector {self.name!r} has zero norm at layer(s) {zero}; it has no direction")
        return unit(self.vector, f"vector {self.name!r}")

    def cosine(self, other: PersonaVector | torch.Tensor) -> torch.Tensor:
        """``[n_layers]`` cosine similarity with ``other`` at each layer (computed in float64, returned float32).

        ``other``: a PersonaVector of a compatible model, a ``[n_layers, d]`` tensor, or a ``[d]`` tensor used at
        every layer. Layers where either side has zero norm give 0.
        """
        if isinstance(other, PersonaVector):
            other.model.check_compatible(self.model, what=f"the vector {other.name!r}")
            o = other.vector
        elif isinstance(other, torch.Tensor):
            o = other.detach().to("cpu")
            if o.ndim == 1 and o.shape[0] == self.model.hidden_size:
                o = o.expand(self.model.n_layers, -1)
            elif tuple(o.shape) != tuple(self.vector.shape):
                raise InvalidInputError(
                    f"cannot compare with a tensor of shape {tuple(o.shape)}; expected [d={self.model.hidden_size}] "
                    f"or [n_layers={self.model.n_layers}, d={self.model.hidden_size}]"
                )
        else:
            raise InvalidInputError(f"other must be a PersonaVector or a tensor, got {type(other).__name__}")
        return cosine64(self.vector, o).to(torch.float32)

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file (atomically): one float32 tensor ``vector [num_layers, hidden_size]`` and string
        metadata (model identity, ``name``, ``method``, ``n_samples`` and the extras)."""
        md = dict(self.metadata)
        md.update(self.model.to_metadata())
        md.update({"name": self.name, "method": self.method, "n_samples": str(self.n_samples)})
        return save_tensors(path, {"vector": self.vector}, md, kind=VECTOR_KIND)

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: Any = None, strict_name: bool = True) -> PersonaVector:
        """Read a file written by :meth:`save`, bit-exactly. With ``model`` (a Backend, LoadedModel or ModelInfo),
        refuse a vector made for a model of another shape (or name, if ``strict_name``) with ModelMismatchError."""
        tensors, md = load_tensors(path, kind=VECTOR_KIND)
        info = ModelInfo.from_metadata(md)
        if model is not None:
            info.check_compatible(model_info(model), what=f"the vector in {path}", strict_name=strict_name)
        if "vector" not in tensors:
            raise FileFormatError(f"{path}: no 'vector' tensor (found {sorted(tensors)})")
        t = _check_file_tensor(tensors["vector"], info, path, "vector")
        name, method, n = _required_meta(md, path)
        return cls(
            vector=t, model=info, name=name, method=method, n_samples=n,
            metadata={k: v for k, v in md.items() if k not in _VECTOR_KEYS},
        )


def _check_file_tensor(t: torch.Tensor, info: ModelInfo, path: Any, name: str) -> torch.Tensor:
    if t.dtype != torch.float32:
        raise FileFormatError(f"{path}: tensor {name!r} is {t.dtype}, expected float32")
    if tuple(t.shape) != (info.n_layers, info.hidden_size):
        raise FileFormatError(
            f"{path}: tensor {name!r} has shape {tuple(t.shape)} but the metadata says "
            f"num_layers={info.n_layers}, hidden_size={info.hidden_size}; the file is corrupt or was edited"
        )
    return t


def _required_meta(md: dict[str, str], path: Any) -> tuple[str, str, int]:
    missing = [k for k in ("name", "method", "n_samples") if k not in md]
    if missing:
        raise FileFormatError(f"{path}: metadata lacks {missing}")
    try:
        n = int(md["n_samples"])
    except ValueError as e:
        raise FileFormatError(f"{path}: metadata n_samples={md['n_samples']!r} is not an integer") from e
    return md["name"], md["method"], n


@dataclass
class VectorSet:
    """Several named directions made the same way on the same model (one per role, say).

    ``vectors``: ordered ``{name: [n_layers, d]}`` (float32, every model layer). ``n_samples``: ``{name: count}``
    (names left out count 0). ``families``: optional ``{name: family}`` (e.g. a role's category).
    """

    vectors: dict[str, torch.Tensor]
    model: ModelInfo
    method: str
    n_samples: dict[str, int] = field(default_factory=dict)
    families: dict[str, str] = field(default_factory=dict)
    name: str = "vector_set"
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.model, ModelInfo):
            self.model = model_info(self.model)
        if not isinstance(self.vectors, Mapping) or not self.vectors:
            raise InvalidInputError("a VectorSet needs a non-empty mapping {name: [n_layers, d] tensor}")
        vecs = {}
        for k, v in self.vectors.items():
            if not isinstance(k, str) or not k or k == "__metadata__":
                raise InvalidInputError(f"vector names must be non-empty strings (not '__metadata__'), got {k!r}")
            vecs[k] = _as_layer_tensor(v.vector if isinstance(v, PersonaVector) else v, self.model, f"the vector {k!r}")
        self.vectors = vecs
        unknown = sorted(set(self.n_samples) - set(vecs))
        if unknown:
            raise InvalidInputError(f"n_samples names {unknown} that are not in the set")
        ns = {}
        for k in vecs:
            n = self.n_samples.get(k, 0)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise InvalidInputError(f"n_samples[{k!r}] must be a non-negative integer, got {n!r}")
            ns[k] = n
        self.n_samples = ns
        unknown = sorted(set(self.families) - set(vecs))
        if unknown:
            raise InvalidInputError(f"families names {unknown} that are not in the set")
        self.families = {k: str(self.families[k]) for k in vecs if k in self.families}
        self.metadata = _check_metadata(self.metadata, _SET_KEYS, f"the vector set {self.name!r}")

    @classmethod
    def from_vectors(cls, vectors: Sequence[PersonaVector], *, method: str | None = None,
                     families: Mapping[str, str] | None = None, name: str = "vector_set") -> VectorSet:
        """Gather PersonaVectors of one model (unique names) into a set. ``method`` defaults to their common
        method, or ``"mixed"``."""
        vectors = list(vectors)
        if not vectors:
            raise InvalidInputError("no vectors to gather")
        first = vectors[0]
        names = [v.name for v in vectors]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InvalidInputError(f"vector names must be unique in a set; repeated: {dup}")
        for v in vectors[1:]:
            v.model.check_compatible(first.model, what=f"the vector {v.name!r}")
        methods = {v.method for v in vectors}
        return cls(
            vectors={v.name: v.vector for v in vectors}, model=first.model,
            method=method or (methods.pop() if len(methods) == 1 else "mixed"),
            n_samples={v.name: v.n_samples for v in vectors}, families=dict(families or {}), name=name,
        )

    def __repr__(self) -> str:
        return (
            f"VectorSet(name={self.name!r}, n={len(self)}, method={self.method!r}, n_layers={self.model.n_layers}, "
            f"d={self.model.hidden_size}, model={self.model.name!r})"
        )

    @property
    def names(self) -> list[str]:
        return list(self.vectors)

    def __len__(self) -> int:
        return len(self.vectors)

    def __iter__(self) -> Iterator[str]:
        return iter(self.vectors)

    def __contains__(self, name: object) -> bool:
        return name in self.vectors

    def __getitem__(self, name: str) -> PersonaVector:
        if name not in self.vectors:
            raise KeyError(f"{name!r} is not in this set; it holds {self.names[:10]}{' ...' if len(self) > 10 else ''}")
        md = {"family": self.families[name]} if name in self.families else {}
        return PersonaVector(vector=self.vectors[name], model=self.model, name=name, method=self.method,
                             n_samples=self.n_samples[name], metadata=md)

    def items(self) -> Iterator[tuple[str, PersonaVector]]:
        for k in self.vectors:
            yield k, self[k]

    def stack(self) -> torch.Tensor:
        """``[n, n_layers, d]`` the vectors in order."""
        return torch.stack(list(self.vectors.values()))

    def subset(self, names: Sequence[str]) -> VectorSet:
        """The named members, in the given order."""
        missing = [n for n in names if n not in self.vectors]
        if missing:
            raise InvalidInputError(f"not in this set: {missing}")
        return VectorSet(
            vectors={n: self.vectors[n] for n in names}, model=self.model, method=self.method,
            n_samples={n: self.n_samples[n] for n in names},
            families={n: self.families[n] for n in names if n in self.families},
            name=self.name, metadata=dict(self.metadata),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file (atomically): one float32 ``[num_layers, hidden_size]`` tensor per member, named
        by the member's name; metadata holds the model identity, ``method``, ``name``, ``names`` (order, JSON list),
        ``n_samples`` and ``families`` (JSON objects) and the extras."""
        md = dict(self.metadata)
        md.update(self.model.to_metadata())
        md.update({
            "name": self.name, "method": self.method, "names": json_meta(self.names),
            "n_samples": json_meta(self.n_samples), "families": json_meta(self.families),
        })
        return save_tensors(path, dict(self.vectors), md, kind=VECTOR_SET_KIND)

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: Any = None, strict_name: bool = True) -> VectorSet:
        """Read a file written by :meth:`save`, bit-exactly (see :meth:`PersonaVector.load` for ``model``)."""
        tensors, md = load_tensors(path, kind=VECTOR_SET_KIND)
        info = ModelInfo.from_metadata(md)
        if model is not None:
            info.check_compatible(model_info(model), what=f"the vector set in {path}", strict_name=strict_name)
        for k in ("name", "method"):
            if k not in md:
                raise FileFormatError(f"{path}: metadata lacks {k!r}")
        names = parse_json_meta(md, "names", path)
        n_samples = parse_json_meta(md, "n_samples", path)
        families = parse_json_meta(md, "families", path) if "families" in md else {}
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise FileFormatError(f"{path}: metadata 'names' must be a JSON list of strings")
        if sorted(names) != sorted(tensors):
            raise FileFormatError(
                f"{path}: metadata names {sorted(names)} do not match the stored tensors {sorted(tensors)}"
            )
        if not isinstance(n_samples, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                      for v in n_samples.values()):
            raise FileFormatError(f"{path}: metadata 'n_samples' must be a JSON object of integers")
        if not isinstance(families, dict):
            raise FileFormatError(f"{path}: metadata 'families' must be a JSON object")
        vecs = {n: _check_file_tensor(tensors[n], info, path, n) for n in names}
        try:
            return cls(vectors=vecs, model=info, method=md["method"], n_samples=n_samples, families=families,
                       name=md["name"], metadata={k: v for k, v in md.items() if k not in _SET_KEYS})
        except InvalidInputError as e:
            raise FileFormatError(f"{path}: {e}") from e


__all__ = ["PersonaVector", "VectorSet", "VECTOR_KIND", "VECTOR_SET_KIND"]
