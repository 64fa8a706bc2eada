"""The small protocol every backend implements, and the model identity stored with every result.

A backend wraps one loaded HF model and knows one framework (plain torch hooks, TransformerLens, nnsight). The
rest of the package talks only to this protocol, so the same inputs give the same activations whichever backend
runs them. "Layer L" is the output of decoder block L (0-based): the residual stream right after block L.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import InvalidInputError, LayerOutOfRangeError, ModelMismatchError
from ..models import LoadedModel

LAYER_SITE = "block_output"
"""Name of the only layer site persona_axes uses: the output of decoder block L (the residual stream after it)."""

LayerCallback = Callable[[int, torch.Tensor], None]
"""Called as ``fn(layer, hidden)`` with ``hidden`` of shape ``[batch, seq, d]`` for each requested layer."""


def _norm_name(name: str) -> str:
    return name.rstrip("/").split("/")[-1].lower()


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the model a result was computed on: name, shape and layer site."""

    name: str
    n_layers: int
    hidden_size: int
    layer_site: str = LAYER_SITE

    def to_metadata(self) -> dict[str, str]:
        return {
            "model": self.name,
            "num_layers": str(self.n_layers),
            "hidden_size": str(self.hidden_size),
            "layer_site": self.layer_site,
        }

    @classmethod
    def from_metadata(cls, md: dict[str, str]) -> ModelInfo:
        return cls(
            name=md["model"],
            n_layers=int(md["num_layers"]),
            hidden_size=int(md["hidden_size"]),
            layer_site=md.get("layer_site", LAYER_SITE),
        )

    def check_compatible(self, other: ModelInfo, *, what: str = "these activations", strict_name: bool = True) -> None:
        """Raise :class:`ModelMismatchError` unless ``other`` has the same shape (and, if strict, the same name).

        Names compare by their last path component, case-insensitively, so ``org/Model`` matches ``Model``.
        """
        problems = []
        if self.hidden_size != other.hidden_size:
            problems.append(f"hidden size {self.hidden_size} here, {other.hidden_size} in the model")
        if self.n_layers != other.n_layers:
            problems.append(f"{self.n_layers} layers here, {other.n_layers} in the model")
        if self.layer_site != other.layer_site:
            problems.append(f"layer site {self.layer_site!r} here, {other.layer_site!r} in the model")
        if strict_name and _norm_name(self.name) != _norm_name(other.name):
            problems.append(f"made for model {self.name!r}, not {other.name!r}")
        if problems:
            raise ModelMismatchError(
                f"{what} were made for {self.name!r} and do not fit {other.name!r}: {'; '.join(problems)}. "
                "Recompute them on this model"
                + (" (or pass strict_name=False if only the name differs)." if len(problems) == 1 and problems[0].startswith("made for") else ".")
            )


def normalize_layers(layers: int | Iterable[int] | None, n_layers: int) -> list[int]:
    """Sorted unique 0-based block indices; ``None`` means all; negative indices count from the end."""
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, (int, torch.Tensor)) and not isinstance(layers, bool) and getattr(layers, "ndim", 0) == 0:
        layers = [int(layers)]
    out = set()
    for L in layers:
        if isinstance(L, bool) or not isinstance(L, (int,)) and not (isinstance(L, torch.Tensor) and L.ndim == 0):
            raise InvalidInputError(f"layer indices must be integers, got {L!r}")
        L = int(L)
        if not -n_layers <= L < n_layers:
            raise LayerOutOfRangeError(
                f"layer {L} is out of range: this model has {n_layers} decoder blocks, so layers are 0..{n_layers - 1} "
                f"(or -{n_layers}..-1 from the end)"
            )
        out.add(L % n_layers)
    if not out:
        raise InvalidInputError("no layers were requested; pass layers=None for all of them")
    return sorted(out)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore padding, so left- and right-padded batches see the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class Backend(ABC):
    """Runs one loaded HF model through one framework. Subclasses implement :meth:`run_layers`."""

    kind: ClassVar[str]

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.info = ModelInfo(name=loaded.name, n_layers=loaded.layers.n_layers, hidden_size=loaded.layers.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        for v in (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None)):
            if isinstance(v, int):
                return v
        return 0

    def layers(self, layers: int | Iterable[int] | None) -> list[int]:
        return normalize_layers(layers, self.info.n_layers)

    @abstractmethod
    def run_layers(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int], on_layer: LayerCallback
    ) -> None:
        """Run the decoder body (no LM head) on a padded batch ``[batch, seq]`` and call ``on_layer(L, hidden)``
        with ``hidden [batch, seq, d]`` for each layer in ``layers`` (sorted, in range), in increasing order.
        Implementations stop the forward pass after the last requested layer and leave no hook behind."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name!r}, n_layers={self.info.n_layers}, d={self.info.hidden_size})"


def as_backend(model: Any, backend: str = "hf") -> Backend:
    """A :class:`Backend` from a Backend (returned as is), a LoadedModel, or ``(model, tokenizer)``."""
    if isinstance(model, Backend):
        return model
    if isinstance(model, tuple) and len(model) == 2:
        from ..models import find_layers

        m, tok = model
        name = getattr(getattr(m, "config", None), "name_or_path", "") or type(m).__name__
        model = LoadedModel(model=m, tokenizer=tok, name=name, layers=find_layers(m))
    if not isinstance(model, LoadedModel):
        raise InvalidInputError(
            f"expected a Backend, a LoadedModel (from load_model()) or a (model, tokenizer) pair, got {type(model).__name__}"
        )
    from . import make_backend

    return make_backend(model, backend)
