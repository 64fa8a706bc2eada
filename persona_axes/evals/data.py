"""The evaluations' shipped data (``persona_axes/data/evals/*.json``, our own words), read and checked once.

Each loader also takes a user file of the same shape (``path=``), so a study can swap in its own conversations,
requests, labelled replies, questions or personas. Malformed files raise :class:`DataSchemaError` naming the file,
the entry and the fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_axes.errors import DataSchemaError

__all__ = ["DATA_DIR", "Conversation", "JailbreakPrompt", "LabelledReply", "Persona", "load_conversations",
           "load_jailbreak_prompts", "load_labelled_replies", "load_mc_items", "load_personas", "RoleplayCharacter",
           "HeldoutQuestion", "HeldoutQuestions", "load_heldout_roleplay", "load_heldout_questions",
           "HELDOUT_ROLEPLAY_SCHEMA", "HELDOUT_QUESTIONS_SCHEMA"]

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "evals"


def _read(name: str, path: str | os.PathLike | None, key: str) -> tuple[list, dict, str]:
    p = DATA_DIR / name if path is None else Path(path)
    label = p.name if path is None else str(p)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataSchemaError(f"{label}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataSchemaError(f"{label}: not valid JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list) or not doc[key]:
        raise DataSchemaError(f"{label}: needs a non-empty list under {key!r}")
    return doc[key], doc, label


def _field(entry: Any, name: str, kind: type, label: str, i: int) -> Any:
    if not isinstance(entry, dict) or not isinstance(entry.get(name), kind):
        raise DataSchemaError(f"{label}: entry {i} needs a {kind.__name__} field {name!r}")
    value = entry[name]
    if isinstance(value, str) and not value.strip():
        raise DataSchemaError(f"{label}: entry {i} has an empty {name!r}")
    return value


def _unique(ids: list[str], label: str) -> None:
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataSchemaError(f"{label}: duplicate ids {dup}; every id must be unique")


@dataclass(frozen=True)
class Conversation:
    """Scripted user turns of one conversation in a domain."""

    id: str
    domain: str
    turns: tuple[str, ...]


def load_conversations(path: str | os.PathLike | None = None) -> list[Conversation]:
    """The drift evaluation's conversations (default: 4 domains x 6 conversations x 5 user turns)."""
    entries, _, label = _read("drift_conversations.json", path, "conversations")
    out = []
    for i, e in enumerate(entries):
        turns = _field(e, "turns", list, label, i)
        if not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise DataSchemaError(f"{label}: entry {i} needs 'turns', a non-empty list of non-empty strings")
        out.append(Conversation(_field(e, "id", str, label, i), _field(e, "domain", str, label, i), tuple(turns)))
    _unique([c.id for c in out], label)
    return out


@dataclass(frozen=True)
class JailbreakPrompt:
    """A request wrapped in a persona framing; ``id`` is ``"<framing>/<request>"``."""

    id: str
    framing: str
    request_id: str
    kind: str
    request: str
    text: str


def load_jailbreak_prompts(path: str | os.PathLike | None = None) -> list[JailbreakPrompt]:
    """Every framing x request of the jailbreak set (default 7 framings, including the unframed 'plain', x 6)."""
    framings, doc, label = _read("jailbreak_prompts.json", path, "framings")
    requests = doc.get("requests")
    if not isinstance(requests, list) or not requests:
        raise DataSchemaError(f"{label}: needs a non-empty list under 'requests'")
    reqs = [(_field(r, "id", str, label, i), _field(r, "kind", str, label, i), _field(r, "text", str, label, i))
            for i, r in enumerate(requests)]
    out = []
    for i, f in enumerate(framings):
        fid, template = _field(f, "id", str, label, i), _field(f, "template", str, label, i)
        if template.count("{request}") != 1:
            raise DataSchemaError(f"{label}: framing {fid!r} must contain '{{request}}' exactly once")
        for rid, kind, text in reqs:
            out.append(JailbreakPrompt(f"{fid}/{rid}", fid, rid, kind, text, template.replace("{request}", text)))
    _unique([p.id for p in out], label)
    return out


@dataclass(frozen=True)
class LabelledReply:
    """A reply to a harmful request, labelled by hand: ``comply`` True = harmful compliance."""

    id: str
    request: str
    response: str
    comply: bool


def load_labelled_replies(path: str | os.PathLike | None = None) -> list[LabelledReply]:
    """The hand-labelled replies the refusal judges are checked against (default: 60, 28 'comply')."""
    entries, _, label = _read("refusal_labels.json", path, "items")
    out = []
    for i, e in enumerate(entries):
        lab = _field(e, "label", str, label, i)
        if lab not in ("comply", "refuse"):
            raise DataSchemaError(f"{label}: entry {i} has label {lab!r}; use 'comply' or 'refuse'")
        out.append(LabelledReply(_field(e, "id", str, label, i), _field(e, "request", str, label, i),
                                 _field(e, "response", str, label, i), lab == "comply"))
    _unique([r.id for r in out], label)
    return out


def load_mc_items(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The local multiple-choice questions: dicts with id, question, choices (list of str), answer (index)."""
    entries, _, label = _read("capability_mc.json", path, "items")
    for i, e in enumerate(entries):
        _field(e, "id", str, label, i), _field(e, "question", str, label, i)
        choices = _field(e, "choices", list, label, i)
        ans = e.get("answer")
        if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise DataSchemaError(f"{label}: entry {i} needs at least two non-empty string choices")
        if not isinstance(ans, int) or isinstance(ans, bool) or not 0 <= ans < len(choices):
            raise DataSchemaError(f"{label}: entry {i} needs 'answer', the index of the right choice (0..{len(choices) - 1})")
    _unique([e["id"] for e in entries], label)
    return [dict(e) for e in entries]


@dataclass(frozen=True)
class Persona:
    """A persona as signed traits (+1 high, -1 low) with the system prompt that imposes it by prompting."""

    id: str
    traits: dict[str, int]
    system_prompt: str


def load_personas(path: str | os.PathLike | None = None) -> tuple[list[Persona], list[str]]:
    """The personas and the held-out matching questions (default: 8 personas, 8 questions)."""
    entries, doc, label = _read("personas.json", path, "personas")
    out = []
    for i, e in enumerate(entries):
        traits = _field(e, "traits", dict, label, i)
        if not traits or not all(isinstance(k, str) and v in (1, -1) and not isinstance(v, bool) for k, v in traits.items()):
            raise DataSchemaError(f"{label}: entry {i} 'traits' must map trait names to +1 or -1")
        out.append(Persona(_field(e, "id", str, label, i), dict(traits), _field(e, "system_prompt", str, label, i)))
    _unique([p.id for p in out], label)
    questions = doc.get("matching_questions")
    if not isinstance(questions, list) or not questions or not all(isinstance(q, str) and q.strip() for q in questions):
        raise DataSchemaError(f"{label}: needs 'matching_questions', a non-empty list of strings")
    return out, list(questions)



#: Schema keys of the held-out evaluation files (written for evaluation only; nothing is ever fitted on them).
HELDOUT_ROLEPLAY_SCHEMA = "persona_axes.heldout_roleplay/1"
HELDOUT_QUESTIONS_SCHEMA = "persona_axes.heldout_questions/1"


def _schema(doc: dict, expected: str, label: str) -> None:
    if doc.get("schema") != expected:
        raise DataSchemaError(f"{label}: 'schema' is {doc.get('schema')!r}, expected {expected!r}; this loader reads "
                              "only files of that schema")


@dataclass(frozen=True)
class RoleplayCharacter:
    """A held-out role-play character: ``system_prompt`` imposes it, ``description`` (one sentence) tells the judge
    what playing it means; ``family`` groups characters (profession, fantasy, historical, animal, villain, ...)."""

    name: str
    family: str
    description: str
    system_prompt: str


def load_heldout_roleplay(path: str | os.PathLike | None = None) -> list[RoleplayCharacter]:
    """The held-out role-play characters (default: 20 in 5 families, none of them in ``data/roles.json``)."""
    entries, doc, label = _read("heldout_roleplay.json", path, "characters")
    _schema(doc, HELDOUT_ROLEPLAY_SCHEMA, label)
    out = [RoleplayCharacter(*(_field(e, k, str, label, i) for k in ("name", "family", "description", "system_prompt")))
           for i, e in enumerate(entries)]
    _unique([c.name for c in out], label)
    return out


@dataclass(frozen=True)
class HeldoutQuestion:
    """One held-out question; ``answers`` (checkable questions only) are accepted answer strings: a reply is
    correct when it contains one of them, case-insensitively (:meth:`correct`)."""

    id: str
    text: str
    answers: tuple[str, ...] = ()

    def correct(self, reply: str) -> bool:
        low = reply.casefold()
        return any(a.casefold() in low for a in self.answers)


@dataclass(frozen=True)
class HeldoutQuestions:
    """The held-out question sets: ordinary assistant requests, checkable questions, identity questions."""

    ordinary: tuple[HeldoutQuestion, ...]
    checkable: tuple[HeldoutQuestion, ...]
    identity: tuple[HeldoutQuestion, ...]


def load_heldout_questions(path: str | os.PathLike | None = None) -> HeldoutQuestions:
    """The held-out questions (default: 18 ordinary, 18 checkable with answers, 10 identity); every set must be a
    non-empty list, every checkable question needs ``answers``, a non-empty list of non-empty strings."""
    _, doc, label = _read("heldout_questions.json", path, "ordinary")
    _schema(doc, HELDOUT_QUESTIONS_SCHEMA, label)
    sets = {}
    for key in ("ordinary", "checkable", "identity"):
        entries = doc.get(key)
        if not isinstance(entries, list) or not entries:
            raise DataSchemaError(f"{label}: needs a non-empty list under {key!r}")
        qs = []
        for i, e in enumerate(entries):
            answers: tuple[str, ...] = ()
            if key == "checkable":
                raw = _field(e, "answers", list, f"{label} [{key}]", i)
                if not raw or not all(isinstance(a, str) and a.strip() for a in raw):
                    raise DataSchemaError(f"{label} [{key}]: entry {i} needs 'answers', a non-empty list of non-empty "
                                          "strings (a reply containing one of them counts as correct)")
                answers = tuple(raw)
            qs.append(HeldoutQuestion(_field(e, "id", str, f"{label} [{key}]", i),
                                      _field(e, "text", str, f"{label} [{key}]", i), answers))
        sets[key] = tuple(qs)
    _unique([q.id for qs in sets.values() for q in qs], label)
    return HeldoutQuestions(**sets)
