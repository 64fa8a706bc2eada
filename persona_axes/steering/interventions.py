"""Interventions at inference as context managers: the hook base, steering (:class:`Steer`) and ablation
(:class:`Ablate`). Activation capping builds on the same base in :mod:`persona_axes.steering.capping`.

Each intervention registers PyTorch forward hooks on the decoder blocks of the loaded HF model and removes them
on exit, even when the body raises. The HF, TransformerLens (``TransformerBridge``) and nnsight backends all
drive the same HF modules (TL through a shadow that shares their parameters and hook dicts), so the hooks act in
every forward pass whichever framework runs it. One caveat: nnsight reads a block's ``.output`` *before* that
block's own torch forward hooks run, so an nnsight capture at a steered layer L shows the unsteered output at L
(the edit is visible from L + 1 on); the nnsight backend warns when that happens.

Positions (``positions=``, a :class:`~persona_axes.core.Positions` or its string), in the padded coordinates of
the batch:

- ``"all"``: every position.
- ``"prompt"``: the prompt's positions (everything in the first forward pass of a ``generate``).
- ``"generated"``: the positions whose output predicts a generated token: the *last prompt position* (it yields
  the first generated token, so that token is steered too) and every generated token after it.

How the prompt is found: at each forward pass of the decoder body, the number of tokens already in the KV cache
(the "past") is read from the call itself (see :func:`cache_length`): a forward with no past starts a new
prompt, whose length is its sequence length; a forward with a past continues it. So several ``generate`` calls
inside one ``with`` work. To recompute the whole prefix each step yourself (no cache), pass ``prompt_length=``.

Composition: enter several (``with Ablate(...), Steer(...):``); hooks run in the order they were entered, so
ablate-then-add is ``Ablate`` entered before ``Steer``.

Coefficients: a number, or a ``[batch]`` tensor (or list) with one coefficient per batch row (a whole sweep in one
batched ``generate``), in ``unit`` (defined once in :mod:`persona_axes.vectors.units`): ``"raw"`` adds
``coef * vector`` as is; ``"unit"`` adds ``coef`` activation units along the unit direction; ``"rel"`` multiples of
the mean norm of default-assistant reply-mean activations; ``"sd"`` multiples of the spread (standard deviation)
of default-assistant projections onto the direction; ``"gap"`` multiples of the gap between the direction's two
groups (default minus role replies for the Assistant Axis). ``"rel"``/``"sd"``/``"gap"`` read the vector's stored
unit statistics; ``reference=`` (Activations of default-assistant replies, reduced ``"mean"``) measures ``"rel"``
and ``"sd"`` instead. The effective per-layer scale is recorded in :meth:`Intervention.record`.

dtype and placement: each vector is copied once to the device of the block it edits (so models dispatched over
several devices with accelerate work). The edit is computed in float32 (or the block's dtype if wider) from the
block's output and rounded once to the block's dtype: in a bf16/fp16 model the result is the float32 edit up to
that one rounding, instead of accumulating a rounding of the vector, of ``coef * vector``, of the projection and of
the sum. The float32 copy of ``[batch, seq, d]`` is transient and smaller than the block's own MLP activations.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import Cache

from persona_axes.activations.readers.base import Backend, as_backend
from persona_axes.core import ModelInfo, Positions, Unit, as_choice, check_int, normalize_layers, unit
from persona_axes.errors import InvalidInputError, ModelMismatchError
from persona_axes.model.layers import block_output, replace_block_output
from persona_axes.vectors.units import layer_units, reference_norms, unit_scales


def layer_vectors(vector: Any, info: ModelInfo, layers: Sequence[int], what: str) -> dict[int, torch.Tensor]:
    """``{layer: [d] float32 on CPU}`` from a PersonaVector, a ``[d]`` tensor (the same row at every layer) or a
    ``[n_layers, d]`` tensor, checked against the model ``info`` (hidden size, layer count, a PersonaVector's model)
    and for finite values. ``what`` names the argument in error messages."""
    if not isinstance(info, ModelInfo):
        raise InvalidInputError(f"info must be a ModelInfo, got {type(info).__name__}")
    layers = normalize_layers(layers, info.n_layers)
    vec_info = getattr(vector, "model", None)
    if isinstance(vec_info, ModelInfo):
        vec_info.check_compatible(info, what=f"the {what} {getattr(vector, 'name', '')!r}".replace(" ''", ""))
        vector = vector.vector
    if isinstance(vector, np.ndarray) and vector.dtype.kind in "iuf":
        vector = torch.from_numpy(vector)
    if not isinstance(vector, torch.Tensor):
        raise InvalidInputError(f"the {what} must be a PersonaVector or a tensor, got {type(vector).__name__}")
    if vector.dtype == torch.bool or vector.is_complex():
        raise InvalidInputError(f"the {what} must hold real numbers, got dtype {vector.dtype}")
    v = vector.detach().to("cpu", torch.float32)
    if v.ndim == 0 or v.shape[-1] != info.hidden_size:
        raise ModelMismatchError(
            f"the {what} has size {v.shape[-1] if v.ndim else 'scalar'} but the model's hidden size is "
            f"{info.hidden_size}; use a vector computed on this model"
        )
    if v.ndim == 1:
        out = {L: v for L in layers}
    elif v.ndim == 2 and v.shape[0] == info.n_layers:
        out = {L: v[L] for L in layers}
    else:
        raise InvalidInputError(
            f"the {what} must have shape [d] or [n_layers={info.n_layers}, d], got {tuple(v.shape)}"
        )
    for L, x in out.items():
        if not torch.isfinite(x).all():
            raise InvalidInputError(f"the {what} holds NaN or infinite values at layer {L}")
    return out


def name_of(obj: Any, default: str | None = None) -> str | None:
    """A vector's name (PersonaVector.name), or ``default`` for a bare tensor (whose ``.name`` is None)."""
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) else default


def cache_length(args: tuple, kwargs: Mapping[str, Any]) -> int:
    """How many tokens are already in the KV cache when the decoder body is called with ``(args, kwargs)``.

    The rule does not depend on HF's keyword names, which change between versions (``past_key_values=`` up to
    transformers 5.23, ``cache=`` from 5.24): the cache is the argument that *is* a ``transformers.Cache``,
    whatever its name, and its ``get_seq_length()`` is the past (this hook runs before the body appends to it).
    Without a Cache object, a ``cache_position`` tensor (older versions pass one) gives the past as its first entry.
    Otherwise there is no past: the forward is a fresh prompt. Position ids are not used: with left padding they
    count real tokens only, so they are not offsets into the padded sequence.
    """
    if not isinstance(args, tuple) or not isinstance(kwargs, Mapping):
        raise InvalidInputError("cache_length takes a forward call's (args tuple, kwargs mapping)")
    for value in (*kwargs.values(), *args):
        if isinstance(value, Cache):
            return int(value.get_seq_length())
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, torch.Tensor) and cache_position.numel():
        return int(cache_position.reshape(-1)[0])
    return 0


def _sequence_length(args: tuple, kwargs: Mapping[str, Any]) -> int | None:
    ids = kwargs.get("input_ids", args[0] if args else None)
    ref = ids if isinstance(ids, torch.Tensor) else kwargs.get("inputs_embeds")
    return int(ref.shape[1]) if isinstance(ref, torch.Tensor) and ref.ndim >= 2 else None


class Intervention:
    """Base class: hooks on chosen decoder blocks, installed on ``__enter__`` and removed on ``__exit__``.

    Subclasses implement :meth:`edit`; the base reads and writes each block's output, tracks positions across a
    cached ``generate`` and moves tensors to each block's device and dtype (:meth:`on_block`).
    """

    def __init__(self, model: Any, layers: int | Iterable[int], positions: Positions | str = "all",
                 prompt_length: int | None = None):
        self.backend: Backend = as_backend(model)
        self.info = self.backend.info
        self.layers = self.backend.layers(layers)
        self.positions = as_choice(Positions, positions, "positions")
        if prompt_length is not None and check_int(prompt_length, "prompt_length") < 1:
            raise InvalidInputError(f"prompt_length must be a positive integer, got {prompt_length}")
        self._fixed_prompt_length = prompt_length
        self._prompt_length: int | None = prompt_length
        self._past = 0
        self._handles: list[Any] = []
        self._cache: dict[tuple, torch.Tensor] = {}

    # -- subclass API -------------------------------------------------------------------------------------------
    def edit(self, layer: int, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Return the edited ``hidden [batch, seq, d]`` (given in float32 or wider, on the block's device; the base
        rounds the result to the block's dtype); ``mask [1, seq, 1]`` selects positions (or None: all)."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """What this intervention does, as plain data (for reports and result metadata)."""
        return {"type": type(self).__name__, "layers": list(self.layers), "positions": self.positions.value}

    def on_block(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``t`` on ``like``'s device and in its dtype (copied once per device and dtype, then reused): pass the
        ``hidden`` that :meth:`edit` receives as ``like``."""
        key = (id(t), like.device, like.dtype)
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = t.to(device=like.device, dtype=like.dtype)
        return got

    # -- plumbing -----------------------------------------------------------------------------------------------
    def _position_mask(self, hidden: torch.Tensor) -> torch.Tensor | None:
        if self.positions == Positions.ALL:
            return None
        seq = hidden.shape[1]
        pos = torch.arange(self._past, self._past + seq, device=hidden.device)
        plen = self._prompt_length if self._prompt_length is not None else seq
        m = pos < plen if self.positions == Positions.PROMPT else pos >= plen - 1
        return m.view(1, seq, 1)

    def _pre_body(self, module, args, kwargs):
        self._past = cache_length(args, kwargs)
        if self._past == 0 and self._fixed_prompt_length is None:
            self._prompt_length = _sequence_length(args, kwargs)

    def _hook(self, layer: int):
        def hook(module, args, out):
            hidden = block_output(out)
            work = hidden.to(torch.promote_types(hidden.dtype, torch.float32))  # no copy for a float32 model
            edited = self.edit(layer, work, self._position_mask(hidden))
            return replace_block_output(out, edited.to(hidden.dtype))

        return hook

    def __enter__(self):
        if self._handles:
            raise InvalidInputError(f"{type(self).__name__} is already active; an intervention can be entered once at a time")
        blocks = self.backend.loaded.layers.blocks
        try:
            self._handles.append(
                self.backend.loaded.layers.body.register_forward_pre_hook(self._pre_body, with_kwargs=True)
            )
            for L in self.layers:
                self._handles.append(blocks[L].register_forward_hook(self._hook(L)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this intervention installed (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._cache.clear()
        self._prompt_length = self._fixed_prompt_length
        self._past = 0

    @property
    def active(self) -> bool:
        return bool(self._handles)


def coef_tensor(coef: Any, arg: str = "coef") -> torch.Tensor:
    """A steering coefficient as a float32 tensor: a finite number (0-d) or one finite number per batch row (1-d).

    Accepts a real number, a 0-d/1-d real tensor or array, or a list of numbers; refuses strings, bools, NaN and
    infinities, empty or multi-dimensional tensors, naming ``arg``."""
    if isinstance(coef, np.ndarray):
        if coef.dtype.kind not in "iuf":
            raise InvalidInputError(f"{arg} must hold real numbers, got an array of dtype {coef.dtype}")
        coef = torch.from_numpy(coef)
    if isinstance(coef, torch.Tensor):
        if coef.dtype == torch.bool or coef.is_complex():
            raise InvalidInputError(f"{arg} must hold real numbers, got a tensor of dtype {coef.dtype}")
        t = coef.detach().to("cpu", torch.float32)
    elif isinstance(coef, numbers.Real) and not isinstance(coef, bool):
        t = torch.tensor(float(coef), dtype=torch.float32)
    elif isinstance(coef, Sequence) and not isinstance(coef, (str, bytes)):
        for i, c in enumerate(coef):
            if isinstance(c, bool) or not isinstance(c, numbers.Real):
                raise InvalidInputError(f"{arg}[{i}] must be a number, got {type(c).__name__} {c!r}")
        t = torch.tensor([float(c) for c in coef], dtype=torch.float32)
    else:
        raise InvalidInputError(f"{arg} must be a number or one number per batch row (a list or a [batch] tensor), "
                                f"got {type(coef).__name__} {coef!r}")
    if t.ndim > 1:
        raise InvalidInputError(f"{arg} must be a number or a [batch] tensor, got shape {tuple(t.shape)}")
    if t.ndim == 1 and t.numel() == 0:
        raise InvalidInputError(f"{arg} is empty; pass a number or one coefficient per batch row")
    if not torch.isfinite(t).all():
        raise InvalidInputError(f"{arg} holds NaN or infinite values: {t.tolist()}")
    return t


class Steer(Intervention):
    """Add ``coef * vector`` to the output of each chosen block (at the chosen positions).

    ``vector``: a PersonaVector, a ``[d]`` tensor (same at every layer) or ``[n_layers, d]``. ``coef``: a number
    or a ``[batch]`` tensor (one per row). See the module docstring for ``unit``, ``reference`` and ``positions``.
    """

    def __init__(self, model: Any, vector: Any, layers: int | Iterable[int], coef: float | Sequence[float] | torch.Tensor = 1.0,
                 *, unit: Unit | str = "raw", reference: Any = None, positions: Positions | str = "all",
                 prompt_length: int | None = None):
        super().__init__(model, layers, positions, prompt_length)
        self.unit = as_choice(Unit, unit, "unit")
        vecs = layer_vectors(vector, self.info, self.layers, "steering vector")
        self.coef = coef_tensor(coef)
        sizes = layer_units(self.unit, self.info, vecs, vector, reference, "steering vector")
        self.scale: dict[int, float] = unit_scales(vecs, self.unit, sizes)
        self.unit_sizes = {L: float(sizes[L]) for L in self.layers} if sizes is not None else None
        self.vectors = {L: vecs[L] * self.scale[L] for L in self.layers}
        self.name = name_of(vector)

    def edit(self, layer, hidden, mask):
        v = self.on_block(self.vectors[layer], hidden)
        c = self.on_block(self.coef, hidden)
        if c.ndim == 1:
            if c.shape[0] != hidden.shape[0]:
                raise InvalidInputError(
                    f"coef has {c.shape[0]} entries but the batch has {hidden.shape[0]} rows; pass one per row"
                )
            delta = c.view(-1, 1, 1) * v
        else:
            delta = c * v
        if mask is not None:
            delta = delta * mask.to(hidden.dtype)
        return hidden + delta

    def record(self):
        return {**super().record(), "vector": self.name, "coef": self.coef.tolist(), "unit": self.unit.value,
                "scale_per_layer": {str(L): s for L, s in self.scale.items()},
                "unit_size_per_layer": None if self.unit_sizes is None else
                {str(L): s for L, s in self.unit_sizes.items()}}


class Ablate(Intervention):
    """Project the direction of ``vector`` out of each chosen block's output: ``h - (h . u) u``."""

    def __init__(self, model: Any, vector: Any, layers: int | Iterable[int], *, positions: Positions | str = "all",
                 prompt_length: int | None = None):
        super().__init__(model, layers, positions, prompt_length)
        vecs = layer_vectors(vector, self.info, self.layers, "ablation vector")
        self.units = {L: unit(vecs[L], "ablation vector", L) for L in self.layers}
        self.name = name_of(vector)

    def edit(self, layer, hidden, mask):
        u = self.on_block(self.units[layer], hidden)
        delta = (hidden @ u).unsqueeze(-1) * u
        if mask is not None:
            delta = delta * mask.to(hidden.dtype)
        return hidden - delta

    def record(self):
        return {**super().record(), "vector": self.name}


__all__ = ["Intervention", "Steer", "Ablate", "reference_norms", "layer_vectors", "coef_tensor", "cache_length",
           "name_of"]
