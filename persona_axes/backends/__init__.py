"""Backends: one adapter per framework behind the same small protocol (see :mod:`persona_axes.backends.base`)."""

from __future__ import annotations

from ..errors import InvalidInputError
from ..models import LoadedModel
from .base import LAYER_SITE, Backend, ModelInfo, as_backend, normalize_layers
from .hf import HFBackend

BACKENDS = ("hf", "tlens", "nnsight")


def make_backend(loaded: LoadedModel, kind: str = "hf") -> Backend:
    """Wrap a loaded model in the backend ``kind``: ``"hf"`` (plain hooks), ``"tlens"`` (TransformerLens >= 4
    ``TransformerBridge``) or ``"nnsight"``. All three share the same weights and give the same activations."""
    if kind == "hf":
        return HFBackend(loaded)
    if kind == "tlens":
        from .tlens import TransformerLensBackend

        return TransformerLensBackend(loaded)
    if kind == "nnsight":
        from .nnsight import NNsightBackend

        return NNsightBackend(loaded)
    raise InvalidInputError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "LAYER_SITE", "Backend", "HFBackend", "ModelInfo", "as_backend", "make_backend", "normalize_layers"]
