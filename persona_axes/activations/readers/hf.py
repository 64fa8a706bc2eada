"""Plain HF transformers backend: forward hooks on the decoder blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from persona_axes.activations.readers.base import Backend, LayerCallback, position_ids_from_mask


class _StopForward(Exception):
    """Raised from the hook of the last requested layer to skip the rest of the forward pass."""


def block_output(out):
    """The hidden states in a decoder block's output (a tensor, or a tuple whose first item is one)."""
    return out[0] if isinstance(out, tuple) else out


class HFBackend(Backend):
    """Registers ``register_forward_hook`` on ``blocks[L]`` and runs only the decoder body (no LM head)."""

    kind = "hf"

    def run_layers(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int], on_layer: LayerCallback
    ) -> None:
        blocks = self.loaded.layers.blocks
        last = max(layers)

        def make_hook(L: int):
            def hook(module, args, out):
                on_layer(L, block_output(out))
                if L == last:
                    raise _StopForward

            return hook

        handles = [blocks[L].register_forward_hook(make_hook(L)) for L in layers]
        try:
            with torch.inference_mode():
                self.loaded.layers.body(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids_from_mask(attention_mask),
                    use_cache=False,
                )
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
