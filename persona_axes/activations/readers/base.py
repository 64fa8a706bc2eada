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

from persona_axes.core import LAYER_SITE, ModelInfo, normalize_layers
from persona_axes.errors import InvalidInputError
from persona_axes.model.load import LoadedModel

LayerCallback = Callable[[int, torch.Tensor], None]
"""Called as ``fn(layer, hidden)`` with ``hidden`` of shape ``[batch, seq, d]`` for each requested layer."""


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
        from persona_axes.model.load import find_layers

        m, tok = model
        name = getattr(getattr(m, "config", None), "name_or_path", "") or type(m).__name__
        model = LoadedModel(model=m, tokenizer=tok, name=name, layers=find_layers(m))
    if not isinstance(model, LoadedModel):
        raise InvalidInputError(
            f"expected a Backend, a LoadedModel (from load_model()) or a (model, tokenizer) pair, got {type(model).__name__}"
        )
    from persona_axes.activations.readers import make_backend

    return make_backend(model, backend)
