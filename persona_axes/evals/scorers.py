"""Behaviour scorers: plain functions of reply text, independent of any model or judge, that say how much of a
behaviour a reply shows. They validate trait vectors (does steering move the behaviour?), calibrate steering
intensity (:mod:`persona_axes.evals.intensity`) and judge activation capping by behaviour.

Every scorer follows one protocol, :class:`Scorer`: a ``name``, a one-line ``measures`` and
``score(texts) -> list[float]``, one number per text, where **higher always means more of the behaviour** (more
self-identification, more repetition, more positive sentiment, ...). Scorers are deterministic and cheap.

Shipped here (the lexicon and sentiment scorers follow further down):

- :data:`self_identification`: 1.0 if a reply says it is an AI / assistant / language model, else 0.0.
- :data:`service_phrases`: 1.0 if a reply uses an assistant service phrase ("how can I help", "feel free to
  ask", ...), else 0.0; ``service_phrases.counts(texts)`` gives the number of matches.
- :data:`repetition`: incoherence by repetition in [0, 1]: the larger of the fraction of repeated word 4-grams and
  the fraction of words inside a detected loop; 0 = no repetition.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from persona_axes.core import check_int
from persona_axes.errors import InvalidInputError

__all__ = ["Scorer", "PatternScorer", "RepetitionScorer", "self_identification", "service_phrases", "repetition",
           "words", "check_texts"]

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` (letters and digits, with an inner apostrophe kept: "don't")."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def check_texts(texts: Sequence[str], arg: str = "texts") -> list[str]:
    """``texts`` as a list of strings; a bare string (a common slip) or a non-string item is an error."""
    if isinstance(texts, str):
        raise InvalidInputError(f"{arg} must be a list of replies, got one string; wrap it: [{texts[:30]!r}...]")
    try:
        out = list(texts)
    except TypeError:
        raise InvalidInputError(f"{arg} must be a list of strings, got {type(texts).__name__}") from None
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InvalidInputError(f"{arg}[{i}] must be a string, got {type(t).__name__}")
    return out


@runtime_checkable
class Scorer(Protocol):
    """A behaviour scorer: ``score(texts)`` gives one float per text, **higher = more of the behaviour**."""

    name: str
    measures: str

    def score(self, texts: Sequence[str]) -> list[float]: ...


class PatternScorer:
    """Regular expressions over the lower-cased reply (curly apostrophes straightened).

    ``mode="any"``: 1.0 if any pattern matches, else 0.0; ``mode="count"``: the number of non-overlapping matches
    over all patterns. :meth:`counts` always gives the counts."""

    def __init__(self, name: str, measures: str, patterns: Sequence[str], *, mode: str = "any"):
        if mode not in ("any", "count"):
            raise InvalidInputError(f"mode={mode!r} is not one of any, count")
        if not patterns:
            raise InvalidInputError(f"scorer {name!r} needs at least one pattern")
        self.name, self.measures, self.mode = name, measures, mode
        self.patterns = tuple(re.compile(p) for p in patterns)

    def counts(self, texts: Sequence[str]) -> list[int]:
        out = []
        for t in check_texts(texts):
            t = t.lower().replace("\u2019", "'")
            out.append(sum(len(p.findall(t)) for p in self.patterns))
        return out

    def matches(self, text: str) -> list[str]:
        """The matched spans in one text (for showing why a reply scored)."""
        t = check_texts([text])[0].lower().replace("\u2019", "'")
        return [m.group(0) for p in self.patterns for m in p.finditer(t)]

    def score(self, texts: Sequence[str]) -> list[float]:
        c = self.counts(texts)
        return [float(n > 0) for n in c] if self.mode == "any" else [float(n) for n in c]

    def __repr__(self) -> str:
        return f"PatternScorer({self.name!r}, {len(self.patterns)} patterns, mode={self.mode!r})"


_I_AM = r"\b(?:i am|i'm|im)\s+(?:just |only |merely |simply |actually |really )?"
_WHAT_AI = (r"(?:an? )?(?:ai|a\.i\.|artificial intelligence|(?:large )?language model|llm|chatbot|chat bot|"
            r"virtual assistant|digital assistant|ai assistant|ai model|assistant|computer program|machine|bot)\b")

self_identification = PatternScorer(
    "self_identification",
    "1.0 if the reply says it is an AI, an assistant or a language model (not a human); else 0.0",
    [
        _I_AM + _WHAT_AI,
        r"\bas an? (?:ai|artificial intelligence|(?:large )?language model|llm|chatbot|virtual assistant|"
        r"digital assistant|ai assistant|ai model|assistant|machine)\b",
        r"\b(?:large )?language models?\b",
        r"\bai (?:assistant|model|system|chatbot|language model)\b",
        r"\b(?:i am|i'm) not (?:a |an )?(?:human|person|real person|living being|conscious)\b",
        r"\bi (?:don't|do not) have (?:personal |real |any )?(?:feelings|emotions|a body|a physical body|"
        r"consciousness|personal experiences|a life)\b",
        r"\b(?:created|developed|trained|built|made|designed) by (?:openai|anthropic|google|meta|hugging ?face|"
        r"a team of (?:engineers|researchers|developers))\b",
        r"\bmy (?:training data|programming|training)\b",
    ],
)

service_phrases = PatternScorer(
    "service_phrases",
    "1.0 if the reply uses an assistant service phrase (offers of help, invitations to ask more); else 0.0",
    [
        r"\bhow (?:can|may|could) i (?:help|assist|be of (?:help|assistance|service))\b",
        r"\bwhat can i (?:do|help you with)\b",
        r"\b(?:happy|glad|delighted|here) to (?:help|assist)\b",
        r"\b(?:i'm|i am) here to (?:help|assist|support)\b",
        r"\b(?:i'd|i would) be (?:happy|glad|delighted) to\b",
        r"\b(?:feel free|don't hesitate|do not hesitate) to (?:ask|reach out|contact|let me know)\b",
        r"\blet me know if\b",
        r"\bis there anything else\b",
        r"\banything else (?:i can|you(?:'d| would) like|you need)\b",
        r"\b(?:i )?hope (?:this|that|my answer) (?:helps|was helpful|is helpful|answers)\b",
        r"\bif you have any (?:other |more |further )?(?:questions|concerns)\b",
        r"\bassist you\b",
    ],
)


class RepetitionScorer:
    """Incoherence by repetition, in [0, 1], 0 = no repetition.

    ``score = max(repeated n-gram fraction, loop fraction)``: the fraction of word ``n``-grams (default 4) that
    already occurred earlier in the reply, and the fraction of the reply's words inside its longest *loop*: a run
    of one unit of 1..``max_unit`` words repeated back to back at least ``min_repeats`` times and covering at
    least ``min_loop_words`` words ("no no no no no no", "I am here. I am here. I am here."). Replies shorter
    than ``n`` words score 0 for the n-gram part."""

    name = "repetition"
    measures = "fraction of the reply that repeats itself (repeated word 4-grams, or a loop); 0 = none"

    def __init__(self, n: int = 4, *, max_unit: int = 12, min_repeats: int = 3, min_loop_words: int = 6):
        self.n = check_int(n, "n", minimum=1)
        self.max_unit = check_int(max_unit, "max_unit", minimum=1)
        self.min_repeats = check_int(min_repeats, "min_repeats", minimum=2)
        self.min_loop_words = check_int(min_loop_words, "min_loop_words", minimum=2)

    def ngram_fraction(self, text: str) -> float:
        w = words(text)
        grams = [tuple(w[i:i + self.n]) for i in range(len(w) - self.n + 1)]
        if not grams:
            return 0.0
        seen: set[tuple[str, ...]] = set()
        repeated = 0
        for g in grams:
            repeated += g in seen
            seen.add(g)
        return repeated / len(grams)

    def longest_loop(self, text: str) -> tuple[int, int, int]:
        """``(start, unit, repeats)`` of the longest loop in word positions, or ``(0, 0, 0)`` if there is none."""
        w = words(text)
        best = (0, 0, 0)
        for unit in range(1, self.max_unit + 1):
            i = 0
            while i + 2 * unit <= len(w):
                reps = 1
                while w[i + reps * unit:i + (reps + 1) * unit] == w[i:i + unit]:
                    reps += 1
                if reps >= self.min_repeats and reps * unit >= self.min_loop_words and reps * unit > best[1] * best[2]:
                    best = (i, unit, reps)
                i += reps * unit if reps > 1 else 1
        return best

    def loop_fraction(self, text: str) -> float:
        n_words = len(words(text))
        _, unit, reps = self.longest_loop(text)
        return unit * reps / n_words if n_words else 0.0

    def loops(self, texts: Sequence[str]) -> list[bool]:
        """Whether each reply holds a loop (see the class docstring)."""
        return [self.longest_loop(t)[2] > 0 for t in check_texts(texts)]

    def score(self, texts: Sequence[str]) -> list[float]:
        return [max(self.ngram_fraction(t), self.loop_fraction(t)) for t in check_texts(texts)]

    def __repr__(self) -> str:
        return f"RepetitionScorer(n={self.n})"


repetition = RepetitionScorer()
