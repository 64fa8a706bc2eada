"""Steering units: how a coefficient becomes the vector added at each layer, defined once for
:class:`~persona_axes.steering.interventions.Steer` and for control-vector exports that bake a steer in.

At layer L the vector added is ``coef * scale[L] * v[L]`` (``v[L]`` the direction's row at layer L, the output
of decoder block L), with ``scale`` from :func:`unit_scales`:

- ``"raw"``: ``scale[L] = 1`` (the row as stored);
- ``"unit"``: ``scale[L] = 1 / |v[L]|`` (``coef`` in activation units along the unit direction);
- ``"rel"``: ``scale[L] = norm[L] / |v[L]|``, with ``norm[L]`` the mean residual norm at layer L measured on
  reference activations (:func:`reference_norms`), so ``coef = 0.3`` adds 30% of a typical activation's norm.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from persona_axes.activations.container import Activations
from persona_axes.core import ModelInfo, Unit, as_choice, unit
from persona_axes.errors import InvalidInputError


def reference_norms(reference: Activations | torch.Tensor, info: ModelInfo) -> torch.Tensor:
    """``[n_layers]`` mean residual norm per layer from reference activations (NaN at layers they lack), or a
    given ``[n_layers]`` tensor of norms, checked for shape (for ``unit="rel"``)."""
    if isinstance(reference, Activations):
        reference.model.check_compatible(info, what="the reference activations")
        norms = torch.full((info.n_layers,), float("nan"))
        norms[list(reference.layers)] = reference.values.norm(dim=-1).mean(0)
        return norms
    if not isinstance(reference, torch.Tensor):
        raise InvalidInputError(f"reference must be Activations or a [{info.n_layers}] tensor of norms, got "
                                f"{type(reference).__name__}")
    t = reference.detach().to("cpu", torch.float32)
    if t.shape != (info.n_layers,):
        raise InvalidInputError(f"reference norms must have shape [{info.n_layers}], got {tuple(t.shape)}")
    return t


def unit_scales(rows: Mapping[int, torch.Tensor], unit_: Unit | str, norms: torch.Tensor | None = None,
                what: str = "steering vector") -> dict[int, float]:
    """``{L: scale[L]}`` for the rows ``{L: [d] tensor}`` (see the module docstring). ``norms`` (``[n_layers]``,
    from :func:`reference_norms`) is needed for ``"rel"``; a norm that is missing, non-finite or not positive is
    refused (it would steer by nothing, or the opposite way), as is a zero-norm row for ``"unit"``/``"rel"``."""
    u = as_choice(Unit, unit_, "unit")
    if u == Unit.RAW:
        return {L: 1.0 for L in rows}
    if u == Unit.REL and norms is None:
        raise InvalidInputError("unit='rel' needs reference activations (or [n_layers] norms) via reference=")
    out = {}
    for L, v in rows.items():
        unit(v, what, L)  # refuses a zero-norm or non-finite row, which has no direction to scale
        length = float(v.to(torch.float64).norm())
        if u == Unit.UNIT:
            out[L] = 1.0 / length
            continue
        n = float(norms[L])
        if n != n:
            raise InvalidInputError(f"the reference activations hold no layer {L}; capture it first")
        if not (n > 0 and n < float("inf")):
            raise InvalidInputError(
                f"reference norm at layer {L} is {n}: it must be positive and finite (a mean residual norm); pass "
                "activations of this model (reference=Activations) or their [n_layers] norms"
            )
        out[L] = n / length
    return out


def steer_rows(rows: Mapping[int, torch.Tensor], coef: Any, unit_: Unit | str,
               reference: Activations | torch.Tensor | None, info: ModelInfo,
               what: str = "steering vector") -> dict[int, torch.Tensor]:
    """``{L: coef * scale[L] * v[L]}`` in float64: exactly what a steer adds at each layer, for one float
    ``coef``."""
    if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not abs(float(coef)) < float("inf"):
        raise InvalidInputError(f"coef must be a finite number, got {coef!r}")
    norms = reference_norms(reference, info) if reference is not None else None
    scales = unit_scales(rows, unit_, norms, what)
    return {L: float(coef) * scales[L] * v.to(torch.float64) for L, v in rows.items()}


__all__ = ["reference_norms", "unit_scales", "steer_rows"]
