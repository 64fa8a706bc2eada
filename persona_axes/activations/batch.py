"""Batched capture of residual-stream activations, reduced over the tokens of chosen messages.

``capture(model, conversations)`` renders each conversation with the chat template, runs the decoder body in
length-sorted padded batches through a backend (HF hooks, TransformerLens or nnsight), and reduces each layer's
hidden states over each selected message's *content* tokens as soon as the layer is computed. Memory holds one
batch's forward pass plus the reduced results, never every token of every layer. The forward pass stops after
the last requested layer, and the LM head is never run.

"Layer L" is the output of decoder block L, 0-based (``hidden_states[L + 1]`` in HF terms, except for the last
block, whose ``hidden_states`` entry is taken after the final norm).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from persona_axes.activations.container import Activations, nonfinite_rows
from persona_axes.activations.readers.base import Backend, as_backend
from persona_axes.core import PaddingSide, Reduce, Which, as_choice, check_int
from persona_axes.errors import ConversationError, InvalidInputError, PersonaAxesError, SpanError
from persona_axes.model.chat import MessageSpan, RenderedChat, render_chat

Reduction = Literal["mean", "last", "all", "first", "prompt_end"]
REDUCTIONS = Reduce.values()


def span_selector(which: Any) -> str | int:
    """``which`` as :meth:`RenderedChat.select` takes it: a message index, or a selector name (a :class:`Which`
    member or its string; ``"all"`` means every message, like ``"messages"``). Unknown names fail in ``select``."""
    if isinstance(which, bool) or not isinstance(which, (str, int)):
        raise SpanError(f"which={which!r} is not a valid span selector; use 'last_assistant', 'assistant', 'user', "
                        "'system', 'messages', 'sequence' or a message index")
    if isinstance(which, Which):
        which = which.value
    return "messages" if which == Which.ALL.value else which


def check_first_n(first_n: Any) -> int:
    """``first_n``: a positive integer, used by ``reduce="first"`` only (the default 8 is ignored by the others)."""
    return check_int(first_n, "first_n", minimum=1)


def check_options(reduce: Any, padding_side: Any, batch_size: Any, flags: dict[str, Any]) -> tuple[Reduce, PaddingSide, int]:
    """The capture options, checked at the boundary: ``reduce`` a :class:`Reduce`, ``padding_side`` a
    :class:`PaddingSide`, ``batch_size`` a positive integer, every entry of ``flags`` a bool."""
    red = as_choice(Reduce, reduce, "reduce")
    if not (isinstance(padding_side, str) and padding_side in PaddingSide.values()):
        raise InvalidInputError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    for arg, v in flags.items():
        if not isinstance(v, bool):
            raise InvalidInputError(f"{arg} must be True or False, got {v!r}")
    return red, PaddingSide(padding_side), check_int(batch_size, "batch_size", minimum=1)


@dataclass(frozen=True)
class _Item:
    conv: int  # index of the conversation
    span: MessageSpan
    out: int  # first output row
    n_out: int  # rows it fills (1, or n tokens for reduce="all")


def _with_context(e: PersonaAxesError, prefix: str) -> PersonaAxesError:
    err = type(e)(f"{prefix}: {e}")
    err.__cause__ = e
    return err


def render_all(
    tokenizer: Any, conversations: Iterable[Sequence[Mapping[str, str]] | RenderedChat], add_generation_prompt: bool
) -> list[RenderedChat]:
    """Render every conversation, naming the index of any that fails."""
    out = []
    for i, conv in enumerate(conversations):
        if isinstance(conv, RenderedChat):
            out.append(conv)
            continue
        try:
            out.append(render_chat(tokenizer, conv, add_generation_prompt=add_generation_prompt))
        except PersonaAxesError as e:
            raise _with_context(e, f"conversation {i}") from e
    if not out:
        raise ConversationError("no conversations were given; pass a list of message lists")
    return out


def _plan(rendered: list[RenderedChat], which: str | int, reduce: str) -> tuple[list[list[_Item]], int]:
    """Items per conversation, and the total number of output rows."""
    if reduce == "prompt_end" and which == "sequence":
        raise SpanError("reduce='prompt_end' reads the token before a message's content; 'sequence' has none before "
                        "it: choose a message span (e.g. which='last_assistant')")
    plan: list[list[_Item]] = []
    row = 0
    for ci, r in enumerate(rendered):
        try:
            spans = r.select(which)
        except SpanError as e:
            raise _with_context(e, f"conversation {ci}") from e
        items = []
        for s in spans:
            if len(s) == 0:
                raise SpanError(
                    f"conversation {ci}: message {s.index} ({s.role}) has no content tokens to reduce over; "
                    "drop empty messages or choose another span"
                )
            if reduce == "prompt_end" and s.start < 1:
                raise SpanError(f"conversation {ci}: message {s.index} ({s.role}) starts at the first token, so "
                                "there is no prompt token before it for reduce='prompt_end'")
            n_out = len(s) if reduce == "all" else 1
            items.append(_Item(conv=ci, span=s, out=row, n_out=n_out))
            row += n_out
        plan.append(items)
    return plan, row


def check_metadata(metadata: Sequence[Mapping[str, Any]] | None, n: int) -> None:
    """``metadata`` must be ``None`` or one dict per conversation."""
    if metadata is None:
        return
    if isinstance(metadata, (str, bytes, Mapping)) or not isinstance(metadata, Sequence):
        raise InvalidInputError(
            f"metadata must be a list of dicts (one per conversation), got {type(metadata).__name__}"
        )
    if len(metadata) != n:
        raise InvalidInputError(f"{len(metadata)} metadata dicts for {n} conversations")
    for i, m in enumerate(metadata):
        if not isinstance(m, Mapping):
            raise InvalidInputError(f"metadata[{i}] must be a dict of item fields, got {type(m).__name__} {m!r:.40}")


def _plan_items(
    plan: list[list[_Item]], n_rows: int, reduce: str, metadata: Sequence[Mapping[str, Any]] | None,
    first_n: int = 8,
) -> list[dict[str, Any]]:
    """One metadata dict per output row, in row order (``reduce="first"`` adds ``n_reduced``, the tokens averaged;
    ``"prompt_end"`` adds ``position``, the token read)."""
    rows: list[dict[str, Any]] = [None] * n_rows  # type: ignore[list-item]
    for ci, items in enumerate(plan):
        for it in items:
            base = _item_meta(it, metadata[ci] if metadata is not None else None)
            if reduce == "first":
                base["n_reduced"] = min(first_n, len(it.span))
            elif reduce == "prompt_end":
                base["position"] = it.span.start - 1
            if reduce == "all":
                for k in range(it.n_out):
                    rows[it.out + k] = {**base, "position": it.span.start + k}
            else:
                rows[it.out] = base
    return rows


def item_metadata(
    rendered: Sequence[RenderedChat], which: str | int = "last_assistant", reduce: Reduction = "mean",
    metadata: Sequence[Mapping[str, Any]] | None = None, first_n: int = 8,
) -> list[dict[str, Any]]:
    """The item metadata :func:`capture` would give these rendered conversations, one dict per output row, without
    running the model (``conversation`` is the index in ``rendered``; ``metadata[i]`` is merged into conversation
    ``i``'s items)."""
    red = as_choice(Reduce, reduce, "reduce")
    first_n = check_first_n(first_n)
    check_metadata(metadata, len(rendered))
    plan, n_rows = _plan(list(rendered), span_selector(which), red.value)
    return _plan_items(plan, n_rows, red.value, metadata, first_n)


def _item_meta(item: _Item, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    meta = {
        "conversation": item.conv,
        "message": item.span.index,
        "role": item.span.role,
        "turn": item.span.turn,
        "n_tokens": len(item.span),
    }
    if extra:
        meta.update(extra)
    return meta


def capture(
    model: Any,
    conversations: Sequence[Sequence[Mapping[str, str]] | RenderedChat],
    *,
    layers: int | Iterable[int] | None = None,
    which: str | int | Which = "last_assistant",
    reduce: Reduction | Reduce = "mean",
    first_n: int = 8,
    batch_size: int = 16,
    padding_side: Literal["right", "left"] | PaddingSide = "right",
    add_generation_prompt: bool = False,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    backend: str = "hf",
    progress: bool = True,
) -> Activations:
    """Capture residual activations ``[n_items, n_layers, d]`` over chosen message spans.

    Args:
        model: a Backend, a ``LoadedModel`` from ``load_model()`` or ``(model, tokenizer)`` (see
            :func:`~persona_axes.activations.readers.base.as_backend`).
        conversations: message lists (``[{"role": ..., "content": ...}, ...]``) or pre-rendered chats.
        layers: block indices (0-based output of block L; negatives count from the end); ``None`` = all.
        which: the span(s) to reduce over in each conversation: ``"last_assistant"`` (default), ``"assistant"``,
            ``"user"``, ``"system"``, ``"messages"`` (alias ``"all"``), ``"sequence"`` or a message index (a
            :class:`~persona_axes.core.Which` member works too). Each selected span is one item (with
            ``reduce="all"``, each of its tokens is).
        reduce: ``"mean"`` over the span's content tokens, ``"last"`` token, ``"all"`` tokens (opt-in), ``"first"``
            (the mean of the first ``first_n`` content tokens, all of them if fewer) or ``"prompt_end"`` (the one
            token before the content: with ``which="last_assistant"``, the last token of the generation prompt,
            i.e. where the reply is decided before any of it is written); a :class:`~persona_axes.core.Reduce` or
            its string. Results are float32 whatever the model's dtype: each
            layer's hidden states are reduced in float32 from the values the model computed in its own dtype.
        first_n: how many leading content tokens ``reduce="first"`` averages (a positive integer; default 8).
        batch_size: conversations per forward pass; batches are sorted by length to limit padding.
        padding_side: where padding goes; both give the same result (positions ignore padding).
        metadata: one dict per conversation, merged into each of its items' metadata.
        backend: ``"hf"``, ``"tlens"`` or ``"nnsight"`` when ``model`` is not already a Backend.
    """
    red, pad_side, batch_size = check_options(reduce, padding_side, batch_size,
                                              {"add_generation_prompt": add_generation_prompt, "progress": progress})
    first_n = check_first_n(first_n)
    reduce, padding_side = red.value, pad_side.value
    which = span_selector(which)
    if isinstance(conversations, (str, bytes, Mapping)) or not isinstance(conversations, Iterable):
        raise ConversationError("conversations must be a list of conversations (each a list of messages)")
    be: Backend = as_backend(model, backend)
    layer_list = be.layers(layers)
    conversations = list(conversations)
    check_metadata(metadata, len(conversations))
    rendered = render_all(be.tokenizer, conversations, add_generation_prompt)
    plan, n_rows = _plan(rendered, which, reduce)

    d = be.info.hidden_size
    values = torch.empty(n_rows, len(layer_list), d, dtype=torch.float32)
    items_meta = _plan_items(plan, n_rows, reduce, metadata, first_n)
    layer_pos = {L: j for j, L in enumerate(layer_list)}

    device = be.device
    bar = tqdm(total=n_rows, desc="capture", unit="item", disable=not progress, leave=False)
    try:
        for batch, ids, mask, offsets in iter_batches(rendered, batch_size, padding_side, be.pad_token_id):
            width = ids.shape[1]
            rows = [(it, r * width + offsets[r]) for r, ci in enumerate(batch) for it in plan[ci]]
            reducer = _Reducer(rows, len(batch) * width, reduce, device, first_n)
            targets = [it.out + k for it, _ in rows for k in range(it.n_out)]
            target_idx = torch.tensor(targets, dtype=torch.long)

            def on_layer(L: int, hidden: torch.Tensor) -> None:
                flat = hidden.reshape(-1, hidden.shape[-1])
                values[target_idx, layer_pos[L]] = reducer(flat).to("cpu", torch.float32)

            be.run_layers(ids.to(device), mask.to(device), layer_list, on_layer)
            bar.update(len(targets))
    finally:
        bar.close()
    bad = nonfinite_rows(values)[:5]
    if bad:
        raise InvalidInputError(
            f"captured activations contain NaN/inf (first items: {bad}); the model produced non-finite hidden states "
            "(try float32 instead of float16)"
        )
    return Activations(values=values, layers=tuple(layer_list), items=items_meta, model=be.info, reduction=reduce)


def iter_batches(
    rendered: Sequence[RenderedChat], batch_size: int, padding_side: str, pad_id: int
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, list[int]]]:
    """Length-sorted (longest first) padded batches: ``(indices, input_ids [b, s], attention_mask [b, s],
    per-row offset of the first real token)``."""
    order = sorted(range(len(rendered)), key=lambda i: -len(rendered[i]))
    for b0 in range(0, len(order), batch_size):
        batch = order[b0 : b0 + batch_size]
        ids, mask, offsets = pad_batch([rendered[i].input_ids for i in batch], pad_id, padding_side)
        yield batch, ids, mask, offsets


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, side: str = "left"
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Pad token sequences to one width: ``(input_ids [b, s], attention_mask [b, s], offset of each row's first
    real token)``. Generation uses left padding, so every row's last prompt token sits at the same position."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = []
    for r, seq in enumerate(seqs):
        off = width - len(seq) if side == "left" else 0
        ids[r, off : off + len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[r, off : off + len(seq)] = 1
        offsets.append(off)
    return ids, mask, offsets


class _Reducer:
    """Reduces flattened hidden states ``[batch * seq, d]`` to one row per output with a single matmul or gather."""

    def __init__(self, rows: list[tuple[_Item, int]], n_flat: int, reduce: str, device: torch.device,
                 first_n: int = 8):
        self.reduce = reduce
        if reduce == "all":
            idx = [base + it.span.start + k for it, base in rows for k in range(it.n_out)]
            self.index = torch.tensor(idx, dtype=torch.long, device=device)
            return
        if reduce in ("last", "prompt_end"):
            idx = [base + (it.span.end - 1 if reduce == "last" else it.span.start - 1) for it, base in rows]
            self.index = torch.tensor(idx, dtype=torch.long, device=device)
            return
        self.reduce = "mean"  # "first" is a mean over a shorter window
        weights = torch.zeros(len(rows), n_flat, dtype=torch.float32)
        for j, (it, base) in enumerate(rows):
            end = it.span.end if reduce == "mean" else min(it.span.end, it.span.start + first_n)
            weights[j, base + it.span.start : base + end] = 1.0 / (end - it.span.start)
        self.weights = weights.to(device)

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        # A dispatched model (accelerate device_map) can hand back each layer on another device: follow it.
        if self.reduce == "mean":
            if self.weights.device != flat.device:
                self.weights = self.weights.to(flat.device)
            return self.weights @ flat.float()
        if self.index.device != flat.device:
            self.index = self.index.to(flat.device)
        return flat.index_select(0, self.index).float()


__all__ = ["capture", "check_first_n", "check_metadata", "check_options", "item_metadata", "iter_batches", "pad_batch", "render_all",
           "span_selector", "REDUCTIONS"]
