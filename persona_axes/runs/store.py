"""The rollout store: finished :class:`Rollout` records in a JSONL file, one per line, each line checked.

Every line is one JSON object: the record's fields plus ``line_sha256``, the first 16 hex digits of the SHA-256 of
the record's canonical JSON (keys sorted, no spaces, UTF-8, without the check itself). Loading recomputes it, so a
flipped bit anywhere in a line is refused with :class:`~persona_axes.errors.FileFormatError` naming the file and
the line number, never skipped and never loaded as a different reply or score.

Generation appends each finished batch and flushes and fsyncs it, so a killed run loses at most the batch in
flight. The one documented exception to "refuse what does not check": a LAST line without its newline that is
cut short (a torn write from a kill) is dropped with a warning and cut off the file before the next append; its
rollout is generated again. A last line with its newline, or any other line, that fails is refused.

Lines written before the check existed (no ``line_sha256``) still load, with one warning naming the file and how
to re-stamp it (:meth:`RolloutStore.restamp`). Writers hold the store's lock (:meth:`RolloutStore.writing`): a
second process that tries to write the same store meanwhile is refused with a clear message instead of
interleaving lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from persona_axes.errors import FileFormatError, InvalidInputError
from persona_axes.files import exclusive_lock
from persona_axes.runs.requests import RolloutRequest

__all__ = ["Rollout", "RolloutStore", "LINE_CHECK_KEY", "line_check", "read_checked_line"]

#: The key of each line's own check.
LINE_CHECK_KEY = "line_sha256"

_REQUEST_FIELDS = tuple(f.name for f in fields(RolloutRequest))


@dataclass
class Rollout:
    """A finished rollout: the request's fields, the ``response``, the ``model`` name, the ``sampling`` settings
    (``SamplingConfig.to_dict()``, with the run's seed), the request's own ``item_seed``, ``created`` (ISO 8601,
    UTC), and ``judge``: ``{judge_name: {"score": ..., "rationale": ..., "raw": ...}}``."""

    id: str
    kind: str
    name: str
    polarity: str | None
    prompt_index: int
    question_id: str
    sample: int
    system: str
    question: str
    split: str | None
    response: str
    model: str
    sampling: dict[str, Any]
    item_seed: int
    created: str
    judge: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, request: RolloutRequest, **rest: Any) -> Rollout:
        """A record for ``request`` with the other fields given by name."""
        return cls(**{k: getattr(request, k) for k in _REQUEST_FIELDS}, **rest)

    @property
    def request(self) -> RolloutRequest:
        return RolloutRequest(**{k: getattr(self, k) for k in _REQUEST_FIELDS})

    def messages(self) -> list[dict[str, str]]:
        """The whole conversation: system (only if non-empty), user question, assistant response."""
        return [*self.request.messages(), {"role": "assistant", "content": self.response}]

    def score(self, judge_name: str) -> float | int | None:
        """The cached score from ``judge_name`` (trait scores stored as null read back as NaN), or None."""
        entry = self.judge.get(judge_name)
        if entry is None:
            return None
        value = entry.get("score")
        return float("nan") if value is None else value

    def item_metadata(self, judge_name: str | None = None) -> dict[str, Any]:
        """The per-item metadata captured activations carry for this rollout (what the pipeline and the CLI's
        ``extract`` store): id, kind, name, polarity, prompt_index, question_id, split (None = fit), sample, and with a
        ``judge_name`` its
        ``score`` (None when not judged or NaN)."""
        item: dict[str, Any] = {"id": self.id, "kind": self.kind, "name": self.name, "polarity": self.polarity,
                                "prompt_index": self.prompt_index, "question_id": self.question_id,
                                "split": self.split, "sample": self.sample}
        if judge_name is not None:
            s = self.score(judge_name)
            item["score"] = None if s is None or (isinstance(s, float) and math.isnan(s)) else s
        return item

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollout:
        if not isinstance(data, Mapping):
            raise FileFormatError(f"a rollout record must be a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data and n != "judge"]
        if missing:
            raise FileFormatError(f"rollout record lacks field(s) {missing}")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise FileFormatError(f"rollout record has unknown field(s) {unknown}")
        rec = cls(**{n: data[n] for n in names if n in data})
        if not isinstance(rec.sampling, dict) or not isinstance(rec.judge, dict) or not isinstance(rec.response, str) \
                or not isinstance(rec.model, str) or not isinstance(rec.created, str) \
                or isinstance(rec.item_seed, bool) or not isinstance(rec.item_seed, int):
            raise FileFormatError(f"rollout record {rec.id!r} has a malformed sampling, judge, response, model, "
                                  "created or item_seed field")
        try:
            rec.request  # validates the request fields and that the id matches them
        except InvalidInputError as e:
            raise FileFormatError(f"rollout record {rec.id!r}: {e}") from e
        return rec


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def line_check(record: Mapping[str, Any]) -> str:
    """The per-line check of a record (a JSON object without the check key): 16 hex digits of the SHA-256 of its
    canonical JSON."""
    canon = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]


def read_checked_line(path: Any, raw: bytes, number: int, *, allow_unchecked: bool = False) -> dict[str, Any]:
    """One line of a checked JSONL file (a rollout store, an evaluation store) as a dict, its check verified and
    removed. A line that is not a JSON object, or fails its check, is refused naming the file and the line number.
    With ``allow_unchecked``, a line written without a check (by an older version or an outside tool) is returned
    with ``LINE_CHECK_KEY`` set to None so the caller can count it; otherwise it is refused too."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{path}, line {number}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise FileFormatError(f"{path}, line {number}: not a JSON object")
    check = data.pop(LINE_CHECK_KEY, None)
    if check is None and allow_unchecked:
        data[LINE_CHECK_KEY] = None
        return data
    if check != line_check(data):
        raise FileFormatError(f"{path}, line {number}: fails its check ({LINE_CHECK_KEY}): the line was changed or "
                              "corrupted after it was written")
    return data


def _line(rec: Rollout) -> bytes:
    d = _nan_to_none(rec.to_dict())
    d[LINE_CHECK_KEY] = line_check(d)
    return (json.dumps(d, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")


class RolloutStore:
    """Rollout records in a JSONL file (one checked JSON object per line), appended batch by batch.

    The file is read once when the store is made; records are kept in memory, in file order.  A later line with
    an id already seen replaces the earlier one.  See the module docstring for the per-line check, the torn last
    line and the writer lock.
    """

    def __init__(self, path: str | os.PathLike):
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidInputError(f"a rollout store path must be a str or a path, got {type(path).__name__}")
        self.path = Path(path)
        self._records: dict[str, Rollout] = {}
        self._good_size: int | None = None  # byte length of the valid prefix, when the tail must be cut
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the file as last read or written
        self.legacy_lines = 0  # lines without a per-line check (written before it existed)
        if self.path.is_dir():
            raise InvalidInputError(f"{self.path} is a folder; give the path of a .jsonl file")
        if self.path.exists():
            self._load()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def _parse(self, raw: bytes, number: int) -> Rollout:
        data = read_checked_line(self.path, raw, number, allow_unchecked=True)
        if data.pop(LINE_CHECK_KEY, True) is None:
            self.legacy_lines += 1
        try:
            return Rollout.from_dict(data)
        except (FileFormatError, TypeError) as e:
            raise FileFormatError(f"{self.path}, line {number}: not a valid rollout record ({e})") from e

    def _load(self) -> None:
        self._stamp = self._file_stamp()
        self.legacy_lines = 0
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        offset = 0
        for i, raw in enumerate(lines):
            start, offset = offset, offset + len(raw) + 1
            if not raw.strip():
                if raw and i < len(lines) - 1:
                    raise FileFormatError(f"{self.path}, line {i + 1}: a line of blanks inside the store")
                continue
            last = i == len(lines) - 1  # no newline after it: the only line a kill can tear
            try:
                rec = self._parse(raw, i + 1)
            except FileFormatError as e:
                if not last or not self._torn(raw):
                    raise FileFormatError(f"{e}. The file is corrupt or not a rollout store: restore it from a "
                                          "copy, or delete that line to have its rollout generated again") from None
                warnings.warn(f"{self.path}: dropping the truncated last line {i + 1} ({len(raw)} bytes, no newline), cut "
                              "short by an interrupted run; its rollout will be generated again",
                              UserWarning, stacklevel=3)
                self._good_size = start
                break
            self._records[rec.id] = rec
        if self._good_size is None and data and not data.endswith(b"\n"):
            self._good_size = len(data)  # a complete last line without its newline: add it before appending
        if self.legacy_lines:
            warnings.warn(f"{self.path}: {self.legacy_lines} line(s) carry no per-line check (written by an older "
                          "persona_axes), so corruption in them cannot be detected; RolloutStore(path).restamp() "
                          "rewrites the file with checks", UserWarning, stacklevel=3)

    @staticmethod
    def _torn(raw: bytes) -> bool:
        """True when a last line is cut short: it holds no complete JSON value (a whole object that fails its
        check, or one followed by junk, is a corrupt line, not a torn one)."""
        text = raw.decode("utf-8", errors="replace")
        try:
            json.JSONDecoder().raw_decode(text)
        except ValueError:
            return True
        return False

    def reload(self) -> None:
        """Read the file again (e.g. after another process wrote to it)."""
        self._records, self._good_size, self._stamp = {}, None, None
        if self.path.exists():
            self._load()

    @contextlib.contextmanager
    def writing(self) -> Iterator[RolloutStore]:
        """Hold the store's writer lock (a ``.lock`` file beside it) and re-read the file if it changed; a second
        process that tries to write the same store meanwhile gets :class:`InvalidInputError` instead of
        interleaving lines."""
        with exclusive_lock(str(self.path) + ".lock", f"{self.path} is being written by another process; wait for "
                            "it to finish or use another store path"):
            if self._file_stamp() != self._stamp:  # changed since this object read or wrote it
                self.reload()
            yield self

    # ---- reading

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, rollout_id: object) -> bool:
        return rollout_id in self._records

    def __iter__(self) -> Iterator[Rollout]:
        return iter(list(self._records.values()))

    def completed_ids(self) -> set[str]:
        """Ids of every record in the store."""
        return set(self._records)

    def records(self, kind: str | None = None) -> list[Rollout]:
        """All records in file order, or those of one ``kind``."""
        return [r for r in self._records.values() if kind is None or r.kind == kind]

    def get(self, rollout_id: str) -> Rollout | None:
        """The record with this id, or None."""
        return self._records.get(rollout_id)

    # ---- writing

    def check_compatible(self, rec_or_req: Rollout | RolloutRequest, model: str, sampling: Mapping[str, Any]) -> None:
        """Raise :class:`InvalidInputError` if the stored record with this id was made by another run (model,
        sampling settings) or for another system prompt or question."""
        old = self._records.get(rec_or_req.id)
        if old is None:
            return
        problems = []
        if old.model != model:
            problems.append(f"model {old.model!r} there, {model!r} now")
        if json.dumps(old.sampling, sort_keys=True) != json.dumps(dict(sampling), sort_keys=True):
            problems.append(f"sampling {old.sampling} there, {dict(sampling)} now")
        if old.system != rec_or_req.system or old.question != rec_or_req.question:
            problems.append("another system prompt or question text under the same id")
        if problems:
            raise InvalidInputError(
                f"{self.path}: the cached rollout {old.id!r} belongs to another run ({'; '.join(problems)}). "
                "Use another store path for this run (or delete the old file to start over)"
            )

    def append(self, records: Sequence[Rollout]) -> None:
        """Append records and flush + fsync them.  A record whose id is stored already must come from the same
        run (model, sampling, prompt and question), else :class:`InvalidInputError`; it then replaces the old one."""
        records = list(records)
        if not records:
            return
        for rec in records:
            self.check_compatible(rec, rec.model, rec.sampling)
        payload = b"".join(_line(r) for r in records)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            if self._good_size is not None:
                f.truncate(self._good_size)
                f.seek(self._good_size)
                if self._good_size and not self._ends_with_newline():
                    f.write(b"\n")
                self._good_size = None
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        self._stamp = self._file_stamp()
        for rec in records:
            self._records[rec.id] = rec

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(self._good_size - 1)
            return f.read(1) == b"\n"

    def update_judge(self, judge_name: str, scores: Mapping[str, Mapping[str, Any]]) -> None:
        """Set ``record.judge[judge_name] = scores[id]`` for every id in ``scores``, and rewrite the file
        atomically (:func:`~persona_axes.files.atomic_write`)."""
        if not isinstance(judge_name, str) or not judge_name:
            raise InvalidInputError(f"judge_name must be a non-empty string, got {judge_name!r}")
        unknown = [i for i in scores if i not in self._records]
        if unknown:
            raise InvalidInputError(f"no rollout with id(s) {unknown[:5]} in {self.path}")
        if not scores:
            return
        updated = dict(self._records)
        for rid, entry in scores.items():
            updated[rid] = replace(updated[rid], judge={**updated[rid].judge, judge_name: dict(entry)})
        self._rewrite(updated)

    def restamp(self) -> int:
        """Rewrite the file atomically with a check on every line (for stores written before the check existed);
        returns how many lines had none. Holds the writer lock."""
        with self.writing():
            n = self.legacy_lines
            if self.path.exists():
                self._rewrite(dict(self._records))
            self.legacy_lines = 0
            return n

    def _rewrite(self, records: dict[str, Rollout]) -> None:
        from persona_axes.files import atomic_write

        with atomic_write(self.path, "wb") as f:
            for rec in records.values():
                f.write(_line(rec))
        self._records = records
        self._good_size = None
        self._stamp = self._file_stamp()

    def __repr__(self) -> str:
        return f"RolloutStore({str(self.path)!r}, {len(self)} records)"
