"""Trait intensity calibration (persona_axes.evals.intensity): the curve from a tiny random-init model equals
replies generated one coefficient at a time and scored by hand; the isotonic fit, the monotone range and
coef_for are checked against hand computations and scikit-learn; bad arguments and unreachable targets raise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from persona_axes.errors import InvalidInputError, TargetOutOfRangeError
from persona_axes.evals.intensity import IntensityCurve, calibrate_intensity, isotonic_fit, replies_scored
from persona_axes.evals.scorers import repetition
from persona_axes.stats import Estimate
from persona_axes.steering.generation import SamplingConfig, generate_replies
from persona_axes.steering.interventions import Steer

from steering_helpers import vec

QUESTIONS = ["Tell me about the sea.", "What is two plus two?", "Name a colour you like.", "How do birds fly?"]
COEFS = [-0.2, 0.0, 0.2, 0.4]
LAYERS = [1, 2]


class DistinctChars:
    """A fake scorer whose value is easy to compute independently: the number of distinct characters."""

    name = "distinct_chars"
    measures = "number of distinct characters in the reply"

    def score(self, texts):
        return [float(len(set(t))) for t in texts]


def _by_hand(tiny, vector, coef, temperature=0.0, unit="raw"):
    s = SamplingConfig(max_new_tokens=10, temperature=temperature, seed=5)
    with Steer(tiny, vector, LAYERS, coef, unit=unit):
        return [generate_replies(tiny, [[{"role": "user", "content": q}]], s, seeds=[5 + i])[0]
                for i, q in enumerate(QUESTIONS)]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_curve_equals_replies_generated_one_coefficient_at_a_time(tiny, temperature):
    v = vec(1, 0.5)
    curve = calibrate_intensity(tiny, v, DistinctChars(), QUESTIONS, layers=LAYERS, coefs=COEFS[::-1],
                                max_new_tokens=10, seed=5, batch_size=3, temperature=temperature, n_boot=200)
    assert curve.coefs == tuple(COEFS)  # sorted
    replies = [_by_hand(tiny, v, c, temperature) for c in COEFS]
    assert [list(r) for r in curve.replies] == replies
    scores = [[float(len(set(t))) for t in r] for r in replies]
    assert [list(s) for s in curve.scores] == scores
    assert curve.means == pytest.approx([np.mean(s) for s in scores])
    for e in curve.mean:
        assert e.low <= e.value <= e.high and e.n == len(QUESTIONS)
    assert list(curve.repetition) == pytest.approx([np.mean(repetition.score(r)) for r in replies])
    x = [c for c in COEFS for _ in QUESTIONS]
    y = [v_ for s in scores for v_ in s]
    if len(set(y)) > 1:
        assert curve.rho == pytest.approx(spearmanr(x, y).statistic)
        assert 0 < curve.p <= 1
    assert curve.questions == tuple(QUESTIONS)
    assert replies_scored(curve, DistinctChars()) == scores
    d = json.loads(json.dumps(curve.to_dict()))
    assert d["coefs"] == COEFS and d["settings"]["layers"] == LAYERS and d["settings"]["temperature"] == temperature
    if temperature == 0:  # the steer acts: some coefficient changes some reply
        assert any(r != replies[1] for r in replies)


def test_unit_and_reference_go_straight_to_steer(tiny):
    v = vec(2, 0.5)
    curve = calibrate_intensity(tiny, v, DistinctChars(), QUESTIONS, layers=LAYERS, coefs=[0.0, 1.0, 2.0],
                                unit="unit", max_new_tokens=10, seed=5, n_boot=100)
    # "unit": coef activation units along the unit direction, i.e. raw steering by the normalised vector
    assert [list(r) for r in curve.replies] == [_by_hand(tiny, v / v.norm(), c) for c in (0.0, 1.0, 2.0)]
    assert curve.settings["unit"] == "unit"


def _curve(coefs, means, *, rho=0.5, p=0.01, reps=None):
    return IntensityCurve(
        scorer="fake", coefs=tuple(coefs), mean=tuple(Estimate(m, m - 0.1, m + 0.1, 3) for m in means),
        scores=tuple((m, m, m) for m in means), replies=tuple(("a", "b", "c") for _ in means),
        repetition=tuple(reps or [0.0] * len(means)), rho=rho, p=p)


def test_isotonic_fit_matches_hand_pooling_and_sklearn():
    assert isotonic_fit([0.1, 0.2, 0.5, 0.4, 0.9]) == pytest.approx([0.1, 0.2, 0.45, 0.45, 0.9])
    assert isotonic_fit([3, 1, 2], increasing=False) == pytest.approx([3, 1.5, 1.5])
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.normal(size=9) + np.linspace(0, 2, 9)
        w = rng.uniform(0.5, 2, size=9)
        for inc in (True, False):
            ref = IsotonicRegression(increasing=inc).fit_transform(np.arange(9), y, sample_weight=w)
            assert isotonic_fit(y, increasing=inc, weights=w) == pytest.approx(ref)


def test_coef_for_inverts_the_isotonic_fit_by_hand_interpolation():
    c = _curve([-2, -1, 0, 1, 2], [0.1, 0.2, 0.5, 0.4, 0.9])
    assert c.fit() == pytest.approx([0.1, 0.2, 0.45, 0.45, 0.9])
    assert c.reachable() == pytest.approx((0.1, 0.9))
    assert c.coef_for(0.3) == pytest.approx(-1 + (0.3 - 0.2) / (0.45 - 0.2))
    assert c.coef_for(0.7) == pytest.approx(1 + (0.7 - 0.45) / (0.9 - 0.45))
    assert c.coef_for(0.45) == pytest.approx(0.0)  # flat between 0 and 1: the gentlest push
    assert c.coef_for(0.1) == pytest.approx(-2.0) and c.coef_for(0.9) == pytest.approx(2.0)
    with pytest.raises(TargetOutOfRangeError, match=r"\[0.1, 0.9\]") as e:
        c.coef_for(1.0)
    assert (e.value.low, e.value.high) == pytest.approx((0.1, 0.9))
    with pytest.raises(TargetOutOfRangeError):
        c.coef_for(0.0)
    # a falling curve (rho < 0) is fitted non-increasing
    down = _curve([0, 1, 2, 3], [0.8, 0.5, 0.6, 0.2], rho=-0.7)
    assert down.fit() == pytest.approx([0.8, 0.55, 0.55, 0.2])
    assert down.coef_for(0.3) == pytest.approx(2 + (0.3 - 0.55) / (0.2 - 0.55))
    with pytest.raises(InvalidInputError, match="target"):
        c.coef_for(float("nan"))


def test_monotone_range_and_steers():
    c = _curve([-2, -1, 0, 1, 2], [0.1, 0.2, 0.5, 0.4, 0.9])
    assert c.monotone_range() == (-2, 0)
    assert c.monotone_range(tol=0.1) == (-2, 2)
    # -2 degenerates (loops): left out; the runs [-1, 0] and [1, 2] tie, the one holding 0 wins
    c2 = _curve([-2, -1, 0, 1, 2], [0.1, 0.2, 0.5, 0.4, 0.9], reps=[0.9, 0, 0, 0, 0])
    assert c2.monotone_range(max_repetition=0.5) == (-1, 0)
    with pytest.raises(InvalidInputError, match="max_repetition"):
        c2.monotone_range(max_repetition=-1.0)
    assert c.steers(+1) is True and c.steers(-1) is False  # plain bools (JSON)
    assert not _curve([0, 1, 2], [0, 1, 2], p=0.2).steers(+1)
    assert _curve([0, 1, 2], [2, 1, 0], rho=-0.9).steers(-1)
    assert not _curve([0, 1, 2], [1, 1, 1], rho=None, p=None).steers(+1)
    with pytest.raises(InvalidInputError, match="expected_sign"):
        c.steers(0)


def test_intensity_figure_draws_band_fit_range_and_target():
    from persona_axes.viz.intensity_plots import intensity_figure
    from persona_axes.viz.plots import intensity_figure as registered

    assert registered is intensity_figure
    c = _curve([-2, -1, 0, 1, 2], [0.1, 0.2, 0.5, 0.4, 0.9])
    fig = intensity_figure(c, target=0.3)
    names = [t.name for t in fig.data]
    assert "95% bootstrap CI (questions)" in names and "isotonic fit" in names
    mean = next(t for t in fig.data if t.name == "mean fake")
    assert list(mean.y) == pytest.approx(c.means)
    star = next(t for t in fig.data if t.name.startswith("coef for target"))
    assert star.x[0] == pytest.approx(c.coef_for(0.3)) and star.y[0] == pytest.approx(0.3)
    rects = [sh for sh in fig.layout.shapes if sh.type == "rect"]
    assert [(r.x0, r.x1) for r in rects] == [(-2, 0)]  # the monotone range
    with pytest.raises(TargetOutOfRangeError):
        intensity_figure(c, target=5.0)
    with pytest.raises(InvalidInputError, match="IntensityCurve"):
        intensity_figure({"coefs": [1]})


class WrongLength:
    name = "wrong"
    measures = "returns too few scores"

    def score(self, texts):
        return [1.0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(coefs=[0.0, 1.0]), "at least 3 distinct"),
    (dict(coefs=[0.0, 1.0, 1.0, 2.0]), "no repeats"),
    (dict(coefs="0,1,2"), "list of numbers"),
    (dict(coefs=[0.0, float("nan"), 1.0]), r"coefs\[1\]"),
    (dict(questions="Tell me about the sea."), "at least 2 questions"),
    (dict(questions=["ok", ""]), r"questions\[1\] is empty"),
    (dict(questions=["ok", 3]), r"questions\[1\] must be"),
    (dict(scorer=len), "Scorer protocol"),
    (dict(scorer=WrongLength()), "one finite number per reply"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(batch_size=0), "batch_size"),
    (dict(unit="furlongs"), "unit"),
])
def test_bad_arguments_are_refused(tiny, kwargs, match):
    args = dict(scorer=DistinctChars(), questions=QUESTIONS[:2], coefs=[0.0, 0.1, 0.2], max_new_tokens=2)
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=match):
        calibrate_intensity(tiny, vec(1, 0.5), args.pop("scorer"), args.pop("questions"), layers=LAYERS, **args)


def test_conversations_are_accepted_as_questions(tiny):
    conv = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello!"}]
    curve = calibrate_intensity(tiny, torch.zeros(64), DistinctChars(), [conv, "Hi there."], layers=LAYERS,
                                coefs=[0.0, 1.0, 2.0], max_new_tokens=4, n_boot=50)
    assert curve.questions == ("Hello!", "Hi there.")
    # a zero vector changes nothing: each question scores the same at every coefficient, so rho is 0
    assert curve.rho == pytest.approx(0.0) and curve.p == pytest.approx(1.0) and not curve.steers(+1)
    assert len(set(curve.replies)) == 1
