"""Persona directions: trait (contrastive) vectors, role vectors, and purification against other directions.

A :class:`PersonaVector` holds one ``[d]`` direction per model layer, ``vector[L]`` for "layer L" = the output of
decoder block L (0-based), always covering *every* layer of the model. A :class:`VectorSet` holds several such
vectors made the same way (one per role, say).

Trait vectors contrast activations with and without a trait (``pos`` / ``neg``):

- ``"mean_diff"`` (:func:`mean_difference`): ``mean(pos) - mean(neg)`` per layer — the method of both papers.
- ``"pca_diff"`` (:func:`pca_difference`): the first right singular vector of the *paired* differences
  ``pos[i] - neg[i]`` (uncentred, so a shared shift dominates it).
- ``"probe"`` (:func:`probe_direction`): the normal of a per-layer logistic-regression probe.

Conventions for the last two, so all three methods come in the same units: the direction is unit-normalised,
its sign is chosen so that it has a positive dot product with the mean difference, and it is then scaled to the
*norm of the mean difference* at that layer. Only the direction differs between methods; the length is that of
``mean_diff``.

All arithmetic is done in float64; results are stored as float32 on the CPU.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from persona_axes.activations.container import Activations, mean64, model_info, nonfinite_rows
from persona_axes.core import ModelInfo
from persona_axes.errors import FileFormatError, InvalidInputError, LayerOutOfRangeError
from persona_axes.files import json_meta, load_tensors, parse_json_meta, save_tensors

VECTOR_KIND = "vector"
VECTOR_SET_KIND = "vector_set"
TRAIT_METHODS = ("mean_diff", "pca_diff", "probe")
PURIFY_MODES = ("sequential", "symmetric")

_FILE_KEYS = frozenset({"format", "kind", "format_version", "package_version", "model", "num_layers",
                        "hidden_size", "layer_site"})
_VECTOR_KEYS = _FILE_KEYS | {"name", "method", "n_samples"}
_SET_KEYS = _VECTOR_KEYS | {"names", "families"}

#: Below this norm (relative to the largest input norm at that layer) a Gram-Schmidt residual counts as zero: the
#: inputs are float32, so anything smaller is rounding noise.
_REL_TOL = 1e-6


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
    if not -n_layers <= layer < n_layers:
        raise LayerOutOfRangeError(
            f"layer {layer} is out of range: this model has {n_layers} layers "
            f"(0..{n_layers - 1}, or negative from the end)"
        )
    return layer % n_layers


def cosine64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine along the last axis in float64; 0 where either side has zero norm."""
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    num = (a * b).sum(-1)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(num))


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
        v = self.vector.to(torch.float64) if layer is None else self.at(layer).to(torch.float64)[None]
        n = v.norm(dim=-1, keepdim=True)
        zero = (n.squeeze(-1) == 0).nonzero().flatten().tolist()
        if zero:
            where = [layer] if layer is not None else zero
            raise InvalidInputError(f"the vector {self.name!r} has zero norm at layer(s) {where}; it has no direction")
        u = (v / n).to(torch.float32)
        return u if layer is None else u[0]

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


# ---------------------------------------------------------------------------------------------------------------
# From activations
# ---------------------------------------------------------------------------------------------------------------


def _all_layers(acts: Activations, what: str) -> torch.Tensor:
    """``[n_items, n_model_layers, d]`` (the stored float32, not copied when already in order) with row ``L`` =
    layer ``L``; checks coverage, emptiness and finiteness. Callers reduce in float64 layer by layer."""
    if not isinstance(acts, Activations):
        raise InvalidInputError(f"{what} must be Activations, got {type(acts).__name__}")
    n_layers = acts.model.n_layers
    missing = [L for L in range(n_layers) if L not in acts.layers]
    if missing:
        raise InvalidInputError(
            f"{what} lack layer(s) {missing}; a persona vector covers every layer of the model, so capture "
            "the activations with layers=None"
        )
    if len(acts) == 0:
        raise InvalidInputError(f"{what} hold no items")
    v = acts.values
    if list(acts.layers) != list(range(n_layers)):
        v = v[:, [acts.layers.index(L) for L in range(n_layers)]]
    bad = len(nonfinite_rows(v))
    if bad:
        raise InvalidInputError(
            f"{what} hold NaN or infinite values in {bad} of {len(acts)} rows; drop those items (e.g. with "
            "acts.select(...)) or recapture them"
        )
    return v


def _pair(pos: Activations, neg: Activations) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(pos, Activations) or not isinstance(neg, Activations):
        raise InvalidInputError("pos and neg must both be Activations")
    neg.model.check_compatible(pos.model, what="the negative activations")
    return _all_layers(pos, "the positive activations"), _all_layers(neg, "the negative activations")


def _mean_diff64(p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return mean64(p) - mean64(n)


def _orient_and_scale(u: torch.Tensor, md: torch.Tensor) -> torch.Tensor:
    """Per layer: unit-normalise ``u [L, d]``, flip so ``u . md >= 0``, scale to ``|md|``."""
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    sign = torch.where((u * md).sum(-1) < 0, -1.0, 1.0).to(u.dtype)
    return u * (sign * md.norm(dim=-1))[:, None]


def mean_difference(pos: Activations, neg: Activations) -> torch.Tensor:
    """``[n_layers, d]`` float32: ``mean(pos) - mean(neg)`` at every model layer. Counts may differ.

    Both sets must come from the same model and be captured at every layer (``layers=None``)."""
    p, n = _pair(pos, neg)
    return _mean_diff64(p, n).to(torch.float32)


def pca_difference(pos: Activations, neg: Activations) -> torch.Tensor:
    """``[n_layers, d]`` float32: the top principal direction of the paired differences ``pos[i] - neg[i]``.

    Items are paired by index, so both sets must have the same length (the same question answered with and
    without the trait, say). The direction is the first right singular vector of the *uncentred* difference
    matrix ``[n_pairs, d]`` — the direction that captures the most of the differences' mean square, which a
    shared shift dominates (centring would discard exactly that shift). Its sign is chosen to agree with the mean
    difference and it is scaled to the norm of the mean difference, so it is in the same units as
    :func:`mean_difference`.
    """
    p, n = _pair(pos, neg)
    if p.shape[0] != n.shape[0]:
        raise InvalidInputError(
            f"unequal pos/neg sets ({p.shape[0]} vs {n.shape[0]} items): pca_diff pairs pos[i] with neg[i]; "
            "pass paired sets of equal length or use method='mean_diff'"
        )
    top = torch.empty(p.shape[1], p.shape[2], dtype=torch.float64)
    for L in range(p.shape[1]):
        diffs = p[:, L].double() - n[:, L].double()  # [n_pairs, d]
        top[L] = torch.linalg.svd(diffs, full_matrices=False)[2][0]
    return _orient_and_scale(top, _mean_diff64(p, n)).to(torch.float32)


def probe_direction(pos: Activations, neg: Activations, C: float = 1.0, *, max_iter: int = 2000) -> torch.Tensor:
    """``[n_layers, d]`` float32: the normal of a logistic-regression probe (pos = 1, neg = 0) at each layer.

    Preprocessing: at each layer the pooled activations are centred and divided by *one* scalar, the root mean
    per-feature variance, so ``C`` means the same at every layer and in every model (residual norms grow with
    depth). Features are deliberately not standardised one by one: that would make the L2 penalty anisotropic
    and tilt the direction towards low-variance dimensions; a single scale keeps the probe rotation-equivariant,
    so its normal in raw activation space is simply the fitted weight vector. The probe is sklearn's
    ``LogisticRegression(C=C, class_weight="balanced")`` (balanced, so unequal counts are fine). Its normal is
    unit-normalised, its sign aligned with the mean difference, and scaled to the mean difference's norm.

    Note: with far fewer items than dimensions the classes are separable and the probe leans towards the
    max-margin direction, which is noisier than the mean difference; smaller ``C`` pulls it towards the mean
    difference (the limit ``C -> 0``).
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    if not C > 0:
        raise InvalidInputError(f"C must be positive, got {C!r}")
    p, n = _pair(pos, neg)
    y = [1] * p.shape[0] + [0] * n.shape[0]
    out = torch.empty(p.shape[1], p.shape[2], dtype=torch.float64)
    for L in range(p.shape[1]):
        x = torch.cat([p[:, L], n[:, L]]).double().numpy()  # [N, d]
        mu = x.mean(0)
        scale = float(np.sqrt(x.var(0).mean()))
        if not scale > 0:
            raise InvalidInputError(f"all activations are identical at layer {L}; a probe cannot separate them")
        clf = LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter)
        clf.fit((x - mu) / scale, y)
        w = torch.from_numpy(clf.coef_[0] / scale)
        if not w.norm() > 0:
            raise InvalidInputError(
                f"the probe at layer {L} learned all-zero weights (too strong regularisation?); increase C"
            )
        out[L] = w
    return _orient_and_scale(out, _mean_diff64(p, n)).to(torch.float32)


def trait_vector(pos: Activations, neg: Activations, method: str = "mean_diff", *, name: str = "trait",
                 C: float = 1.0, metadata: Mapping[str, str] | None = None) -> PersonaVector:
    """A trait's :class:`PersonaVector` from activations with (``pos``) and without (``neg``) the trait.

    ``method``: ``"mean_diff"`` (:func:`mean_difference`), ``"pca_diff"`` (:func:`pca_difference`, paired sets)
    or ``"probe"`` (:func:`probe_direction`, regularisation ``C``). All three have the mean difference's norm
    at each layer and point towards ``pos``. ``n_samples`` is ``len(pos) + len(neg)``; the metadata records
    ``n_pos`` and ``n_neg``.
    """
    if method not in TRAIT_METHODS:
        raise InvalidInputError(f"method={method!r} is not one of {', '.join(TRAIT_METHODS)}")
    if method == "mean_diff":
        v = mean_difference(pos, neg)
    elif method == "pca_diff":
        v = pca_difference(pos, neg)
    else:
        v = probe_direction(pos, neg, C=C)
    md = dict(metadata or {})
    md.update({"n_pos": str(len(pos)), "n_neg": str(len(neg))})
    if method == "probe":
        md["C"] = repr(float(C))
    return PersonaVector(vector=v, model=pos.model, name=name, method=method, n_samples=len(pos) + len(neg),
                         metadata=md)


def mean_vector(acts: Activations, name: str, method: str = "default_mean") -> PersonaVector:
    """The mean activation over all items at every layer, e.g. the default Assistant's (``method="default_mean"``)."""
    v = _all_layers(acts, f"the activations for {name!r}")
    return PersonaVector(vector=mean64(v).to(torch.float32), model=acts.model, name=name,
                         method=method, n_samples=v.shape[0])


def role_vectors(acts: Activations, key: str = "role", min_count: int = 1,
                 families: Mapping[str, str] | None = None, *, name: str = "roles") -> VectorSet:
    """One mean activation per value of ``item[key]`` (method ``"role_mean"``), in order of first appearance.

    Groups with fewer than ``min_count`` items are skipped with a warning naming them and their counts; items
    without ``key`` are skipped with a warning. Values are used as names via ``str()``. ``families`` (optional
    ``{name: family}``) is kept for the names that remain. Raises :class:`InvalidInputError` if no group is left.
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise InvalidInputError(f"min_count must be a positive integer, got {min_count!r}")
    v = _all_layers(acts, "the role activations")
    groups: dict[str, list[int]] = {}
    no_key = 0
    for i, it in enumerate(acts.items):
        if key not in it or it[key] is None:
            no_key += 1
            continue
        groups.setdefault(str(it[key]), []).append(i)
    if not groups:
        raise InvalidInputError(f"no item has metadata key {key!r}; pass key= the field that names the role")
    if no_key:
        warnings.warn(f"{no_key} of {len(acts)} items have no {key!r} and were skipped", stacklevel=2)
    small = {g: len(ix) for g, ix in groups.items() if len(ix) < min_count}
    if small:
        listed = ", ".join(f"{g!r} ({c})" for g, c in small.items())
        warnings.warn(f"skipped {len(small)} group(s) with fewer than min_count={min_count} items: {listed}",
                      stacklevel=2)
    kept = {g: ix for g, ix in groups.items() if g not in small}
    if not kept:
        raise InvalidInputError(
            f"no group of {key!r} has at least min_count={min_count} items (largest has "
            f"{max(len(ix) for ix in groups.values())}); lower min_count or collect more items"
        )
    fam = {g: families[g] for g in kept if g in families} if families else {}
    return VectorSet(
        vectors={g: v[ix].mean(0, dtype=torch.float64).to(torch.float32) for g, ix in kept.items()},
        model=acts.model, method="role_mean", n_samples={g: len(ix) for g, ix in kept.items()}, families=fam, name=name,
        metadata={"key": key},
    )


# ---------------------------------------------------------------------------------------------------------------
# Purification
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PurifyResult:
    """Outcome of :func:`purify`.

    ``vector``: the purified PersonaVector (method ``"purified"``). ``cos_before[name]`` / ``cos_after[name]``:
    ``[n_layers]`` cosine of the original / purified vector with the *original* other ``name``.
    ``partners[name]``: ``[n_layers, d]`` the other as orthogonalised by the procedure (Gram-Schmidt order in
    ``"sequential"`` mode, Löwdin partner in ``"symmetric"`` mode); the purified vector is orthogonal to every
    partner in both modes, and ``cos_partners[name]`` records that. ``self_cosine``: ``[n_layers]``
    cos(purified, original) — how much of the trait's own direction is kept.
    """

    vector: PersonaVector
    cos_before: dict[str, torch.Tensor]
    cos_after: dict[str, torch.Tensor]
    mode: str
    self_cosine: torch.Tensor
    partners: dict[str, torch.Tensor]
    cos_partners: dict[str, torch.Tensor]


def _gram_schmidt(rows: torch.Tensor, ref_norm: float) -> tuple[torch.Tensor, list[int]]:
    """Orthonormal basis of ``rows [k, d]`` (float64) in order, twice-orthogonalised; dependent rows dropped.
    Returns the basis ``[m, d]`` and the indices of the kept rows."""
    basis: list[torch.Tensor] = []
    kept = []
    for i, r in enumerate(rows):
        q = r.clone()
        for _ in range(2):
            for b in basis:
                q = q - (q @ b) * b
        n = q.norm()
        if n > _REL_TOL * max(ref_norm, float(r.norm()), 1e-300):
            basis.append(q / n)
            kept.append(i)
    d = rows.shape[-1]
    return (torch.stack(basis) if basis else rows.new_zeros(0, d)), kept


def purify(vector: PersonaVector, others: Sequence[PersonaVector] | VectorSet,
           mode: str = "sequential") -> PurifyResult:
    """Remove from ``vector`` what it shares with ``others``, layer by layer (float64 inside).

    ``"sequential"`` (Gram-Schmidt): the others are orthonormalised among themselves in the given order (one
    that lies in the span of earlier ones adds nothing and is skipped), then the vector's projection on each is
    removed. The result is the component of ``vector`` orthogonal to the span of all others, so
    ``|cos(purified, other)| ~ 0`` for every original other, and it is the vector in that complement closest to
    the original (largest ``self_cosine``). The result does not depend on the order of ``others``; the order only
    fixes the Gram-Schmidt ``partners``.

    ``"symmetric"`` (Löwdin): the unit-normalised set ``[vector, *others]`` with Gram matrix ``S`` is replaced by
    ``S^{-1/2} U``, the orthonormal set closest to it in least squares with no member privileged, and the vector's
    member is kept. It is orthogonal to the *orthogonalised* others (``partners``), not to the original ones:
    ``cos_after`` with the originals is reported but not zero. Every member gives up a share of the overlap, so
    the trait always keeps at least as much of its own direction as in sequential mode (``self_cosine`` is
    ``(S^{1/2})_00`` here against ``(S^{-1})_00^{-1/2}`` there; the power-mean inequality orders them). For one
    other at angle ``t``, the vector turns by ``(90° - t) / 2`` instead of ``90° - t``. The set must be linearly
    independent.

    Scale in both modes: the purified direction ``u`` (unit) is returned as ``(original . u) u`` — the original
    vector's own component along it (in sequential mode exactly the Gram-Schmidt residual).
    Raises :class:`InvalidInputError` where the vector lies (numerically) in the span of the others.
    """
    if mode not in PURIFY_MODES:
        raise InvalidInputError(f"mode={mode!r} is not one of {', '.join(PURIFY_MODES)}")
    if not isinstance(vector, PersonaVector):
        raise InvalidInputError(f"vector must be a PersonaVector, got {type(vector).__name__}")
    if isinstance(others, VectorSet):
        others = [others[n] for n in others.names]
    others = list(others)
    if not others:
        raise InvalidInputError("no other vectors to purify against")
    names = []
    for o in others:
        if not isinstance(o, PersonaVector):
            raise InvalidInputError(f"others must be PersonaVectors, got {type(o).__name__}")
        o.model.check_compatible(vector.model, what=f"the vector {o.name!r}")
        names.append(o.name)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidInputError(f"the other vectors need distinct names; repeated: {dup}")

    v = vector.vector.to(torch.float64)  # [L, d]
    O = torch.stack([o.vector for o in others]).to(torch.float64).transpose(0, 1)  # [L, k, d]
    n_layers, k, d = O.shape
    u = torch.zeros_like(v)
    partners = torch.zeros_like(O)
    for L in range(n_layers):
        vn = float(v[L].norm())
        if vn == 0:
            raise InvalidInputError(f"the vector {vector.name!r} is zero at layer {L}; there is nothing to purify")
        if mode == "sequential":
            ref = max(vn, float(O[L].norm(dim=-1).max()))
            basis, kept = _gram_schmidt(O[L], ref)
            partners[L, kept] = basis
            r = v[L].clone()
            for _ in range(2):  # twice is enough for full float64 orthogonality
                r = r - (basis @ r) @ basis
            rn = r.norm()
            if not rn > _REL_TOL * vn:
                raise InvalidInputError(
                    f"at layer {L} the vector {vector.name!r} lies in the span of the others; purifying would "
                    "leave nothing — drop some of the others"
                )
            u[L] = r / rn
        else:
            M = torch.cat([v[L][None], O[L]])  # [k+1, d]
            norms = M.norm(dim=-1)
            zero = [names[i - 1] for i in range(1, k + 1) if norms[i] == 0]
            if zero:
                raise InvalidInputError(f"the other vector(s) {zero} are zero at layer {L}; drop them")
            U = M / norms[:, None]
            evals, evecs = torch.linalg.eigh(U @ U.T)
            if not evals.min() > 1e-10:
                raise InvalidInputError(
                    f"at layer {L} the vector and the others are linearly dependent (smallest Gram eigenvalue "
                    f"{float(evals.min()):.2e}); symmetric orthogonalisation needs independent vectors — drop "
                    "redundant ones or use mode='sequential'"
                )
            W = (evecs * evals.rsqrt()) @ evecs.T @ U  # S^{-1/2} U: orthonormal rows
            u[L] = W[0] / W[0].norm()
            partners[L] = W[1:]
    purified = (v * u).sum(-1, keepdim=True) * u
    pv = PersonaVector(
        vector=purified.to(torch.float32), model=vector.model, name=vector.name, method="purified",
        n_samples=vector.n_samples,
        metadata={**vector.metadata, "purified_from": vector.method, "purify_mode": mode,
                  "purified_against": json_meta(names)},
    )
    p32 = pv.vector
    return PurifyResult(
        vector=pv,
        cos_before={nm: cosine64(v, O[:, i]).to(torch.float32) for i, nm in enumerate(names)},
        cos_after={nm: cosine64(p32, O[:, i]).to(torch.float32) for i, nm in enumerate(names)},
        mode=mode,
        self_cosine=cosine64(p32, v).to(torch.float32),
        partners={nm: partners[:, i].to(torch.float32) for i, nm in enumerate(names)},
        cos_partners={nm: cosine64(p32, partners[:, i]).to(torch.float32) for i, nm in enumerate(names)},
    )


__all__ = [
    "PersonaVector",
    "VectorSet",
    "PurifyResult",
    "TRAIT_METHODS",
    "mean_difference",
    "pca_difference",
    "probe_direction",
    "trait_vector",
    "mean_vector",
    "role_vectors",
    "purify",
]
