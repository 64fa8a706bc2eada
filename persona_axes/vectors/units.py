"""Steering units, defined once: how a coefficient becomes the vector added at each layer. Used by
:class:`~persona_axes.steering.interventions.Steer`, by control-vector exports that bake a steer in, by the CLI
(``--coef-unit``), the demo and the notebooks.

At layer L (the output of decoder block L, 0-based) a steer adds ``coef * scale[L] * v[L]``, ``v[L]`` the
direction's row at layer L, with ``scale`` from :func:`unit_scales`. Writing ``u[L] = v[L] / |v[L]|``:

- ``"raw"``: ``scale[L] = 1``; the row as stored.
- ``"unit"``: ``scale[L] = 1 / |v[L]|``; ``coef`` in activation units along ``u[L]``.
- ``"rel"``: ``scale[L] = rel[L] / |v[L]|``, where ``rel[L]`` is the mean, over reference (default-assistant)
  replies, of the L2 norm of each reply's **mean** residual activation at layer L (the activations captured with
  ``reduce="mean"`` over the reply; :func:`reference_norms`). ``coef = 0.1`` adds 10% of a typical reply-mean
  norm. This is the only definition: per-token norms are **not** used (on SmolLM2-135M at layer 20 they average
  ~245 against ~194 for reply means, a 26% larger push for the same coefficient), and activations reduced any
  other way are refused as a reference.
- ``"sd"``: ``scale[L] = sd[L] / |v[L]|``, where ``sd[L]`` is the standard deviation (ddof=1) of the
  default-assistant replies' projections onto ``u[L]`` (reply-mean activations again). ``coef = 1`` moves a
  reply by one spread of ordinary assistant replies along the direction.
- ``"gap"``: ``scale[L] = gap[L] / |v[L]|``, where ``gap[L] = mean(positive @ u[L]) - mean(negative @ u[L])``,
  the distance between the direction's two groups along it: for the Assistant Axis, default-assistant replies
  minus role replies; for a trait, replies with the trait minus replies without. ``coef = 1`` moves a reply by
  the whole gap. For a plain mean difference of the two groups (the shipped axis and trait vectors) ``gap[L]``
  equals ``|v[L]|`` when the same replies are used, so ``"gap"`` is then ``"raw"``.

Where the numbers come from: :func:`unit_stats` measures ``rel``, ``sd`` and ``gap`` once into a
:class:`UnitStats`, which :func:`with_unit_stats` stores in the vector's file metadata (key ``unit_stats``, one JSON
value under the file's checksum) and :func:`stats_of` reads back. A steer in ``"rel"``/``"sd"``/``"gap"`` uses
the vector's stored stats; passing ``reference=`` (Activations of default-assistant replies, reduced ``"mean"``)
measures ``rel`` and ``sd`` from them instead, which also works for vectors saved without stats. ``"gap"`` needs
the two groups, so it needs stored stats (or :func:`unit_stats` with ``positive``/``negative``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from persona_axes.activations.container import Activations
from persona_axes.core import ModelInfo, Unit, as_choice, unit
from persona_axes.errors import FileFormatError, InvalidInputError
from persona_axes.vectors.containers import PersonaVector

STATS_KEY = "unit_stats"
"""The vector-file metadata key holding a :class:`UnitStats` as JSON."""


def _floats(values: Any, field: str) -> tuple[float, ...]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise InvalidInputError(f"UnitStats.{field} must be a list of numbers (NaN or None where unknown)")
    out = []
    for i, x in enumerate(values):
        if x is None:
            out.append(math.nan)
        elif isinstance(x, bool) or not isinstance(x, (int, float)):
            raise InvalidInputError(f"UnitStats.{field}[{i}] must be a number or None, got {x!r}")
        elif math.isinf(x):
            raise InvalidInputError(f"UnitStats.{field}[{i}] is infinite; use NaN (None) for unknown")
        else:
            out.append(float(x))
    return tuple(out)


@dataclass(frozen=True)
class UnitStats:
    """What one unit is at each layer for one direction: ``rel``, ``sd``, ``gap`` are ``[n_layers]`` floats (NaN
    where unknown, e.g. a layer the reference lacks or no groups given for ``gap``); see the module docstring.
    ``reference``: what they were measured on, in words (e.g. ``"48 default-assistant replies"``)."""

    rel: tuple[float, ...]
    sd: tuple[float, ...]
    gap: tuple[float, ...]
    reference: str = ""

    def __post_init__(self):
        for f in ("rel", "sd", "gap"):
            object.__setattr__(self, f, _floats(getattr(self, f), f))
        n = {len(self.rel), len(self.sd), len(self.gap)}
        if len(n) != 1 or 0 in n:
            raise InvalidInputError(f"UnitStats needs rel, sd and gap of one length (n_layers), got lengths "
                                    f"{len(self.rel)}, {len(self.sd)}, {len(self.gap)}")
        if not isinstance(self.reference, str):
            raise InvalidInputError(f"UnitStats.reference must be a string, got {self.reference!r}")

    @property
    def n_layers(self) -> int:
        return len(self.rel)

    def of(self, unit_: Unit | str) -> tuple[float, ...]:
        """The ``[n_layers]`` values of ``unit_`` (``"rel"``, ``"sd"`` or ``"gap"``)."""
        u = as_choice(Unit, unit_, "unit")
        if u not in (Unit.REL, Unit.SD, Unit.GAP):
            raise InvalidInputError(f"UnitStats holds rel, sd and gap, not {u.value!r}")
        return getattr(self, u.value)

    def to_json(self) -> str:
        """One JSON object (NaN written as null), the value stored under :data:`STATS_KEY`."""
        def enc(xs):
            return [None if math.isnan(x) else x for x in xs]
        return json.dumps({"rel": enc(self.rel), "sd": enc(self.sd), "gap": enc(self.gap),
                           "reference": self.reference}, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, where: str = "unit_stats") -> UnitStats:
        """Parse :meth:`to_json`'s output; FileFormatError naming ``where`` if it is not that."""
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or sorted(d) != ["gap", "reference", "rel", "sd"]:
                raise ValueError("expected the keys rel, sd, gap, reference")
            return cls(rel=d["rel"], sd=d["sd"], gap=d["gap"], reference=d["reference"])
        except (ValueError, TypeError, InvalidInputError) as e:
            raise FileFormatError(f"{where}: the {STATS_KEY!r} metadata is not valid unit statistics ({e}); "
                                  "re-measure them with persona_axes.vectors.units.unit_stats") from e


def _check_reference(acts: Any, info: ModelInfo, what: str) -> Activations:
    if not isinstance(acts, Activations):
        raise InvalidInputError(f"{what} must be Activations (reply-mean activations), got {type(acts).__name__}")
    acts.model.check_compatible(info, what=f"the {what}")
    if acts.reduction != "mean":
        raise InvalidInputError(
            f"the {what} are reduced {acts.reduction!r}, but the steering units are defined on reply means: capture "
            "the replies with reduce='mean' (per-token norms are larger, so the same coefficient would push harder)"
        )
    if len(acts) == 0:
        raise InvalidInputError(f"the {what} hold no items; capture some default-assistant replies")
    return acts


def reference_norms(reference: Activations | torch.Tensor, info: ModelInfo) -> torch.Tensor:
    """``[n_layers]`` ``rel`` per layer: the mean L2 norm of reply-mean activations (NaN at layers they lack), from
    Activations reduced ``"mean"``; or a given ``[n_layers]`` tensor of norms, checked for shape."""
    if isinstance(reference, Activations):
        acts = _check_reference(reference, info, "reference activations")
        norms = torch.full((info.n_layers,), float("nan"))
        norms[list(acts.layers)] = acts.values.to(torch.float64).norm(dim=-1).mean(0).to(torch.float32)
        return norms
    if not isinstance(reference, torch.Tensor):
        raise InvalidInputError(f"reference must be Activations or a [{info.n_layers}] tensor of norms, got "
                                f"{type(reference).__name__}")
    t = reference.detach().to("cpu", torch.float32)
    if t.shape != (info.n_layers,):
        raise InvalidInputError(f"reference norms must have shape [{info.n_layers}], got {tuple(t.shape)}")
    return t


def _projections(acts: Activations, vector: PersonaVector) -> dict[int, torch.Tensor]:
    """``{L: [n_items] float64}`` projections onto ``u[L]`` at the layers ``acts`` hold (non-zero rows only)."""
    out = {}
    for j, L in enumerate(acts.layers):
        v = vector.vector[L].to(torch.float64)
        if float(v.norm()) > 0:
            out[L] = acts.values[:, j].to(torch.float64) @ (v / v.norm())
    return out


def unit_stats(vector: PersonaVector, default_acts: Activations, positive: Activations | None = None,
               negative: Activations | None = None, reference_name: str = "") -> UnitStats:
    """Measure ``rel``, ``sd`` (from ``default_acts``, default-assistant replies reduced ``"mean"``) and ``gap``
    (``positive`` minus ``negative`` along ``u[L]``; ``positive`` defaults to ``default_acts`` when only
    ``negative`` is given, as for the Assistant Axis) for ``vector``. NaN where a layer is missing, the row is
    zero, or (``gap``) no groups are given. ``reference_name`` describes the data (default: the counts)."""
    if not isinstance(vector, PersonaVector):
        raise InvalidInputError(f"vector must be a PersonaVector, got {type(vector).__name__}")
    info = vector.model
    default_acts = _check_reference(default_acts, info, "default activations")
    if len(default_acts) < 2:
        raise InvalidInputError("'sd' needs at least 2 default-assistant replies; capture more")
    if positive is None and negative is not None:
        positive = default_acts
    if (positive is None) != (negative is None):
        raise InvalidInputError("gap needs both groups: pass negative= (and positive=, default the default replies)")
    n = info.n_layers
    rel = reference_norms(default_acts, info).tolist()
    sd = [math.nan] * n
    for L, p in _projections(default_acts, vector).items():
        sd[L] = float(p.std(unbiased=True))
    gap = [math.nan] * n
    desc = f"{len(default_acts)} default-assistant replies"
    if positive is not None:
        pos = _projections(_check_reference(positive, info, "positive activations"), vector)
        neg = _projections(_check_reference(negative, info, "negative activations"), vector)
        for L in sorted(set(pos) & set(neg)):
            gap[L] = float(pos[L].mean() - neg[L].mean())
        desc += f"; gap: {len(positive)} positive minus {len(negative)} negative replies"
    if not isinstance(reference_name, str):
        raise InvalidInputError(f"reference_name must be a string, got {reference_name!r}")
    return UnitStats(rel=rel, sd=sd, gap=gap, reference=reference_name or desc)


def with_unit_stats(vector: PersonaVector, stats: UnitStats) -> PersonaVector:
    """A copy of ``vector`` with ``stats`` in its metadata (key :data:`STATS_KEY`), saved with it by
    :meth:`PersonaVector.save` under the file's checksum."""
    if not isinstance(vector, PersonaVector) or not isinstance(stats, UnitStats):
        raise InvalidInputError("with_unit_stats takes a PersonaVector and a UnitStats")
    if stats.n_layers != vector.n_layers:
        raise InvalidInputError(f"the unit statistics cover {stats.n_layers} layers but the vector "
                                f"{vector.name!r} has {vector.n_layers}; measure them for this vector")
    return replace(vector, metadata={**vector.metadata, STATS_KEY: stats.to_json()})


def stats_of(vector: Any) -> UnitStats | None:
    """The :class:`UnitStats` stored in a PersonaVector's metadata, or None (also for a bare tensor)."""
    md = getattr(vector, "metadata", None)
    if not isinstance(md, Mapping) or STATS_KEY not in md:
        return None
    stats = UnitStats.from_json(md[STATS_KEY], f"the vector {getattr(vector, 'name', '')!r}")
    n = getattr(getattr(vector, "model", None), "n_layers", stats.n_layers)
    if stats.n_layers != n:
        raise FileFormatError(f"the vector {vector.name!r} stores unit statistics for {stats.n_layers} layers "
                              f"but has {n}; re-measure them with unit_stats")
    return stats


def _missing(u: Unit, what: str) -> InvalidInputError:
    how = ("pass reference= (Activations of default-assistant replies, reduce='mean'), or store the vector's "
           "unit statistics (with_unit_stats(vector, unit_stats(vector, default_acts, ...)))")
    if u == Unit.GAP:
        how = ("store the vector's unit statistics measured with both groups (with_unit_stats(vector, "
               "unit_stats(vector, default_acts, positive=..., negative=...))); reference= alone cannot give a gap")
    return InvalidInputError(f"unit={u.value!r} needs the {u.value} of the {what} per layer, which it does not "
                             f"store: {how}")


def layer_units(unit_: Unit | str, info: ModelInfo, rows: Mapping[int, torch.Tensor], vector: Any = None,
                reference: Any = None, what: str = "steering vector") -> torch.Tensor | None:
    """``[n_layers]`` float64 size of one ``unit_`` per layer (None for ``"raw"``/``"unit"``) for the directions
    ``rows`` (``{L: [d]}``): measured on ``reference`` for ``"rel"`` and ``"sd"`` when given (Activations of
    default-assistant replies, reduced ``"mean"``; a ``[n_layers]`` tensor is taken as the values themselves),
    else read from ``vector``'s stored :class:`UnitStats`. InvalidInputError saying what is missing and how to
    supply it."""
    u = as_choice(Unit, unit_, "unit")
    if u in (Unit.RAW, Unit.UNIT):
        if reference is not None:
            raise InvalidInputError(f"reference= is only used with unit='rel' or 'sd', not unit={u.value!r}; drop it "
                                    "or pass one of those units")
        return None
    if reference is None:
        stats = stats_of(vector)
        if stats is None:
            raise _missing(u, what)
        return torch.tensor(stats.of(u), dtype=torch.float64)
    if u == Unit.GAP:
        raise InvalidInputError("unit='gap' is the gap between the direction's two groups, which reference= cannot "
                                "give: drop reference= and use a vector with stored unit statistics (with_unit_stats)")
    if u == Unit.REL or isinstance(reference, torch.Tensor):
        return reference_norms(reference, info).to(torch.float64)
    acts = _check_reference(reference, info, "reference activations")
    if len(acts) < 2:
        raise InvalidInputError("unit='sd' needs at least 2 reference replies; capture more")
    out = torch.full((info.n_layers,), float("nan"), dtype=torch.float64)
    for j, L in enumerate(acts.layers):
        if L in rows and float(rows[L].to(torch.float64).norm()) > 0:
            uL = rows[L].to(torch.float64) / rows[L].to(torch.float64).norm()
            out[L] = (acts.values[:, j].to(torch.float64) @ uL).std(unbiased=True)
    return out


_SIZE_NAMES = {Unit.REL: "reference norm", Unit.SD: "reference spread (sd)", Unit.GAP: "gap"}


def unit_scales(rows: Mapping[int, torch.Tensor], unit_: Unit | str, sizes: torch.Tensor | None = None,
                what: str = "steering vector") -> dict[int, float]:
    """``{L: scale[L]}`` for the rows ``{L: [d] tensor}`` (see the module docstring); ``sizes`` (``[n_layers]``,
    from :func:`layer_units`: rel, sd or gap per layer) is needed for ``"rel"``, ``"sd"`` and ``"gap"``. A size that
    is missing, non-finite or not positive is refused (it would steer by nothing, or the opposite way), as is a
    zero-norm row for every unit but ``"raw"``."""
    u = as_choice(Unit, unit_, "unit")
    if u == Unit.RAW:
        return {L: 1.0 for L in rows}
    if u != Unit.UNIT and sizes is None:
        raise _missing(u, what)
    out = {}
    for L, v in rows.items():
        unit(v, what, L)  # refuses a zero-norm or non-finite row, which has no direction to scale
        length = float(v.to(torch.float64).norm())
        if u == Unit.UNIT:
            out[L] = 1.0 / length
            continue
        n = float(sizes[L])
        if n != n:
            raise InvalidInputError(f"no {u.value} is known at layer {L} for the {what}: the reference "
                                    "activations (or the stored statistics) lack that layer; capture it first")
        if not (0 < n < float("inf")):
            raise InvalidInputError(
                f"{_SIZE_NAMES[u]} at layer {L} is {n}: it must be positive and finite (for 'rel' a mean residual "
                "norm, for 'gap' the positive group above the negative one); pass activations of this model or "
                "re-measure the vector's unit statistics"
            )
        out[L] = n / length
    return out


def steer_rows(rows: Mapping[int, torch.Tensor], coef: Any, unit_: Unit | str,
               reference: Activations | torch.Tensor | None, info: ModelInfo,
               what: str = "steering vector", vector: Any = None) -> dict[int, torch.Tensor]:
    """``{L: coef * scale[L] * v[L]}`` in float64: exactly what a steer adds at each layer, for one float
    ``coef``. ``vector`` (the PersonaVector the rows come from) supplies stored :class:`UnitStats`."""
    if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not abs(float(coef)) < float("inf"):
        raise InvalidInputError(f"coef must be a finite number, got {coef!r}")
    sizes = layer_units(unit_, info, rows, vector, reference, what)
    scales = unit_scales(rows, unit_, sizes, what)
    return {L: float(coef) * scales[L] * v.to(torch.float64) for L, v in rows.items()}


__all__ = ["STATS_KEY", "UnitStats", "unit_stats", "with_unit_stats", "stats_of", "reference_norms", "layer_units",
           "unit_scales", "steer_rows"]
