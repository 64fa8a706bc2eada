"""nnsight backend: an ``nnsight.NNsight`` envoy tree over the loaded HF model itself (nnsight >= 0.8).

The wrapper is the generic ``NNsight(model)``, not ``LanguageModel``: in nnsight 0.8 ``LanguageModel`` is a
deprecated alias of ``TransformersModel``, which builds a ``transformers.pipeline`` around the model and sets
``padding_side="left"`` and a pad token on the tokenizer it is given (the shared one). This backend only ever
passes token ids, so it needs no tokenizer, no pipeline and no download.

Wrapping installs nnsight's controller as the instance ``forward`` of every module of the model (permanently, inert
outside a trace; no torch hooks, and parameters and ``state_dict`` are untouched). One ``.trace(...)`` per batch
reads ``<layers path>[L].output`` for each requested layer, marks it with ``nnsight.save`` and calls
``tracer.stop()`` after the last one, which halts the forward right after that block (later blocks, the final norm
and the LM head never run). ``on_layer`` is then called outside the trace, in increasing layer order, so every
requested layer's hidden states of the batch are alive at once.

One difference from the HF and TransformerLens backends: nnsight's controller is the module's ``forward``, so it
runs *inside* torch's hook wrapper and ``.output`` is the block's own return value, before any torch forward hook
registered on that block (such as a persona_axes intervention) edits it. Later layers do see the edit, since the
edited value is what flows on. When a requested block carries such hooks this backend warns.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from persona_axes.errors import ModelLoadError
from persona_axes.model.layers import block_output
from persona_axes.model.load import LoadedModel
from persona_axes.activations.readers.base import Backend, LayerCallback, position_ids_from_mask

PIP_INSTALL = "pip install 'nnsight>=0.8'"


def _import_nnsight():
    try:
        import nnsight
    except ImportError as e:
        raise ModelLoadError(f"the 'nnsight' backend needs nnsight >= 0.8, which is not importable ({e}). "
                             f"Install it: {PIP_INSTALL}") from e
    return nnsight


def _user_forward_hooks(module) -> list:
    """Forward hooks on ``module`` other than transformers' own (its output-capturing hooks only record)."""
    return [h for h in module._forward_hooks.values() if not getattr(h, "__module__", "").startswith("transformers")]


class NNsightBackend(Backend):
    """Saves ``layers[L].output`` in one ``NNsight(model).trace(...)`` per batch and stops after the last layer."""

    kind = "nnsight"

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        if importlib.util.find_spec("nnsight") is None:  # fail early, with the pip command
            raise ModelLoadError(f"the 'nnsight' backend needs nnsight >= 0.8, which is not installed: {PIP_INSTALL}")
        self._envoy: Any = None
        self._blocks: Any = None

    @property
    def envoy(self):
        """The ``nnsight.NNsight`` wrapper of ``loaded.model`` (built on first use, then cached)."""
        if self._envoy is None:
            nnsight = _import_nnsight()
            envoy = nnsight.NNsight(self.loaded.model)
            blocks = envoy
            for part in self.loaded.layers.path.split("."):
                blocks = getattr(blocks, part)
            self._envoy, self._blocks = envoy, blocks
        return self._envoy

    @property
    def blocks(self):
        """The envoy of the decoder block list (``envoy.model.layers`` for Llama); ``blocks[L].output`` is layer L."""
        self.envoy
        return self._blocks

    def run_layers(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int], on_layer: LayerCallback
    ) -> None:
        envoy, blocks = self.envoy, self.blocks
        hooked = [L for L in layers if _user_forward_hooks(self.loaded.layers.blocks[L])]
        if hooked:
            warnings.warn(
                f"decoder block(s) {hooked} carry torch forward hooks (an active intervention?). nnsight reads a "
                "block's own output, before its forward hooks, so these layers are captured without the hooks' edits "
                "(later layers do include them); use backend='hf' or 'tlens' to capture after the hooks",
                stacklevel=2,
            )
        save = _import_nnsight().save
        layers = list(layers)
        saved: list[Any] = []
        with torch.inference_mode():
            with envoy.trace(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
                use_cache=False,
            ) as tracer:
                for L in layers:
                    saved.append(save(blocks[L].output))
                tracer.stop()
        if len(saved) != len(layers):
            raise RuntimeError(f"nnsight returned {len(saved)} of the {len(layers)} requested layers")
        for L, out in zip(layers, saved):
            on_layer(L, block_output(out))


__all__ = ["NNsightBackend"]
