"""Purification: remove from a persona vector what it shares with other directions, layer by layer.

Two modes (:func:`purify`): ``"sequential"`` (Gram-Schmidt: the component orthogonal to the span of the others)
and ``"symmetric"`` (Löwdin: the closest orthonormal set, no member privileged). Float64 inside; the result is a
:class:`~persona_axes.vectors.containers.PersonaVector` with method ``"purified"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from persona_axes.core import cosine64
from persona_axes.errors import InvalidInputError
from persona_axes.files import json_meta
from persona_axes.vectors.containers import PersonaVector, VectorSet

PURIFY_MODES = ("sequential", "symmetric")

#: Below this norm (relative to the largest input norm at that layer) a Gram-Schmidt residual counts as zero: the
#: inputs are float32, so anything smaller is rounding noise.
_REL_TOL = 1e-6


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


__all__ = ["PurifyResult", "PURIFY_MODES", "purify"]
