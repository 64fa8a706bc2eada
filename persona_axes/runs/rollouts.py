"""Rollouts: generate the replies the pipeline needs, cache them in a :class:`~persona_axes.runs.store.RolloutStore`
resumably, and score them with a judge.

:func:`run_rollouts` skips every id already in the store, so running it again resumes where it stopped and never
regenerates anything already written. Replies come from a rollout engine (:mod:`persona_axes.engines`): a loaded
model is wrapped in :class:`~persona_axes.engines.hf.HFEngine`, the one in-process generation path
(:func:`~persona_axes.steering.generation.generate_replies`); an HTTP engine fills the same store. Every request
gets its own seed ``item_seed = derive_seed(sampling.seed, id)`` (recorded in the record): with ``temperature > 0``
a reply does not depend on which other requests share its batch, on the batch size, or on whether the run was
interrupted and resumed (up to the tiny floating-point differences different padding can cause). Greedy decoding
needs no seed; ``item_seed`` is recorded all the same.

A store belongs to one run: a record whose id is asked for again with another model, other sampling settings,
or another system prompt or question raises :class:`~persona_axes.errors.InvalidInputError` - use another path.

:func:`judge_rollouts` scores role and trait records with a judge (see :mod:`persona_axes.judges.base`) and caches the
scores in the store under the judge's ``name``, so that scoring resumes too; a judge that fails
(:class:`~persona_axes.errors.JudgeError`) stops the scoring with an error saying how many were saved.

Requests, ids and presets live in :mod:`persona_axes.runs.requests`, the store in :mod:`persona_axes.runs.store`;
their names are re-exported here for older imports.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tqdm.auto import tqdm

from persona_axes.core import RolloutKind, check_float, check_int
from persona_axes.engines.base import Engine, EngineReply, EngineRequest
from persona_axes.engines.hf import HFEngine
from persona_axes.errors import InvalidInputError, JudgeError
from persona_axes.judges.base import RoleItem, TraitItem
from persona_axes.runs.datasets import Role, Trait, load_roles, load_traits
from persona_axes.runs.requests import (  # noqa: F401  (re-exported for older imports)
    KINDS,
    SPLITS,
    RolloutRequest,
    default_requests,
    derive_seed,
    limit_per_kind,
    role_requests,
    select_questions,
    trait_requests,
)
from persona_axes.runs.presets import PRESETS, RolloutPreset, get_preset  # noqa: F401  (re-exported)
from persona_axes.runs.store import Rollout, RolloutStore
from persona_axes.steering.generation import SamplingConfig

__all__ = [
    "KINDS", "SPLITS", "RolloutRequest", "Rollout", "RolloutStore", "RolloutRunReport", "RolloutPreset", "PRESETS",
    "get_preset", "derive_seed", "role_requests", "default_requests", "trait_requests", "select_questions",
    "limit_per_kind", "run_rollouts", "run_preset_rollouts", "judge_rollouts",
]


@dataclass(frozen=True)
class RolloutRunReport:
    """What :func:`run_rollouts` did: records ``generated`` now, requests ``skipped`` (already in the store), and
    wall-clock ``seconds``."""

    generated: int
    skipped: int
    seconds: float

    @property
    def requests_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0


def _generate_batch(stream: Iterator[list[EngineReply]]) -> list[EngineReply] | None:
    """The engine's next group of finished replies (None when it has answered every request): the one place the
    rollout loop waits for generation (tests wrap it to slow a run down or to see what was generated)."""
    return next(stream, None)


def run_rollouts(
    model: Any,
    requests: Sequence[RolloutRequest],
    store: RolloutStore | str | os.PathLike,
    sampling: SamplingConfig | None = None,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> RolloutRunReport:
    """Generate a reply for every request whose id is not in ``store`` yet, and append them as they finish.

    ``model`` is a LoadedModel, Backend or ``(model, tokenizer)`` pair - generated in this process by
    ``HFEngine(model, batch_size=batch_size)``, longest prompt first, in batches of ``batch_size`` - or any
    :class:`~persona_axes.engines.base.Engine` (e.g. an :class:`~persona_axes.engines.openai_http.OpenAIEngine`),
    which batches as it likes (``batch_size`` is then not used). Records carry the engine's ``name`` as their model.

    Requests already in the store are skipped (nothing written is ever regenerated); they must come from the same
    run (model name, ``sampling``) and have the same prompt and question, else :class:`InvalidInputError`. Every
    group of replies the engine hands out is appended (flushed, fsynced) at once, so a killed run loses only the
    replies in flight (see the module docstring for seeds).
    """
    sampling = SamplingConfig() if sampling is None else sampling
    if not isinstance(sampling, SamplingConfig):
        raise InvalidInputError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    check_int(batch_size, "batch_size", minimum=1)
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
    engine = model if isinstance(model, Engine) else HFEngine(model, batch_size=batch_size)
    with store.writing():
        return _run_locked(engine, requests, store, sampling, progress, t0)


def run_preset_rollouts(model: Any, preset: RolloutPreset, requests: Sequence[RolloutRequest],
                        store: RolloutStore | str | os.PathLike, seed: int = 0, *, batch_size: int | None = None,
                        progress: bool = True) -> RolloutRunReport:
    """:func:`run_rollouts` over ``requests`` with the preset's sampling: one call per sampling group
    (:meth:`RolloutPreset.sampling_groups`: with ``greedy_first``, sample 0 greedy, the others sampled); the
    reports are summed."""
    generated = skipped = 0
    seconds = 0.0
    for group, sampling in preset.sampling_groups(requests, seed):
        rep = run_rollouts(model, group, store, sampling, batch_size=batch_size or preset.batch_size,
                           progress=progress)
        generated, skipped, seconds = generated + rep.generated, skipped + rep.skipped, seconds + rep.seconds
    return RolloutRunReport(generated=generated, skipped=skipped, seconds=seconds)


def _run_locked(engine: Engine, requests: list[RolloutRequest], store: RolloutStore, sampling: SamplingConfig,
                progress: bool, t0: float) -> RolloutRunReport:
    name = str(engine.name)
    sampling_dict = sampling.to_dict()
    for req in requests:
        store.check_compatible(req, name, sampling_dict)
    todo = [r for r in requests if r.id not in store]
    skipped = len(requests) - len(todo)
    if not todo:
        return RolloutRunReport(0, skipped, time.perf_counter() - t0)

    pending = {r.id: r for r in todo}
    seeds = {r.id: derive_seed(sampling.seed, r.id) for r in todo}
    stream = iter(engine.stream([EngineRequest(r.id, tuple(r.messages()), seeds[r.id]) for r in todo], sampling))
    bar = tqdm(total=len(todo), desc="rollouts", unit="reply", disable=not progress)
    try:
        while (replies := _generate_batch(stream)) is not None:
            ids = [x.id for x in replies]
            bad = [i for i in ids if i not in pending] or sorted({i for i in ids if ids.count(i) > 1})
            if bad:  # an engine bug; never a silent duplicate or stray record in the store
                raise RuntimeError(f"engine {name!r} returned a reply for request(s) {bad[:3]} it was not asked "
                                   f"for or had already answered")
            created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            store.append([Rollout.of(pending.pop(x.id), response=x.text, model=name, sampling=dict(sampling_dict),
                                     item_seed=seeds[x.id], created=created) for x in replies])
            bar.update(len(replies))
    finally:
        bar.close()
        getattr(stream, "close", lambda: None)()  # an engine stopped early releases what it holds
    if pending:  # an engine that drops requests is a bug; what it did answer is saved and a rerun resumes
        raise RuntimeError(f"engine {name!r} returned no reply for {len(pending)} of {len(todo)} request(s), e.g. "
                           f"{list(pending)[:3]} (the {len(todo) - len(pending)} replies it gave are saved in "
                           f"{store.path})")
    return RolloutRunReport(len(todo), skipped, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------------------
# Judging
# --------------------------------------------------------------------------------------------------------------


def _descriptions(given: Any, loader: Any, what: str) -> dict[str, str]:
    """``{name: description}`` from the given records (or names -> descriptions), or the packaged data."""
    if given is None:
        given = loader()
    if isinstance(given, Mapping):
        items = given.items()
    elif isinstance(given, (list, tuple)):
        items = ((getattr(x, "name", None), x) for x in given)
    else:
        raise InvalidInputError(f"{what} must be a name -> record mapping or a list of records, got "
                                f"{type(given).__name__}")
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
    check_int(batch_size, "batch_size", minimum=1)
    check_float(checkpoint_seconds, "checkpoint_seconds", nonnegative=True)
    if not isinstance(store, RolloutStore):
        store = RolloutStore(store)
    judge_name = getattr(judge, "name", None)
    if not isinstance(judge_name, str) or not judge_name:
        raise InvalidInputError(f"judge must have a non-empty string .name, got {judge_name!r}")
    with store.writing():
        return _judge_locked(store, judge, judge_name, roles, traits, batch_size, checkpoint_seconds, progress)


def _judge_locked(store: RolloutStore, judge: Any, judge_name: str, roles: Any, traits: Any, batch_size: int,
                  checkpoint_seconds: float, progress: bool) -> int:
    todo = [r for r in store.records() if r.kind != RolloutKind.DEFAULT and judge_name not in r.judge]
    if not todo:
        return 0
    role_desc = _descriptions(roles, load_roles, "roles") if any(r.kind == "role" for r in todo) else {}
    trait_desc = _descriptions(traits, load_traits, "traits") if any(r.kind == "trait" for r in todo) else {}

    pending: dict[str, dict[str, Any]] = {}
    last = time.monotonic()
    done = 0
    bar = tqdm(total=len(todo), desc=f"judging ({judge_name})", unit="reply", disable=not progress)
    try:
        for kind in (RolloutKind.ROLE.value, RolloutKind.TRAIT.value):
            recs = [r for r in todo if r.kind == kind]
            for b0 in range(0, len(recs), batch_size):
                batch = recs[b0 : b0 + batch_size]
                try:
                    if kind == "role":
                        scores = judge.score_roles(
                            [RoleItem(r.name, role_desc.get(r.name, ""), r.question, r.response) for r in batch])
                    else:
                        scores = judge.score_traits(
                            [TraitItem(r.name, trait_desc.get(r.name, ""), r.question, r.response) for r in batch])
                except JudgeError as e:  # the scores so far are saved (below); nothing is skipped silently
                    raise JudgeError(f"judge {judge_name!r} failed after scoring {done} of {len(todo)} replies "
                                     f"(those are saved in {store.path}; run again to resume): {e}") from e
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
