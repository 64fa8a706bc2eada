"""The capping check (persona_axes.evals.cap_check) on a tiny random-init model with a fake judge: every number is
recomputed here from replies generated independently; the choice rule on hand-built results; per-token calibration
(steering.capping) against numpy; the held-out data loaders' typed errors."""

import json

import numpy as np
import pytest
import torch

from persona_axes.activations.batch import capture
from persona_axes.errors import DataSchemaError, InvalidInputError
from persona_axes.evals.cap_check import (CapBehaviour, CapSetting, cap_behaviour, choose_cap, explore_caps,
                                          reply_means, roleplay_prompts, uncapped_replies)
from persona_axes.evals.data import (HeldoutQuestion, RoleplayCharacter, load_heldout_questions,
                                     load_heldout_roleplay)
from persona_axes.evals.scorers import repetition, self_identification
from persona_axes.judges.base import RoleScore
from persona_axes.stats import Estimate
from persona_axes.steering.capping import ActivationCap, CapConfig, calibrate_cap
from persona_axes.steering.generation import SamplingConfig, generate_replies

from helpers import conversations

TOKENS = 6


class FakeJudge:
    """In character when the reply has an even number of characters (deterministic, independent of the model)."""

    def score_roles(self, items):
        return [RoleScore(3 if len(it.response) % 2 == 0 else 0, "fake") for it in items]


CHARS = [RoleplayCharacter(f"c{i}", "animal", f"A creature number {i}.", f"You are creature {i}. Stay in character.")
         for i in range(3)]
ORDINARY = ["How do I boil an egg?", "What should I pack?", "How can I sleep better?", "Tips for an email?"]
CHECKABLE = [HeldoutQuestion("c0", "What is 2 plus 3?", ("5", "five")), HeldoutQuestion("c1", "Capital of France?", ("Paris",))]


@pytest.fixture(scope="module")
def setup(tiny):
    acts = capture(tiny, conversations(5), layers=[1, 2], which="assistant", reduce="all", progress=False)
    axis = torch.randn(tiny.layers.n_layers, 64, generator=torch.Generator().manual_seed(5))
    rp = roleplay_prompts(CHARS, ["Who are you?", "What do you eat?"], per_character=2)
    return acts, axis, rp


def _gen(tiny, convs, cap=None, positions="all"):
    sampling = SamplingConfig(max_new_tokens=TOKENS)
    if cap is None:
        return generate_replies(tiny, convs, sampling, batch_size=16)
    with ActivationCap(tiny, cap, positions=positions):
        return generate_replies(tiny, convs, sampling, batch_size=16)


def _cap(setup, tau):
    acts, axis, _ = setup
    cap = calibrate_cap(axis, acts, [1, 2], percentile=50)
    return CapConfig(axis=cap.axis, thresholds={L: tau for L in cap.layers}, kind="floor", model=cap.model)


def test_cap_behaviour_numbers_match_an_independent_computation(tiny, setup):
    acts, axis, rp = setup
    cap = _cap(setup, 8.0)  # a high floor: it edits most tokens
    res = cap_behaviour(tiny, cap, roleplay=rp, ordinary=ORDINARY, checkable=CHECKABLE, judge=FakeJudge(),
                        max_new_tokens=TOKENS, n_boot=50)
    # everything again, by hand, in one batch of all prompts (the order cap_behaviour uses)
    convs = [p.messages() for p in rp] + [[{"role": "user", "content": q}] for q in ORDINARY] \
        + [[{"role": "user", "content": q.text}] for q in CHECKABLE]
    base, capped = _gen(tiny, convs), _gen(tiny, convs, cap)
    n, m = len(rp), len(rp) + len(ORDINARY)
    same = sum(a == b for a, b in zip(base[n:m], capped[n:m]))
    assert res.unchanged == same and res.n_ordinary == len(ORDINARY)
    assert base != capped  # the floor really acted
    assert res.unchanged_fraction.value == pytest.approx(same / len(ORDINARY))
    inc0 = np.mean([len(r) % 2 == 0 for r in base[:n]])
    inc1 = np.mean([len(r) % 2 == 0 for r in capped[:n]])
    assert res.in_character_without.value == pytest.approx(inc0)
    assert res.in_character_with.value == pytest.approx(inc1)
    if inc0 > 0:
        assert res.cut.value == pytest.approx((inc0 - inc1) / inc0)
    assert res.correct_with.value == pytest.approx(np.mean([q.correct(r) for q, r in zip(CHECKABLE, capped[m:])]))
    assert res.self_id_with.value == pytest.approx(np.mean(self_identification.score(capped[:n])))
    assert res.repetition_without.value == pytest.approx(np.mean(repetition.score(base[:m])))
    # projection of the capped role-play replies, read without the cap, at the middle capped layer
    keep = [i for i in range(n) if capped[i].strip()]
    if keep:
        a = capture(tiny, [rp[i].messages() + [{"role": "assistant", "content": capped[i]}] for i in keep],
                    layers=[2], progress=False)
        assert res.projection_with.value == pytest.approx(float((a.at(2) @ cap.axis[2]).mean()), abs=1e-4)
    assert res.axis_layer == 2 and res.threshold_kind == "given" and res.positions == "all"
    json.dumps(res.to_dict())


def test_a_floor_below_every_token_changes_nothing(tiny, setup):
    res = cap_behaviour(tiny, _cap(setup, -1e4), roleplay=setup[2], ordinary=ORDINARY, checkable=CHECKABLE,
                        judge=FakeJudge(), max_new_tokens=TOKENS, n_boot=20)
    assert res.unchanged == len(ORDINARY)
    assert res.in_character_with.value == res.in_character_without.value
    assert res.correct_with.value == res.correct_without.value


def test_uncapped_replies_are_reused_and_checked(tiny, setup):
    rp = setup[2]
    un = uncapped_replies(tiny, rp, ORDINARY, CHECKABLE, max_new_tokens=TOKENS)
    with pytest.raises(InvalidInputError, match="do not match"):
        cap_behaviour(tiny, _cap(setup, 0.0), roleplay=rp[:2], ordinary=ORDINARY, checkable=CHECKABLE,
                      judge=FakeJudge(), max_new_tokens=TOKENS, uncapped=un)
    with pytest.raises(InvalidInputError, match="checkable"):
        cap_behaviour(tiny, _cap(setup, 0.0), roleplay=rp, ordinary=ORDINARY, checkable=["What?"],
                      judge=FakeJudge(), max_new_tokens=TOKENS, uncapped=un)


def test_explore_caps_calibrates_per_token_and_on_reply_means(tiny, setup):
    acts, axis, rp = setup
    settings = [CapSetting(10, (1, 2), "generated", True), CapSetting(10, (1, 2), "all", False)]
    out = explore_caps(tiny, axis, acts, roleplay=rp, ordinary=ORDINARY, checkable=CHECKABLE, judge=FakeJudge(),
                       settings=settings, max_new_tokens=TOKENS, axis_layer=2, n_boot=20)
    assert [r.threshold_kind for r in out] == ["per_token", "reply_mean"]
    assert [r.positions for r in out] == ["generated", "all"]
    means = reply_means(acts)
    for r, ref in zip(out, (acts, means)):
        u = (axis[2] / axis[2].norm()).double().numpy()
        assert r.thresholds[2] == pytest.approx(np.percentile(ref.at(2).double().numpy() @ u, 10), abs=1e-4)
    # the uncapped side is shared
    assert out[0].in_character_without == out[1].in_character_without
    with pytest.raises(InvalidInputError, match="per-token"):
        explore_caps(tiny, axis, means, roleplay=rp, ordinary=ORDINARY, checkable=CHECKABLE, judge=FakeJudge())


def test_reply_means_and_per_token_calibration(tiny, setup):
    acts, axis, _ = setup
    means = reply_means(acts)
    direct = capture(tiny, conversations(5), layers=[1, 2], which="assistant", reduce="mean", progress=False)
    assert len(means) == len(direct)
    assert torch.allclose(means.values, direct.values, atol=1e-4)
    cap = calibrate_cap(axis, acts, [1, 2], percentile=5)
    assert cap.extra["calibrated_on"] == "per_token" and "per-token" in cap.reference
    assert calibrate_cap(axis, means, [1, 2], percentile=5).extra["calibrated_on"] == "reply_mean"
    u = axis[1] / axis[1].norm()
    assert cap.thresholds[1] == pytest.approx(float(np.percentile((acts.at(1) @ u).double().numpy(), 5)), abs=1e-4)
    # per-token projections spread more than reply means: a low percentile of tokens sits below that of means
    assert cap.thresholds[1] < calibrate_cap(axis, means, [1], percentile=5).thresholds[1]


def _result(label, cut, unchanged, n=8, c0=0.5, c1=0.5, layers=(20,)):
    e = lambda v: Estimate(v, v, v, n)  # noqa: E731
    return CapBehaviour(label, "per_token", 5.0, list(layers), "all", {L: 0.0 for L in layers}, 32, n, 8,
                        e(0.8), e(0.8 * (1 - cut)), e(cut), e(0), e(0), e(0), e(0), e(0), e(0), unchanged,
                        e(unchanged / n), e(c0), e(c1), e(-20), e(-2), 20)


def test_choose_cap_rule():
    rs = [_result("big-cut-edits", 0.9, 5), _result("ok", 0.5, 7), _result("better", 0.6, 8),
          _result("hurts-correctness", 0.8, 8, c1=0.4), _result("nan", float("nan"), 8)]
    assert choose_cap(rs).label == "better"
    assert choose_cap(rs, min_unchanged=0.5).label == "big-cut-edits"
    tie = [_result("wide", 0.6, 8, layers=(17, 18, 19)), _result("narrow", 0.6, 8, layers=(20,)),
           _result("fewer-same", 0.6, 7)]
    assert choose_cap(tie).label == "narrow"
    assert choose_cap([_result("edits", 0.9, 6)]) is None
    assert choose_cap([_result("no-cut", 0.0, 8), _result("raises", -0.1, 8)]) is None
    with pytest.raises(InvalidInputError):
        choose_cap(rs, min_unchanged=1.5)


def test_shipped_heldout_data_loads_and_is_held_out():
    chars = load_heldout_roleplay()
    qs = load_heldout_questions()
    assert len(chars) >= 16 and len({c.family for c in chars}) >= 5
    assert len(qs.ordinary) >= 16 and len(qs.checkable) >= 16 and len(qs.identity) >= 8
    assert all(q.answers for q in qs.checkable)
    roles = json.loads((__import__("pathlib").Path(__file__).parents[1] / "persona_axes/data/roles.json").read_text())
    assert not {c.name for c in chars} & {r["name"] for r in roles["roles"]}
    assert qs.checkable[0].correct("The capital is PARIS.") and not qs.checkable[0].correct("London")


@pytest.mark.parametrize("loader,doc,match", [
    (load_heldout_roleplay, {"schema": "wrong/1", "characters": [{"name": "a", "family": "f", "description": "d",
                                                                  "system_prompt": "s"}]}, "schema"),
    (load_heldout_roleplay, {"schema": "persona_axes.heldout_roleplay/1", "characters": []}, "non-empty list"),
    (load_heldout_roleplay, {"schema": "persona_axes.heldout_roleplay/1",
                             "characters": [{"name": "a", "family": "f", "description": "d"}]}, "system_prompt"),
    (load_heldout_roleplay, {"schema": "persona_axes.heldout_roleplay/1",
                             "characters": [{"name": "a", "family": "f", "description": "d", "system_prompt": "s"}] * 2},
     "duplicate"),
    (load_heldout_questions, {"schema": "persona_axes.heldout_questions/1", "ordinary": [{"id": "o", "text": "t"}],
                              "checkable": [{"id": "c", "text": "t", "answers": []}],
                              "identity": [{"id": "i", "text": "t"}]}, "answers"),
    (load_heldout_questions, {"schema": "persona_axes.heldout_questions/1", "ordinary": [{"id": "o", "text": "t"}],
                              "checkable": [{"id": "c", "text": "t", "answers": ["x"]}]}, "identity"),
    (load_heldout_questions, {"schema": "persona_axes.heldout_questions/1", "ordinary": [{"id": "o", "text": " "}],
                              "checkable": [{"id": "c", "text": "t", "answers": ["x"]}],
                              "identity": [{"id": "o", "text": "t"}]}, "empty"),
])
def test_heldout_loaders_reject_bad_files(tmp_path, loader, doc, match):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(DataSchemaError, match=match):
        loader(p)
    p.write_text("{not json")
    with pytest.raises(DataSchemaError, match="not valid JSON"):
        loader(p)


def test_roleplay_prompts_rotate_questions():
    rp = roleplay_prompts(CHARS, ["q0", "q1", "q2"], per_character=2)
    assert [(p.character.name, p.question) for p in rp] == [("c0", "q0"), ("c0", "q1"), ("c1", "q2"), ("c1", "q0"),
                                                          ("c2", "q1"), ("c2", "q2")]
    assert rp[0].messages()[0] == {"role": "system", "content": CHARS[0].system_prompt}
    with pytest.raises(InvalidInputError):
        roleplay_prompts([], ["q"])


def test_cap_behaviour_round_trips_through_its_dict():
    r = _result("x", 0.5, 7, layers=(19, 20))
    back = CapBehaviour.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r


def test_a_cap_file_carries_its_positions(tiny, setup, tmp_path):
    acts, axis, _ = setup
    cap = calibrate_cap(axis, acts, [1, 2], percentile=5)
    assert ActivationCap(tiny, cap).positions.value == "all"
    cap.extra["positions"] = "generated"
    back = CapConfig.load(cap.save(tmp_path / "c.safetensors"), model=tiny)
    assert ActivationCap(tiny, back).positions.value == "generated"
    assert ActivationCap(tiny, back, positions="all").positions.value == "all"  # an explicit choice wins
    back.extra["positions"] = "sideways"
    with pytest.raises(InvalidInputError, match="positions"):
        ActivationCap(tiny, back)
