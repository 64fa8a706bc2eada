"""The persona data set: roles, traits, questions and default-assistant system prompts.

Everything here is plain JSON shipped under ``persona_axes/data`` and written for this project:

* ``roles.json`` (schema ``persona_axes.roles/1``): characters the model is asked to *be*, each with a family, a
  one-sentence description (for a judge) and exactly five system prompts.
* ``default_prompts.json`` (schema ``persona_axes.default_prompts/1``): system prompts for the plain assistant; the
  first is ``""``, meaning *no system prompt at all*.
* ``questions.json`` (schema ``persona_axes.questions/1``): open questions asked of every role, in six categories.
* ``traits/<name>.json`` (schema ``persona_axes.trait/1``): one trait per file, with five contrastive
  ``{"pos", "neg"}`` instruction pairs and disjoint extraction / evaluation question sets.

Users can add or override entries with their own files of the same schema (the ``extra`` arguments); an entry
whose name (or question id) matches a packaged one replaces it, with a :class:`UserWarning`.

Validation is strict and hand-written. Any problem raises :class:`~persona_axes.errors.DataSchemaError` whose
message names the file and the field path and says how to fix it, e.g.::

    roles.json: roles[3].prompts[2]: expected a non-empty string, got 5. Fix: write each prompt as a quoted,
    non-empty JSON string.

Keys starting with ``_`` are ignored everywhere (use them for comments); any other unknown key is an error.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from persona_axes.errors import DataSchemaError

__all__ = [
    "ROLE_FAMILIES",
    "QUESTION_CATEGORIES",
    "PROMPTS_PER_ROLE",
    "PAIRS_PER_TRAIT",
    "ROLES_SCHEMA",
    "DEFAULT_PROMPTS_SCHEMA",
    "QUESTIONS_SCHEMA",
    "TRAIT_SCHEMA",
    "Role",
    "Trait",
    "Question",
    "load_roles",
    "load_traits",
    "load_questions",
    "load_default_prompts",
    "available_traits",
]

PathLike = Union[str, Path]
Extra = Union[PathLike, Sequence[PathLike], None]

ROLES_SCHEMA = "persona_axes.roles/1"
DEFAULT_PROMPTS_SCHEMA = "persona_axes.default_prompts/1"
QUESTIONS_SCHEMA = "persona_axes.questions/1"
TRAIT_SCHEMA = "persona_axes.trait/1"

#: Allowed values of ``Role.family``.
ROLE_FAMILIES: tuple[str, ...] = (
    "profession",
    "helper",
    "creative",
    "theatrical",
    "fantastical",
    "non_human",
    "antagonist",
)
#: Allowed values of ``Question.category`` (``meta`` = reflection on the model's own nature).
QUESTION_CATEGORIES: tuple[str, ...] = ("identity", "advice", "opinions", "emotions", "facts", "meta")
#: Every role has exactly this many system prompts.
PROMPTS_PER_ROLE = 5
#: Every trait has exactly this many contrastive instruction pairs.
PAIRS_PER_TRAIT = 5

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_PACKAGE_PREFIX = "package:"


# --------------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    """A character the model is asked to play.

    ``source`` is ``"package:roles.json"`` for packaged roles, or the path of the user file it came from.
    """

    name: str
    family: str
    description: str
    prompts: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Trait:
    """A behavioural trait with contrastive instructions and two disjoint question sets.

    ``pairs`` holds ``(pos, neg)`` system instructions: ``pos`` elicits the trait, ``neg`` its opposite.
    ``extraction_questions`` are for building the trait vector, ``evaluation_questions`` for testing it.
    """

    name: str
    description: str
    pairs: tuple[tuple[str, str], ...]
    extraction_questions: tuple[str, ...]
    evaluation_questions: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Question:
    """An open question asked of every role."""

    id: str
    category: str
    text: str


# --------------------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """Short, readable rendering of a JSON value for error messages."""
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "...'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _Checker:
    """Validates one parsed JSON document and builds error messages naming the file and the field path."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, path: str, problem: str, fix: str) -> DataSchemaError:
        return DataSchemaError(f"{self.label}: {path}: {problem}. Fix: {fix}")

    def obj(self, value: Any, path: str, required: Sequence[str], what: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected an object ({what}), got {_describe(value)}",
                            f"write {what} as a JSON object with keys {', '.join(required)}")
        for key in required:
            if key not in value:
                raise self.fail(_join(path, key), "missing required field",
                                f"add the key {key!r} to {what} (required keys: {', '.join(required)})")
        for key in value:
            if key not in required and not (isinstance(key, str) and key.startswith("_")):
                raise self.fail(_join(path, key), "unknown field",
                                f"remove it or rename it (allowed keys: {', '.join(required)}; "
                                "keys starting with '_' are ignored and can hold comments)")
        return value

    def string(self, value: Any, path: str, fix: str = "use a quoted, non-empty JSON string") -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"expected a non-empty string, got {_describe(value)}", fix)
        return value

    def name(self, value: Any, path: str) -> str:
        self.string(value, path)
        if not _NAME_RE.match(value):
            raise self.fail(path, f"expected a snake_case name, got {_describe(value)}",
                            "use lowercase letters, digits and single underscores, starting with a letter "
                            "(e.g. 'noir_detective')")
        return value

    def choice(self, value: Any, path: str, allowed: Sequence[str], what: str) -> str:
        self.string(value, path)
        if value not in allowed:
            raise self.fail(path, f"unknown {what} {_describe(value)}", f"use one of: {', '.join(allowed)}")
        return value

    def array(self, value: Any, path: str, what: str, *, exactly: int | None = None,
              non_empty: bool = True) -> list:
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list ({what}), got {_describe(value)}",
                            f"write {what} as a JSON array")
        if exactly is not None and len(value) != exactly:
            raise self.fail(path, f"expected exactly {exactly} {what}, got {len(value)}",
                            f"give exactly {exactly} {what}")
        if non_empty and not value:
            raise self.fail(path, f"expected at least one of {what}, got an empty list",
                            f"add at least one of {what}")
        return value

    def strings(self, value: Any, path: str, what: str, *, exactly: int | None = None) -> tuple[str, ...]:
        items = self.array(value, path, what, exactly=exactly)
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            self.string(item, f"{path}[{i}]", f"write each of {what} as a quoted, non-empty JSON string")
            if item in seen:
                raise self.fail(f"{path}[{i}]", f"duplicate of {path}[{seen[item]}] ({_describe(item)})",
                                f"make {what} distinct: reword or remove one of the duplicates")
            seen[item] = i
        return tuple(items)

    def schema_tag(self, doc: Any, expected: str, required: Sequence[str], what: str) -> dict:
        if not isinstance(doc, dict):
            raise self.fail("(document)", f"expected a JSON object at top level, got {_describe(doc)}",
                            f"the file must look like {{\"schema\": \"{expected}\", ...}}")
        if "schema" not in doc:
            raise self.fail("schema", "missing required field",
                            f"add \"schema\": \"{expected}\" at the top level of the {what} file")
        if doc["schema"] != expected:
            raise self.fail("schema", f"expected {expected!r}, got {_describe(doc['schema'])}",
                            f"set \"schema\": \"{expected}\" (is this the right kind of file?)")
        return self.obj(doc, "(document)", ("schema", *required), f"a {what} file")


def _join(path: str, key: str) -> str:
    return key if path in ("", "(document)") else f"{path}.{key}"


# --------------------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------------------


def _package_data() -> Any:
    return resources.files("persona_axes").joinpath("data")


def _parse(text: str, label: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataSchemaError(
            f"{label}: (document): invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}). "
            "Fix: correct the JSON syntax there (common causes: a trailing comma, single quotes, "
            "an unescaped double quote inside a string)"
        ) from None


def _read_packaged(relative: str) -> tuple[Any, str, str]:
    """Parse a packaged file; returns ``(document, label, source)``."""
    resource = _package_data()
    for part in relative.split("/"):
        resource = resource.joinpath(part)
    try:
        text = resource.read_text(encoding="utf-8")
    except (FileNotFoundError, OSError) as exc:  # a broken installation
        raise DataSchemaError(
            f"{relative}: (document): packaged data file could not be read ({exc}). "
            "Fix: reinstall persona-axes; its package data must include data/**/*.json"
        ) from exc
    return _parse(text, relative), relative, _PACKAGE_PREFIX + relative


def _read_user(path: PathLike) -> tuple[Any, str, str]:
    """Parse a user file; returns ``(document, label, source)``. The label is the path as given."""
    p = Path(path).expanduser()
    label = str(path)
    if not p.is_file():
        problem = "is a folder, not a file" if p.is_dir() else "file not found"
        raise DataSchemaError(f"{label}: (document): {problem}. Fix: pass the path of an existing JSON file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataSchemaError(f"{label}: (document): not valid UTF-8 text. Fix: save the file as UTF-8 JSON") \
            from None
    return _parse(text, label), label, str(p)


def _as_paths(extra: Extra) -> list[PathLike]:
    if extra is None:
        return []
    if isinstance(extra, (str, Path)):
        return [extra]
    if isinstance(extra, Iterable):
        paths = list(extra)
        for p in paths:
            if not isinstance(p, (str, Path)):
                raise DataSchemaError(
                    f"(arguments): extra: expected a path or a list of paths, got an item {_describe(p)}. "
                    "Fix: pass str or pathlib.Path values"
                )
        return paths
    raise DataSchemaError(
        f"(arguments): extra: expected a path or a list of paths, got {_describe(extra)}. "
        "Fix: pass a str, a pathlib.Path, or a list of them"
    )


def _merge(merged: dict, new: dict, kind: str, label: str) -> None:
    """Add ``new`` entries to ``merged``; a same-key entry replaces the old one with a warning."""
    for key, value in new.items():
        if key in merged:
            old = merged[key]
            where = "the packaged" if old.source.startswith(_PACKAGE_PREFIX) else f"the one from {old.source}"
            warnings.warn(f"{label}: {kind} {key!r} replaces {where} {kind} of the same name",
                          UserWarning, stacklevel=3)
        merged[key] = value  # a replacement keeps the position of the entry it replaces


# --------------------------------------------------------------------------------------------------------------
# Roles
# --------------------------------------------------------------------------------------------------------------


def _parse_roles(doc: Any, label: str, source: str) -> dict[str, Role]:
    c = _Checker(label)
    top = c.schema_tag(doc, ROLES_SCHEMA, ("roles",), "roles")
    items = c.array(top["roles"], "roles", "roles")
    out: dict[str, Role] = {}
    first_index: dict[str, int] = {}
    for i, raw in enumerate(items):
        path = f"roles[{i}]"
        entry = c.obj(raw, path, ("name", "family", "description", "prompts"), "a role")
        name = c.name(entry["name"], f"{path}.name")
        if name in out:
            raise c.fail(f"{path}.name", f"duplicate role name {name!r} (also roles[{first_index[name]}])",
                         "give every role a unique name")
        family = c.choice(entry["family"], f"{path}.family", ROLE_FAMILIES, "role family")
        description = c.string(entry["description"], f"{path}.description",
                               "write a one-sentence description of the character")
        prompts = c.strings(entry["prompts"], f"{path}.prompts", "system prompts", exactly=PROMPTS_PER_ROLE)
        out[name] = Role(name, family, description, prompts, source)
        first_index[name] = i
    return out


def load_roles(extra: Extra = None) -> dict[str, Role]:
    """Load the packaged roles, merged with roles from ``extra`` (a path or list of paths to roles files).

    Returns ``{name: Role}`` in file order; user roles with a packaged name replace it (with a warning).
    """
    merged = _parse_roles(*_read_packaged("roles.json"))
    for path in _as_paths(extra):
        doc, label, source = _read_user(path)
        _merge(merged, _parse_roles(doc, label, source), "role", label)
    return merged


# --------------------------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------------------------


def _parse_questions(doc: Any, label: str) -> dict[str, Question]:
    c = _Checker(label)
    top = c.schema_tag(doc, QUESTIONS_SCHEMA, ("questions",), "questions")
    items = c.array(top["questions"], "questions", "questions")
    out: dict[str, Question] = {}
    ids: dict[str, int] = {}
    texts: dict[str, int] = {}
    for i, raw in enumerate(items):
        path = f"questions[{i}]"
        entry = c.obj(raw, path, ("id", "category", "text"), "a question")
        qid = c.string(entry["id"], f"{path}.id", "use a short id such as 'q001'")
        if not _ID_RE.match(qid):
            raise c.fail(f"{path}.id", f"invalid id {_describe(qid)}",
                         "use letters, digits, '_', '.' or '-' only (e.g. 'q001')")
        if qid in ids:
            raise c.fail(f"{path}.id", f"duplicate id {qid!r} (also questions[{ids[qid]}])",
                         "give every question a unique id")
        category = c.choice(entry["category"], f"{path}.category", QUESTION_CATEGORIES, "question category")
        text = c.string(entry["text"], f"{path}.text", "write the question as a non-empty string")
        if text in texts:
            raise c.fail(f"{path}.text", f"duplicate question text (also questions[{texts[text]}])",
                         "remove or reword one of the duplicates")
        ids[qid], texts[text] = i, i
        out[qid] = Question(qid, category, text)
    return out


def load_questions(categories: str | Iterable[str] | None = None, extra: Extra = None) -> list[Question]:
    """Load the packaged questions, merged with ``extra`` questions files, optionally filtered by category.

    A user question with a packaged id replaces it (with a warning). ``categories`` is one category or several;
    unknown categories raise :class:`DataSchemaError`.
    """
    wanted: tuple[str, ...] | None = None
    if categories is not None:
        wanted = (categories,) if isinstance(categories, str) else tuple(categories)
        unknown = [cat for cat in wanted if cat not in QUESTION_CATEGORIES]
        if unknown:
            raise DataSchemaError(
                f"questions.json: categories: unknown question categor{'y' if len(unknown) == 1 else 'ies'} "
                f"{', '.join(map(repr, unknown))}. Fix: use some of: {', '.join(QUESTION_CATEGORIES)}"
            )
    doc, label, _ = _read_packaged("questions.json")
    merged = _parse_questions(doc, label)
    sources = {qid: label for qid in merged}
    for path in _as_paths(extra):
        doc, label, _ = _read_user(path)
        new = _parse_questions(doc, label)
        for qid, q in new.items():
            if qid in merged:
                warnings.warn(f"{label}: question {qid!r} replaces the one from {sources[qid]} with the same id",
                              UserWarning, stacklevel=2)
            merged[qid] = q  # a replacement keeps the position of the question it replaces
            sources[qid] = label
        by_text: dict[str, list[str]] = {}
        for qid, q in merged.items():
            by_text.setdefault(q.text, []).append(qid)
        for i, (qid, q) in enumerate(new.items()):
            others = [o for o in by_text[q.text] if o != qid]
            if others:
                raise DataSchemaError(
                    f"{label}: questions[{i}].text: same text as question {others[0]!r} from {sources[others[0]]}. "
                    f"Fix: use the id {others[0]!r} to replace that question, or reword the text"
                )
    questions = list(merged.values())
    if wanted is not None:
        questions = [q for q in questions if q.category in wanted]
    return questions


# --------------------------------------------------------------------------------------------------------------
# Default prompts
# --------------------------------------------------------------------------------------------------------------


def load_default_prompts() -> list[str]:
    """System prompts for the plain default assistant; the first is ``""`` (no system prompt at all)."""
    doc, label, _ = _read_packaged("default_prompts.json")
    c = _Checker(label)
    top = c.schema_tag(doc, DEFAULT_PROMPTS_SCHEMA, ("prompts",), "default prompts")
    items = c.array(top["prompts"], "prompts", "default system prompts")
    if items[0] != "":
        raise c.fail("prompts[0]", f"expected the empty string \"\", got {_describe(items[0])}",
                     "put \"\" (meaning: no system prompt) first in the list")
    seen: dict[str, int] = {}
    for i, prompt in enumerate(items[1:], start=1):
        c.string(prompt, f"prompts[{i}]", "after the leading \"\", write each prompt as a quoted, non-empty string")
        if prompt in seen:
            raise c.fail(f"prompts[{i}]", f"duplicate of prompts[{seen[prompt]}]", "remove the duplicate")
        seen[prompt] = i
    return list(items)


# --------------------------------------------------------------------------------------------------------------
# Traits
# --------------------------------------------------------------------------------------------------------------


def _parse_trait(doc: Any, label: str, source: str, stem: str) -> Trait:
    c = _Checker(label)
    top = c.schema_tag(doc, TRAIT_SCHEMA,
                       ("name", "description", "pairs", "extraction_questions", "evaluation_questions"), "trait")
    name = c.name(top["name"], "name")
    if name != stem:
        raise c.fail("name", f"expected {stem!r} (the file name without .json), got {name!r}",
                     f"set \"name\": \"{stem}\" or rename the file to {name}.json")
    description = c.string(top["description"], "description", "define the trait in one or two sentences")
    raw_pairs = c.array(top["pairs"], "pairs", "instruction pairs", exactly=PAIRS_PER_TRAIT)
    pairs: list[tuple[str, str]] = []
    for i, raw in enumerate(raw_pairs):
        path = f"pairs[{i}]"
        entry = c.obj(raw, path, ("pos", "neg"), "an instruction pair")
        pos = c.string(entry["pos"], f"{path}.pos", "write the instruction that elicits the trait")
        neg = c.string(entry["neg"], f"{path}.neg", "write the instruction that elicits the opposite")
        if pos == neg:
            raise c.fail(f"{path}.neg", "identical to pos", "neg must elicit the opposite of the trait")
        if (pos, neg) in pairs:
            raise c.fail(path, f"duplicate of pairs[{pairs.index((pos, neg))}]", "make the five pairs distinct")
        pairs.append((pos, neg))
    extraction = c.strings(top["extraction_questions"], "extraction_questions", "extraction questions")
    evaluation = c.strings(top["evaluation_questions"], "evaluation_questions", "evaluation questions")
    where = {q: i for i, q in enumerate(extraction)}
    for i, q in enumerate(evaluation):
        if q in where:
            raise c.fail(f"evaluation_questions[{i}]",
                         f"also appears as extraction_questions[{where[q]}] ({_describe(q)})",
                         "extraction and evaluation questions must be disjoint; move or reword it")
    return Trait(name, description, tuple(pairs), extraction, evaluation, source)


def _packaged_trait_files() -> dict[str, Any]:
    folder = _package_data().joinpath("traits")
    return {
        entry.name[: -len(".json")]: entry
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".json") and entry.is_file()
    }


def available_traits() -> list[str]:
    """Names of the packaged traits, sorted."""
    return list(_packaged_trait_files())


def _user_trait_files(extra: Extra) -> list[PathLike]:
    files: list[PathLike] = []
    for given in _as_paths(extra):
        p = Path(given).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix == ".json" and q.is_file())
            if not found:
                raise DataSchemaError(f"{given}: (folder): contains no .json trait files. "
                                      "Fix: put <trait_name>.json files in it, or pass the files themselves")
            files.extend(Path(given) / q.name for q in found)
        else:
            files.append(given)
    return files


def load_traits(names: str | Iterable[str] | None = None, extra: Extra = None) -> dict[str, Trait]:
    """Load traits: the packaged ones plus ``extra`` trait files or folders of trait files.

    Returns ``{name: Trait}``; all traits (sorted packaged names, then user ones) when ``names`` is None,
    otherwise exactly the requested ones in the requested order. A user trait with a packaged name replaces it
    (with a warning). Unknown names raise :class:`DataSchemaError` listing the available ones.
    """
    merged: dict[str, Trait] = {}
    for stem, entry in _packaged_trait_files().items():
        label = f"traits/{entry.name}"
        merged[stem] = _parse_trait(_parse(entry.read_text(encoding="utf-8"), label), label,
                                    _PACKAGE_PREFIX + label, stem)
    for path in _user_trait_files(extra):
        doc, label, source = _read_user(path)
        trait = _parse_trait(doc, label, source, Path(path).stem)
        _merge(merged, {trait.name: trait}, "trait", label)
    if names is None:
        return merged
    wanted = (names,) if isinstance(names, str) else tuple(names)
    unknown = [n for n in wanted if n not in merged]
    if unknown:
        raise DataSchemaError(
            f"traits: names: unknown trait{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}. "
            f"Fix: use one of the available traits: {', '.join(sorted(merged))} "
            "(or pass your own trait file via extra=)"
        )
    return {n: merged[n] for n in wanted}
