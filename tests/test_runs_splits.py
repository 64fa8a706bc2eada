"""The fit / held-out split of the packaged data and the standard preset built on it."""

import collections

import pytest

from persona_axes.errors import InvalidInputError
from persona_axes.runs.datasets import load_default_prompts, load_questions, load_roles, load_traits
from persona_axes.runs.presets import get_preset
from persona_axes.runs.splits import split_data


@pytest.fixture(scope="module")
def data():
    return load_roles(), load_questions(), load_default_prompts()


def test_split_follows_the_documented_rule(data):
    roles, qs, prompts = data
    s = split_data(roles, qs, len(prompts))
    fams = collections.defaultdict(list)
    for n, r in roles.items():
        fams[r.family].append(n)
    expect = {n for names in fams.values() for i, n in enumerate(names) if i in (4, 9)}
    assert set(s.heldout_roles) == expect and not set(s.fit_roles) & expect
    assert set(s.fit_roles) | expect == set(roles)
    cats = collections.defaultdict(list)
    for q in qs:
        cats[q.category].append(q.id)
    assert set(s.heldout_questions) == {i for ids in cats.values() for i in ids[-6:]}
    assert len(s.heldout_questions) == 6 * len(cats) and not set(s.fit_questions) & set(s.heldout_questions)
    assert s.fit_prompts == (0, 1, 2) and s.heldout_prompts == (3, 4)
    assert s.fit_default_prompts == tuple(range(6)) and s.heldout_default_prompts == tuple(range(6, len(prompts)))
    assert s.trait_select_questions == tuple(range(10)) and s.trait_check_questions == tuple(range(10, 20))


def test_split_refuses_too_little_data(data):
    roles, qs, prompts = data
    with pytest.raises(InvalidInputError, match="heldout_per_category"):
        split_data(roles, qs, len(prompts), heldout_per_category=16)
    with pytest.raises(InvalidInputError, match="fit_prompts"):
        split_data(roles, qs, len(prompts), fit_prompts=5)
    with pytest.raises(InvalidInputError, match="heldout_roles"):
        split_data({n: roles[n] for n in ("pirate", "chef")}, qs, len(prompts))


def test_standard_preset_never_fits_on_heldout_data(data):
    roles, qs, prompts = data
    s = split_data(roles, qs, len(prompts))
    reqs = get_preset("standard").build_requests()
    assert len({r.id for r in reqs}) == len(reqs)
    by = collections.Counter((r.kind, r.split) for r in reqs)
    n_fit_roles = len(s.fit_roles)
    assert by[("role", None)] == n_fit_roles * 3 * 6 * 2
    assert by[("default", None)] == 6 * 24 * 2
    assert by[("role", "evaluation")] == len(s.heldout_roles) * 2 * 12 * 2
    assert by[("default", "evaluation")] == len(prompts) * 12 * 2
    assert by[("trait", "extraction")] == 12 * 40 * 2 * 2 and by[("trait", "evaluation")] == 12 * 10 * 2 * 2
    for r in reqs:
        if r.kind in ("role", "default") and r.split is None:
            assert r.question_id in s.fit_questions and r.name not in s.heldout_roles
            assert r.kind == "default" or r.prompt_index in s.fit_prompts
            assert r.kind == "role" or r.prompt_index in s.fit_default_prompts
        elif r.kind in ("role", "default"):
            assert r.question_id in s.heldout_questions and "/eval/" in r.id
            assert r.kind == "default" or (r.name in s.heldout_roles and r.prompt_index in s.heldout_prompts)
    traits = load_traits()
    for name, t in traits.items():
        ext = [r for r in reqs if r.kind == "trait" and r.name == name and r.split == "extraction"]
        assert {r.prompt_index for r in ext} == set(range(5))  # every instruction pair is used
        texts = {r.question for r in ext}
        assert not texts & set(t.evaluation_questions) and len(texts) == 40
        ev = [r for r in reqs if r.kind == "trait" and r.name == name and r.split == "evaluation"]
        assert {r.question for r in ev} == set(t.evaluation_questions[:10])
        for side in ("pos", "neg"):
            assert len({r.question for r in ext if r.polarity == side}) >= 40


def test_sampling_groups_make_sample_zero_greedy():
    p = get_preset("standard")
    reqs = p.build_requests(include="default")
    groups = p.sampling_groups(reqs, seed=3)
    assert [g[1].temperature for g in groups] == [0.0, 0.7] and all(g[1].seed == 3 for g in groups)
    assert {r.sample for r in groups[0][0]} == {0} and {r.sample for r in groups[1][0]} == {1}
    q = get_preset("quick")
    assert len(q.sampling_groups(q.build_requests(include="default"))) == 1
