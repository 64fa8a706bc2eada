"""Where a model keeps its decoder blocks, and what a block returns.

"Layer L" everywhere in persona_axes means the output of decoder block L (0-based): the residual stream right
after block L. With HF ``output_hidden_states``, that is ``hidden_states[L + 1]`` for every block but the last,
whose entry in ``hidden_states`` is taken after the final norm (so layer ``n - 1`` is *not* ``hidden_states[-1]``).

A block's forward returns a tensor (transformers >= 5 for most families) or a tuple whose first item is the hidden
states (older versions, GPT-2 style blocks). :func:`block_output` and :func:`replace_block_output` are the one
place that knows this; readers and interventions both use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from persona_axes.errors import InvalidInputError, LayerDiscoveryError

# Attribute paths (from the *ForCausalLM object) where common decoder families keep their blocks.
LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, SmolLM, Qwen2/3, Mistral, Gemma2/3 (text), Phi, Phi-3, OLMo
    "model.language_model.layers",  # Gemma3 / multimodal wrappers (transformers >= 4.52)
    "language_model.model.layers",  # older multimodal wrappers
    "transformer.h",  # GPT-2, GPT-J, Bloom, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
    "layers",  # a bare decoder body
)


def block_output(out: Any) -> torch.Tensor:
    """The hidden states ``[batch, seq, d]`` in a decoder block's output (a tensor, or a tuple led by one)."""
    return out[0] if isinstance(out, tuple) else out


def replace_block_output(out: Any, hidden: torch.Tensor) -> Any:
    """A block output like ``out`` with its hidden states replaced by ``hidden`` (the tuple's tail kept)."""
    return (hidden, *out[1:]) if isinstance(out, tuple) else hidden


@dataclass(frozen=True)
class DecoderLayers:
    """Where a model keeps its decoder blocks. ``body`` runs the blocks without the LM head."""

    path: str
    blocks: nn.ModuleList
    body: nn.Module
    n_layers: int
    hidden_size: int


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _hidden_size(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for c in (cfg, getattr(cfg, "text_config", None)):
        if c is None:
            continue
        for attr in ("hidden_size", "n_embd", "d_model"):
            v = getattr(c, attr, None)
            if isinstance(v, int):
                return v
    return None


def find_layers(model: nn.Module, layers_path: str | None = None) -> DecoderLayers:
    """Locate the decoder blocks of ``model`` (a ``*ForCausalLM`` or a bare decoder body).

    ``layers_path`` overrides the search with an attribute path such as ``"model.layers"``.
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if layers_path is not None and (not isinstance(layers_path, str) or not layers_path.strip()):
        raise InvalidInputError(f"layers_path must be a dotted attribute path such as 'model.layers', got {layers_path!r}")
    paths = (layers_path,) if layers_path else LAYER_PATHS
    for path in paths:
        try:
            blocks = _get_path(model, path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            parent = path.rsplit(".", 1)[0] if "." in path else ""
            body = _get_path(model, parent) if parent else model
            hidden = _hidden_size(model)
            if hidden is None:
                raise LayerDiscoveryError(
                    f"found decoder blocks at {path!r} but no hidden size in the config "
                    "(looked for hidden_size, n_embd, d_model)"
                )
            return DecoderLayers(path=path, blocks=blocks, body=body, n_layers=len(blocks), hidden_size=hidden)
    lists = [name for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList)][:10]
    if layers_path:
        raise LayerDiscoveryError(
            f"{layers_path!r} is not a non-empty nn.ModuleList on {type(model).__name__}; "
            f"ModuleLists in this model: {lists or 'none'}"
        )
    raise LayerDiscoveryError(
        f"could not find the decoder blocks of {type(model).__name__}: tried {', '.join(LAYER_PATHS)}. "
        f"ModuleLists in this model: {lists or 'none'}. Pass the path by hand, e.g. layers_path={lists[0]!r}"
        if lists
        else f"could not find the decoder blocks of {type(model).__name__} (it has no nn.ModuleList); "
        "pass layers_path='attr.path.to.blocks'"
    )


__all__ = ["LAYER_PATHS", "DecoderLayers", "block_output", "find_layers", "replace_block_output"]
