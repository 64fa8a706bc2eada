"""Shared-register removal: when two trait vectors point the same way (impolite and humorous both push a casual
register on SmolLM2, cosine +0.42), take the shared part out of both.

:func:`remove_shared_register` finds the pairs whose cosine at the layer they are used exceeds ``threshold``,
joins overlapping pairs into groups, and purifies every member against the rest of its group with
:func:`~persona_axes.vectors.purify.purify`:

- default (``direction=None``): symmetric (Löwdin) purification. For a pair of unit vectors ``a``, ``b`` with
  cosine ``c`` this is exactly the removal of the part of their shared direction ``s = (a + b) / |a + b|`` that
  makes them orthogonal: writing ``a = sqrt((1 + c) / 2) s + sqrt((1 - c) / 2) e`` (``e`` the unit difference),
  the result is ``(s + e) / sqrt(2)``, so each keeps its own part and as much of the shared one, and neither is
  privileged. Projecting ``s`` out *completely* is not offered: inside the pair's plane that leaves ``a`` and
  ``b`` anti-parallel (both along ``+-e``), i.e. cosine -1 instead of 0. From two vectors alone the true register
  direction is not identifiable (it may leave their plane); pass it as ``direction`` if you have it.
- ``direction=`` a PersonaVector of the register (e.g. measured from activations): it is projected out of every
  member of every flagged pair (sequential purification against it), and nothing else is changed.

Vectors in no flagged pair are returned unchanged. Cosines and kept norms are reported at each vector's layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from persona_axes.core import check_float, cosine64
from persona_axes.errors import InvalidInputError
from persona_axes.vectors.containers import PersonaVector, VectorSet
from persona_axes.vectors.purify import purify

__all__ = ["SharedPair", "SharedRegisterResult", "remove_shared_register"]


@dataclass(frozen=True)
class SharedPair:
    """A flagged pair: cosine of ``a`` and ``b`` at ``layer`` (whichever of their layers gave the larger one)
    before and after purification."""

    a: str
    b: str
    layer: int
    cos_before: float
    cos_after: float


@dataclass(frozen=True)
class SharedRegisterResult:
    """Outcome of :func:`remove_shared_register`. ``vectors``: every input by name (purified ones with method
    ``"purified"`` and ``purified_against`` in their metadata). ``pairs``: the flagged pairs; ``groups``: the
    sets purified together. ``kept_norm[name]``: ``|purified| / |original|`` at that vector's layer (= the cosine
    of purified and original; 1.0 for untouched vectors). ``shared_cos[name]``: ``(before, after)`` cosine with its
    group's shared direction (unit mean of the members' unit vectors at that layer, or ``direction``)."""

    vectors: dict[str, PersonaVector]
    pairs: tuple[SharedPair, ...]
    groups: tuple[tuple[str, ...], ...]
    kept_norm: dict[str, float]
    shared_cos: dict[str, tuple[float, float]]
    threshold: float
    mode: str

    @property
    def purified(self) -> tuple[str, ...]:
        return tuple(n for g in self.groups for n in g)

    def to_records(self) -> list[dict]:
        """One dict per flagged pair: ``a, b, layer, cos_before, cos_after, kept_norm_a, kept_norm_b``."""
        return [{"a": p.a, "b": p.b, "layer": p.layer, "cos_before": p.cos_before, "cos_after": p.cos_after,
                 "kept_norm_a": self.kept_norm[p.a], "kept_norm_b": self.kept_norm[p.b]} for p in self.pairs]


def _as_dict(vectors) -> dict[str, PersonaVector]:
    if isinstance(vectors, VectorSet):
        vectors = [vectors[n] for n in vectors.names]
    if isinstance(vectors, Mapping):
        items = list(vectors.items())
    elif isinstance(vectors, Sequence) and not isinstance(vectors, (str, bytes)):
        items = [(getattr(v, "name", None), v) for v in vectors]
    else:
        raise InvalidInputError(f"vectors must be a mapping or list of PersonaVectors, got {type(vectors).__name__}")
    out: dict[str, PersonaVector] = {}
    for name, v in items:
        if not isinstance(v, PersonaVector):
            raise InvalidInputError(f"vectors must be PersonaVectors, got {type(v).__name__} for {name!r}")
        if name in out:
            raise InvalidInputError(f"two vectors are named {name!r}; names must be distinct")
        if out:
            v.model.check_compatible(next(iter(out.values())).model, what=f"the vector {name!r}")
        out[name] = v
    if len(out) < 2:
        raise InvalidInputError(f"need at least two vectors to compare, got {len(out)}")
    return out


def _layers(layer, names: list[str], n_layers: int) -> dict[str, int]:
    if isinstance(layer, Mapping):
        missing = [n for n in names if n not in layer]
        if missing:
            raise InvalidInputError(f"layer= has no entry for {missing}; give one layer per vector or one int")
        got = {n: layer[n] for n in names}
    else:
        got = {n: layer for n in names}
    for n, L in got.items():
        if isinstance(L, bool) or not isinstance(L, int) or not 0 <= L < n_layers:
            raise InvalidInputError(f"layer for {n!r} must be an int in [0, {n_layers}), got {L!r}")
    return got


def _cos(a: PersonaVector, b: PersonaVector, L: int) -> float:
    return float(cosine64(a.vector[L], b.vector[L]))


def remove_shared_register(vectors: Mapping[str, PersonaVector] | Sequence[PersonaVector] | VectorSet, *,
                           layer: int | Mapping[str, int], threshold: float = 0.3,
                           direction: PersonaVector | None = None) -> SharedRegisterResult:
    """Purify the trait vectors that share a direction (see the module docstring).

    ``layer``: the layer each vector is used at (one int, or ``{name: layer}``); a pair is flagged when its
    cosine at either member's layer is above ``threshold`` (in (-1, 1); negative cosines are never flagged).
    Purification itself acts on every layer (a PersonaVector covers them all).
    """
    vecs = _as_dict(vectors)
    names = list(vecs)
    threshold = check_float(threshold, "threshold", minimum=-1.0, maximum=1.0)
    info = vecs[names[0]].model
    at = _layers(layer, names, info.n_layers)
    if direction is not None:
        if not isinstance(direction, PersonaVector):
            raise InvalidInputError(f"direction must be a PersonaVector, got {type(direction).__name__}")
        direction.model.check_compatible(info, what="the register direction")

    flagged: list[tuple[str, str, int, float]] = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            L = max({at[a], at[b]}, key=lambda L: _cos(vecs[a], vecs[b], L))
            c = _cos(vecs[a], vecs[b], L)
            if c > threshold:
                flagged.append((a, b, L, c))
    groups: list[set[str]] = []  # connected components of the flagged pairs
    for a, b, _, _ in flagged:
        hit = [g for g in groups if a in g or b in g]
        merged = set().union({a, b}, *hit)
        groups = [g for g in groups if g not in hit] + [merged]
    groups_t = tuple(tuple(n for n in names if n in g) for g in groups)

    out = dict(vecs)
    kept = {n: 1.0 for n in names}
    shared_cos: dict[str, tuple[float, float]] = {}
    for g in groups_t:
        for n in g:
            if direction is None:
                res = purify(vecs[n], [vecs[m] for m in g if m != n], mode="symmetric")
            else:
                res = purify(vecs[n], [direction], mode="sequential")
            out[n] = res.vector
            kept[n] = float(res.self_cosine[at[n]])
        for n in g:
            L = at[n]
            if direction is None:
                units = torch.stack([vecs[m].vector[L].double() / vecs[m].vector[L].double().norm() for m in g])
                s = units.mean(0)
            else:
                s = direction.vector[L].double()
            shared_cos[n] = (float(cosine64(vecs[n].vector[L], s)), float(cosine64(out[n].vector[L], s)))
    pairs = tuple(SharedPair(a, b, L, c, _cos(out[a], out[b], L)) for a, b, L, c in flagged)
    return SharedRegisterResult(vectors=out, pairs=pairs, groups=groups_t, kept_norm=kept, shared_cos=shared_cos,
                                threshold=threshold, mode="symmetric" if direction is None else "direction")
