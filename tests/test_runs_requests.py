"""Rollout requests: ids, validation, builders, question selection, seeds, presets, the per-kind limit."""

from __future__ import annotations

import pytest

from persona_axes.errors import InvalidInputError
from persona_axes.runs import presets as P
from persona_axes.runs import requests as R
from persona_axes.runs.datasets import load_default_prompts, load_questions, load_roles, load_traits


# ----------------------------------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------------------------------


def test_request_ids_are_stable_unique_and_readable():
    roles, qs, traits = load_roles(), load_questions(), load_traits()
    build = lambda: (R.role_requests(roles, qs, 5) + R.default_requests(load_default_prompts(), qs, samples=2)
                     + R.trait_requests(traits, "extraction") + R.trait_requests(traits, "evaluation"))
    a, b = build(), build()
    assert [r.id for r in a] == [r.id for r in b]
    assert len({r.id for r in a}) == len(a) == 70 * 5 * 96 + 8 * 96 * 2 + 2 * 12 * 5 * 2 * 20
    by_id = {r.id: r for r in a}
    r = by_id["role/pirate/p2/q017/s0"]
    assert (r.kind, r.name, r.prompt_index, r.question_id, r.sample, r.polarity, r.split) == \
        ("role", "pirate", 2, "q017", 0, None, None)
    assert r.system == roles["pirate"].prompts[2] and r.question == next(q.text for q in qs if q.id == "q017")
    d = by_id["default/p0/q017/s1"]
    assert d.system == "" and d.messages() == [{"role": "user", "content": d.question}]
    t = by_id["trait/evil/pos/p3/q05/s0"]
    assert t.system == traits["evil"].pairs[3][0] and t.question == traits["evil"].extraction_questions[5]
    e = by_id["trait/evil/eval/neg/p3/q05/s0"]
    assert e.split == "evaluation" and e.system == traits["evil"].pairs[3][1]
    assert e.question == traits["evil"].evaluation_questions[5]
    # the id follows from the content alone, and a wrong one is refused
    assert R.RolloutRequest(**{k: getattr(t, k) for k in ("kind", "name", "prompt_index", "question_id", "sample",
                                                           "system", "question", "polarity", "split")}).id == t.id
    with pytest.raises(InvalidInputError, match="does not match"):
        R.RolloutRequest("role", "pirate", 2, "q017", 0, "x", "y", id="role/pirate/p1/q017/s0")


def test_request_validation_and_builders_errors():
    with pytest.raises(InvalidInputError):
        R.RolloutRequest("persona", "x", 0, "q1", 0, "", "q?")
    with pytest.raises(InvalidInputError, match="polarity"):
        R.RolloutRequest("trait", "evil", 0, "q1", 0, "be evil", "q?", split="extraction")
    with pytest.raises(InvalidInputError):
        R.RolloutRequest("role", "pirate", 0, "q1", 0, "", "q?", polarity="pos")
    with pytest.raises(InvalidInputError, match="split"):
        R.trait_requests(load_traits(["evil"]), split="test")
    with pytest.raises(InvalidInputError, match="prompts_per_role"):
        R.role_requests(load_roles(), load_questions(), prompts_per_role=6)
    with pytest.raises(InvalidInputError):
        R.role_requests(load_roles(), [], prompts_per_role=1)


def test_select_questions_spreads_over_categories():
    qs = load_questions()
    six = R.select_questions(qs, 6)
    assert len({q.category for q in six}) == 6
    assert R.select_questions(qs, 6) == six and len(R.select_questions(qs, 14)) == 14
    assert R.select_questions(qs, None) == qs


def test_derive_seed_depends_on_seed_and_id():
    assert R.derive_seed(0, "a") == R.derive_seed(0, "a")
    assert len({R.derive_seed(0, "a"), R.derive_seed(1, "a"), R.derive_seed(0, "b")}) == 3
    assert 0 <= R.derive_seed(123, "role/pirate/p0/q001/s0") < 2**63


# ----------------------------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------------------------


def test_presets():
    quick, paper = P.get_preset("quick"), P.get_preset("paper")
    assert P.get_preset(quick) is quick
    q = quick.build_requests()
    assert len({r.id for r in q}) == len(q)
    assert {r.name for r in q if r.kind == "role"} == set(load_roles())
    assert {r.name for r in q if r.kind == "trait"} == set(load_traits())
    assert {r.prompt_index for r in q if r.kind == "role"} == {0}
    assert len(q) == 70 * 6 + 8 * 6 + 12 * 2 * 5
    assert quick.sampling().max_new_tokens == quick.max_new_tokens
    only_traits = quick.build_requests(include=["trait"])
    assert only_traits == [r for r in q if r.kind == "trait"]
    p = paper.build_requests()
    assert len(p) == (70 * 5 * 96 + 8 * 96 + 12 * 5 * 2 * 20) * paper.samples
    assert paper.temperature > 0 and paper.samples > 1 and paper.max_new_tokens >= 256
    with pytest.raises(InvalidInputError):
        quick.build_requests(include=["roles"])
    smoke = P.get_preset("smoke").build_requests()
    families = {load_roles()[r.name].family for r in smoke if r.kind == "role"}
    assert len(families) == 7  # one role per family, so even the smoke run spans persona space
    assert len(smoke) == 7 * 3 + 3 * 3 + 2 * 2 * 2




def test_limit_is_per_kind():
    """``--kinds role,default --limit 6`` gives 6 role AND 6 default requests (it gave 6 role and no default ones)."""
    reqs = P.get_preset("smoke").build_requests(include=["role", "default"])
    got = R.limit_per_kind(reqs, 6)
    assert [r.kind for r in got].count("role") == 6 and [r.kind for r in got].count("default") == 6
    assert got == [r for r in reqs if r in got]  # the first six of each, in the original order
    assert [r for r in got if r.kind == "role"] == [r for r in reqs if r.kind == "role"][:6]
    assert R.limit_per_kind(reqs, None) == reqs and R.limit_per_kind(reqs, 10**6) == reqs
    for bad in (0, -1, 2.0, "6", True):
        with pytest.raises(InvalidInputError, match="limit"):
            R.limit_per_kind(reqs, bad)


def test_include_takes_kind_enums_or_strings():
    from persona_axes.core import RolloutKind

    smoke = P.get_preset("smoke")
    assert smoke.build_requests(include=[RolloutKind.DEFAULT]) == smoke.build_requests(include=["default"])
    with pytest.raises(InvalidInputError, match="include='persona' is not one of role, default, trait"):
        smoke.build_requests(include=["persona"])


@pytest.mark.parametrize("field, value, match", [
    ("max_new_tokens", "48", "RolloutPreset.max_new_tokens must be an integer"),
    ("samples", 0, "RolloutPreset.samples must be >= 1"),
    ("questions", 2.5, "RolloutPreset.questions must be an integer"),
    ("temperature", float("nan"), "temperature must be finite"),
    ("top_p", 1.5, "top_p must be in"),
    ("roles", "pirate", "RolloutPreset.roles must be a tuple of names"),
])
def test_preset_fields_are_checked(field, value, match):
    from dataclasses import asdict

    with pytest.raises(InvalidInputError, match=match):
        P.RolloutPreset(**{**asdict(P.get_preset("smoke")), field: value})
