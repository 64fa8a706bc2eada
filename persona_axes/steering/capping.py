"""Activation capping: a calibrated floor (or ceiling) on the projection onto an axis, kept during inference.

:func:`calibrate_cap` takes thresholds from reference activations (a percentile of their projections onto the unit
axis, per layer) into a :class:`CapConfig`, which saves to and loads from a safetensors file (``kind="capping"``).
:class:`ActivationCap` is the intervention that applies it, built on the hook base of
:mod:`persona_axes.steering.interventions` (same positions, composition and placement rules).

Floor: ``h + relu(tau - h.u) u``; ceiling: ``h - relu(h.u - tau) u``. The components orthogonal to the axis are
untouched, and activations already in range are unchanged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from persona_axes.activations.container import Activations, model_info
from persona_axes.activations.readers.base import as_backend
from persona_axes.core import CapKind, ModelInfo, Positions, as_choice, check_float, check_int, normalize_layers, unit
from persona_axes.errors import FileFormatError, InvalidInputError
from persona_axes.files import RESERVED_KEYS, json_meta, load_tensors, parse_json_meta, save_tensors
from persona_axes.steering.interventions import Intervention, layer_vectors, name_of

#: Metadata keys a capping file writes itself (on top of the keys every file carries); never taken as extras.
CAP_KEYS = frozenset({"cap_kind", "percentile", "reference", "name", "method", "capped_layers"})


#: What ``extra["calibrated_on"]`` says for each capture reduction of the reference activations.
CALIBRATED_ON = {"all": "per_token", "mean": "reply_mean", "last": "last_token"}


def cap_kind(value: Any, arg: str = "kind") -> CapKind:
    """``value`` as a :class:`~persona_axes.core.CapKind` (a member or ``"floor"``/``"ceiling"``), else
    :class:`InvalidInputError` naming ``arg``."""
    try:
        return as_choice(CapKind, value, arg)
    except InvalidInputError:
        raise InvalidInputError(f"{arg} must be 'floor' or 'ceiling', got {value!r}") from None


def check_percentile(value: Any, arg: str = "percentile") -> float:
    """A finite number in [0, 100], else :class:`InvalidInputError` naming ``arg``."""
    p = check_float(value, arg)
    if not 0.0 <= p <= 100.0:
        raise InvalidInputError(f"{arg} must be in [0, 100], got {p}")
    return p


def _check_path(path: Any) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")


@dataclass
class CapConfig:
    """A calibrated activation cap: a unit axis and a threshold per capped layer.

    ``kind="floor"`` keeps the projection onto the axis >= threshold (the Assistant-Axis use: stop drifting away
    from the assistant end); ``"ceiling"`` keeps it <= threshold. The fields are checked on construction, and again
    before the config is saved or applied (so a threshold edited to NaN afterwards is refused, not used).
    """

    axis: dict[int, torch.Tensor]  # layer -> unit [d] float32
    thresholds: dict[int, float]
    kind: CapKind | str
    model: ModelInfo
    percentile: float | None = None
    reference: str = ""
    name: str = "assistant_axis"
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self._check(normalise=True)

    def validate(self) -> CapConfig:
        """Check every field again (types, ranges, finiteness, matching layers, unit-length axis rows); returns self.
        Run before the config is saved or applied, so fields edited after construction are checked too."""
        return self._check(normalise=False)

    def _check(self, normalise: bool) -> CapConfig:
        if not isinstance(self.model, ModelInfo):
            raise InvalidInputError(f"model must be a ModelInfo, got {type(self.model).__name__}")
        self.kind = cap_kind(self.kind)
        if not isinstance(self.axis, Mapping) or not isinstance(self.thresholds, Mapping):
            raise InvalidInputError("axis and thresholds must be dicts {layer: ...}, got "
                                    f"{type(self.axis).__name__} and {type(self.thresholds).__name__}")
        n = self.model.n_layers
        axis = {check_int(L, "axis layer", minimum=0, maximum=n - 1): a for L, a in self.axis.items()}
        thresholds = {check_int(L, "thresholds layer", minimum=0, maximum=n - 1): t for L, t in self.thresholds.items()}
        if set(axis) != set(thresholds) or not axis:
            raise InvalidInputError("axis and thresholds must cover the same, non-empty set of layers, got "
                                    f"{sorted(axis)} and {sorted(thresholds)}")
        for L, t in thresholds.items():
            if isinstance(t, float) and not math.isfinite(t):
                raise InvalidInputError(f"the threshold at layer {L} is {t}; thresholds must be finite numbers")
        self.thresholds = {L: check_float(t, f"thresholds[{L}]") for L, t in thresholds.items()}
        for L, a in axis.items():
            if not isinstance(a, torch.Tensor) or a.dtype == torch.bool or a.is_complex():
                raise InvalidInputError(f"axis[{L}] must be a real tensor, got {type(a).__name__}")
            if a.shape != (self.model.hidden_size,):
                raise InvalidInputError(f"the axis at layer {L} has shape {tuple(a.shape)}, expected [{self.model.hidden_size}]")
            a = a.detach().to("cpu", torch.float32)
            u = unit(a, "capping axis", L)  # refuses NaN, infinities and a zero norm
            if normalise:
                a = u
            elif not abs(float(a.double().norm()) - 1.0) <= 1e-5:
                raise InvalidInputError(f"the axis at layer {L} is not a unit vector any more (norm "
                                        f"{float(a.norm()):.6g}); build the CapConfig again to normalise it")
            axis[L] = a
        self.axis = axis
        if self.percentile is not None:
            self.percentile = check_percentile(self.percentile)
        for arg in ("reference", "name"):
            if not isinstance(getattr(self, arg), str):
                raise InvalidInputError(f"{arg} must be a string, got {type(getattr(self, arg)).__name__}")
        if not isinstance(self.extra, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                          for k, v in self.extra.items()):
            raise InvalidInputError("extra must be a dict of strings to strings (it is saved as file metadata)")
        clash = sorted((RESERVED_KEYS | CAP_KEYS) & set(self.extra))
        if clash:
            raise InvalidInputError(f"extra uses reserved metadata keys {clash}; rename them")
        return self

    @property
    def layers(self) -> list[int]:
        return sorted(self.axis)

    def save(self, path: str | os.PathLike) -> Any:
        """Write the config to a safetensors file (atomically, with the file checksum); returns the path."""
        _check_path(path)
        self.validate()
        layers = self.layers
        md = self.model.to_metadata()
        md.update(self.extra)
        md.update({"cap_kind": self.kind.value, "percentile": "" if self.percentile is None else repr(self.percentile),
                   "reference": self.reference, "name": self.name, "method": "activation_cap",
                   "capped_layers": json_meta(layers)})
        return save_tensors(path, {
            "axis": torch.stack([self.axis[L] for L in layers]),
            "thresholds": torch.tensor([self.thresholds[L] for L in layers], dtype=torch.float32),
            "layers": torch.tensor(layers, dtype=torch.int64),
        }, md, kind="capping")

    @classmethod
    def from_official(cls, path: str | os.PathLike, **kwargs: Any) -> CapConfig:
        """One experiment of the Assistant Axis release's ``capping_config.pt`` as a floor on the unit axis; the
        keyword arguments (``experiment=``, ``axis=``, ``model=``) and the conversion are those of
        :func:`persona_axes.export.official.import_official_capping`."""
        from persona_axes.export.official import import_official_capping

        return cls(**import_official_capping(path, **kwargs).cap_config_fields())

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: Any = None) -> CapConfig:
        """Read a config saved by :meth:`save`; any invalid field in the file is a :class:`FileFormatError` naming
        it. With ``model``, also check that the config was made for it."""
        _check_path(path)
        tensors, md = load_tensors(path, kind="capping")
        try:
            info = ModelInfo.from_metadata(md)
        except (KeyError, ValueError) as e:
            raise FileFormatError(f"{path}: invalid model identity in the metadata ({e})") from e
        if model is not None:
            info.check_compatible(model_info(model), what=f"the capping config {path}")
        try:
            layers = tensors["layers"].tolist()
            axis, thr = tensors["axis"], tensors["thresholds"]
        except KeyError as e:
            raise FileFormatError(f"{path}: missing tensor {e}") from e
        if layers != parse_json_meta(md, "capped_layers", path) or axis.shape != (len(layers), info.hidden_size) \
                or thr.shape != (len(layers),):
            raise FileFormatError(f"{path}: tensor shapes do not match the metadata")
        if "cap_kind" not in md:
            raise FileFormatError(f"{path}: the metadata has no cap_kind (floor or ceiling)")
        pct = md.get("percentile", "")
        try:
            return cls(axis={L: axis[i] for i, L in enumerate(layers)},
                       thresholds={L: float(thr[i]) for i, L in enumerate(layers)},
                       kind=md["cap_kind"], model=info, percentile=float(pct) if pct else None,
                       reference=md.get("reference", ""), name=md.get("name", ""),
                       extra={k: v for k, v in md.items() if k not in RESERVED_KEYS | CAP_KEYS})
        except (InvalidInputError, ValueError) as e:
            raise FileFormatError(f"{path}: invalid capping config: {e}") from e


def calibrate_cap(axis: Any, reference: Activations, layers: int | Iterable[int], *, percentile: float = 25.0,
                  kind: CapKind | str = "floor", reference_name: str = "") -> CapConfig:
    """Thresholds from reference activations: the ``percentile`` of their projections onto the unit axis, per layer.

    E.g. ``calibrate_cap(axis, default_assistant_acts, range(16, 24), percentile=25)`` caps at the 25th percentile
    of ordinary assistant responses. The cap acts on every token, so per-token reference activations
    (``capture(..., reduce="all")``: one row per reply token) give a floor on the scale it acts on; reply means
    (``reduce="mean"``) spread far less, so a percentile of them sits higher within the per-token spread and also
    edits ordinary tokens. What the rows were is recorded in ``extra["calibrated_on"]`` (``"per_token"``,
    ``"reply_mean"``, or the capture's reduction name) and in the default reference text.
    """
    percentile = check_percentile(percentile)
    kind = cap_kind(kind)
    if not isinstance(reference_name, str):
        raise InvalidInputError(f"reference_name must be a string, got {type(reference_name).__name__}")
    if not isinstance(reference, Activations):
        raise InvalidInputError(f"reference must be Activations (from capture(), e.g. of default-assistant replies), "
                                f"got {type(reference).__name__}; they carry the layers and model the cap needs")
    info = reference.model
    layer_list = normalize_layers(layers, info.n_layers)
    vecs = layer_vectors(axis, info, layer_list, "capping axis")
    units = {L: unit(vecs[L], "capping axis", L) for L in layer_list}
    if len(reference) == 0:
        raise InvalidInputError("the reference activations are empty")
    thresholds = {}
    for L in layer_list:
        proj = reference.at(L) @ units[L]
        thresholds[L] = float(torch.quantile(proj.double(), percentile / 100.0))
        if not math.isfinite(thresholds[L]):
            raise InvalidInputError(f"the reference activations hold NaN or infinite values at layer {L}")
    calibrated_on = CALIBRATED_ON.get(reference.reduction, reference.reduction)
    what = "tokens (per-token projections)" if calibrated_on == "per_token" else f"items ({calibrated_on})"
    return CapConfig(axis=units, thresholds=thresholds, kind=kind, model=info, percentile=percentile,
                     reference=reference_name or f"{len(reference)} reference {what}", name=name_of(axis, "axis"),
                     extra={"calibrated_on": calibrated_on})


class ActivationCap(Intervention):
    """Clamp the projection onto a unit axis at each capped layer, at every position (or chosen positions).

    Floor: ``h + relu(tau - h.u) u``; ceiling: ``h - relu(h.u - tau) u``. The components orthogonal to the axis are
    untouched, and activations already in range are unchanged. ``layers=None`` caps every layer of the config;
    ``positions=None`` takes the config's own ``extra["positions"]`` (a cap chosen for generated tokens only records
    ``"generated"`` there), else ``"all"``.
    """

    def __init__(self, model: Any, config: CapConfig, layers: int | Iterable[int] | None = None, *,
                 positions: Positions | str | None = None, prompt_length: int | None = None):
        if not isinstance(config, CapConfig):
            raise InvalidInputError(f"config must be a CapConfig (from calibrate_cap() or CapConfig.load()), got "
                                    f"{type(config).__name__}")
        config.validate()
        info = as_backend(model).info
        config.model.check_compatible(info, what="the capping config")
        if layers is None:
            layers = config.layers
        if positions is None:
            positions = as_choice(Positions, config.extra.get("positions", "all"), "the config's extra['positions']")
        super().__init__(model, layers, positions, prompt_length)
        missing = [L for L in self.layers if L not in config.axis]
        if missing:
            raise InvalidInputError(f"the capping config has no threshold for layers {missing}; it covers {config.layers}")
        self.config = config

    def edit(self, layer, hidden, mask):
        u = self.on_block(self.config.axis[layer], hidden)
        tau = self.config.thresholds[layer]
        proj = hidden @ u
        shift = (tau - proj).clamp_min(0) if self.config.kind == CapKind.FLOOR else -(proj - tau).clamp_min(0)
        delta = shift.unsqueeze(-1) * u
        if mask is not None:
            delta = delta * mask.to(hidden.dtype)
        return hidden + delta

    def record(self):
        return {**super().record(), "kind": self.config.kind.value, "percentile": self.config.percentile,
                "thresholds": {str(L): self.config.thresholds[L] for L in self.layers}}


__all__ = ["ActivationCap", "CapConfig", "calibrate_cap", "cap_kind", "check_percentile", "CAP_KEYS", "CALIBRATED_ON"]
