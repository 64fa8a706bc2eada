"""The small protocol every reader (backend) implements, and what all of them share.

A backend wraps one loaded HF model and knows one framework (plain torch hooks, TransformerLens, nnsight). The
rest of the package talks only to this protocol, so the same inputs give the same activations whichever backend
runs them. "Layer L" is the output of decoder block L (0-based): the residual stream right after block L; what a
block returns is unpacked by :func:`persona_axes.model.layers.block_output`, the one place that knows it.

Shared here: :func:`layer_reader`, the hook body of the HF and TransformerLens readers (hand the block's hidden
states to the callback, stop the forward pass after the last requested layer with :class:`StopForward`), and
:func:`position_ids_from_mask`.

What counts as a model (:func:`as_backend`, the one place this is decided): a :class:`Backend` (used as is), a
``LoadedModel`` from ``load_model()`` (wrapped in the backend named by ``backend=``), or a ``(model, tokenizer)``
pair (its blocks found with ``find_layers``). Every function that takes ``model`` accepts these three.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch

from persona_axes.core import ModelInfo, normalize_layers
from persona_axes.errors import InvalidInputError
from persona_axes.model.layers import block_output, find_layers
from persona_axes.model.load import LoadedModel

LayerCallback = Callable[[int, torch.Tensor], None]
"""Called as ``fn(layer, hidden)`` with ``hidden`` of shape ``[batch, seq, d]`` for each requested layer."""


class StopForward(Exception):
    """Raised from the reader of the last requested layer to skip the rest of the forward pass."""


def layer_reader(layer: int, last: int, on_layer: LayerCallback) -> Callable[[Any], None]:
    """``read(output)``: calls ``on_layer(layer, hidden)`` with the block output's hidden states, then raises
    :class:`StopForward` if ``layer`` is the last one requested."""

    def read(out: Any) -> None:
        on_layer(layer, block_output(out))
        if layer == last:
            raise StopForward

    return read


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore padding, so left- and right-padded batches see the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class Backend(ABC):
    """Runs one loaded HF model through one framework. Subclasses implement :meth:`run_layers`."""

    kind: ClassVar[str]

    def __init__(self, loaded: LoadedModel):
        if not isinstance(loaded, LoadedModel):
            raise InvalidInputError(f"a backend wraps a LoadedModel (from load_model()), got {type(loaded).__name__}")
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.info: ModelInfo = loaded.info

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings (the first block's, under an accelerate
        ``device_map``; parameters offloaded to disk sit on the ``meta`` device and are skipped)."""
        emb = getattr(self.model, "get_input_embeddings", lambda: None)()
        for p in (emb.parameters() if emb is not None else ()):
            if p.device.type != "meta":
                return p.device
        for p in self.model.parameters():
            if p.device.type != "meta":
                return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The model's floating dtype (that of its first floating parameter)."""
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

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
    """A :class:`Backend` from a Backend (returned as is), a LoadedModel, or a ``(model, tokenizer)`` pair; see the
    module docstring. ``backend`` (``"hf"``, ``"tlens"``, ``"nnsight"``) applies to the latter two."""
    if isinstance(model, Backend):
        return model
    if isinstance(model, tuple) and len(model) == 2:
        m, tok = model
        name = getattr(getattr(m, "config", None), "name_or_path", "") or type(m).__name__
        model = LoadedModel(model=m, tokenizer=tok, name=name, layers=find_layers(m))
    if not isinstance(model, LoadedModel):
        raise InvalidInputError(
            f"expected a Backend, a LoadedModel (from load_model()) or a (model, tokenizer) pair, got {type(model).__name__}"
        )
    from persona_axes.activations.readers import make_backend

    return make_backend(model, backend)


__all__ = ["Backend", "LayerCallback", "StopForward", "as_backend", "layer_reader", "position_ids_from_mask"]
