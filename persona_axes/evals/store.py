"""The evaluation result store: finished items of one evaluation in a JSONL file, keyed by item id, appended batch
by batch so a rerun skips what is done (the rollout store's rules, for plain JSON records).

Line 1 is a header ``{"evaluation": ..., "config": {...}}``: the settings the results depend on (model, sampling,
conditions, data). Opening a store with another config is refused with :class:`InvalidInputError` instead of mixing
two runs' numbers. Every record line is a JSON object with an ``"id"`` plus ``line_sha256`` (the check of
:func:`persona_axes.runs.store.line_check`); a line that fails its check is refused with
:class:`FileFormatError`, except a torn LAST line without its newline (a killed write), which is dropped with a
warning and redone. Appends are flushed and fsynced; writers hold a ``.lock`` file beside the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from persona_axes.errors import FileFormatError, InvalidInputError
from persona_axes.files import exclusive_lock
from persona_axes.runs.store import LINE_CHECK_KEY, line_check, read_checked_line

__all__ = ["ResultStore"]


def _encode(record: Mapping[str, Any]) -> bytes:
    d = dict(record)
    d.pop(LINE_CHECK_KEY, None)
    try:
        d[LINE_CHECK_KEY] = line_check(d)
        return (json.dumps(d, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"a result record must be plain JSON without NaN or infinities (use None): {e}") from e


def _canonical(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class ResultStore:
    """Results of one evaluation run, keyed by item id, in ``path`` (JSONL).

    >>> store = ResultStore("runs/drift.jsonl", "drift", {"model": "SmolLM2-135M-Instruct", "turns": 5})
    >>> todo = [c for c in conversations if c.id not in store]
    >>> with store.writing():
    ...     store.append([{"id": "coding-01", "projections": [...]}])
    """

    def __init__(self, path: str | os.PathLike, evaluation: str, config: Mapping[str, Any]):
        if not isinstance(evaluation, str) or not evaluation:
            raise InvalidInputError(f"evaluation must be a non-empty string, got {evaluation!r}")
        if not isinstance(config, Mapping):
            raise InvalidInputError(f"config must be a mapping of the run's settings, got {type(config).__name__}")
        self.path = Path(path)
        if self.path.is_dir():
            raise InvalidInputError(f"{self.path} is a folder; give the path of a .jsonl file")
        self.evaluation = evaluation
        self.config = json.loads(_canonical(config))
        self._records: dict[str, dict[str, Any]] = {}
        self._good_size: int | None = None
        if self.path.exists() and self.path.stat().st_size:
            self._load()

    # ---- reading

    def _parse(self, raw: bytes, number: int) -> dict[str, Any]:
        return read_checked_line(self.path, raw, number)

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        offset = 0
        for i, raw in enumerate(lines):
            start, offset = offset, offset + len(raw) + 1
            if not raw.strip():
                continue
            try:
                rec = self._parse(raw, i + 1)
            except FileFormatError:
                if i != len(lines) - 1 or i == 0:
                    raise
                warnings.warn(f"{self.path}: dropping the truncated last line {i + 1} (a run was interrupted while "
                              "writing it); its item will be evaluated again", UserWarning, stacklevel=3)
                self._good_size = start
                break
            if i == 0:
                self._check_header(rec)
                continue
            if not isinstance(rec.get("id"), str):
                raise FileFormatError(f"{self.path}, line {i + 1}: a result record needs a string \"id\"")
            self._records[rec["id"]] = rec
        if self._good_size is None and data and not data.endswith(b"\n"):
            self._good_size = len(data)

    def _check_header(self, header: Mapping[str, Any]) -> None:
        if header.get("evaluation") != self.evaluation or "config" not in header:
            raise FileFormatError(f"{self.path}: not a result store of the {self.evaluation!r} evaluation (its first "
                                  f"line says {header.get('evaluation')!r}); use another path")
        if _canonical(header["config"]) != _canonical(self.config):
            old, new = header["config"], self.config
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise InvalidInputError(f"{self.path} holds results of another run (settings differ in {diff}); use "
                                    "another output path, or delete the file to start over")

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._records

    def ids(self) -> set[str]:
        return set(self._records)

    def records(self) -> list[dict[str, Any]]:
        """Every finished record, in file order."""
        return [dict(r) for r in self._records.values()]

    def get(self, item_id: str) -> dict[str, Any] | None:
        rec = self._records.get(item_id)
        return None if rec is None else dict(rec)

    # ---- writing

    @contextlib.contextmanager
    def writing(self) -> Iterator[ResultStore]:
        """Hold the writer lock; a second writer of the same file gets :class:`InvalidInputError`."""
        with exclusive_lock(str(self.path) + ".lock", f"{self.path} is being written by another process; wait for "
                            "it or use another output path"):
            yield self

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append finished records (each with a string ``"id"``) and fsync them; an id seen before is replaced."""
        records = [dict(r) for r in records]
        for r in records:
            if not isinstance(r.get("id"), str) or not r["id"]:
                raise InvalidInputError(f"every result record needs a non-empty string 'id', got {r.get('id')!r}")
        if not records:
            return
        payload = b"".join(_encode(r) for r in records)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.exists() or self.path.stat().st_size == 0
        if new_file:
            payload = _encode({"evaluation": self.evaluation, "config": self.config}) + payload
        with open(self.path, "ab") as f:
            if self._good_size is not None:
                f.truncate(self._good_size)
                f.seek(self._good_size)
                with open(self.path, "rb") as r:
                    r.seek(max(self._good_size - 1, 0))
                    if self._good_size and r.read(1) != b"\n":
                        f.write(b"\n")
                self._good_size = None
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        for r in records:
            self._records[r["id"]] = json.loads(_encode(r))
            self._records[r["id"]].pop(LINE_CHECK_KEY, None)

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r}, {self.evaluation!r}, {len(self)} records)"
