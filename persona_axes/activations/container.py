"""``Activations``: reduced residual-stream activations ``[n_items, n_layers, d]`` with per-item metadata."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from persona_axes.core import ModelInfo, Reduce, as_choice, check_finite, check_int, format_layers, normalize_layers
from persona_axes.errors import FileFormatError, InvalidInputError, LayerOutOfRangeError
from persona_axes.files import RESERVED_KEYS, json_meta, load_tensors, parse_json_meta, save_tensors

KIND = "activations"

#: Rows per step when scanning or averaging a whole ``[n_items, ...]`` tensor, so the temporaries (``isfinite``
#: allocates about 1.7x its input; a float64 cast 2x) stay a few MB whatever the number of items.
ROW_CHUNK = 64


def nonfinite_rows(values: torch.Tensor) -> list[int]:
    """Indices of the rows of ``values [n, ...]`` that hold a NaN or an infinity, scanned ``ROW_CHUNK`` rows at a
    time."""
    bad: list[int] = []
    for start in range(0, values.shape[0], ROW_CHUNK):
        chunk = values[start : start + ROW_CHUNK]
        bad += (start + (~torch.isfinite(chunk)).flatten(1).any(1).nonzero().flatten()).tolist()
    return bad


def mean64(values: torch.Tensor) -> torch.Tensor:
    """Mean over the first axis of ``values [n, ...]`` accumulated in float64, ``ROW_CHUNK`` rows at a time."""
    total = torch.zeros(values.shape[1:], dtype=torch.float64)
    for start in range(0, values.shape[0], ROW_CHUNK):
        total += values[start : start + ROW_CHUNK].sum(0, dtype=torch.float64)
    return total / values.shape[0]


@dataclass
class Activations:
    """Residual-stream activations reduced over one span per item.

    ``values[i, j]`` is item ``i`` at model layer ``layers[j]`` (the output of decoder block ``layers[j]``,
    0-based), float32 on CPU. ``items[i]`` is a dict of metadata (conversation index, message index, role, turn,
    token count, and whatever the caller attached). ``reduction`` is ``"mean"``, ``"last"`` or ``"all"`` (one item
    per token, with ``position`` in its metadata).
    """

    values: torch.Tensor
    layers: tuple[int, ...]
    items: list[dict[str, Any]]
    model: ModelInfo
    reduction: str = "mean"
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.values, torch.Tensor) or not self.values.is_floating_point():
            raise InvalidInputError(f"values must be a floating-point tensor [n_items, n_layers, d], got "
                                    f"{type(self.values).__name__} {getattr(self.values, 'dtype', '')}")
        if not isinstance(self.model, ModelInfo):
            raise InvalidInputError(f"model must be a ModelInfo, got {type(self.model).__name__}")
        if isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, Iterable):
            raise InvalidInputError(f"layers must be a sequence of block indices, got {type(self.layers).__name__}")
        self.layers = tuple(check_int(L, f"layers[{j}]") for j, L in enumerate(self.layers))
        self.reduction = as_choice(Reduce, self.reduction, "reduction").value
        if not isinstance(self.items, list):
            raise InvalidInputError(f"items must be a list of metadata dicts, got {type(self.items).__name__}")
        if not isinstance(self.extra, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in self.extra.items()):
            raise InvalidInputError("extra must be a dict of string keys and string values (file metadata)")
        if self.values.ndim != 3:
            raise InvalidInputError(f"values must be [n_items, n_layers, d], got shape {tuple(self.values.shape)}")
        n, nl, d = self.values.shape
        if nl != len(self.layers):
            raise InvalidInputError(f"values have {nl} layers but {len(self.layers)} layer indices were given")
        if len(self.items) != n:
            raise InvalidInputError(f"{n} rows of values but {len(self.items)} item metadata dicts")
        if d != self.model.hidden_size:
            raise InvalidInputError(f"values have width {d} but the model's hidden size is {self.model.hidden_size}")
        bad = [L for L in self.layers if not 0 <= L < self.model.n_layers]
        if bad or len(set(self.layers)) != len(self.layers):
            raise InvalidInputError(
                f"layers {list(self.layers)} must be distinct block indices 0..{self.model.n_layers - 1} of the "
                f"{self.model.n_layers}-layer model" + (f"; {bad} are not" if bad else "; some repeat")
            )
        if not all(isinstance(it, dict) for it in self.items):
            raise InvalidInputError("items must be one metadata dict per row")

    def __len__(self) -> int:
        return self.values.shape[0]

    def __repr__(self) -> str:
        return (
            f"Activations(n_items={len(self)}, layers={format_layers(self.layers)}, d={self.model.hidden_size}, "
            f"reduction={self.reduction!r}, model={self.model.name!r})"
        )

    def layer_index(self, layer: int) -> int:
        """Position in ``values`` of model layer ``layer`` (negative counts from the model's last layer)."""
        L = normalize_layers(check_int(layer, "layer"), self.model.n_layers)[0]
        try:
            return self.layers.index(L)
        except ValueError:
            raise LayerOutOfRangeError(
                f"layer {layer} was not captured; these activations hold layers {format_layers(self.layers)}"
            ) from None

    def at(self, layer: int) -> torch.Tensor:
        """``[n_items, d]`` activations at model layer ``layer``."""
        return self.values[:, self.layer_index(layer)]

    def select(self, which: Sequence[int] | torch.Tensor | Callable[[dict[str, Any]], bool]) -> Activations:
        """A subset of items: indices, a boolean mask, or a predicate on item metadata."""
        if callable(which):
            idx = [i for i, it in enumerate(self.items) if which(it)]
        elif isinstance(which, torch.Tensor) and which.dtype == torch.bool:
            if which.shape != (len(self),):
                raise InvalidInputError(f"mask must have shape ({len(self)},), got {tuple(which.shape)}")
            idx = which.nonzero().flatten().tolist()
        else:
            if isinstance(which, (str, bytes)) or not isinstance(which, Iterable):
                raise InvalidInputError(f"select takes indices, a boolean mask or a predicate, got {type(which).__name__}")
            idx = [check_int(i, "index", minimum=-len(self), maximum=len(self) - 1) for i in which]
        return Activations(
            values=self.values[idx],
            layers=self.layers,
            items=[self.items[i] for i in idx],
            model=self.model,
            reduction=self.reduction,
            extra=dict(self.extra),
        )

    def where(self, **equals: Any) -> Activations:
        """Items whose metadata has every given key equal to the given value, e.g. ``acts.where(role="pirate")``."""
        return self.select(lambda it: all(it.get(k) == v for k, v in equals.items()))

    def mean(self) -> torch.Tensor:
        """``[n_layers, d]`` mean over items."""
        if len(self) == 0:
            raise InvalidInputError("cannot average zero items")
        return self.values.mean(0)

    @staticmethod
    def concat(parts: Iterable[Activations]) -> Activations:
        """Stack activations of the same model, layers and reduction along the item axis."""
        parts = list(parts)
        if not parts:
            raise InvalidInputError("nothing to concatenate")
        first = parts[0]
        for p in parts[1:]:
            first.model.check_compatible(p.model, what="activations to concatenate")
            if p.layers != first.layers or p.reduction != first.reduction:
                raise InvalidInputError("activations to concatenate must share layers and reduction")
        return Activations(
            values=torch.cat([p.values for p in parts]),
            layers=first.layers,
            items=[it for p in parts for it in p.items],
            model=first.model,
            reduction=first.reduction,
            extra=dict(first.extra),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Save to safetensors (atomically) with the model identity, layers, reduction and item metadata."""
        check_finite(self.values, "the activations' values")
        md = self.model.to_metadata()
        md.update(self.extra)
        md.update(
            {"layers": json_meta(list(self.layers)), "reduction": self.reduction, "items": json_meta(self.items)}
        )
        return save_tensors(path, {"values": self.values}, md, kind=KIND)

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: Any = None, strict_name: bool = True) -> Activations:
        """Load activations saved by :meth:`save`, bit-exactly. With ``model`` (a Backend, LoadedModel or
        ModelInfo), refuse activations made for a model of another shape (:class:`ModelMismatchError`)."""
        tensors, md = load_tensors(path, kind=KIND)
        try:
            info = ModelInfo.from_metadata(md)
            check_int(info.n_layers, "num_layers", minimum=1)
            check_int(info.hidden_size, "hidden_size", minimum=1)
        except (KeyError, ValueError, TypeError) as e:
            raise FileFormatError(f"{path}: the model identity in its metadata is missing or invalid ({e}); the file "
                                  "is corrupt or was edited") from e
        if model is not None:
            info.check_compatible(model_info(model), what=f"the activations in {path}", strict_name=strict_name)
        if "values" not in tensors:
            raise FileFormatError(f"{path}: no 'values' tensor")
        reserved = RESERVED_KEYS | set(info.to_metadata()) | {"layers", "reduction", "items"}
        layers, items = parse_json_meta(md, "layers", path), parse_json_meta(md, "items", path)
        if not isinstance(layers, list) or not all(isinstance(L, int) and not isinstance(L, bool) for L in layers):
            raise FileFormatError(f"{path}: metadata 'layers' must be a list of integers, got {md['layers'][:80]!r}")
        if not isinstance(items, list):
            raise FileFormatError(f"{path}: metadata 'items' must be a list of dicts, got {type(items).__name__}")
        try:
            return cls(values=tensors["values"], layers=tuple(layers), items=items, model=info,
                       reduction=md.get("reduction", "mean"), extra={k: v for k, v in md.items() if k not in reserved})
        except InvalidInputError as e:  # the file disagrees with itself: corrupt or edited
            raise FileFormatError(f"{path}: {e}; the file is corrupt or was edited") from e


def model_info(model: Any) -> ModelInfo:
    """The :class:`ModelInfo` of a Backend, LoadedModel, or ModelInfo."""
    if isinstance(model, ModelInfo):
        return model
    info = getattr(model, "info", None)  # a Backend's attribute, a LoadedModel's property
    if isinstance(info, ModelInfo):
        return info
    raise InvalidInputError(f"expected a Backend, LoadedModel or ModelInfo, got {type(model).__name__}")


__all__ = ["Activations", "model_info"]
