"""Rollout requests: what to answer, named by what it is, and the presets that size a run.

A *rollout request* is one conversation to answer: a system prompt (a role's prompt, a default-assistant prompt,
or one side of a trait's contrastive instruction pair), a question, and a sample number.  Its ``id`` is built
from what it is, never from when it was made, e.g.

* ``role/pirate/p2/q017/s0`` - role ``pirate``, system prompt 2, question ``q017``, sample 0;
* ``default/p0/q017/s0`` - default-assistant prompt 0 (``""``: no system message at all);
* ``trait/evil/pos/p3/q05/s0`` - trait ``evil``, the *pos* instruction of pair 3, extraction question 5;
* ``trait/evil/eval/neg/p3/q05/s0`` - the same for evaluation question 5;
* ``role/pirate/eval/p3/q090/s0`` and ``default/eval/p6/q090/s0`` - held-out role and default-assistant replies
  (split ``"evaluation"``, :mod:`persona_axes.runs.splits`), used to measure the vectors, never to build them.

:func:`derive_seed` gives each request its own sampling seed from the run's seed and the id.  :data:`PRESETS`
(in :mod:`persona_axes.runs.presets`) gives four sizes: ``quick`` (every packaged role, small, for a CPU), ``standard`` (fit and held-out splits, all
trait instruction pairs, greedy and sampled replies; about an hour on 2 CPU cores), ``paper`` (the paper's scale, for
a GPU) and ``smoke`` (a few roles, to try the pipeline).  :func:`limit_per_kind` keeps the first N requests of each kind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from persona_axes.core import RolloutKind, as_choice, check_int
from persona_axes.errors import InvalidInputError
from persona_axes.runs.datasets import Question, Role, Trait
from persona_axes.steering.generation import SamplingConfig

__all__ = [
    "KINDS",
    "SPLITS",
    "POLARITIES",
    "RolloutRequest",
    "derive_seed",
    "role_requests",
    "default_requests",
    "trait_requests",
    "select_questions",
    "limit_per_kind",
]

KINDS = RolloutKind.values()
SPLITS = ("extraction", "evaluation")
POLARITIES = ("pos", "neg")


@dataclass(frozen=True)
class RolloutRequest:
    """One conversation to answer: ``system`` (``""`` = no system message) and ``question``.

    ``name`` is the role or trait name, or ``"default"``; ``polarity`` is ``"pos"``/``"neg"`` for traits and None
    otherwise; ``prompt_index`` is the role/default prompt index or the trait's pair index; ``split`` is
    ``"extraction"``/``"evaluation"`` for traits, and None (fit) or ``"evaluation"`` (held out) for role and
    default requests.  ``id`` is derived from these fields.
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
        object.__setattr__(self, "kind", as_choice(RolloutKind, self.kind, "RolloutRequest.kind").value)
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
        elif self.polarity is not None:
            raise InvalidInputError(f"polarity is for trait requests only (kind={self.kind!r})")
        elif self.split not in (None, "evaluation"):
            raise InvalidInputError(f"a {self.kind} request's split is None (fit) or 'evaluation' (held out), got "
                                    f"{self.split!r}")
        if self.kind == "default" and self.name != "default":
            raise InvalidInputError(f"a default request is named 'default', got {self.name!r}")
        expected = self._make_id()
        if self.id and self.id != expected:
            raise InvalidInputError(f"id {self.id!r} does not match the request's content (expected {expected!r})")
        object.__setattr__(self, "id", expected)

    def _make_id(self) -> str:
        tail = f"p{self.prompt_index}/{self.question_id}/s{self.sample}"
        split = "eval/" if self.split == "evaluation" else ""
        if self.kind == "default":
            return f"default/{split}{tail}"
        if self.kind == "role":
            return f"role/{self.name}/{split}{tail}"
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


def _indices(given: Sequence[int] | None, n: int, what: str) -> list[int]:
    if given is None:
        return list(range(n))
    out = [check_int(i, what, minimum=0) for i in given]
    if not out:
        raise InvalidInputError(f"{what}: no indices were given")
    return out


def role_requests(
    roles: Mapping[str, Role] | Sequence[Role], questions: Sequence[Question | str], prompts_per_role: int = 5,
    samples: int = 1, *, prompt_indices: Sequence[int] | None = None, split: str | None = None,
) -> list[RolloutRequest]:
    """Every role x its first ``prompts_per_role`` system prompts (or exactly ``prompt_indices``) x every question
    x ``samples`` samples; ``split="evaluation"`` marks them held out."""
    check_int(prompts_per_role, "prompts_per_role", minimum=1)
    check_int(samples, "samples", minimum=1)
    prompt_list = _indices(prompt_indices, prompts_per_role, "prompt_indices")
    qs = _questions(questions)
    out = []
    for role in _as_list(roles, "roles"):
        if not isinstance(role, Role):
            raise InvalidInputError(f"roles must hold Role records (from load_roles()), got {type(role).__name__}")
        if max(prompt_list) >= len(role.prompts):
            raise InvalidInputError(
                f"role {role.name!r} has {len(role.prompts)} prompts; prompt {max(prompt_list)} does not exist "
                "(lower prompts_per_role or the prompt indices)"
            )
        for p in prompt_list:
            for q in qs:
                for s in range(samples):
                    out.append(RolloutRequest("role", role.name, p, q.id, s, role.prompts[p], q.text, split=split))
    if not out:
        raise InvalidInputError("no roles were given")
    return out


def default_requests(
    default_prompts: Sequence[str], questions: Sequence[Question | str], samples: int = 1, *,
    prompt_indices: Sequence[int] | None = None, split: str | None = None,
) -> list[RolloutRequest]:
    """Every default-assistant system prompt (``""`` = none; or those at ``prompt_indices``) x every question x
    ``samples`` samples; ``split="evaluation"`` marks them held out."""
    check_int(samples, "samples", minimum=1)
    qs = _questions(questions)
    prompts = _as_list(default_prompts, "default_prompts")
    if not prompts:
        raise InvalidInputError("no default prompts were given (use load_default_prompts())")
    chosen = _indices(prompt_indices, len(prompts), "prompt_indices")
    if max(chosen) >= len(prompts):
        raise InvalidInputError(f"default prompt {max(chosen)} does not exist: there are {len(prompts)}")
    out = []
    for p in chosen:
        system = prompts[p]
        if not isinstance(system, str):
            raise InvalidInputError(f"default_prompts[{p}] must be a string, got {type(system).__name__}")
        for q in qs:
            for s in range(samples):
                out.append(RolloutRequest("default", "default", p, q.id, s, system, q.text, split=split))
    return out


def trait_requests(
    traits: Mapping[str, Trait] | Sequence[Trait], split: str = "extraction", pairs: int = 5, samples: int = 1,
    questions: int | None = None, *, pairs_per_question: int | None = None,
    extra_questions: Sequence[Question] = (),
) -> list[RolloutRequest]:
    """Every trait x its first ``pairs`` instruction pairs x (pos, neg) x every question of ``split``
    (or its first ``questions``) x ``samples`` samples.  Question ids are ``q00``, ``q01``, ... by position.

    ``pairs_per_question=k`` asks question ``i`` under pairs ``i, i+1, .., i+k-1`` (mod ``pairs``) only, so every
    pair is used without asking every question under every pair; ``extra_questions`` (general questions, e.g. the
    fit split of ``questions.json``) are added to the extraction questions with ids ``x-<question id>``."""
    if split not in SPLITS:
        raise InvalidInputError(f"split must be one of {SPLITS}, got {split!r}")
    check_int(pairs, "pairs", minimum=1)
    check_int(samples, "samples", minimum=1)
    if questions is not None:
        check_int(questions, "questions", minimum=1)
    if pairs_per_question is not None:
        check_int(pairs_per_question, "pairs_per_question", minimum=1, maximum=pairs)
    extra = _questions(extra_questions) if len(extra_questions) else []
    if extra and split != "extraction":
        raise InvalidInputError("extra_questions are for the extraction split only (evaluation questions stay the "
                                "trait's own held-out set)")
    out = []
    for trait in _as_list(traits, "traits"):
        if not isinstance(trait, Trait):
            raise InvalidInputError(f"traits must hold Trait records (from load_traits()), got {type(trait).__name__}")
        if pairs > len(trait.pairs):
            raise InvalidInputError(f"trait {trait.name!r} has {len(trait.pairs)} pairs, fewer than pairs={pairs}")
        qs = trait.extraction_questions if split == "extraction" else trait.evaluation_questions
        qs = qs[:questions] if questions is not None else qs
        width = max(2, len(str(len(qs) - 1)))
        asked = [(f"q{qi:0{width}d}", text) for qi, text in enumerate(qs)]
        asked += [(f"x-{q.id}", q.text) for q in extra]
        keyed = []
        for qi, (qid, text) in enumerate(asked):
            chosen = range(pairs) if pairs_per_question is None else \
                sorted({(qi + j) % pairs for j in range(pairs_per_question)})
            for p in chosen:
                for pi, (polarity, system) in enumerate(zip(POLARITIES, trait.pairs[p])):
                    for s in range(samples):
                        keyed.append(((p, pi, qi, s), RolloutRequest("trait", trait.name, p, qid, s, system, text,
                                                                     polarity=polarity, split=split)))
        out += [r for _, r in sorted(keyed, key=lambda kr: kr[0])]  # pair, side, question, sample
    if not out:
        raise InvalidInputError("no traits were given")
    return out


def select_questions(questions: Sequence[Question], n: int | None) -> list[Question]:
    """``n`` questions spread over the categories: round-robin over categories (in order of first appearance),
    taking each category's questions in file order.  ``None`` = all."""
    qs = _questions(questions)
    if n is not None:
        check_int(n, "n", minimum=1)
    if n is None or n >= len(qs):
        return qs
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


def limit_per_kind(requests: Sequence[RolloutRequest], n: int | None) -> list[RolloutRequest]:
    """The first ``n`` requests of EACH kind (role, default, trait), in their original order; ``None`` = all.
    ``--kinds role,default --limit 6`` thus gives 6 role and 6 default requests, not 6 role ones only."""
    requests = list(requests)
    if n is None:
        return requests
    n = check_int(n, "limit", minimum=1)
    seen: dict[str, int] = {}
    out = []
    for r in requests:
        if not isinstance(r, RolloutRequest):
            raise InvalidInputError(f"requests must hold RolloutRequest records, got {type(r).__name__}")
        seen[r.kind] = seen.get(r.kind, 0) + 1
        if seen[r.kind] <= n:
            out.append(r)
    return out
