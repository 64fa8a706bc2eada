"""Interventions at inference: steering, ablation and activation capping, as context managers.

Each intervention registers PyTorch forward hooks on the decoder blocks of the loaded HF model and removes them
on exit, even when the body raises. The HF, TransformerLens (``TransformerBridge``) and nnsight backends all
drive the same HF modules (TL through a shadow that shares their parameters and hook dicts), so the hooks act in
every forward pass whichever framework runs it. One caveat: nnsight reads a block's ``.output`` *before* that
block's own torch forward hooks run, so an nnsight capture at a steered layer L shows the unsteered output at L
(the edit is visible from L + 1 on); the nnsight backend warns when that happens.

Positions (``positions=``), in the padded coordinates of the batch:

- ``"all"``: every position.
- ``"prompt"``: the prompt's positions (everything in the first forward pass of a ``generate``).
- ``"generated"``: the positions whose output predicts a generated token: the *last prompt position* (it yields
  the first generated token, so that token is steered too) and every generated token after it. With a KV cache
  the prompt is the first forward pass (no past); the prompt length is re-read at each forward pass without a
  past, so several ``generate`` calls inside one ``with`` work. To recompute the whole prefix each step yourself,
  pass ``prompt_length=`` explicitly.

Composition: enter several (``with Ablate(...), Steer(...):``); hooks run in the order they were entered, so
ablate-then-add is ``Ablate`` entered before ``Steer``.

Coefficients: a float, or a tensor ``[batch]`` with one coefficient per batch row (a whole sweep in one batched
``generate``). ``unit="raw"`` adds ``coef * vector`` as is; ``unit="rel"`` scales ``coef`` by the mean residual
norm at each layer, measured on reference activations (``reference=Activations`` or a ``[n_layers]`` tensor of
norms), so ``coef=1`` moves by one typical residual norm; ``unit="unit"`` normalises the vector first and adds
``coef`` in raw units along the unit direction. The effective per-layer scale is recorded in :meth:`record`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from persona_axes.activations.container import Activations, model_info
from persona_axes.activations.readers.base import Backend, as_backend
from persona_axes.core import ModelInfo
from persona_axes.errors import FileFormatError, InvalidInputError, ModelMismatchError
from persona_axes.files import json_meta, load_tensors, parse_json_meta, save_tensors

Positions = Literal["all", "prompt", "generated"]
POSITIONS = ("all", "prompt", "generated")
UNITS = ("raw", "unit", "rel")


def _block_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _replace_output(out: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *out[1:]) if isinstance(out, tuple) else hidden


def _as_layer_vectors(vector: Any, info: ModelInfo, layers: Sequence[int], what: str) -> dict[int, torch.Tensor]:
    """``{layer: [d] float32}`` from a PersonaVector, a ``[d]`` tensor or a ``[n_layers, d]`` tensor."""
    vec_info = getattr(vector, "model", None)
    if isinstance(vec_info, ModelInfo):
        vec_info.check_compatible(info, what=f"the {what} {getattr(vector, 'name', '')!r}".replace(" ''", ""))
        vector = vector.vector
    if not isinstance(vector, torch.Tensor):
        raise InvalidInputError(f"the {what} must be a PersonaVector or a tensor, got {type(vector).__name__}")
    v = vector.detach().to("cpu", torch.float32)
    if v.shape[-1] != info.hidden_size:
        raise ModelMismatchError(
            f"the {what} has size {v.shape[-1]} but the model's hidden size is {info.hidden_size}; "
            "use a vector computed on this model"
        )
    if v.ndim == 1:
        out = {L: v for L in layers}
    elif v.ndim == 2 and v.shape[0] == info.n_layers:
        out = {L: v[L] for L in layers}
    else:
        raise InvalidInputError(
            f"the {what} must have shape [d] or [n_layers={info.n_layers}, d], got {tuple(v.shape)}"
        )
    for L, x in out.items():
        if not torch.isfinite(x).all():
            raise InvalidInputError(f"the {what} holds NaN or infinite values at layer {L}")
    return out


def _name_of(obj: Any, default: str | None = None) -> str | None:
    name = getattr(obj, "name", None)  # PersonaVector.name; torch.Tensor.name is None
    return name if isinstance(name, str) else default


def _unit(v: torch.Tensor, what: str, layer: int) -> torch.Tensor:
    n = v.norm()
    if not n > 1e-12:
        raise InvalidInputError(f"the {what} has zero norm at layer {layer}; it has no direction to act along")
    return v / n


class Intervention:
    """Base class: hooks on chosen decoder blocks, installed on ``__enter__`` and removed on ``__exit__``."""

    def __init__(self, model: Any, layers: int | Iterable[int], positions: Positions = "all",
                 prompt_length: int | None = None):
        self.backend: Backend = as_backend(model)
        self.info = self.backend.info
        self.layers = self.backend.layers(layers)
        if positions not in POSITIONS:
            raise InvalidInputError(f"positions={positions!r} is not one of {', '.join(POSITIONS)}")
        if prompt_length is not None and (not isinstance(prompt_length, int) or prompt_length < 1):
            raise InvalidInputError(f"prompt_length must be a positive integer, got {prompt_length!r}")
        self.positions = positions
        self._fixed_prompt_length = prompt_length
        self._prompt_length: int | None = prompt_length
        self._past = 0
        self._handles: list[Any] = []
        self._cache: dict[tuple, torch.Tensor] = {}

    # -- subclass API -------------------------------------------------------------------------------------------
    def edit(self, layer: int, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Return the edited ``hidden [batch, seq, d]``; ``mask [1 or batch, seq, 1]`` selects positions (or None)."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """What this intervention does, as plain data (for reports and result metadata)."""
        return {"type": type(self).__name__, "layers": list(self.layers), "positions": self.positions}

    # -- plumbing -----------------------------------------------------------------------------------------------
    def _on(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        key = (id(t), like.device, like.dtype)
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = t.to(device=like.device, dtype=like.dtype)
        return got

    def _position_mask(self, hidden: torch.Tensor) -> torch.Tensor | None:
        if self.positions == "all":
            return None
        seq = hidden.shape[1]
        pos = torch.arange(self._past, self._past + seq, device=hidden.device)
        plen = self._prompt_length if self._prompt_length is not None else seq
        m = pos < plen if self.positions == "prompt" else pos >= plen - 1
        return m.view(1, seq, 1)

    def _pre_body(self, module, args, kwargs):
        pkv = kwargs.get("past_key_values")
        past = 0
        if pkv is not None and hasattr(pkv, "get_seq_length"):
            past = int(pkv.get_seq_length())
        self._past = past
        if past == 0 and self._fixed_prompt_length is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            emb = kwargs.get("inputs_embeds")
            ref = ids if ids is not None else emb
            self._prompt_length = int(ref.shape[1]) if ref is not None else None

    def _hook(self, layer: int):
        def hook(module, args, out):
            hidden = _block_output(out)
            new = self.edit(layer, hidden, self._position_mask(hidden))
            return _replace_output(out, new)

        return hook

    def __enter__(self):
        if self._handles:
            raise InvalidInputError(f"{type(self).__name__} is already active; an intervention can be entered once at a time")
        blocks = self.backend.loaded.layers.blocks
        try:
            self._handles.append(
                self.backend.loaded.layers.body.register_forward_pre_hook(self._pre_body, with_kwargs=True)
            )
            for L in self.layers:
                self._handles.append(blocks[L].register_forward_hook(self._hook(L)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this intervention installed (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._cache.clear()
        self._prompt_length = self._fixed_prompt_length
        self._past = 0

    @property
    def active(self) -> bool:
        return bool(self._handles)


def _coef_tensor(coef: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    c = torch.as_tensor(coef, dtype=torch.float32)
    if c.ndim > 1:
        raise InvalidInputError(f"coef must be a number or a [batch] tensor, got shape {tuple(c.shape)}")
    if not torch.isfinite(c).all():
        raise InvalidInputError("coef holds NaN or infinite values")
    return c


def reference_norms(reference: Activations | torch.Tensor, info: ModelInfo) -> torch.Tensor:
    """``[n_layers]`` mean residual norm per layer from reference activations (for ``unit="rel"``)."""
    if isinstance(reference, Activations):
        info_ref = reference.model
        info_ref.check_compatible(info, what="the reference activations")
        norms = torch.full((info.n_layers,), float("nan"))
        norms[list(reference.layers)] = reference.values.norm(dim=-1).mean(0)
        return norms
    t = torch.as_tensor(reference, dtype=torch.float32)
    if t.shape != (info.n_layers,):
        raise InvalidInputError(f"reference norms must have shape [{info.n_layers}], got {tuple(t.shape)}")
    return t


class Steer(Intervention):
    """Add ``coef * vector`` to the output of each chosen block (at the chosen positions).

    ``vector``: a PersonaVector, a ``[d]`` tensor (same at every layer) or ``[n_layers, d]``. ``coef``: a float
    or a ``[batch]`` tensor (one per row). See the module docstring for ``unit`` and ``positions``.
    """

    def __init__(self, model: Any, vector: Any, layers: int | Iterable[int], coef: float | Sequence[float] | torch.Tensor = 1.0,
                 *, unit: Literal["raw", "unit", "rel"] = "raw", reference: Activations | torch.Tensor | None = None,
                 positions: Positions = "all", prompt_length: int | None = None):
        super().__init__(model, layers, positions, prompt_length)
        if unit not in UNITS:
            raise InvalidInputError(f"unit={unit!r} is not one of {', '.join(UNITS)}")
        vecs = _as_layer_vectors(vector, self.info, self.layers, "steering vector")
        self.unit = unit
        self.coef = _coef_tensor(coef)
        self.scale: dict[int, float] = {}
        if unit == "rel":
            if reference is None:
                raise InvalidInputError("unit='rel' needs reference activations (or [n_layers] norms) via reference=")
            norms = reference_norms(reference, self.info)
            for L in self.layers:
                if not torch.isfinite(norms[L]):
                    raise InvalidInputError(f"the reference activations hold no layer {L}; capture it first")
                _unit(vecs[L], "steering vector", L)  # refuses a zero-norm vector, which rel units cannot scale
                self.scale[L] = float(norms[L]) / float(vecs[L].norm())
        elif unit == "unit":
            for L in self.layers:
                _unit(vecs[L], "steering vector", L)  # refuses a zero-norm vector
                self.scale[L] = 1.0 / float(vecs[L].norm())
        else:
            self.scale = {L: 1.0 for L in self.layers}
        self.vectors = {L: vecs[L] * self.scale[L] for L in self.layers}
        self.name = _name_of(vector)

    def edit(self, layer, hidden, mask):
        v = self._on(self.vectors[layer], hidden)
        c = self._on(self.coef, hidden)
        if c.ndim == 1:
            if c.shape[0] != hidden.shape[0]:
                raise InvalidInputError(
                    f"coef has {c.shape[0]} entries but the batch has {hidden.shape[0]} rows; pass one per row"
                )
            delta = c.view(-1, 1, 1) * v
        else:
            delta = c * v
        if mask is not None:
            delta = delta * mask.to(hidden.dtype)
        return hidden + delta

    def record(self):
        return {**super().record(), "vector": self.name, "coef": self.coef.tolist(), "unit": self.unit,
                "scale_per_layer": {str(L): s for L, s in self.scale.items()}}


class Ablate(Intervention):
    """Project the direction of ``vector`` out of each chosen block's output: ``h - (h . u) u``."""

    def __init__(self, model: Any, vector: Any, layers: int | Iterable[int], *, positions: Positions = "all",
                 prompt_length: int | None = None):
        super().__init__(model, layers, positions, prompt_length)
        vecs = _as_layer_vectors(vector, self.info, self.layers, "ablation vector")
        self.units = {L: _unit(vecs[L], "ablation vector", L) for L in self.layers}
        self.name = _name_of(vector)

    def edit(self, layer, hidden, mask):
        u = self._on(self.units[layer], hidden)
        delta = (hidden @ u).unsqueeze(-1) * u
        if mask is not None:
            delta = delta * mask.to(hidden.dtype)
        return hidden - delta

    def record(self):
        return {**super().record(), "vector": self.name}


@dataclass
class CapConfig:
    """A calibrated activation cap: a unit axis and a threshold per capped layer.

    ``kind="floor"`` keeps the projection onto the axis >= threshold (the Assistant-Axis use: stop drifting away
    from the assistant end); ``"ceiling"`` keeps it <= threshold.
    """

    axis: dict[int, torch.Tensor]  # layer -> unit [d] float32
    thresholds: dict[int, float]
    kind: Literal["floor", "ceiling"]
    model: ModelInfo
    percentile: float | None = None
    reference: str = ""
    name: str = "assistant_axis"
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in ("floor", "ceiling"):
            raise InvalidInputError(f"kind must be 'floor' or 'ceiling', got {self.kind!r}")
        if set(self.axis) != set(self.thresholds) or not self.axis:
            raise InvalidInputError("axis and thresholds must cover the same, non-empty set of layers")
        for L, t in self.thresholds.items():
            if not math.isfinite(t):
                raise InvalidInputError(f"the threshold at layer {L} is {t}; thresholds must be finite numbers")
        for L, a in self.axis.items():
            if a.shape != (self.model.hidden_size,):
                raise InvalidInputError(f"the axis at layer {L} has shape {tuple(a.shape)}, expected [{self.model.hidden_size}]")
            self.axis[L] = _unit(a.to(torch.float32), "capping axis", L)

    @property
    def layers(self) -> list[int]:
        return sorted(self.axis)

    def save(self, path) -> Any:
        layers = self.layers
        md = self.model.to_metadata()
        md.update(self.extra)
        md.update({"cap_kind": self.kind, "percentile": "" if self.percentile is None else repr(self.percentile),
                   "reference": self.reference, "name": self.name, "method": "activation_cap",
                   "capped_layers": json_meta(layers)})
        return save_tensors(path, {
            "axis": torch.stack([self.axis[L] for L in layers]),
            "thresholds": torch.tensor([self.thresholds[L] for L in layers], dtype=torch.float32),
            "layers": torch.tensor(layers, dtype=torch.int64),
        }, md, kind="capping")

    @classmethod
    def load(cls, path, *, model: Any = None) -> CapConfig:
        tensors, md = load_tensors(path, kind="capping")
        info = ModelInfo.from_metadata(md)
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
        pct = md.get("percentile", "")
        reserved = {"format", "kind", "format_version", "package_version", "model", "num_layers", "hidden_size",
                    "layer_site", "cap_kind", "percentile", "reference", "name", "method", "capped_layers"}
        return cls(axis={L: axis[i] for i, L in enumerate(layers)},
                   thresholds={L: float(thr[i]) for i, L in enumerate(layers)},
                   kind=md["cap_kind"], model=info, percentile=float(pct) if pct else None,
                   reference=md.get("reference", ""), name=md.get("name", ""),
                   extra={k: v for k, v in md.items() if k not in reserved})


def calibrate_cap(axis: Any, reference: Activations, layers: int | Iterable[int], *, percentile: float = 25.0,
                  kind: Literal["floor", "ceiling"] = "floor", reference_name: str = "") -> CapConfig:
    """Thresholds from reference activations: the ``percentile`` of their projections onto the unit axis, per layer.

    E.g. ``calibrate_cap(axis, default_assistant_acts, range(16, 24), percentile=25)`` caps at the 25th percentile
    of ordinary assistant responses.
    """
    if not 0 <= percentile <= 100 or not math.isfinite(percentile):
        raise InvalidInputError(f"percentile must be in [0, 100], got {percentile}")
    if not isinstance(reference, Activations):
        raise InvalidInputError(f"reference must be Activations (from capture(), e.g. of default-assistant replies), "
                                f"got {type(reference).__name__}; they carry the layers and model the cap needs")
    info = reference.model
    from persona_axes.core import normalize_layers

    layer_list = normalize_layers(layers, info.n_layers)
    vecs = _as_layer_vectors(axis, info, layer_list, "capping axis")
    units = {L: _unit(vecs[L], "capping axis", L) for L in layer_list}
    if len(reference) == 0:
        raise InvalidInputError("the reference activations are empty")
    thresholds = {}
    for L in layer_list:
        proj = reference.at(L) @ units[L]
        thresholds[L] = float(torch.quantile(proj.double(), percentile / 100.0))
    return CapConfig(axis=units, thresholds=thresholds, kind=kind, model=info, percentile=percentile,
                     reference=reference_name or f"{len(reference)} reference items", name=_name_of(axis, "axis"))


class ActivationCap(Intervention):
    """Clamp the projection onto a unit axis at each capped layer, at every position (or chosen positions).

    Floor: ``h + relu(tau - h.u) u``; ceiling: ``h - relu(h.u - tau) u``. The components orthogonal to the axis are
    untouched, and activations already in range are unchanged.
    """

    def __init__(self, model: Any, config: CapConfig, layers: int | Iterable[int] | None = None, *,
                 positions: Positions = "all", prompt_length: int | None = None):
        info = as_backend(model).info
        config.model.check_compatible(info, what="the capping config")
        if layers is None:
            layers = config.layers
        super().__init__(model, layers, positions, prompt_length)
        missing = [L for L in self.layers if L not in config.axis]
        if missing:
            raise InvalidInputError(f"the capping config has no threshold for layers {missing}; it covers {config.layers}")
        self.config = config

    def edit(self, layer, hidden, mask):
        u = self._on(self.config.axis[layer], hidden)
        tau = self.config.thresholds[layer]
        proj = hidden @ u
        shift = (tau - proj).clamp_min(0) if self.config.kind == "floor" else -(proj - tau).clamp_min(0)
        delta = shift.unsqueeze(-1) * u
        if mask is not None:
            delta = delta * mask.to(hidden.dtype)
        return hidden + delta

    def record(self):
        return {**super().record(), "kind": self.config.kind, "percentile": self.config.percentile,
                "thresholds": {str(L): self.config.thresholds[L] for L in self.layers}}


__all__ = ["Intervention", "Steer", "Ablate", "ActivationCap", "CapConfig", "calibrate_cap", "reference_norms",
           "POSITIONS"]
