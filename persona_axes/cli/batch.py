"""Batch work for ``steer``, ``cap`` and ``monitor``: many conversations in (``--input``), JSONL results out
(``--out``), and the projection of a reply onto an axis as ``monitor`` measures it.

Input files:

- ``.jsonl``: one JSON object a line, ``{"messages": [{"role": ..., "content": ...}, ...]}`` (the common chat
  format; other keys are kept as the line's ``meta``), or ``{"prompt": "...", "system": "..."}``;
- any other suffix (e.g. ``.txt``): one user prompt a line.

Blank lines are skipped; a line that does not parse is an error naming its line number (never skipped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from persona_axes.errors import FileFormatError

INPUT_HELP = ("a file of many conversations: .jsonl with one {\"messages\": [...]} (or {\"prompt\": ...}) per line, "
              "or a text file with one prompt per line")


def read_conversations(path: str | os.PathLike, *, system: str | None = None) -> list[dict[str, Any]]:
    """``[{"messages": [...], "meta": {...}, "line": n}]`` from an input file (see the module docstring).
    ``system`` is put first in conversations that have no system message of their own."""
    from persona_axes.model.chat import validate_messages

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--input {str(path)!r} does not exist")
    out = []
    jsonl = p.suffix.lower() == ".jsonl"
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        meta: dict[str, Any] = {}
        if jsonl:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise FileFormatError(f"{p}: line {n} is not valid JSON ({e})") from e
            if not isinstance(obj, dict) or not ("messages" in obj or "prompt" in obj):
                raise FileFormatError(f"{p}: line {n} must be an object with \"messages\" (a list of {{role, content}}) "
                                      "or \"prompt\"")
            if "messages" in obj:
                msgs = obj["messages"]
            else:
                msgs = [{"role": "user", "content": obj["prompt"]}]
                if obj.get("system"):
                    msgs.insert(0, {"role": "system", "content": obj["system"]})
            meta = {k: v for k, v in obj.items() if k not in ("messages", "prompt", "system")}
        else:
            msgs = [{"role": "user", "content": line.strip()}]
        try:
            msgs = validate_messages(msgs)
        except Exception as e:  # ConversationError / InvalidInputError: name the line
            raise FileFormatError(f"{p}: line {n}: {e}") from e
        if system and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": system}] + msgs
        out.append({"messages": msgs, "meta": meta, "line": n})
    if not out:
        raise FileFormatError(f"{p}: no conversations in it")
    return out


def ending_with_user(convs: Sequence[dict[str, Any]], path: str) -> list[list[dict[str, str]]]:
    """The conversations to generate replies for; each must end with a user message."""
    bad = [c["line"] for c in convs if c["messages"][-1]["role"] != "user"]
    if bad:
        raise FileFormatError(f"{path}: the conversation on line(s) {bad[:10]} does not end with a user message, so "
                              "there is nothing to reply to (drop the last assistant message)")
    return [c["messages"] for c in convs]


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    """One JSON object a line, written atomically."""
    from persona_axes.files import atomic_write

    with atomic_write(path, "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return Path(path)


def reply_projections(loaded: Any, convs: Sequence[Sequence[dict[str, str]]], replies: Sequence[str], axis: Any,
                      layer: int) -> list[float | None]:
    """Mean projection of each reply's tokens onto the unit ``axis`` at ``layer``, the model re-reading the
    conversation with no intervention (what ``persona-axes monitor`` reports for that turn); None for an empty
    reply."""
    from persona_axes.activations.batch import capture
    from persona_axes.core import unit
    from persona_axes.steering.interventions import layer_vectors

    u = unit(layer_vectors(axis, loaded.info, [layer], "axis")[layer], "axis", layer).to(torch.float64)
    keep = [i for i, r in enumerate(replies) if r.strip()]  # an empty reply has no tokens to project
    out: list[float | None] = [None] * len(replies)
    if keep:
        full = [list(convs[i]) + [{"role": "assistant", "content": replies[i]}] for i in keep]
        acts = capture(loaded, full, layers=[layer], which="last_assistant", progress=False)
        for i, x in zip(keep, (acts.at(layer).to(torch.float64) @ u).tolist()):
            out[i] = float(x)
    return out


__all__ = ["INPUT_HELP", "ending_with_user", "read_conversations", "reply_projections", "write_jsonl"]
