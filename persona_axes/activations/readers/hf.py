"""Plain HF transformers reader: forward hooks on the decoder blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from persona_axes.activations.readers.base import Backend, LayerCallback, StopForward, layer_reader, position_ids_from_mask
from persona_axes.model.layers import block_output  # noqa: F401  (kept importable here; defined in model.layers)


class HFBackend(Backend):
    """Registers ``register_forward_hook`` on ``blocks[L]`` and runs only the decoder body (no LM head)."""

    kind = "hf"

    def run_layers(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int], on_layer: LayerCallback
    ) -> None:
        blocks = self.loaded.layers.blocks
        last = max(layers)

        def make_hook(L: int):
            read = layer_reader(L, last, on_layer)
            return lambda module, args, out: read(out)

        handles = [blocks[L].register_forward_hook(make_hook(L)) for L in layers]
        try:
            with torch.inference_mode():
                self.loaded.layers.body(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids_from_mask(attention_mask),
                    use_cache=False,
                )
        except StopForward:
            pass
        finally:
            for h in handles:
                h.remove()


__all__ = ["HFBackend", "block_output"]
