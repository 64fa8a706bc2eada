"""Backends: one adapter per framework behind the same small protocol (see :mod:`persona_axes.activations.readers.base`)."""

from __future__ import annotations

from persona_axes.activations.readers.base import Backend, as_backend
from persona_axes.activations.readers.hf import HFBackend
from persona_axes.core import LAYER_SITE, ModelInfo, normalize_layers
from persona_axes.errors import InvalidInputError
from persona_axes.model.load import LoadedModel

BACKENDS = ("hf", "tlens", "nnsight")


def make_backend(loaded: LoadedModel, kind: str = "hf") -> Backend:
    """Wrap a loaded model in the backend ``kind``: ``"hf"`` (plain hooks), ``"tlens"`` (TransformerLens >= 4
    ``TransformerBridge``) or ``"nnsight"``. All three share the same weights and give the same activations."""
    if not isinstance(loaded, LoadedModel):
        raise InvalidInputError(f"make_backend wraps a LoadedModel (from load_model()), got {type(loaded).__name__}")
    if kind == "hf":
        return HFBackend(loaded)
    if kind == "tlens":
        from persona_axes.activations.readers.tlens import TransformerLensBackend

        return TransformerLensBackend(loaded)
    if kind == "nnsight":
        from persona_axes.activations.readers.nnsight import NNsightBackend

        return NNsightBackend(loaded)
    raise InvalidInputError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "LAYER_SITE", "Backend", "HFBackend", "ModelInfo", "as_backend", "make_backend", "normalize_layers"]
