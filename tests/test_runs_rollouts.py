"""Rollouts: resumable generation (including a run killed with SIGKILL), per-request seeds, foreign runs, the
writer lock, cached judging. Requests and presets: test_runs_requests.py; the store: test_runs_store.py."""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from persona_axes.engines.base import Engine, EngineReply
from persona_axes.runs import rollouts as R
from persona_axes.runs.datasets import load_default_prompts, load_questions, load_roles, load_traits
from persona_axes.errors import InvalidInputError
from persona_axes.steering.generation import SamplingConfig
from persona_axes.judges.base import RoleScore, TraitScore

from helpers import sigkill_when

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
GREEDY = SamplingConfig(max_new_tokens=6)


def small_requests(n_roles: int = 3, n_questions: int = 2) -> list[R.RolloutRequest]:
    roles = dict(list(load_roles().items())[:n_roles])
    qs = load_questions()[:n_questions]
    traits = load_traits(["evil"])
    return (
        R.role_requests(roles, qs, prompts_per_role=2)
        + R.default_requests(load_default_prompts()[:2], qs)
        + R.trait_requests(traits, pairs=1, questions=2)
    )


def make_record(req, response: str = "Arr.", sampling=GREEDY, model="tiny-llama") -> R.Rollout:
    return R.Rollout.of(req, response=response, model=model, sampling=sampling.to_dict(),
                        item_seed=R.derive_seed(sampling.seed, req.id), created="2026-01-01T00:00:00+00:00")


class CountingGenerate:
    """Wraps rollouts._generate_batch (the engine's next group of replies) and records which request ids were
    generated."""

    def __init__(self, monkeypatch):
        self.asked: list[str] = []
        self._orig = R._generate_batch
        monkeypatch.setattr(R, "_generate_batch", self)

    def __call__(self, stream):
        replies = self._orig(stream)
        self.asked += [x.id for x in replies or ()]
        return replies


class FakeJudge:
    name = "fake/v1"

    def __init__(self):
        self.seen: list[str] = []

    def score_roles(self, items):
        self.seen += [f"role:{i.role}" for i in items]
        assert all(i.role_description for i in items)
        return [RoleScore(len(i.response) % 4, f"rated {i.role}", float(len(i.response))) for i in items]

    def score_traits(self, items):
        self.seen += [f"trait:{i.trait}" for i in items]
        return [TraitScore(float("nan") if k == 0 else 10.0 * k, "ok") for k, i in enumerate(items)]


# ----------------------------------------------------------------------------------------------------------------
# Generation and resuming
# ----------------------------------------------------------------------------------------------------------------


def test_run_rollouts_records_everything(tiny, tmp_path):
    reqs = small_requests()
    rep = R.run_rollouts(tiny, reqs, tmp_path / "r.jsonl", GREEDY, batch_size=4, progress=False)
    assert (rep.generated, rep.skipped) == (len(reqs), 0) and rep.seconds > 0
    store = R.RolloutStore(tmp_path / "r.jsonl")
    assert store.completed_ids() == {r.id for r in reqs}
    rec = store.get(reqs[0].id)
    assert rec.model == "tiny-llama" and rec.sampling == GREEDY.to_dict() and rec.judge == {}
    assert rec.item_seed == R.derive_seed(GREEDY.seed, rec.id) and rec.created.endswith("+00:00")
    assert rec.request == reqs[0]
    json.dumps(rec.to_dict())
    # a second run generates nothing
    rep = R.run_rollouts(tiny, reqs, store, GREEDY, batch_size=4, progress=False)
    assert (rep.generated, rep.skipped) == (0, len(reqs))


class ScriptedEngine(Engine):
    """An engine that answers one request per group, in reverse order; ``drop``/``stray`` make it misbehave."""

    name = "scripted/v1"

    def __init__(self, drop: bool = False, stray: bool = False, twice: bool = False):
        self.drop, self.stray, self.twice, self.seen = drop, stray, twice, []

    def stream(self, requests, sampling=None):
        self.seen += list(requests)
        for r in reversed(requests[1:] if self.drop else requests):
            yield [EngineReply(r.id, f"reply to {r.messages[-1]['content']} #{r.seed}", 3, "stop")]
        if self.stray:
            yield [EngineReply("not-asked", "?", 1, "stop")]
        if self.twice:
            yield [EngineReply(requests[0].id, "again", 1, "stop")] * 2


def test_run_rollouts_takes_any_engine_and_stores_its_replies_as_they_come(tmp_path):
    reqs = small_requests()[:5]
    s = SamplingConfig(max_new_tokens=6, temperature=0.8, seed=2)
    engine = ScriptedEngine()
    rep = R.run_rollouts(engine, reqs, tmp_path / "r.jsonl", s, progress=False)
    assert (rep.generated, rep.skipped) == (5, 0)
    assert [x.id for x in engine.seen] == [r.id for r in reqs]
    assert all(x.seed == R.derive_seed(2, x.id) and list(x.messages) == r.messages()
               for x, r in zip(engine.seen, reqs))
    recs = R.RolloutStore(tmp_path / "r.jsonl").records()
    assert [r.id for r in recs] == [r.id for r in reqs[::-1]]  # appended in the order the engine finished them
    for rec in recs:
        assert rec.model == "scripted/v1" and rec.sampling == s.to_dict() and rec.item_seed == R.derive_seed(2, rec.id)
        assert rec.response == f"reply to {rec.question} #{rec.item_seed}" and rec.created.endswith("+00:00")
    again = ScriptedEngine()
    rep = R.run_rollouts(again, small_requests()[:7], tmp_path / "r.jsonl", s, progress=False)
    assert (rep.generated, rep.skipped) == (2, 5) and [x.id for x in again.seen] == [r.id for r in small_requests()[5:7]]
    other = ScriptedEngine()
    other.name = "other"
    with pytest.raises(InvalidInputError, match="model 'scripted/v1' there"):
        R.run_rollouts(other, reqs, tmp_path / "r.jsonl", s, progress=False)


def test_an_engine_that_drops_or_invents_replies_is_an_error_and_keeps_what_it_gave(tmp_path):
    reqs = small_requests()[:4]
    with pytest.raises(RuntimeError, match="no reply for 1 of 4"):
        R.run_rollouts(ScriptedEngine(drop=True), reqs, tmp_path / "a.jsonl", progress=False)
    assert R.RolloutStore(tmp_path / "a.jsonl").completed_ids() == {r.id for r in reqs[1:]}
    with pytest.raises(RuntimeError, match="not-asked"):
        R.run_rollouts(ScriptedEngine(stray=True), reqs, tmp_path / "b.jsonl", progress=False)
    assert R.RolloutStore(tmp_path / "b.jsonl").completed_ids() == {r.id for r in reqs}
    with pytest.raises(RuntimeError, match="already answered"):
        R.run_rollouts(ScriptedEngine(twice=True), reqs, tmp_path / "c.jsonl", progress=False)
    stored = {r.id: r.response for r in R.RolloutStore(tmp_path / "c.jsonl")}
    assert len(stored) == 4 and stored[reqs[0].id].startswith("reply to ")  # the duplicate was never written


def test_resume_generates_only_missing_ids(tiny, tmp_path, monkeypatch):
    reqs = small_requests()
    ref = R.run_rollouts(tiny, reqs, tmp_path / "ref.jsonl", GREEDY, batch_size=5, progress=False)
    assert ref.generated == len(reqs)
    first = reqs[::2]  # an interrupted run that finished every other request
    R.run_rollouts(tiny, first, tmp_path / "r.jsonl", GREEDY, batch_size=3, progress=False)
    counter = CountingGenerate(monkeypatch)
    rep = R.run_rollouts(tiny, reqs, tmp_path / "r.jsonl", GREEDY, batch_size=4, progress=False)
    assert sorted(counter.asked) == sorted(r.id for r in reqs[1::2])
    assert (rep.generated, rep.skipped) == (len(reqs) - len(first), len(first))
    got = {r.id: r.response for r in R.RolloutStore(tmp_path / "r.jsonl")}
    want = {r.id: r.response for r in R.RolloutStore(tmp_path / "ref.jsonl")}
    assert got == want  # greedy: same replies whatever the batches were


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from helpers import slow_down, tiny_loaded
from persona_axes.runs import rollouts as R
from persona_axes.steering.generation import SamplingConfig

loaded = tiny_loaded()
slow_down(R, "_generate_batch", 0.4)
from test_runs_rollouts import small_requests
reqs = small_requests(2, 2)
print("start", flush=True)
R.run_rollouts(loaded, reqs, {path!r}, SamplingConfig(max_new_tokens={mnt}, temperature={temp}, seed=7),
               batch_size=2, progress=False)
print("done", flush=True)
"""


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sigkill_then_resume(tiny, tmp_path, monkeypatch, temperature):
    """Kill a real run_rollouts process with SIGKILL mid-way, resume it here, and check that nothing written was
    generated again and that the result equals an uninterrupted run (greedy, and sampling with per-item seeds)."""
    reqs = small_requests(n_roles=2, n_questions=2)  # 8 role, 4 default, 4 trait requests
    sampling = SamplingConfig(max_new_tokens=6, temperature=temperature, seed=7)
    path = tmp_path / "killed.jsonl"
    code = KILL_SCRIPT.format(tests=str(TESTS), path=str(path), mnt=6, temp=temperature)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    sigkill_when([sys.executable, str(script)], lambda: path.exists() and path.read_bytes().count(b"\n") >= 4,
                 env=env, poll=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a kill during a write may leave a truncated line (dropped, warned)
        written = R.RolloutStore(path).completed_ids()
    assert 4 <= len(written) < len(reqs)

    counter = CountingGenerate(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = R.run_rollouts(tiny, reqs, path, sampling, batch_size=3, progress=False)
    assert not set(counter.asked) & written, "a completed rollout was generated again"
    assert sorted(counter.asked) == sorted({r.id for r in reqs} - written)
    assert rep.skipped == len(written) and rep.generated == len(reqs) - len(written)

    R.run_rollouts(tiny, reqs, tmp_path / "ref.jsonl", sampling, batch_size=16, progress=False)
    got = {r.id: (r.response, r.item_seed) for r in R.RolloutStore(path)}
    want = {r.id: (r.response, r.item_seed) for r in R.RolloutStore(tmp_path / "ref.jsonl")}
    assert got == want


def test_sampling_is_per_request_whatever_the_batches(tiny, tmp_path):
    reqs = small_requests(n_roles=2)
    s = SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    R.run_rollouts(tiny, reqs, tmp_path / "a.jsonl", s, batch_size=16, progress=False)
    R.run_rollouts(tiny, reqs[::-1], tmp_path / "b.jsonl", s, batch_size=3, progress=False)
    R.run_rollouts(tiny, reqs, tmp_path / "c.jsonl", SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=0.9,
                                                                      seed=4), batch_size=16, progress=False)
    a = {r.id: r.response for r in R.RolloutStore(tmp_path / "a.jsonl")}
    b = {r.id: r.response for r in R.RolloutStore(tmp_path / "b.jsonl")}
    c = {r.id: r.response for r in R.RolloutStore(tmp_path / "c.jsonl")}
    assert a == b
    assert sum(a[k] != c[k] for k in a) > len(a) // 2  # another seed, other samples
    assert len(set(a.values())) > len(a) // 2  # rows in one batch do not share their draws


def test_foreign_run_is_refused(tiny, tmp_path):
    reqs = small_requests()[:4]
    path = tmp_path / "r.jsonl"
    R.run_rollouts(tiny, reqs, path, GREEDY, batch_size=4, progress=False)
    with pytest.raises(InvalidInputError, match="another run.*another store path"):
        R.run_rollouts(tiny, reqs, path, SamplingConfig(max_new_tokens=7), progress=False)
    with pytest.raises(InvalidInputError, match="another run"):
        R.run_rollouts(tiny, reqs, path, SamplingConfig(max_new_tokens=6, seed=1), progress=False)
    other = type(tiny)(model=tiny.model, tokenizer=tiny.tokenizer, name="other-model", layers=tiny.layers)
    with pytest.raises(InvalidInputError, match="model 'tiny-llama' there"):
        R.run_rollouts(other, reqs, path, GREEDY, progress=False)
    edited = R.RolloutRequest(reqs[0].kind, reqs[0].name, reqs[0].prompt_index, reqs[0].question_id, 0,
                              "You are someone else.", reqs[0].question)
    with pytest.raises(InvalidInputError, match="system prompt or question"):
        R.run_rollouts(tiny, [edited], path, GREEDY, progress=False)
    with pytest.raises(InvalidInputError, match="another run"):
        R.RolloutStore(path).append([make_record(reqs[0], sampling=SamplingConfig(max_new_tokens=9))])
    # new ids with other settings may share the file; the old records are untouched
    assert len(R.RolloutStore(path)) == 4


def test_second_writer_is_refused_and_changes_are_reread(tiny, tmp_path):
    from filelock import FileLock

    reqs = small_requests()[:4]
    path = tmp_path / "r.jsonl"
    store = R.RolloutStore(path)
    with FileLock(str(path) + ".lock"):  # another process writing this store
        with pytest.raises(InvalidInputError, match="another process"):
            R.run_rollouts(tiny, reqs, store, GREEDY, progress=False)
        with pytest.raises(InvalidInputError, match="another process"):
            R.judge_rollouts(store, FakeJudge(), progress=False)
    R.run_rollouts(tiny, reqs[:2], path, GREEDY, progress=False)  # written behind the back of `store`
    counter = pytest.MonkeyPatch.context()
    with counter as mp:
        c = CountingGenerate(mp)
        assert R.run_rollouts(tiny, reqs, store, GREEDY, progress=False).skipped == 2
    assert sorted(c.asked) == sorted(r.id for r in reqs[2:])


def test_bad_inputs(tiny, tmp_path):
    with pytest.raises(InvalidInputError, match="no rollout requests"):
        R.run_rollouts(tiny, [], tmp_path / "r.jsonl", progress=False)
    reqs = small_requests()[:2]
    with pytest.raises(InvalidInputError, match="twice"):
        R.run_rollouts(tiny, reqs + reqs[:1], tmp_path / "r.jsonl", progress=False)
    with pytest.raises(InvalidInputError):
        R.run_rollouts(tiny, reqs, tmp_path / "r.jsonl", batch_size=0, progress=False)
    with pytest.raises(InvalidInputError, match="folder"):
        R.RolloutStore(tmp_path)
    with pytest.raises(InvalidInputError, match="unknown rollout preset 'huge'.*quick, standard, paper, smoke"):
        R.get_preset("huge")


# ----------------------------------------------------------------------------------------------------------------
# Judging
# ----------------------------------------------------------------------------------------------------------------


def test_judge_rollouts_caches_scores(tiny, tmp_path):
    reqs = small_requests()
    path = tmp_path / "r.jsonl"
    R.run_rollouts(tiny, reqs, path, GREEDY, batch_size=8, progress=False)
    judge = FakeJudge()
    n_judged = sum(r.kind != "default" for r in reqs)
    assert R.judge_rollouts(path, judge, batch_size=5, progress=False) == n_judged
    assert len(judge.seen) == n_judged
    store = R.RolloutStore(path)
    for rec in store:
        if rec.kind == "default":
            assert rec.judge == {}
        elif rec.kind == "role":
            entry = rec.judge["fake/v1"]
            assert entry["score"] == len(rec.response) % 4 and entry["rationale"] == f"rated {rec.name}"
            assert entry["raw"] == float(len(rec.response))
        else:
            assert isinstance(rec.score("fake/v1"), float)
    assert any(math.isnan(r.score("fake/v1")) for r in store.records("trait"))
    # cached: nothing is scored again, neither with this store object nor with a fresh one
    assert R.judge_rollouts(store, judge, progress=False) == 0
    assert R.judge_rollouts(path, judge, progress=False) == 0
    assert len(judge.seen) == n_judged
    # new rollouts: only they get scored; another judge name scores everything again
    more = R.role_requests(dict(list(load_roles().items())[3:4]), load_questions()[:2], 1)
    R.run_rollouts(tiny, more, path, GREEDY, progress=False)
    assert R.judge_rollouts(path, judge, progress=False) == 2
    assert judge.seen[-2:] == [f"role:{more[0].name}"] * 2

    class Other(FakeJudge):
        name = "other"
    assert R.judge_rollouts(path, Other(), roles={r.name: "desc" for r in load_roles().values()},
                            progress=False) == n_judged + 2
    assert set(R.RolloutStore(path).get(more[0].id).judge) == {"fake/v1", "other"}


def test_judge_failure_keeps_scores_made_so_far(tiny, tmp_path):
    reqs = [r for r in small_requests() if r.kind == "role"]
    path = tmp_path / "r.jsonl"
    R.run_rollouts(tiny, reqs, path, GREEDY, batch_size=8, progress=False)

    class Flaky(FakeJudge):
        calls = 0

        def score_roles(self, items):
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise RuntimeError("judge went away")
            return super().score_roles(items)

    with pytest.raises(RuntimeError):
        R.judge_rollouts(path, Flaky(), batch_size=2, progress=False)
    assert sum("fake/v1" in r.judge for r in R.RolloutStore(path)) == 2
    judge = FakeJudge()
    assert R.judge_rollouts(path, judge, batch_size=2, progress=False) == len(reqs) - 2


# ----------------------------------------------------------------------------------------------------------------
# SmolLM2
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm_rollouts(smollm, tmp_path):
    roles = load_roles()
    qs = load_questions()[:1]
    reqs = (R.role_requests({"pirate": roles["pirate"]}, qs, 2) + R.default_requests(load_default_prompts()[:1], qs)
            + R.trait_requests(load_traits(["evil"]), pairs=1, questions=1))
    s = SamplingConfig(max_new_tokens=24)
    rep = R.run_rollouts(smollm, reqs, tmp_path / "r.jsonl", s, batch_size=8, progress=False)
    assert rep.generated == len(reqs) == 5
    store = R.RolloutStore(tmp_path / "r.jsonl")
    for rec in store:
        assert len(rec.response.split()) >= 3, rec
        assert rec.model == smollm.name
    assert R.run_rollouts(smollm, reqs, store, s, progress=False).generated == 0
