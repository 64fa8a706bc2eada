"""Rollouts: generate the responses the pipeline needs and cache them on disk, resumably.

A *rollout request* is one conversation to answer: a system prompt (a role's prompt, a default-assistant prompt,
or one side of a trait's contrastive instruction pair), a question, and a sample number.  Its ``id`` is built
from what it is, never from when it was made, e.g.

* ``role/pirate/p2/q017/s0`` - role ``pirate``, system prompt 2, question ``q017``, sample 0;
* ``default/p0/q017/s0`` - default-assistant prompt 0 (``""``: no system message at all);
* ``trait/evil/pos/p3/q05/s0`` - trait ``evil``, the *pos* instruction of pair 3, extraction question 5;
* ``trait/evil/eval/neg/p3/q05/s0`` - the same for evaluation question 5.

:class:`RolloutStore` keeps finished :class:`Rollout` records in a JSONL file, one per line.  Generation appends
each finished batch and flushes and fsyncs it, so a killed run loses at most the batch in flight; loading drops
(with a warning) a last line cut short by such a kill.  :func:`run_rollouts` skips every id already in the store,
so running it again resumes where it stopped and never regenerates anything already written.

Seeds.  With ``temperature > 0`` every request samples from its own random generator, seeded with
``item_seed = derive_seed(sampling.seed, id)`` (recorded in the record).  Sampling happens inside a logits
processor that draws each row's token with that row's generator, so a reply does not depend on which other
requests share its batch, on the batch size, or on whether the run was interrupted and resumed (up to the tiny
floating-point differences that different padding can cause).  Greedy decoding (``temperature == 0``, through
:func:`~persona_axes.steering.generation.generate_replies`) needs no seed; ``item_seed`` is recorded all the same.

A store belongs to one run: a record whose id is asked for again with another model, other sampling settings,
or another system prompt or question raises :class:`~persona_axes.errors.InvalidInputError` - use another path.

:func:`judge_rollouts` scores role and trait records with a judge (see :mod:`persona_axes.judges.base`) and caches the
scores in the store under the judge's ``name``, so that scoring resumes too.  :data:`PRESETS` gives two sizes:
``quick`` (every packaged role, small, for a CPU) and ``paper`` (the paper's scale, for a GPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from persona_axes.activations.readers.base import as_backend
from persona_axes.activations.batch import render_all
from persona_axes.runs.datasets import Question, Role, Trait
from persona_axes.errors import FileFormatError, InvalidInputError
from persona_axes.steering.generation import SamplingConfig, generate_replies
from persona_axes.files import atomic_write

__all__ = [
    "KINDS",
    "SPLITS",
    "RolloutRequest",
    "Rollout",
    "RolloutStore",
    "RolloutRunReport",
    "RolloutPreset",
    "PRESETS",
    "get_preset",
    "derive_seed",
    "role_requests",
    "default_requests",
    "trait_requests",
    "select_questions",
    "run_rollouts",
    "judge_rollouts",
]

KINDS = ("role", "default", "trait")
SPLITS = ("extraction", "evaluation")
POLARITIES = ("pos", "neg")


# --------------------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutRequest:
    """One conversation to answer: ``system`` (``""`` = no system message) and ``question``.

    ``name`` is the role or trait name, or ``"default"``; ``polarity`` is ``"pos"``/``"neg"`` for traits and None
    otherwise; ``prompt_index`` is the role/default prompt index or the trait's pair index; ``split`` is
    ``"extraction"``/``"evaluation"`` for traits and None otherwise.  ``id`` is derived from these fields.
    """

    kind: str
    name: str
    prompt_index: int
    question_id: str
    sample: int
    system: str
    question: str
    polarity: str | None = None
    split: str | None = None
    id: str = field(default="")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInputError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("name", "question_id", "question"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidInputError(f"RolloutRequest.{name} must be a non-empty string, got {value!r}")
        if "/" in self.name or "/" in self.question_id:
            raise InvalidInputError(f"names and question ids may not contain '/': {self.name!r}, {self.question_id!r}")
        if not isinstance(self.system, str):
            raise InvalidInputError(f"RolloutRequest.system must be a string ('' = none), got {type(self.system).__name__}")
        for name in ("prompt_index", "sample"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInputError(f"RolloutRequest.{name} must be an integer >= 0, got {value!r}")
        if self.kind == "trait":
            if self.polarity not in POLARITIES:
                raise InvalidInputError(f"a trait request needs polarity 'pos' or 'neg', got {self.polarity!r}")
            if self.split not in SPLITS:
                raise InvalidInputError(f"a trait request needs split {SPLITS}, got {self.split!r}")
        elif self.polarity is not None or self.split is not None:
            raise InvalidInputError(f"polarity and split are for trait requests only (kind={self.kind!r})")
        if self.kind == "default" and self.name != "default":
            raise InvalidInputError(f"a default request is named 'default', got {self.name!r}")
        expected = self._make_id()
        if self.id and self.id != expected:
            raise InvalidInputError(f"id {self.id!r} does not match the request's content (expected {expected!r})")
        object.__setattr__(self, "id", expected)

    def _make_id(self) -> str:
        tail = f"p{self.prompt_index}/{self.question_id}/s{self.sample}"
        if self.kind == "default":
            return f"default/{tail}"
        if self.kind == "role":
            return f"role/{self.name}/{tail}"
        split = "" if self.split == "extraction" else "eval/"
        return f"trait/{self.name}/{split}{self.polarity}/{tail}"

    def messages(self) -> list[dict[str, str]]:
        """The conversation to answer: the system message (only if non-empty), then the question."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        out.append({"role": "user", "content": self.question})
        return out


def _as_list(items: Any, what: str) -> list:
    if isinstance(items, Mapping):
        items = list(items.values())
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise InvalidInputError(f"{what} must be a list (or a name -> item mapping), got {type(items).__name__}")
    return list(items)


def _questions(questions: Any) -> list[Question]:
    out = []
    for i, q in enumerate(_as_list(questions, "questions")):
        if isinstance(q, str):
            q = Question(id=f"q{i + 1:03d}", category="", text=q)
        elif not isinstance(q, Question):
            raise InvalidInputError(f"questions[{i}] must be a Question or a string, got {type(q).__name__}")
        out.append(q)
    if not out:
        raise InvalidInputError("no questions were given")
    return out


def _check_count(value: Any, what: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def role_requests(
    roles: Mapping[str, Role] | Sequence[Role], questions: Sequence[Question | str], prompts_per_role: int = 5,
    samples: int = 1,
) -> list[RolloutRequest]:
    """Every role x its first ``prompts_per_role`` system prompts x every question x ``samples`` samples."""
    _check_count(prompts_per_role, "prompts_per_role")
    _check_count(samples, "samples")
    qs = _questions(questions)
    out = []
    for role in _as_list(roles, "roles"):
        if not isinstance(role, Role):
            raise InvalidInputError(f"roles must hold Role records (from load_roles()), got {type(role).__name__}")
        if prompts_per_role > len(role.prompts):
            raise InvalidInputError(
                f"role {role.name!r} has {len(role.prompts)} prompts, fewer than prompts_per_role={prompts_per_role}"
            )
        for p in range(prompts_per_role):
            for q in qs:
                for s in range(samples):
                    out.append(RolloutRequest("role", role.name, p, q.id, s, role.prompts[p], q.text))
    if not out:
        raise InvalidInputError("no roles were given")
    return out


def default_requests(
    default_prompts: Sequence[str], questions: Sequence[Question | str], samples: int = 1
) -> list[RolloutRequest]:
    """Every default-assistant system prompt (``""`` = none) x every question x ``samples`` samples."""
    _check_count(samples, "samples")
    qs = _questions(questions)
    prompts = _as_list(default_prompts, "default_prompts")
    if not prompts:
        raise InvalidInputError("no default prompts were given (use load_default_prompts())")
    out = []
    for p, system in enumerate(prompts):
        if not isinstance(system, str):
            raise InvalidInputError(f"default_prompts[{p}] must be a string, got {type(system).__name__}")
        for q in qs:
            for s in range(samples):
                out.append(RolloutRequest("default", "default", p, q.id, s, system, q.text))
    return out


def trait_requests(
    traits: Mapping[str, Trait] | Sequence[Trait], split: str = "extraction", pairs: int = 5, samples: int = 1,
    questions: int | None = None,
) -> list[RolloutRequest]:
    """Every trait x its first ``pairs`` instruction pairs x (pos, neg) x every question of ``split``
    (or its first ``questions``) x ``samples`` samples.  Question ids are ``q00``, ``q01``, ... by position."""
    if split not in SPLITS:
        raise InvalidInputError(f"split must be one of {SPLITS}, got {split!r}")
    _check_count(pairs, "pairs")
    _check_count(samples, "samples")
    if questions is not None:
        _check_count(questions, "questions")
    out = []
    for trait in _as_list(traits, "traits"):
        if not isinstance(trait, Trait):
            raise InvalidInputError(f"traits must hold Trait records (from load_traits()), got {type(trait).__name__}")
        if pairs > len(trait.pairs):
            raise InvalidInputError(f"trait {trait.name!r} has {len(trait.pairs)} pairs, fewer than pairs={pairs}")
        qs = trait.extraction_questions if split == "extraction" else trait.evaluation_questions
        qs = qs[:questions] if questions is not None else qs
        width = max(2, len(str(len(qs) - 1)))
        for p in range(pairs):
            for polarity, system in zip(POLARITIES, trait.pairs[p]):
                for qi, text in enumerate(qs):
                    for s in range(samples):
                        out.append(RolloutRequest("trait", trait.name, p, f"q{qi:0{width}d}", s, system, text,
                                                  polarity=polarity, split=split))
    if not out:
        raise InvalidInputError("no traits were given")
    return out


def select_questions(questions: Sequence[Question], n: int | None) -> list[Question]:
    """``n`` questions spread over the categories: round-robin over categories (in order of first appearance),
    taking each category's questions in file order.  ``None`` = all."""
    qs = _questions(questions)
    if n is None or n >= len(qs):
        return qs
    _check_count(n, "n")
    by_cat: dict[str, list[Question]] = {}
    for q in qs:
        by_cat.setdefault(q.category, []).append(q)
    chosen: list[Question] = []
    depth = 0
    while len(chosen) < n:
        for cat_qs in by_cat.values():
            if depth < len(cat_qs) and len(chosen) < n:
                chosen.append(cat_qs[depth])
        depth += 1
    order = {q.id: i for i, q in enumerate(qs)}
    return sorted(chosen, key=lambda q: order[q.id])


def derive_seed(seed: int, request_id: str) -> int:
    """The per-request sampling seed: a 63-bit hash of the run's ``seed`` and the request's ``id``."""
    digest = hashlib.sha256(f"{int(seed)}\x00{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


# --------------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------------

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
        rec = cls(**{n: data[n] for n in names if n in data})
        if not isinstance(rec.sampling, dict) or not isinstance(rec.judge, dict) or not isinstance(rec.response, str):
            raise FileFormatError(f"rollout record {rec.id!r} has a malformed sampling, judge or response field")
        rec.request  # validates the request fields and that the id matches them
        return rec


def _dumps(rec: Rollout) -> str:
    return json.dumps(_nan_to_none(rec.to_dict()), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------------------
# Store
# --------------------------------------------------------------------------------------------------------------


class RolloutStore:
    """Rollout records in a JSONL file (one JSON object per line), appended batch by batch.

    The file is read once when the store is made; records are kept in memory, in file order.  A later line with
    an id already seen replaces the earlier one.  A last line that is not valid JSON (cut short by a killed
    run) is dropped with a :class:`UserWarning` and cut off the file before the next append; an invalid line
    anywhere else raises :class:`FileFormatError`.  :func:`run_rollouts` and :func:`judge_rollouts` hold the
    store's writer lock (:meth:`writing`) while they work, so two processes cannot write one store at once.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._records: dict[str, Rollout] = {}
        self._good_size: int | None = None  # byte length of the valid prefix, when the tail must be cut
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the file as last read or written
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

    def _load(self) -> None:
        self._stamp = self._file_stamp()
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        offset = 0
        for i, raw in enumerate(lines):
            start, offset = offset, offset + len(raw) + 1
            if not raw.strip():
                continue
            try:
                rec = Rollout.from_dict(json.loads(raw.decode("utf-8")))
            except (ValueError, TypeError, FileFormatError, InvalidInputError) as e:
                is_last = all(not rest.strip() for rest in lines[i + 1 :])
                if not is_last:
                    raise FileFormatError(
                        f"{self.path}: line {i + 1} is not a valid rollout record ({e}); the file is corrupt or not "
                        "a rollout store. Remove that line, or use another path"
                    ) from e
                warnings.warn(
                    f"{self.path}: dropping the truncated last line {i + 1} ({len(raw)} bytes), probably cut short "
                    "by an interrupted run; its rollout will be generated again",
                    UserWarning, stacklevel=3,
                )
                self._good_size = start
                break
            self._records[rec.id] = rec
        if self._good_size is None and data and not data.endswith(b"\n"):
            self._good_size = len(data)  # a complete last line without its newline: add it before appending

    def reload(self) -> None:
        """Read the file again (e.g. after another process wrote to it)."""
        self._records, self._good_size, self._stamp = {}, None, None
        if self.path.exists():
            self._load()

    @contextlib.contextmanager
    def writing(self) -> Iterator[RolloutStore]:
        """Hold the store's writer lock (a ``.lock`` file beside it) and re-read the file; a second process that
        tries to write the same store meanwhile gets :class:`InvalidInputError` instead of interleaving lines."""
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path) + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise InvalidInputError(
                f"{self.path} is being written by another process (lock {lock.lock_file}); wait for it to finish "
                "or use another store path"
            ) from None
        try:
            if self._file_stamp() != self._stamp:  # changed since this object read or wrote it
                self.reload()
            yield self
        finally:
            lock.release()

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
        payload = "".join(_dumps(r) + "\n" for r in records).encode("utf-8")
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

    def _rewrite(self, records: dict[str, Rollout]) -> None:
        with atomic_write(self.path, "wb") as f:
            for rec in records.values():
                f.write((_dumps(rec) + "\n").encode("utf-8"))
        self._records = records
        self._good_size = None
        self._stamp = self._file_stamp()

    def __repr__(self) -> str:
        return f"RolloutStore({str(self.path)!r}, {len(self)} records)"


# --------------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutRunReport:
    """What :func:`run_rollouts` did: records ``generated`` now, requests ``skipped`` (already in the store),
    wall-clock ``seconds``, and ``new_tokens`` (the generated replies re-tokenised, a throughput measure)."""

    generated: int
    skipped: int
    seconds: float
    new_tokens: int = 0

    @property
    def requests_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


class _RowSampler:
    """A logits processor that samples each row's next token with that row's own ``torch.Generator`` (temperature
    and nucleus top-p applied first) and returns logits that keep only the drawn token, so greedy search emits
    it.  A row's draws therefore depend only on its own seed and its own logits, not on its batch."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.seeds = [int(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p
        self.generators: list[torch.Generator] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.generators:  # made on the device the logits come from (the last one, if the model is split)
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            sorted_probs = sorted_logits.softmax(-1)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= self.top_p  # keep the smallest prefix reaching top_p
            drop[..., 0] = False
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = logits.softmax(-1)
        chosen = torch.stack(
            [torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(self.generators)]
        )
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0], device=scores.device), chosen] = 0.0
        return out


def _sample_batch(be: Any, rendered: Sequence[Any], sampling: SamplingConfig, seeds: Sequence[int]) -> list[str]:
    """Like :func:`generate_replies` for one batch, sampling every row with its own seeded generator."""
    from transformers import LogitsProcessorList

    width = max(len(r) for r in rendered)
    ids = torch.full((len(rendered), width), be.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rendered):
        ids[i, width - len(r) :] = torch.tensor(r.input_ids)
        mask[i, width - len(r) :] = 1
    kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=be.pad_token_id)
    eos = getattr(be.tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        kwargs["eos_token_id"] = [eos]
    sampler = _RowSampler(seeds, sampling.temperature, sampling.top_p)
    with torch.inference_mode():
        gen = be.loaded.model.generate(
            input_ids=ids.to(be.device), attention_mask=mask.to(be.device), do_sample=False, temperature=None,
            top_p=None, top_k=None, logits_processor=LogitsProcessorList([sampler]), **kwargs,
        )
    return [be.tokenizer.decode(gen[i, width:], skip_special_tokens=True).strip() for i in range(len(rendered))]


def _generate_batch(be: Any, requests: Sequence[RolloutRequest], rendered: Sequence[Any], sampling: SamplingConfig,
                    seeds: Sequence[int]) -> list[str]:
    """Replies for one batch of requests (``rendered`` = their rendered prompts, ``seeds`` = their item seeds)."""
    if sampling.temperature > 0:
        return _sample_batch(be, rendered, sampling, seeds)
    return generate_replies(be, list(rendered), sampling, batch_size=len(rendered))


def _model_name(be: Any) -> str:
    return str(be.info.name)


def run_rollouts(
    model: Any,
    requests: Sequence[RolloutRequest],
    store: RolloutStore | str | os.PathLike,
    sampling: SamplingConfig | None = None,
    *,
    batch_size: int = 16,
    progress: bool = True,
    backend: str = "hf",
) -> RolloutRunReport:
    """Generate a reply for every request whose id is not in ``store`` yet, and append them batch by batch.

    Requests already in the store are skipped (nothing written is ever regenerated); they must come from the same
    run (model name, ``sampling``) and have the same prompt and question, else :class:`InvalidInputError`.  The
    rest are generated longest prompt first, in batches of ``batch_size`` (see the module docstring for seeds).
    """
    sampling = sampling or SamplingConfig()
    if not isinstance(sampling, SamplingConfig):
        raise InvalidInputError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    _check_count(batch_size, "batch_size")
    if not isinstance(store, RolloutStore):
        store = RolloutStore(store)
    requests = list(requests)
    if not requests:
        raise InvalidInputError("no rollout requests were given; build some with role_requests(), "
                                "default_requests() or trait_requests()")
    seen: set[str] = set()
    for i, req in enumerate(requests):
        if not isinstance(req, RolloutRequest):
            raise InvalidInputError(f"requests[{i}] must be a RolloutRequest, got {type(req).__name__}")
        if req.id in seen:
            raise InvalidInputError(f"request id {req.id!r} appears twice; every request must be unique")
        seen.add(req.id)

    t0 = time.perf_counter()
    be = as_backend(model, backend)
    with store.writing():
        return _run_locked(be, requests, store, sampling, batch_size, progress, t0)


def _run_locked(be: Any, requests: list[RolloutRequest], store: RolloutStore, sampling: SamplingConfig,
                batch_size: int, progress: bool, t0: float) -> RolloutRunReport:
    name = _model_name(be)
    sampling_dict = sampling.to_dict()
    for req in requests:
        store.check_compatible(req, name, sampling_dict)
    todo = [r for r in requests if r.id not in store]
    skipped = len(requests) - len(todo)
    if not todo:
        return RolloutRunReport(0, skipped, time.perf_counter() - t0, 0)

    rendered = render_all(be.tokenizer, [r.messages() for r in todo], add_generation_prompt=True)
    order = sorted(range(len(todo)), key=lambda i: (-len(rendered[i]), todo[i].id))
    n_tokens = 0
    bar = tqdm(total=len(todo), desc="rollouts", unit="reply", disable=not progress)
    try:
        for b0 in range(0, len(order), batch_size):
            idx = order[b0 : b0 + batch_size]
            reqs = [todo[i] for i in idx]
            seeds = [derive_seed(sampling.seed, r.id) for r in reqs]
            replies = _generate_batch(be, reqs, [rendered[i] for i in idx], sampling, seeds)
            created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            store.append([
                Rollout(**{k: getattr(r, k) for k in _REQUEST_FIELDS}, response=text, model=name,
                        sampling=dict(sampling_dict), item_seed=seed, created=created)
                for r, text, seed in zip(reqs, replies, seeds)
            ])
            n_tokens += sum(len(be.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in replies)
            bar.update(len(reqs))
    finally:
        bar.close()
    return RolloutRunReport(len(todo), skipped, time.perf_counter() - t0, n_tokens)


# --------------------------------------------------------------------------------------------------------------
# Judging
# --------------------------------------------------------------------------------------------------------------


def _descriptions(given: Any, loader: Any) -> dict[str, str]:
    if given is None:
        try:
            given = loader()
        except Exception:  # noqa: BLE001 - descriptions are optional: judges fall back to the name
            given = {}
    if isinstance(given, Mapping):
        items = given.items()
    else:
        items = ((getattr(x, "name", None), x) for x in _as_list(given, "roles/traits"))
    out = {}
    for key, value in items:
        out[str(key)] = value if isinstance(value, str) else str(getattr(value, "description", ""))
    return out


def judge_rollouts(
    store: RolloutStore | str | os.PathLike,
    judge: Any,
    *,
    roles: Mapping[str, Role | str] | Sequence[Role] | None = None,
    traits: Mapping[str, Trait | str] | Sequence[Trait] | None = None,
    batch_size: int = 64,
    checkpoint_seconds: float = 30.0,
    progress: bool = True,
) -> int:
    """Score every role and trait record that has no score from ``judge.name`` yet; return how many were scored.

    ``roles``/``traits`` give the descriptions the judge reads (``{name: Role or str}`` or lists of records;
    default: the packaged data; a name not found gets ``""`` and the judge uses the name).  Default-assistant
    records are not judged.  Scores are written to the store (an atomic rewrite) at most every
    ``checkpoint_seconds`` and at the end - also when the judge fails midway - so scoring resumes too.
    """
    _check_count(batch_size, "batch_size")
    if not isinstance(store, RolloutStore):
        store = RolloutStore(store)
    judge_name = getattr(judge, "name", None)
    if not isinstance(judge_name, str) or not judge_name:
        raise InvalidInputError(f"judge must have a non-empty string .name, got {judge_name!r}")
    with store.writing():
        return _judge_locked(store, judge, judge_name, roles, traits, batch_size, checkpoint_seconds, progress)


def _judge_locked(store: RolloutStore, judge: Any, judge_name: str, roles: Any, traits: Any, batch_size: int,
                  checkpoint_seconds: float, progress: bool) -> int:
    from persona_axes.runs.datasets import load_roles, load_traits
    from persona_axes.judges.base import RoleItem, TraitItem

    todo = [r for r in store.records() if r.kind in ("role", "trait") and judge_name not in r.judge]
    if not todo:
        return 0
    role_desc = _descriptions(roles, load_roles) if any(r.kind == "role" for r in todo) else {}
    trait_desc = _descriptions(traits, load_traits) if any(r.kind == "trait" for r in todo) else {}

    pending: dict[str, dict[str, Any]] = {}
    last = time.monotonic()
    done = 0
    bar = tqdm(total=len(todo), desc=f"judging ({judge_name})", unit="reply", disable=not progress)
    try:
        for kind in ("role", "trait"):
            recs = [r for r in todo if r.kind == kind]
            for b0 in range(0, len(recs), batch_size):
                batch = recs[b0 : b0 + batch_size]
                if kind == "role":
                    scores = judge.score_roles(
                        [RoleItem(r.name, role_desc.get(r.name, ""), r.question, r.response) for r in batch])
                else:
                    scores = judge.score_traits(
                        [TraitItem(r.name, trait_desc.get(r.name, ""), r.question, r.response) for r in batch])
                scores = list(scores)
                if len(scores) != len(batch):
                    raise InvalidInputError(
                        f"judge {judge_name!r} returned {len(scores)} scores for {len(batch)} responses")
                for r, sc in zip(batch, scores):
                    raw = getattr(sc, "raw", None)
                    pending[r.id] = {"score": int(sc.score) if kind == "role" else float(sc.score),
                                     "rationale": str(sc.rationale), "raw": None if raw is None else float(raw)}
                done += len(batch)
                bar.update(len(batch))
                if time.monotonic() - last >= checkpoint_seconds:
                    store.update_judge(judge_name, pending)
                    pending, last = {}, time.monotonic()
    finally:
        bar.close()
        if pending:
            store.update_judge(judge_name, pending)
    return done


# --------------------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutPreset:
    """How many rollouts to make.  ``roles``/``traits``: names, or None for every packaged one; ``questions``:
    how many role/default questions (spread over categories, :func:`select_questions`; None = all);
    ``default_prompts``: how many default-assistant prompts (None = all); ``trait_questions``: extraction
    questions per trait (None = all)."""

    name: str
    roles: tuple[str, ...] | None
    prompts_per_role: int
    questions: int | None
    default_prompts: int | None
    traits: tuple[str, ...] | None
    trait_pairs: int
    trait_questions: int | None
    samples: int
    max_new_tokens: int
    temperature: float
    batch_size: int
    top_p: float = 1.0
    description: str = ""

    def sampling(self, seed: int = 0) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              seed=seed)

    def build_requests(
        self,
        *,
        roles: Mapping[str, Role] | None = None,
        questions: Sequence[Question] | None = None,
        default_prompts: Sequence[str] | None = None,
        traits: Mapping[str, Trait] | None = None,
        include: Iterable[str] = KINDS,
    ) -> list[RolloutRequest]:
        """The preset's requests (role, then default, then trait extraction), from the packaged data unless
        given; ``include`` picks some of ``"role"``, ``"default"``, ``"trait"``."""
        from persona_axes.runs.datasets import load_default_prompts, load_questions, load_roles, load_traits

        include = set(include)
        bad = include - set(KINDS)
        if bad:
            raise InvalidInputError(f"include may hold {KINDS}, got {sorted(bad)}")
        out: list[RolloutRequest] = []
        if include & {"role", "default"}:
            qs = select_questions(questions if questions is not None else load_questions(), self.questions)
        if "role" in include:
            all_roles = roles if roles is not None else load_roles()
            if self.roles is not None:
                unknown = [n for n in self.roles if n not in all_roles]
                if unknown:
                    raise InvalidInputError(f"preset {self.name!r} names unknown roles {unknown}")
                all_roles = {n: all_roles[n] for n in self.roles}
            out += role_requests(all_roles, qs, self.prompts_per_role, self.samples)
        if "default" in include:
            prompts = list(default_prompts if default_prompts is not None else load_default_prompts())
            out += default_requests(prompts[: self.default_prompts], qs, self.samples)
        if "trait" in include:
            all_traits = traits if traits is not None else load_traits(self.traits)
            if traits is not None and self.traits is not None:
                all_traits = {n: traits[n] for n in self.traits}
            out += trait_requests(all_traits, "extraction", self.trait_pairs, self.samples, self.trait_questions)
        return out


PRESETS: dict[str, RolloutPreset] = {
    # Sized by measurement of SmolLM2-135M (fp32) on the shared 2-core development CPU, batches of 32 prompts of
    # ~55 tokens, 48 new tokens: 1.6 replies/s with one torch thread (also while other jobs loaded the machine),
    # 0.4-1.2 replies/s with two threads (two threads suffer badly when the cores are shared). This preset's 588
    # requests - 70 roles x 1 prompt x 6 questions (one per category) = 420, 8 default prompts x 6 questions = 48,
    # 12 traits x 1 pair x 2 sides x 5 extraction questions = 120 - took 20 minutes with two threads under load
    # and take about 6-7 minutes with torch.set_num_threads(1).
    # On an idle machine (2 threads) they took 2.0 minutes (4.8 replies/s), and the whole pipeline 3.1 minutes.
    "quick": RolloutPreset(
        name="quick", roles=None, prompts_per_role=1, questions=6, default_prompts=None, traits=None,
        trait_pairs=1, trait_questions=5, samples=1, max_new_tokens=48, temperature=0.0, batch_size=32,
        description="every packaged role with its first prompt, 6 questions (one per category), every default "
                    "prompt, every trait with 1 pair and 5 extraction questions; greedy, 48 new tokens; for a CPU",
    ),
    # The papers' scale: all 5 prompts per role, every question, several samples, full-length replies (GPU).
    "paper": RolloutPreset(
        name="paper", roles=None, prompts_per_role=5, questions=None, default_prompts=None, traits=None,
        trait_pairs=5, trait_questions=None, samples=3, max_new_tokens=512, temperature=0.7, batch_size=64,
        top_p=1.0,
        description="every role x 5 prompts x every question x 3 samples, every default prompt, every trait x "
                    "5 pairs x every extraction question; temperature 0.7, 512 new tokens; for a GPU",
    ),
    # A few roles of contrasting families, for trying the whole pipeline (and its report) in about a minute on a
    # CPU, and for the CLI's smoke tests. Too few roles for a meaningful persona space: use `quick` for results.
    "smoke": RolloutPreset(
        name="smoke", roles=("accountant", "therapist", "poet", "pirate", "dragon", "cat", "mob_boss"),
        prompts_per_role=1, questions=3, default_prompts=3, traits=("evil", "optimistic"), trait_pairs=1,
        trait_questions=2, samples=1, max_new_tokens=16, temperature=0.0, batch_size=16,
        description="7 roles (one per family) x 3 questions, 3 default prompts, 2 traits x 2 questions; greedy, "
                    "16 new tokens; a smoke test of the pipeline, not a result",
    ),
}


def get_preset(name: str | RolloutPreset) -> RolloutPreset:
    """The preset called ``name`` (``"quick"``, ``"paper"`` or ``"smoke"``); a :class:`RolloutPreset` is returned as is."""
    if isinstance(name, RolloutPreset):
        return name
    if name not in PRESETS:
        raise InvalidInputError(f"unknown rollout preset {name!r}; use one of: {', '.join(PRESETS)}")
    return PRESETS[name]
