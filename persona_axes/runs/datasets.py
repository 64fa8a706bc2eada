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

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from persona_axes.errors import DataSchemaError
from persona_axes.runs.data_files import (
    ID_RE,
    PACKAGE_PREFIX,
    Extra,
    PathLike,
    SchemaChecker,
    as_paths,
    describe_value,
    merge_entries,
    package_data,
    parse_json,
    read_packaged,
    read_user,
)

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
# Roles
# --------------------------------------------------------------------------------------------------------------


def _parse_roles(doc: Any, label: str, source: str) -> dict[str, Role]:
    c = SchemaChecker(label)
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
    merged = _parse_roles(*read_packaged("roles.json"))
    for path in as_paths(extra):
        doc, label, source = read_user(path)
        merge_entries(merged, _parse_roles(doc, label, source), "role", label)
    return merged


# --------------------------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------------------------


def _parse_questions(doc: Any, label: str) -> dict[str, Question]:
    c = SchemaChecker(label)
    top = c.schema_tag(doc, QUESTIONS_SCHEMA, ("questions",), "questions")
    items = c.array(top["questions"], "questions", "questions")
    out: dict[str, Question] = {}
    ids: dict[str, int] = {}
    texts: dict[str, int] = {}
    for i, raw in enumerate(items):
        path = f"questions[{i}]"
        entry = c.obj(raw, path, ("id", "category", "text"), "a question")
        qid = c.string(entry["id"], f"{path}.id", "use a short id such as 'q001'")
        if not ID_RE.match(qid):
            raise c.fail(f"{path}.id", f"invalid id {describe_value(qid)}",
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
    doc, label, _ = read_packaged("questions.json")
    merged = _parse_questions(doc, label)
    sources = {qid: label for qid in merged}
    for path in as_paths(extra):
        doc, label, _ = read_user(path)
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
    doc, label, _ = read_packaged("default_prompts.json")
    c = SchemaChecker(label)
    top = c.schema_tag(doc, DEFAULT_PROMPTS_SCHEMA, ("prompts",), "default prompts")
    items = c.array(top["prompts"], "prompts", "default system prompts")
    if items[0] != "":
        raise c.fail("prompts[0]", f"expected the empty string \"\", got {describe_value(items[0])}",
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
    c = SchemaChecker(label)
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
                         f"also appears as extraction_questions[{where[q]}] ({describe_value(q)})",
                         "extraction and evaluation questions must be disjoint; move or reword it")
    return Trait(name, description, tuple(pairs), extraction, evaluation, source)


def _packaged_trait_files() -> dict[str, Any]:
    folder = package_data().joinpath("traits")
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
    for given in as_paths(extra):
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
        merged[stem] = _parse_trait(parse_json(entry.read_text(encoding="utf-8"), label), label,
                                    PACKAGE_PREFIX + label, stem)
    for path in _user_trait_files(extra):
        doc, label, source = read_user(path)
        trait = _parse_trait(doc, label, source, Path(path).stem)
        merge_entries(merged, {trait.name: trait}, "trait", label)
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
