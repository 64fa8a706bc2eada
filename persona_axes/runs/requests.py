"""Rollout requests: what to answer, named by what it is, and the presets that size a run.

A *rollout request* is one conversation to answer: a system prompt (a role's prompt, a default-assistant prompt,
or one side of a trait's contrastive instruction pair), a question, and a sample number.  Its ``id`` is built
from what it is, never from when it was made, e.g.

* ``role/pirate/p2/q017/s0`` - role ``pirate``, system prompt 2, question ``q017``, sample 0;
* ``default/p0/q017/s0`` - default-assistant prompt 0 (``""``: no system message at all);
* ``trait/evil/pos/p3/q05/s0`` - trait ``evil``, the *pos* instruction of pair 3, extraction question 5;
* ``trait/evil/eval/neg/p3/q05/s0`` - the same for evaluation question 5.

:func:`derive_seed` gives each request its own sampling seed from the run's seed and the id.  :data:`PRESETS`
gives three sizes: ``quick`` (every packaged role, small, for a CPU), ``paper`` (the paper's scale, for a GPU) and
``smoke`` (a few roles, to try the pipeline).  :func:`limit_per_kind` keeps the first N requests of each kind.
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
    "RolloutPreset",
    "PRESETS",
    "get_preset",
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


def role_requests(
    roles: Mapping[str, Role] | Sequence[Role], questions: Sequence[Question | str], prompts_per_role: int = 5,
    samples: int = 1,
) -> list[RolloutRequest]:
    """Every role x its first ``prompts_per_role`` system prompts x every question x ``samples`` samples."""
    check_int(prompts_per_role, "prompts_per_role", minimum=1)
    check_int(samples, "samples", minimum=1)
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
    check_int(samples, "samples", minimum=1)
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
    check_int(pairs, "pairs", minimum=1)
    check_int(samples, "samples", minimum=1)
    if questions is not None:
        check_int(questions, "questions", minimum=1)
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

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInputError(f"RolloutPreset.name must be a non-empty string, got {self.name!r}")
        for name in ("prompts_per_role", "trait_pairs", "samples", "max_new_tokens", "batch_size"):
            check_int(getattr(self, name), f"RolloutPreset.{name}", minimum=1)
        for name in ("questions", "default_prompts", "trait_questions"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), f"RolloutPreset.{name}", minimum=1)
        for name in ("roles", "traits"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, str) or not all(isinstance(x, str) and x for x in value):
                    raise InvalidInputError(f"RolloutPreset.{name} must be a tuple of names (or None for all), "
                                            f"got {value!r}")
                object.__setattr__(self, name, tuple(value))
        self.sampling()  # temperature and top_p checked by SamplingConfig

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

        if isinstance(include, str):
            include = include.split(",")
        include = {as_choice(RolloutKind, k, "include").value for k in include}
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
