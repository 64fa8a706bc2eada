"""TransformerLens backend: a TransformerBridge (TransformerLens >= 4) over the loaded HF model's own weights.

TransformerLens 4 has no ``HookedTransformer``; its ``TransformerBridge`` wraps an HF model and exposes
``blocks.{L}.hook_out`` (alias ``blocks.{L}.hook_resid_post``): the output of decoder block L, i.e. the residual
stream after it, which is what persona_axes calls "layer L".

Two things about how the bridge is built here:

- **No hub access.** ``TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tok)`` reuses the
  model's config, but it still touches the tokenizer: with ``tokenizer=None`` it loads one from the hub by
  ``name``; with a tokenizer whose ``add_bos_token`` is false it reloads it with ``AutoTokenizer.from_pretrained(
  tokenizer.name_or_path, add_bos_token=True)`` (a hub call for a hub id, a ``KeyError`` for a tokenizer built in
  memory) and sets ``padding_side``/``pad_token`` on it; and it switches the model to eager attention. So this
  backend uses the lower-level builder ``build_bridge_from_module(model, architecture, hf_config=...)`` (what
  ``boot_transformers`` does once the model is loaded), without a tokenizer: it only ever gets token ids.
  The architecture comes from the model class (``LlamaForCausalLM``, ``GPT2LMHeadModel``, ...), so a random-init
  model built from a config (whose ``config.architectures`` is empty) works too.
- **The user's model is left as it is.** The bridge rewires the model it wraps in place: it replaces
  ``model.model.layers`` and every submodule by bridge wrappers (``state_dict`` keys become
  ``model.layers.0._original_component.self_attn._original_component.q_proj...``), adds a zero ``bias`` buffer to
  a bias-free ``lm_head``, and so on. By default the bridge is therefore built around a *shadow* of the module tree:
  new module objects with their own child/parameter/buffer dicts, holding the very same ``Parameter`` and buffer
  tensors (no weight is copied) and sharing the original modules' hook dicts, so forward hooks registered on
  ``loaded.layers.blocks[L]`` (persona_axes interventions) also act on passes run through this backend, and any
  in-place weight edit is seen by both. ``in_place=True`` wraps ``loaded.model`` itself instead.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from persona_axes.errors import ModelLoadError
from persona_axes.model.load import LoadedModel
from persona_axes.activations.readers.base import Backend, LayerCallback, StopForward, layer_reader, position_ids_from_mask

log = logging.getLogger(__name__)

PIP_INSTALL = "pip install 'transformer-lens>=4'"


def _import_transformer_lens():
    try:
        from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
        from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
        from transformer_lens.model_bridge.sources._hf_format import determine_architecture_from_hf_config
    except ImportError as e:
        raise ModelLoadError(
            f"the 'tlens' backend needs TransformerLens >= 4 (its TransformerBridge), which is not importable "
            f"({e}). Install it: {PIP_INSTALL}"
        ) from e
    return SUPPORTED_ARCHITECTURES, build_bridge_from_module, determine_architecture_from_hf_config


class _NeedsInPlace(Exception):
    """The module tree cannot be shadowed (a module has an instance-level forward bound to itself)."""


def _is_nnsight_forward(fn: Any) -> bool:
    return type(fn).__name__ == "Controller" and type(fn).__module__.startswith("nnsight")


def shadow_module_tree(model: nn.Module) -> tuple[nn.Module, list[tuple[nn.Module, nn.Module]]]:
    """A structural copy of ``model`` that shares every parameter, buffer and hook dict with it.

    Each module is copied shallowly with its own ``_modules``, ``_parameters`` and ``_buffers`` dicts (so that
    replacing a child or a parameter on the copy leaves ``model`` alone) but the same tensors, and the same hook
    dicts (a hook registered on an original module fires when its copy runs). ``config`` objects are deep-copied
    once (so switching the copy's attention implementation does not switch the original's). Instance-level
    ``forward`` wrappers installed by nnsight are dropped (they are bound to the original module). Returns the copy
    and the ``(original, copy)`` pairs of every module.
    """
    root_cfg = getattr(model, "config", None)
    cfg_memo: dict[int, Any] = {}
    if root_cfg is not None:
        copy.deepcopy(root_cfg, cfg_memo)
    clones: dict[int, nn.Module] = {}
    pairs: list[tuple[nn.Module, nn.Module]] = []

    def clone(mod: nn.Module) -> nn.Module:
        got = clones.get(id(mod))
        if got is not None:
            return got
        own_forward = mod.__dict__.get("forward")
        if "_hf_hook" in mod.__dict__ or (own_forward is not None and not _is_nnsight_forward(own_forward)):
            raise _NeedsInPlace(f"{type(mod).__name__} has an instance-level forward (accelerate dispatch?)")
        new = mod.__class__.__new__(mod.__class__)
        d = dict(mod.__dict__)
        d.pop("forward", None)  # nnsight's controller, bound to the original module
        d.pop("__nnsight__", None)
        d["_parameters"] = dict(mod._parameters)
        d["_buffers"] = dict(mod._buffers)
        d["_non_persistent_buffers_set"] = set(mod._non_persistent_buffers_set)
        d["_modules"] = {}
        cfg = d.get("config")
        if cfg is not None and id(cfg) in cfg_memo:
            d["config"] = cfg_memo[id(cfg)]
        new.__dict__.update(d)
        clones[id(mod)] = new
        pairs.append((mod, new))
        for name, child in mod._modules.items():
            new._modules[name] = None if child is None else clone(child)
        return new

    return clone(model), pairs


class TransformerLensBackend(Backend):
    """Captures ``blocks.{L}.hook_out`` of a TransformerBridge built (once, lazily) around the loaded model.

    ``in_place=False`` (default) builds the bridge around a weight-sharing shadow of the module tree so that the
    loaded model is not rewired (see the module docstring); ``in_place=True`` wraps ``loaded.model`` itself.
    """

    kind = "tlens"

    def __init__(self, loaded: LoadedModel, *, in_place: bool = False):
        super().__init__(loaded)
        self.in_place = in_place
        self._bridge: Any = None
        self._built_for: tuple[torch.device, torch.dtype] | None = None
        self._state_dicts: list[tuple[dict, dict]] = []  # (original, shadow) _parameters/_buffers dicts
        if importlib.util.find_spec("transformer_lens") is None:  # fail early, with the pip command
            raise ModelLoadError(
                f"the 'tlens' backend needs TransformerLens >= 4, which is not installed: {PIP_INSTALL}"
            )

    # -- the bridge ---------------------------------------------------------------------------------------------
    @property
    def bridge(self):
        """The ``TransformerBridge`` (built on first use, then cached). A bridge around a shadow is rebuilt when the
        model has moved to another device or dtype since (its buffers and the bridge's config follow that way)."""
        where = (self.device, self.dtype)
        if self._bridge is None or (where != self._built_for and not self.in_place):
            self._bridge = None
            self._bridge = self._build_bridge()
            self._built_for = where
        return self._bridge

    def _architecture(self, model: nn.Module) -> str:
        supported, _, determine = _import_transformer_lens()
        cfg = model.config
        for arch in [type(model).__name__, *(getattr(cfg, "architectures", None) or [])]:
            if arch in supported:
                return arch
        try:
            return determine(cfg)
        except ValueError as e:
            raise ModelLoadError(
                f"TransformerLens' TransformerBridge does not support {type(model).__name__} "
                f"(model_type {getattr(cfg, 'model_type', None)!r}); use backend='hf' or 'nnsight' for this model"
            ) from e

    def _build_bridge(self):
        _, build, _ = _import_transformer_lens()
        model = self.loaded.model
        if getattr(model, "config", None) is None:
            raise ModelLoadError(f"the 'tlens' backend needs an HF model with a config, got {type(model).__name__}")
        arch = self._architecture(model)
        target = model
        self._state_dicts = []
        if not self.in_place:
            try:
                target, pairs = shadow_module_tree(model)
                self._state_dicts = [
                    (orig.__dict__[k], new.__dict__[k]) for orig, new in pairs for k in ("_parameters", "_buffers")
                    if orig.__dict__[k]
                ]
            except _NeedsInPlace as e:
                log.warning("cannot shadow the module tree (%s); booting the TransformerBridge in place", e)
                self.in_place = True
                target = model
        try:
            bridge = build(target, arch, hf_config=target.config, tokenizer=None, model_name=self.loaded.name)
        except Exception as e:
            raise ModelLoadError(
                f"could not build a TransformerLens TransformerBridge ({arch}) around {self.loaded.name!r}: "
                f"{type(e).__name__}: {e}"
            ) from e
        n_blocks = len(bridge.blocks) if hasattr(bridge, "blocks") else 0
        if n_blocks != self.info.n_layers:
            raise ModelLoadError(
                f"the TransformerBridge of {self.loaded.name!r} has {n_blocks} blocks, the model {self.info.n_layers}"
            )
        return bridge

    def _sync_shadow(self) -> None:
        """Re-point the shadow at parameters/buffers that were replaced on the original model since the bridge was
        built (a reassigned ``module.weight``, a buffer swapped by ``load_state_dict(assign=True)``, ...)."""
        for src, dst in self._state_dicts:
            for name, t in src.items():
                if dst.get(name, t) is not t:
                    dst[name] = t

    @staticmethod
    def hook_name(layer: int) -> str:
        """The bridge hook point of "layer L": the output of decoder block L."""
        return f"blocks.{layer}.hook_out"

    # -- the protocol -------------------------------------------------------------------------------------------
    def run_layers(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int], on_layer: LayerCallback
    ) -> None:
        bridge = self.bridge
        self._sync_shadow()
        last = max(layers)

        def make_hook(L: int):
            read = layer_reader(L, last, on_layer)

            def hook(tensor: torch.Tensor, hook: Any = None):
                read(tensor)
                return None

            return hook

        fwd_hooks = [(self.hook_name(L), make_hook(L)) for L in layers]
        try:
            with torch.inference_mode(), bridge.hooks(fwd_hooks=fwd_hooks):
                bridge(
                    input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids_from_mask(attention_mask),
                    use_cache=False,
                    return_type=None,
                )
        except StopForward:
            pass


__all__ = ["TransformerLensBackend", "shadow_module_tree"]
