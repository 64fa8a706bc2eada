"""Tests for persona_axes.runs.datasets: the packaged persona data and the strict, validating loader (no models)."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from persona_axes.runs.datasets import (
    PAIRS_PER_TRAIT,
    PROMPTS_PER_ROLE,
    QUESTION_CATEGORIES,
    ROLE_FAMILIES,
    Question,
    Role,
    Trait,
    available_traits,
    load_default_prompts,
    load_questions,
    load_roles,
    load_traits,
)
from persona_axes.errors import DataSchemaError

REQUIRED_TRAITS = {
    "openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism",
    "evil", "sycophantic", "hallucinating", "humorous", "impolite", "optimistic", "apathetic",
}
DATA_DIR = Path(__file__).resolve().parents[1] / "persona_axes" / "data"


# ------------------------------------------------------------------------------------------------------------
# Packaged data
# ------------------------------------------------------------------------------------------------------------


def test_roles_counts_and_family_coverage():
    roles = load_roles()
    assert len(roles) >= 64
    per_family = Counter(r.family for r in roles.values())
    assert set(per_family) == set(ROLE_FAMILIES)
    assert all(n >= 7 for n in per_family.values()), per_family


def test_roles_fields():
    roles = load_roles()
    for name, role in roles.items():
        assert isinstance(role, Role)
        assert role.name == name
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", name)
        assert role.source == "package:roles.json"
        assert role.description.strip() and role.description.endswith(".")
        assert isinstance(role.prompts, tuple)
        assert len(role.prompts) == PROMPTS_PER_ROLE == 5
        assert len(set(role.prompts)) == 5
        for prompt in role.prompts:
            assert prompt == prompt.strip() and prompt
            sentences = re.findall(r"[.!?](?:\s|$)", prompt)
            assert 1 <= len(sentences) <= 3, (name, prompt)
    all_prompts = [p for r in roles.values() for p in r.prompts]
    assert len(all_prompts) == len(set(all_prompts)), "a system prompt is shared by two roles"


def test_records_are_frozen():
    role = next(iter(load_roles().values()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        role.name = "x"  # type: ignore[misc]


def test_default_prompts():
    prompts = load_default_prompts()
    assert len(prompts) >= 6
    assert prompts[0] == ""
    assert all(p.strip() for p in prompts[1:])
    assert len(set(prompts)) == len(prompts)


def test_questions_counts_and_uniqueness():
    questions = load_questions()
    assert len(questions) >= 90
    assert all(isinstance(q, Question) for q in questions)
    per_category = Counter(q.category for q in questions)
    assert set(per_category) == set(QUESTION_CATEGORIES)
    assert all(n >= 12 for n in per_category.values()), per_category
    assert len({q.id for q in questions}) == len(questions)
    assert len({q.text for q in questions}) == len(questions)
    assert all(q.text.endswith("?") for q in questions)


def test_questions_category_filter():
    meta = load_questions("meta")
    assert meta and all(q.category == "meta" for q in meta)
    two = load_questions(["facts", "advice"])
    assert {q.category for q in two} == {"facts", "advice"}
    with pytest.raises(DataSchemaError, match="categories.*unknown.*identity"):
        load_questions(["feelings"])


def test_traits_packaged():
    traits = load_traits()
    assert REQUIRED_TRAITS <= set(traits)
    assert set(available_traits()) == set(traits)
    stems = {p.stem for p in (DATA_DIR / "traits").glob("*.json")}
    assert stems == set(traits)
    for name, trait in traits.items():
        assert isinstance(trait, Trait)
        assert trait.name == name
        assert trait.source == f"package:traits/{name}.json"
        assert trait.description.strip()
        assert len(trait.pairs) == PAIRS_PER_TRAIT == 5
        for pos, neg in trait.pairs:
            assert pos.strip() and neg.strip() and pos != neg
        assert len(trait.extraction_questions) == 20
        assert len(trait.evaluation_questions) == 20
        assert len(set(trait.extraction_questions)) == 20
        assert len(set(trait.evaluation_questions)) == 20
        assert not set(trait.extraction_questions) & set(trait.evaluation_questions)


def test_load_traits_by_name_and_unknown_name():
    picked = load_traits(["evil", "humorous"])
    assert list(picked) == ["evil", "humorous"]
    assert list(load_traits("optimistic")) == ["optimistic"]
    with pytest.raises(DataSchemaError) as exc:
        load_traits(["evil", "grumpy"])
    message = str(exc.value)
    assert "'grumpy'" in message
    for name in REQUIRED_TRAITS:
        assert name in message


def test_packaged_json_files_carry_schema_tags():
    expected = {
        "roles.json": "persona_axes.roles/1",
        "questions.json": "persona_axes.questions/1",
        "default_prompts.json": "persona_axes.default_prompts/1",
    }
    for file, tag in expected.items():
        assert json.loads((DATA_DIR / file).read_text(encoding="utf-8"))["schema"] == tag
    for path in (DATA_DIR / "traits").glob("*.json"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        assert doc["schema"] == "persona_axes.trait/1" and doc["name"] == path.stem


# ------------------------------------------------------------------------------------------------------------
# User files: merge and replacement
# ------------------------------------------------------------------------------------------------------------


def _role(name: str, family: str = "creative") -> dict:
    return {
        "name": name,
        "family": family,
        "description": f"A test character called {name}.",
        "prompts": [f"You are {name}, variant {i}." for i in range(5)],
    }


def _roles_doc(*roles: dict) -> dict:
    return {"schema": "persona_axes.roles/1", "roles": list(roles)}


def _trait_doc(name: str) -> dict:
    return {
        "schema": "persona_axes.trait/1",
        "name": name,
        "description": f"The test trait {name}.",
        "pairs": [{"pos": f"Be very {name} ({i}).", "neg": f"Be not {name} at all ({i})."} for i in range(5)],
        "extraction_questions": [f"Extraction question {i}?" for i in range(20)],
        "evaluation_questions": [f"Evaluation question {i}?" for i in range(20)],
    }


def _questions_doc(*questions: tuple[str, str, str]) -> dict:
    return {
        "schema": "persona_axes.questions/1",
        "questions": [{"id": i, "category": c, "text": t} for i, c, t in questions],
    }


def _write(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc, encoding="utf-8")
    return path


def test_user_roles_are_added(tmp_path):
    packaged = load_roles()
    user = _write(tmp_path / "my_roles.json", _roles_doc(_role("test_muse"), _role("test_oracle2", "fantastical")))
    roles = load_roles(extra=user)
    assert len(roles) == len(packaged) + 2
    assert roles["test_muse"].source == str(user)
    assert roles["test_oracle2"].family == "fantastical"
    assert roles["pirate"] == packaged["pirate"]


def test_user_role_replaces_packaged_with_warning(tmp_path):
    user = _write(tmp_path / "override.json", _roles_doc(_role("pirate", "theatrical")))
    with pytest.warns(UserWarning, match="override.json.*'pirate'.*packaged"):
        roles = load_roles(extra=[user])
    assert roles["pirate"].prompts[0] == "You are pirate, variant 0."
    assert roles["pirate"].source == str(user)
    assert len(roles) == len(load_roles())


def test_several_user_role_files(tmp_path):
    a = _write(tmp_path / "a.json", _roles_doc(_role("alpha_role")))
    b = _write(tmp_path / "b.json", _roles_doc(_role("beta_role")))
    roles = load_roles(extra=[a, str(b)])
    assert {"alpha_role", "beta_role"} <= set(roles)


def test_user_trait_file_and_folder(tmp_path):
    folder = tmp_path / "traits"
    folder.mkdir()
    _write(folder / "curious.json", _trait_doc("curious"))
    _write(folder / "stoic.json", _trait_doc("stoic"))
    traits = load_traits(extra=folder)
    assert {"curious", "stoic"} <= set(traits)
    assert REQUIRED_TRAITS <= set(traits)
    assert traits["stoic"].pairs[0] == ("Be very stoic (0).", "Be not stoic at all (0).")
    single = _write(tmp_path / "wistful.json", _trait_doc("wistful"))
    assert list(load_traits(["wistful"], extra=single)) == ["wistful"]


def test_user_trait_replaces_packaged_with_warning(tmp_path):
    user = _write(tmp_path / "evil.json", _trait_doc("evil"))
    with pytest.warns(UserWarning, match="'evil'.*packaged"):
        traits = load_traits(["evil"], extra=user)
    assert traits["evil"].description == "The test trait evil."
    assert traits["evil"].source == str(user)


def test_user_trait_folder_without_json(tmp_path):
    with pytest.raises(DataSchemaError, match="no .json trait files"):
        load_traits(extra=tmp_path)


def test_user_questions_added_and_replaced(tmp_path):
    packaged = load_questions()
    user = _write(tmp_path / "qs.json", _questions_doc(
        ("q001", "identity", "What is your favourite colour of silence?"),
        ("u001", "meta", "Do you dream between conversations?"),
    ))
    with pytest.warns(UserWarning, match="'q001'"):
        questions = load_questions(extra=user)
    by_id = {q.id: q for q in questions}
    assert len(questions) == len(packaged) + 1
    assert by_id["q001"].text == "What is your favourite colour of silence?"
    assert by_id["u001"].category == "meta"
    with pytest.warns(UserWarning):
        assert [q.id for q in load_questions("meta", extra=user)][-1] == "u001"


# ------------------------------------------------------------------------------------------------------------
# Bad files: every error names the file and the field path
# ------------------------------------------------------------------------------------------------------------


def _mutated_roles(mutate) -> dict:
    doc = _roles_doc(_role("first_role"), _role("second_role"))
    mutate(doc)
    return doc


def _set(path, value):
    """Mutation that walks keys/indices in ``path`` and sets the last one to ``value``."""

    def mutate(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path):
    def mutate(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


BAD_ROLE_FILES = [
    # (id, mutation, expected field path, expected words in the message)
    ("prompt_not_string", _set(["roles", 1, "prompts", 2], 5), "roles[1].prompts[2]",
     "expected a non-empty string, got 5"),
    ("prompt_empty", _set(["roles", 0, "prompts", 0], "   "), "roles[0].prompts[0]", "non-empty string"),
    ("wrong_schema_tag", _set(["schema"], "persona_axes.roles/2"), "schema", "persona_axes.roles/1"),
    ("missing_schema_tag", _delete(["schema"]), "schema", "missing required field"),
    ("missing_description", _delete(["roles", 0, "description"]), "roles[0].description", "missing"),
    ("unknown_family", _set(["roles", 1, "family"], "wizardly"), "roles[1].family", "non_human"),
    ("four_prompts", _set(["roles", 0, "prompts"], ["a.", "b.", "c.", "d."]), "roles[0].prompts",
     "exactly 5"),
    ("duplicate_prompt", _set(["roles", 0, "prompts", 4], "You are first_role, variant 1."),
     "roles[0].prompts[4]", "duplicate"),
    ("prompts_not_list", _set(["roles", 0, "prompts"], "You are a cat."), "roles[0].prompts", "expected a list"),
    ("bad_name", _set(["roles", 0, "name"], "Noir Detective"), "roles[0].name", "snake_case"),
    ("duplicate_name", _set(["roles", 1, "name"], "first_role"), "roles[1].name", "duplicate"),
    ("unknown_key", _set(["roles", 0, "colour"], "red"), "roles[0].colour", "unknown field"),
    ("roles_not_list", _set(["roles"], {"pirate": {}}), "roles", "expected a list"),
    ("role_not_object", _set(["roles", 1], "pirate"), "roles[1]", "expected an object"),
]


@pytest.mark.parametrize(
    "mutate,field,words", [case[1:] for case in BAD_ROLE_FILES], ids=[case[0] for case in BAD_ROLE_FILES]
)
def test_bad_roles_file(tmp_path, mutate, field, words):
    path = _write(tmp_path / "bad_roles.json", _mutated_roles(mutate))
    with pytest.raises(DataSchemaError) as exc:
        load_roles(extra=path)
    message = str(exc.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert "bad_roles.json" in message
    assert words in message
    assert "Fix:" in message


def test_bad_roles_message_format_example(tmp_path):
    doc = _roles_doc(*[_role(f"role_{i}") for i in range(4)])
    doc["roles"][3]["prompts"][2] = 5
    path = _write(tmp_path / "roles.json", doc)
    with pytest.raises(DataSchemaError, match=re.escape("roles.json: roles[3].prompts[2]: expected a non-empty "
                                                        "string, got 5")):
        load_roles(extra=path)


def _trait_mutation(name, mutate):
    doc = _trait_doc(name)
    mutate(doc)
    return doc


BAD_TRAIT_FILES = [
    ("four_pairs", _delete(["pairs", 4]), "pairs", "exactly 5"),
    ("missing_neg", _delete(["pairs", 2, "neg"]), "pairs[2].neg", "missing"),
    ("pos_equals_neg", _set(["pairs", 1, "neg"], "Be very grumpy (1)."), "pairs[1].neg", "identical"),
    ("overlap", _set(["evaluation_questions", 3], "Extraction question 7?"), "evaluation_questions[3]",
     "extraction_questions[7]"),
    ("name_mismatch", _set(["name"], "cheerful"), "name", "grumpy"),
    ("empty_questions", _set(["extraction_questions"], []), "extraction_questions", "empty"),
    ("question_not_string", _set(["evaluation_questions", 0], None), "evaluation_questions[0]", "got null"),
    ("empty_description", _set(["description"], ""), "description", "non-empty string"),
    ("wrong_schema", _set(["schema"], "persona_axes.roles/1"), "schema", "persona_axes.trait/1"),
]


@pytest.mark.parametrize(
    "mutate,field,words", [case[1:] for case in BAD_TRAIT_FILES], ids=[case[0] for case in BAD_TRAIT_FILES]
)
def test_bad_trait_file(tmp_path, mutate, field, words):
    path = _write(tmp_path / "grumpy.json", _trait_mutation("grumpy", mutate))
    with pytest.raises(DataSchemaError) as exc:
        load_traits(extra=path)
    message = str(exc.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert "grumpy.json" in message
    assert words in message
    assert "Fix:" in message


BAD_QUESTION_FILES = [
    ("unknown_category", [("u1", "gossip", "What is new?")], "questions[0].category", "meta"),
    ("duplicate_id", [("u1", "facts", "Why is snow white?"), ("u1", "facts", "Why is grass green?")],
     "questions[1].id", "duplicate"),
    ("duplicate_text", [("u1", "facts", "Why is snow white?"), ("u2", "facts", "Why is snow white?")],
     "questions[1].text", "duplicate"),
    ("same_text_as_packaged", [("u1", "facts", "Why is the sky blue?")], "questions[0].text", "same text"),
    ("bad_id", [("has space", "facts", "Why is snow white?")], "questions[0].id", "invalid id"),
]


@pytest.mark.parametrize(
    "rows,field,words", [case[1:] for case in BAD_QUESTION_FILES], ids=[case[0] for case in BAD_QUESTION_FILES]
)
def test_bad_questions_file(tmp_path, rows, field, words):
    path = _write(tmp_path / "my_questions.json", _questions_doc(*rows))
    with pytest.raises(DataSchemaError) as exc:
        load_questions(extra=path)
    message = str(exc.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert "my_questions.json" in message
    assert words in message


@pytest.mark.parametrize("loader", [load_roles, load_traits, load_questions], ids=["roles", "traits", "questions"])
def test_invalid_json(tmp_path, loader):
    path = _write(tmp_path / "broken.json", '{"schema": "persona_axes.roles/1", "roles": [,]}')
    with pytest.raises(DataSchemaError) as exc:
        loader(extra=path)
    message = str(exc.value)
    assert message.startswith(f"{path}: (document): invalid JSON at line 1")
    assert "Fix:" in message


def test_top_level_not_object(tmp_path):
    path = _write(tmp_path / "list_roles.json", [_role("a_role")])
    with pytest.raises(DataSchemaError, match=r"list_roles\.json: \(document\): expected a JSON object"):
        load_roles(extra=path)


def test_missing_user_file(tmp_path):
    with pytest.raises(DataSchemaError, match=r"nope\.json: \(document\): file not found"):
        load_roles(extra=tmp_path / "nope.json")


def test_trait_file_given_to_roles_loader(tmp_path):
    path = _write(tmp_path / "calm.json", _trait_doc("calm"))
    with pytest.raises(DataSchemaError, match=r"calm\.json: schema: expected 'persona_axes\.roles/1'"):
        load_roles(extra=path)


def test_comment_keys_are_ignored(tmp_path):
    doc = _roles_doc(_role("commented_role"))
    doc["_comment"] = "written by hand"
    doc["roles"][0]["_note"] = "draft"
    path = _write(tmp_path / "commented.json", doc)
    assert "commented_role" in load_roles(extra=path)


def test_packaged_files_are_not_mutated_by_user_docs(tmp_path):
    # Loading twice gives equal results: no shared mutable state leaks between calls.
    doc = _roles_doc(_role("pirate", "theatrical"))
    path = _write(tmp_path / "pirate.json", copy.deepcopy(doc))
    with pytest.warns(UserWarning):
        load_roles(extra=path)
    assert load_roles()["pirate"].source == "package:roles.json"
