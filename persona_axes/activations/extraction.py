"""Resumable extraction: capture activations for many conversations into one file, checkpointing as it goes.

``extract(model, conversations, path)`` captures ``chunk_size`` conversations at a time and writes each finished
chunk atomically to ``<path>.partial/chunk-<start>-<end>.safetensors``, stamped with a *fingerprint* of the run:
the model (name, shape, dtype, backend), the layers, the span (``which``), the reduction and every conversation's
token ids. Called again after a crash or a kill, it loads the finished chunks and computes only the rest. A
checkpoint with another fingerprint is refused with :class:`StaleCheckpointError` (``restart=True`` discards it);
an unreadable one with :class:`FileFormatError`. Once every chunk is done, the result is written atomically to
``path`` (fingerprint in its metadata) and the partial folder is deleted; calling again then loads ``path`` and
computes nothing.

The per-conversation ``metadata`` (labels such as ids or judge scores) is not part of the fingerprint, since it
does not change any value: reused results get the labels of the current call. ``batch_size`` and ``chunk_size``
are not part of it either; a run resumed with other values can differ from an uninterrupted one in the last bits
of float32 (another batch composition), never in what was computed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from persona_axes.activations.container import Activations
from persona_axes.activations.readers.base import Backend, as_backend
from persona_axes.activations.batch import (
    Reduction,
    capture,
    check_metadata,
    check_options,
    item_metadata,
    render_all,
    span_selector,
)
from persona_axes.model.chat import RenderedChat
from persona_axes.errors import (
    ConversationError,
    FileFormatError,
    InvalidInputError,
    ModelMismatchError,
    StaleCheckpointError,
)
from persona_axes.files import exclusive_lock

log = logging.getLogger(__name__)

FINGERPRINT_KEY = "extract_fingerprint"
RUN_KEY = "extract_run"  # a readable summary of what the fingerprint covers, to say *what* differs
_FINGERPRINT_VERSION = 1


@dataclass
class Extraction:
    """What :func:`extract` did: the activations (as saved at ``path``), the conversations it computed in this
    call (indices into the input), and how many it reused from a checkpoint or a finished file."""

    activations: Activations
    path: Path
    computed: list[int] = field(default_factory=list)
    reused: int = 0
    fingerprint: str = ""


def partial_dir(path: str | os.PathLike) -> Path:
    """The checkpoint folder of an extraction into ``path``: ``<path>.partial``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def extract(
    model: Any,
    conversations: Sequence[Sequence[Mapping[str, str]] | RenderedChat],
    path: str | os.PathLike,
    *,
    layers: int | Sequence[int] | None = None,
    which: str | int = "last_assistant",
    reduce: Reduction = "mean",
    metadata: Sequence[Mapping[str, Any]] | None = None,
    batch_size: int = 16,
    chunk_size: int = 64,
    padding_side: Literal["right", "left"] = "right",
    add_generation_prompt: bool = False,
    backend: str = "hf",
    restart: bool = False,
    progress: bool = True,
) -> Extraction:
    """Capture like :func:`~persona_axes.activations.batch.capture` into the safetensors file ``path``, resumably.

    Returns an :class:`Extraction`; its ``activations`` are ``[n_items, n_layers, d]`` at the output of decoder
    blocks ``layers`` (0-based), exactly as ``Activations.load(path)`` gives them. ``chunk_size`` conversations are
    computed between checkpoints. ``restart=True`` discards any checkpoint and does not reuse a finished file.
    """
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise InvalidInputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    red, pad_side, batch_size = check_options(reduce, padding_side, batch_size, {
        "add_generation_prompt": add_generation_prompt, "restart": restart, "progress": progress})
    reduce, padding_side, which = red.value, pad_side.value, span_selector(which)
    if isinstance(conversations, (str, bytes, Mapping)):
        raise ConversationError("conversations must be a list of conversations (each a list of messages)")
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"path must be the path of the .safetensors file to write, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{path} is a folder; give the path of the .safetensors file to write")
    be = as_backend(model, backend)
    layer_list = be.layers(layers)
    conversations = list(conversations)
    check_metadata(metadata, len(conversations))
    rendered = render_all(be.tokenizer, conversations, add_generation_prompt)
    items = item_metadata(rendered, which, reduce, metadata)  # also checks every span before any work
    run = _run_summary(be, layer_list, which, reduce, len(rendered))
    fp = _fingerprint(run, rendered)
    n = len(rendered)
    partial = partial_dir(path)

    if not restart:
        done = _load_finished(path, fp, be)
        if done is not None and len(done) == len(items):
            if partial.exists():  # killed after writing the result but before cleaning up
                with _locked(path):
                    shutil.rmtree(partial, ignore_errors=True)
            acts = _labelled(done, items, fp, run)
            if json.loads(json.dumps(acts.items)) != done.items:  # new labels (new judge scores, say), same values
                acts.save(path)
            return Extraction(acts, path, computed=[], reused=n, fingerprint=fp)

    with _locked(path):
        if restart:
            for p in _chunk_files(partial):
                p.unlink()
        chunks = _load_chunks(partial, fp, run, be, rendered, which, reduce)
        todo = _missing_ranges(n, [(a, b) for a, b, _ in chunks], chunk_size)
        reused = n - sum(b - a for a, b in todo)
        computed: list[int] = []
        bar = tqdm(total=n, initial=reused, desc="extract", unit="conv", disable=not progress, leave=False)
        try:
            for a, b in todo:
                part = capture(be, rendered[a:b], layers=layer_list, which=which, reduce=reduce,
                               batch_size=batch_size, padding_side=padding_side, progress=False)
                part.extra = {FINGERPRINT_KEY: fp, RUN_KEY: json.dumps(run, sort_keys=True),
                              "chunk_start": str(a), "chunk_end": str(b)}
                part.save(partial / f"chunk-{a:08d}-{b:08d}.safetensors")
                chunks.append((a, b, part))
                computed.extend(range(a, b))
                bar.update(b - a)
        finally:
            bar.close()
        chunks.sort(key=lambda c: c[0])
        joined = Activations.concat([c[2] for c in chunks])
        acts = _labelled(joined, items, fp, run)
        acts.save(path)
        shutil.rmtree(partial, ignore_errors=True)
    return Extraction(acts, path, computed=computed, reused=reused, fingerprint=fp)


# ---------------------------------------------------------------------------------------------------------------


def _run_summary(be: Backend, layers: list[int], which: str | int, reduce: str, n: int) -> dict[str, Any]:
    return {"model": be.info.name, "num_layers": be.info.n_layers, "hidden_size": be.info.hidden_size,
            "layer_site": be.info.layer_site, "dtype": str(be.dtype).replace("torch.", ""),
            "backend": getattr(be, "kind", type(be).__name__), "layers": layers, "which": which, "reduce": reduce,
            "n_conversations": n}


def _fingerprint(run: dict[str, Any], rendered: Sequence[RenderedChat]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": _FINGERPRINT_VERSION, **run}, sort_keys=True).encode())
    for r in rendered:
        h.update(b"\x00" + json.dumps([int(t) for t in r.input_ids]).encode())
    return h.hexdigest()


def _labelled(acts: Activations, items: list[dict[str, Any]], fp: str, run: dict[str, Any]) -> Activations:
    """``acts`` with this call's item metadata, and the fingerprint and run summary as extra metadata."""
    return Activations(values=acts.values, layers=acts.layers, items=[dict(it) for it in items], model=acts.model,
                       reduction=acts.reduction,
                       extra={FINGERPRINT_KEY: fp, RUN_KEY: json.dumps(run, sort_keys=True)})


def _load_finished(path: Path, fp: str, be: Backend) -> Activations | None:
    """The finished file at ``path`` if it holds this very extraction; ``None`` if there is none or it holds
    something else (it is then recomputed and replaced, as any output file would be)."""
    if not path.exists():
        return None
    try:
        acts = Activations.load(path, model=be.info)
    except (FileFormatError, ModelMismatchError) as e:
        log.warning("%s cannot be reused (%s); extracting again and replacing it", path, e)
        return None
    if acts.extra.get(FINGERPRINT_KEY) != fp:
        log.info("%s holds another extraction; extracting again and replacing it", path)
        return None
    return acts


def _chunk_files(partial: Path) -> list[Path]:
    return sorted(partial.glob("chunk-*.safetensors")) if partial.is_dir() else []


def _load_chunks(partial: Path, fp: str, run: dict[str, Any], be: Backend, rendered: Sequence[RenderedChat],
                 which: str | int, reduce: str) -> list[tuple[int, int, Activations]]:
    """Every finished chunk in ``partial``, checked against this run; refuse stale or damaged ones."""
    n = len(rendered)
    out: list[tuple[int, int, Activations]] = []
    covered = [False] * n
    for p in _chunk_files(partial):
        fix = f"delete {partial} (or pass restart=True / --restart) to extract from scratch"
        try:
            part = Activations.load(p, model=be.info)
        except ModelMismatchError as e:
            raise StaleCheckpointError(f"checkpoint {p} was made with another model ({e}); {fix}") from e
        except FileFormatError as e:
            raise FileFormatError(f"checkpoint {p} is unreadable ({e}); {fix}") from e
        if part.extra.get(FINGERPRINT_KEY) != fp:
            raise StaleCheckpointError(f"checkpoint {p} belongs to another extraction: {_what_differs(part, run)}; "
                                       f"rerun with the same inputs and options to resume it, or {fix}")
        try:
            a, b = int(part.extra["chunk_start"]), int(part.extra["chunk_end"])
        except (KeyError, ValueError) as e:
            raise FileFormatError(f"checkpoint {p} lacks a valid chunk range ({e}); {fix}") from e
        if not 0 <= a < b <= n or any(covered[a:b]):
            raise FileFormatError(f"checkpoint {p} covers conversations {a}..{b - 1}, which overlap another "
                                  f"chunk or exceed the {n} conversations; {fix}")
        want = len(item_metadata(rendered[a:b], which, reduce))
        if len(part) != want:
            raise FileFormatError(f"checkpoint {p} holds {len(part)} items where conversations {a}..{b - 1} give "
                                  f"{want}; {fix}")
        covered[a:b] = [True] * (b - a)
        out.append((a, b, part))
    return out


def _what_differs(part: Activations, run: dict[str, Any]) -> str:
    try:
        old = json.loads(part.extra.get(RUN_KEY, "{}"))
    except json.JSONDecodeError:
        old = {}
    diffs = [f"{k} {old.get(k)!r} there, {v!r} here" for k, v in run.items() if k in old and old[k] != v]
    return ", ".join(diffs) if diffs else "the conversations' tokens differ (other inputs, order or tokenizer)"


def _missing_ranges(n: int, done: list[tuple[int, int]], chunk_size: int) -> list[tuple[int, int]]:
    """The conversation ranges not covered by ``done``, cut into pieces of at most ``chunk_size``."""
    covered = [False] * n
    for a, b in done:
        covered[a:b] = [True] * (b - a)
    out, i = [], 0
    while i < n:
        if covered[i]:
            i += 1
            continue
        j = i
        while j < n and not covered[j] and j - i < chunk_size:
            j += 1
        out.append((i, j))
        i = j
    return out


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the lock in ``path``'s checkpoint folder, so that two processes never extract into one file at once."""
    with exclusive_lock(partial_dir(path) / ".lock",
                        f"another process is extracting into {path}; wait for it to finish or write elsewhere"):
        yield


__all__ = ["Extraction", "extract", "partial_dir"]
