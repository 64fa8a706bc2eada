"""What the evaluations compare: the model as it is, under the activation cap, or steered along the Assistant Axis.

:class:`AxisSetup` holds the vectors an evaluation needs (the axis, the layer it is read at, the capping config),
loaded from a vectors folder such as the shipped ``vectors/smollm2-135m-instruct`` (:func:`load_axis_setup`).
:class:`Condition` names one intervention setting and enters it as a context manager (``condition.apply(backend,
setup)``), so every evaluation runs the same code path under "baseline", "cap" or "steer:<coef>".

Steering coefficients are in raw residual units along the UNIT axis at the axis layer (``Steer(unit="unit")``): the
shipped SmolLM2 axis separates default-assistant replies (held-out mean projection +12.8 at layer 21) from role replies
(-16.5), a gap of about 29, so ``steer:-30`` pushes a reply about that gap away from the Assistant.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_axes.core import check_int
from persona_axes.files import DEFAULT_SHIPPED, shipped_vectors_dir
from persona_axes.errors import InvalidInputError
from persona_axes.steering.capping import ActivationCap, CapConfig
from persona_axes.steering.interventions import Steer
from persona_axes.vectors.containers import PersonaVector

__all__ = ["AxisSetup", "Condition", "load_axis_setup", "parse_conditions"]


@dataclass
class AxisSetup:
    """The Assistant Axis at ``layer`` (the layer projections are read at), the capping config, and the folder
    they came from (``folder / "traits"`` holds the trait vectors, if any)."""

    axis: PersonaVector
    layer: int
    cap: CapConfig
    folder: Path

    def describe(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "layer": self.layer, "cap_layers": self.cap.layers,
                "cap_floor_at_layer": self.cap.thresholds.get(self.layer), "cap_percentile": self.cap.percentile}

    @property
    def floor(self) -> float | None:
        """The cap's threshold at the axis layer (None when the cap does not cover it)."""
        return self.cap.thresholds.get(self.layer)


def load_axis_setup(model: Any = None, folder: str | os.PathLike | None = None, *, layer: int | None = None) -> AxisSetup:
    """Load ``assistant_axis.safetensors`` and ``capping.safetensors`` from ``folder`` (default: the vectors
    shipped for the embedded model). ``layer`` defaults to the folder's ``summary.json`` ``best_layer``, else the
    middle capped layer. ``model`` (a LoadedModel/Backend), when given, is checked against the files."""
    folder = shipped_vectors_dir(DEFAULT_SHIPPED) if folder is None else Path(folder)
    for name in ("assistant_axis.safetensors", "capping.safetensors"):
        if not (folder / name).is_file():
            raise InvalidInputError(f"{folder} has no {name}; point --vectors at a folder made by `persona-axes "
                                    "pipeline` (it writes both)")
    axis = PersonaVector.load(folder / "assistant_axis.safetensors", model=model)
    cap = CapConfig.load(folder / "capping.safetensors", model=model)
    if layer is None:
        summary = folder / "summary.json"
        best = json.loads(summary.read_text()).get("best_layer") if summary.is_file() else None
        layer = best if isinstance(best, int) and best in cap.thresholds else cap.layers[len(cap.layers) // 2]
    layer = check_int(layer, "layer", minimum=0, maximum=axis.model.n_layers - 1)
    return AxisSetup(axis=axis, layer=layer, cap=cap, folder=folder)


@dataclass(frozen=True)
class Condition:
    """One intervention setting: ``kind`` "baseline", "cap" (the setup's ActivationCap on all its layers) or
    "steer" (Steer along the axis at the axis layer by ``coef`` raw units; negative = away from the Assistant)."""

    kind: str
    coef: float | None = None

    def __post_init__(self):
        if self.kind not in ("baseline", "cap", "steer"):
            raise InvalidInputError(f"condition kind must be 'baseline', 'cap' or 'steer', got {self.kind!r}")
        if (self.kind == "steer") != (self.coef is not None):
            raise InvalidInputError("a 'steer' condition needs a coefficient (e.g. steer:-30); the others take none")

    @property
    def name(self) -> str:
        return f"steer:{self.coef:g}" if self.kind == "steer" else self.kind

    def apply(self, backend: Any, setup: AxisSetup) -> contextlib.AbstractContextManager:
        """The intervention as a context manager (a no-op for "baseline")."""
        if self.kind == "cap":
            return ActivationCap(backend, setup.cap)
        if self.kind == "steer":
            return Steer(backend, setup.axis, layers=[setup.layer], coef=float(self.coef), unit="unit")
        return contextlib.nullcontext()


def parse_conditions(specs: Sequence[str] | str) -> list[Condition]:
    """Conditions from strings: ``"baseline"``, ``"cap"``, ``"steer:-30"`` (comma-separated or a list)."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    out = []
    for spec in specs:
        if not isinstance(spec, str):
            raise InvalidInputError(f"a condition must be a string like 'baseline', 'cap' or 'steer:-30', got {spec!r}")
        kind, _, coef = spec.strip().partition(":")
        if kind == "steer":
            try:
                value = float(coef)
            except ValueError:
                raise InvalidInputError(f"steer condition {spec!r}: the coefficient must be a number, e.g. steer:-30") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise InvalidInputError(f"steer condition {spec!r}: the coefficient must be finite")
            out.append(Condition("steer", value))
        elif coef:
            raise InvalidInputError(f"condition {spec!r}: only 'steer' takes a value")
        else:
            out.append(Condition(kind))
    names = [c.name for c in out]
    if not out or len(set(names)) != len(names):
        raise InvalidInputError(f"give at least one condition, each once; got {names}")
    return out
