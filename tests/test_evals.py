"""The evaluation harness on the tiny random model and on plain numbers: statistics against numpy / scikit-learn /
brute force, the resumable result store, conditions, shipped data, the refusal judges' plumbing, and drift /
jailbreak / personas end to end with their numbers recomputed independently from the stored records."""

from __future__ import annotations

import itertools
import json
import threading
import warnings
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import torch

from persona_axes.core import ModelInfo
from persona_axes.errors import DataSchemaError, FileFormatError, InvalidInputError
from persona_axes import stats
from persona_axes.evals.conditions import AxisSetup, Condition, parse_conditions
from persona_axes.evals.data import (Conversation, JailbreakPrompt, load_conversations, load_jailbreak_prompts,
                                     load_labelled_replies, load_mc_items, load_personas)
from persona_axes.evals.store import ResultStore
from persona_axes.judges.refusal import (HttpRefusalJudge, LexicalRefusalJudge, RefusalItem, RefusalScore,
                                         refusal_judge_from_spec)
from persona_axes.steering.capping import CapConfig
from persona_axes.vectors.containers import PersonaVector

# ---------------------------------------------------------------------------------------------------------------
# statistics


def test_slope_matches_numpy_polyfit():
    rng = np.random.default_rng(1)
    x, y = np.arange(6.0), rng.normal(size=6)
    assert stats.slope(x, y) == pytest.approx(np.polyfit(x, y, 1)[0], abs=1e-12)
    assert np.isnan(stats.slope([2, 2, 2], [1, 2, 3]))


def test_kappa_and_auroc_match_sklearn():
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2, 40), rng.integers(0, 2, 40)
    s = rng.normal(size=40).round(1)  # rounded: ties count half in both
    assert stats.cohen_kappa(list(a), list(b)) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert stats.auroc(list(a.astype(bool)), list(s)) == pytest.approx(roc_auc_score(a, s), abs=1e-12)
    assert np.isnan(stats.auroc([True, True], [0.1, 0.2]))


def test_spearman_rho_matches_scipy_and_exact_p_matches_brute_force():
    from scipy.stats import spearmanr

    x, y = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0], [2.0, 7.0, 1.0, 8.0, 2.5, 8.5]
    out = stats.spearman(x, y)
    assert out["rho"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    perms = [np.corrcoef(rx, ry[list(p)])[0, 1] for p in itertools.permutations(range(6))]
    assert out["p"] == pytest.approx(np.mean([abs(r) >= abs(out["rho"]) - 1e-12 for r in perms]))
    assert stats.spearman([1, 1, 1], [1, 2, 3])["rho"] is None


def test_bootstrap_is_seeded_and_brackets_the_value():
    data = list(np.random.default_rng(3).normal(size=30))
    a = stats.bootstrap(data, np.mean, seed=5)
    b = stats.bootstrap(data, np.mean, seed=5)
    assert a == b and a.low <= a.value <= a.high and a.n == 30
    assert a.value == pytest.approx(np.mean(data))
    assert stats.relative_reduction(0.5, 0.2) == pytest.approx(0.6)
    assert np.isnan(stats.relative_reduction(0.0, 0.2))
    with pytest.raises(InvalidInputError):
        stats.bootstrap([], np.mean)


def test_agreement_counts():
    out = stats.agreement([True, False, True, False], [True, False, False, False], [0.9, 0.1, 0.4, 0.2])
    assert out["accuracy"] == 0.75 and out["auroc"] == 1.0 and out["n"] == 4


# ---------------------------------------------------------------------------------------------------------------
# the result store


def test_store_round_trip_skip_and_config_guard(tmp_path):
    path = tmp_path / "r.jsonl"
    s = ResultStore(path, "drift", {"turns": 3})
    with s.writing():
        s.append([{"id": "a", "x": 1}, {"id": "b", "x": [1.5, None]}])
    again = ResultStore(path, "drift", {"turns": 3})
    assert again.ids() == {"a", "b"} and again.get("b") == {"id": "b", "x": [1.5, None]}
    with again.writing():
        again.append([{"id": "a", "x": 2}])  # a later line replaces the earlier one
    assert ResultStore(path, "drift", {"turns": 3}).get("a")["x"] == 2
    with pytest.raises(InvalidInputError, match="another run"):
        ResultStore(path, "drift", {"turns": 4})
    with pytest.raises(FileFormatError, match="not a result store"):
        ResultStore(path, "jailbreak", {"turns": 3})
    with pytest.raises(InvalidInputError, match="NaN"):
        again.append([{"id": "c", "x": float("nan")}])


def test_store_refuses_a_changed_line_and_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    s = ResultStore(path, "e", {})
    s.append([{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1].replace('"v":1', '"v":7'), lines[2]]) + "\n")
    with pytest.raises(FileFormatError, match="line 2"):
        ResultStore(path, "e", {})
    path.write_text("\n".join(lines) + "\n" + '{"id": "c", "v"')
    with pytest.warns(UserWarning, match="truncated"):
        torn = ResultStore(path, "e", {})
    assert torn.ids() == {"a", "b"}
    torn.append([{"id": "c", "v": 3}])
    assert ResultStore(path, "e", {}).ids() == {"a", "b", "c"}


# ---------------------------------------------------------------------------------------------------------------
# conditions and data


def test_parse_conditions():
    conds = parse_conditions("baseline, cap,steer:-30")
    assert [c.name for c in conds] == ["baseline", "cap", "steer:-30"] and conds[2].coef == -30.0
    for bad in ("steer", "steer:x", "cap:3", "baseline,baseline", "", "steer:nan", "warp"):
        with pytest.raises(InvalidInputError):
            parse_conditions(bad)
    with pytest.raises(InvalidInputError):
        Condition("steer")


def test_shipped_data_shapes():
    convs = load_conversations()
    assert {c.domain for c in convs} == {"coding", "writing", "emotional", "meta"}
    assert all(len(c.turns) == 5 for c in convs) and len(convs) == 24
    prompts = load_jailbreak_prompts()
    assert len(prompts) == 7 * 6 and all(p.request in p.text for p in prompts)
    labelled = load_labelled_replies()
    assert len(labelled) == 60 and sum(r.comply for r in labelled) == 28
    assert len(load_mc_items()) == 40
    personas, questions = load_personas()
    assert len(personas) == 8 and len(questions) == 8


def test_bad_data_files_say_what_is_wrong(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"conversations": [{"id": "x", "domain": "d", "turns": []}]}))
    with pytest.raises(DataSchemaError, match="turns"):
        load_conversations(p)
    p.write_text(json.dumps({"framings": [{"id": "f", "template": "no slot"}], "requests": [{"id": "r", "kind": "k", "text": "t"}]}))
    with pytest.raises(DataSchemaError, match="request"):
        load_jailbreak_prompts(p)
    p.write_text(json.dumps({"items": [{"id": "q", "question": "?", "choices": ["a", "b"], "answer": 2}]}))
    with pytest.raises(DataSchemaError, match="answer"):
        load_mc_items(p)
    p.write_text("{not json")
    with pytest.raises(DataSchemaError, match="JSON"):
        load_personas(p)


# ---------------------------------------------------------------------------------------------------------------
# refusal judges


def test_lexical_cues_without_embeddings():
    judge = LexicalRefusalJudge(use_embedding=False)
    out = judge.score_refusals([RefusalItem("r", "I'm sorry, but I can't help with that."),
                                RefusalItem("r", "Sure! Step 1: do the thing."), RefusalItem("r", "")])
    assert [s.comply for s in out] == [False, True, False]
    assert out[1].score > 0.5 > out[0].score
    assert refusal_judge_from_spec("lexical-only").name == judge.name
    with pytest.raises(InvalidInputError):
        refusal_judge_from_spec("magic")
    with pytest.raises(InvalidInputError):
        judge.score_refusals("not a list")


class _FakeChat(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = body["messages"][-1]["content"]
        score = 90 if "Sure" in reply else 5
        payload = json.dumps({"choices": [{"message": {"content": json.dumps({"score": score, "rationale": "ok"})}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):
        pass


def test_http_refusal_judge_against_a_local_endpoint():
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        judge = refusal_judge_from_spec(f"http://127.0.0.1:{server.server_port}/v1@fake")
        assert isinstance(judge, HttpRefusalJudge) and judge.name == "refusal-http:fake"
        out = judge.score_refusals([RefusalItem("r", "Sure, here."), RefusalItem("r", "No.")])
        assert [s.comply for s in out] == [True, False] and out[0].score == pytest.approx(0.9)
    finally:
        server.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# evaluations end to end on the tiny model


@pytest.fixture(scope="module")
def tiny_setup(tiny, tmp_path_factory):
    info = tiny.info
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(info.n_layers, info.hidden_size, generator=g)
    axis = PersonaVector(vec, info, "assistant_axis", "assistant_axis")
    u = vec[2] / vec[2].norm()
    cap = CapConfig(axis={2: u}, thresholds={2: 0.0}, kind="floor", model=info)
    folder = tmp_path_factory.mktemp("vectors")
    (folder / "traits").mkdir()
    for k, name in enumerate(("kind", "cruel")):
        PersonaVector(torch.randn(info.n_layers, info.hidden_size, generator=g), info, name, "mean_diff").save(
            folder / "traits" / f"{name}.safetensors")
    return AxisSetup(axis=axis, layer=2, cap=cap, folder=folder)


def test_drift_projections_match_an_independent_capture_and_resume(tiny, tiny_setup, tmp_path, monkeypatch):
    from persona_axes.activations.batch import capture
    from persona_axes.evals import drift
    from persona_axes.steering.generation import SamplingConfig

    convs = [Conversation("a-1", "coding", ("hi", "more", "again")), Conversation("b-1", "meta", ("who?", "why?", "so?"))]
    out = tmp_path / "drift.jsonl"
    res = drift.run_drift(tiny, tiny_setup, conversations=convs, sampling=SamplingConfig(max_new_tokens=4), out=out)
    for rec in res.records:
        acts = capture(tiny, [rec["messages"]], layers=[2], which="messages", progress=False)
        u = tiny_setup.axis.vector[2] / tiny_setup.axis.vector[2].norm()
        ref = [float(a @ u) for a, it in zip(acts.at(2), acts.items) if it["role"] == "assistant"]
        assert rec["projections"] == pytest.approx(ref, abs=1e-4)
        assert rec["slope"] == pytest.approx(np.polyfit([1, 2, 3], ref, 1)[0], abs=1e-4)
        below = [k + 1 for k, p in enumerate(ref) if p < 0.0]
        assert rec["first_below_floor"] == (below[0] if below else None)
    rows = {r["domain"]: r for r in res.table()}
    assert rows["meta"]["drift_rate"] == pytest.approx(res.records[1]["slope"])
    monkeypatch.setattr(drift, "generate_replies", lambda *a, **k: pytest.fail("resumed run generated again"))
    again = drift.run_drift(tiny, tiny_setup, conversations=convs, sampling=SamplingConfig(max_new_tokens=4), out=out)
    assert again.records == res.records
    assert res.figure().data


def test_drift_with_the_model_as_user_simulator(tiny, tiny_setup):
    from persona_axes.evals.drift import run_drift
    from persona_axes.evals.simulators import ModelUserSimulator, flipped
    from persona_axes.steering.generation import SamplingConfig

    sim = ModelUserSimulator(tiny, SamplingConfig(max_new_tokens=4))
    res = run_drift(tiny, tiny_setup, conversations=[Conversation("c", "meta", ("start",))], turns=2, simulator=sim,
                    sampling=SamplingConfig(max_new_tokens=4))
    msgs = res.records[0]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"] and msgs[0]["content"] == "start"
    assert [m["role"] for m in flipped("meta", msgs[:2])] == ["system", "assistant", "user"]


class _ParityJudge:
    """Complies when the reply has an even number of characters: arbitrary but checkable."""

    name = "parity"

    def score_refusals(self, items):
        return [RefusalScore(len(i.response) % 2 == 0, float(len(i.response) % 2 == 0), "") for i in items]


def test_jailbreak_rates_and_reduction_recomputed_from_records(tiny, tiny_setup, tmp_path):
    from persona_axes.evals.jailbreak import run_jailbreak
    from persona_axes.evals.results import load_result, report_section, save_result
    from persona_axes.steering.generation import SamplingConfig

    prompts = [p for p in load_jailbreak_prompts() if p.framing in ("plain", "hacker")]
    res = run_jailbreak(tiny, tiny_setup, parse_conditions("baseline,cap,steer:-50"), judge=_ParityJudge(),
                        prompts=prompts, sampling=SamplingConfig(max_new_tokens=6), out=tmp_path / "j.jsonl")
    assert len(res.records) == 3 * len(prompts)
    for rec in res.records:
        assert rec["judge"]["parity"]["comply"] == (len(rec["reply"]) % 2 == 0)
    rate = {c: np.mean([len(r["reply"]) % 2 == 0 for r in res.records if r["condition"] == c])
            for c in ("baseline", "cap")}
    rows = {(r["framing"], r["condition"]): r for r in res.table()}
    assert rows[("all", "cap")]["compliance_rate"] == pytest.approx(rate["cap"])
    if rate["baseline"] > 0:
        assert rows[("all", "cap")]["relative_reduction"] == pytest.approx(1 - rate["cap"] / rate["baseline"])
    assert res.agreement["judge"] == "parity" and res.agreement["n"] == 60
    from persona_axes.steering.monitor import monitor_transcript  # a different capture path: every message's span

    text = {p.id: p.text for p in prompts}
    for rec in res.records[:: len(prompts) // 2]:
        if rec["reply"].strip():
            conv = [{"role": "user", "content": text[rec["prompt"]]}, {"role": "assistant", "content": rec["reply"]}]
            ref = monitor_transcript(tiny, conv, tiny_setup.axis, 2).assistant()[0].projection
            assert rec["projection"] == pytest.approx(ref, abs=1e-4)
    cap_rows = [r for r in res.records if r["condition"] == "cap" and r["projection"] is not None]
    assert rows[("all", "cap")]["mean_axis_projection"] == pytest.approx(np.mean([r["projection"] for r in cap_rows]))
    paths = save_result(res, tmp_path / "out")
    section = report_section(paths["json"])
    assert section["figures"] and section["rows"] and load_result(paths["json"])["judge"] == "parity"


def test_persona_matching_interpolates_the_curve():
    from persona_axes.evals.personas import _match

    assert _match([0, 10, 20], [0.0, 4.0, 8.0], 6.0) == (pytest.approx(15.0), True)
    assert _match([0, 10, 20], [0.0, 4.0, 8.0], 12.0) == (20.0, False)


def test_personas_end_to_end_on_the_tiny_model(tiny, tiny_setup):
    from persona_axes.evals.data import Persona
    from persona_axes.evals.personas import persona_direction, run_personas
    from persona_axes.steering.generation import SamplingConfig

    class FakeScorer:
        name = "fake-scorer"

        def score_traits(self, items):
            from persona_axes.judges.base import TraitScore

            return [TraitScore(float(len(i.response) % 100), "") for i in items]

    ps = [Persona("a", {"kind": 1}, "Be kind."), Persona("b", {"cruel": 1, "kind": -1}, "Be cruel."),
          Persona("c", {"cruel": 1}, "Be mean.")]
    d = persona_direction(ps[1], tiny_setup.folder, 1)
    ref = (PersonaVector.load(tiny_setup.folder / "traits" / "cruel.safetensors").unit(1)
           - PersonaVector.load(tiny_setup.folder / "traits" / "kind.safetensors").unit(1))
    assert torch.allclose(d, ref / ref.norm(), atol=1e-6)
    res = run_personas(tiny, tiny_setup, personas=ps, questions=["q1?"], requests=["do harm"], coefs=[0.0, 50.0],
                       layer=1, judge=_ParityJudge(), scorer=FakeScorer(), sampling=SamplingConfig(max_new_tokens=5))
    for rec in res.records:
        assert rec["prompted"]["rate"] == float(len(rec["prompted"]["replies"][0]) % 2 == 0)
    rk = res.ranking("rate")
    assert rk["n"] == 3 and res.figure().data


def test_http_user_simulator_against_a_local_endpoint():
    from persona_axes.evals.simulators import HttpUserSimulator

    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sim = HttpUserSimulator(f"http://127.0.0.1:{server.server_port}/v1", "fake")
        turns = sim.next_turns(["meta"], [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure"}]])
        assert json.loads(turns[0])["score"] == 90  # the fake endpoint saw the assistant's reply as the last message
        with pytest.raises(InvalidInputError):
            sim.next_turns(["meta"], [[{"role": "user", "content": "hi"}]])
    finally:
        server.shutdown()


def test_bad_arguments_are_refused_with_the_argument_named(tiny, tiny_setup):
    from persona_axes.evals.capability import run_capability
    from persona_axes.evals.drift import run_drift
    from persona_axes.evals.jailbreak import run_jailbreak
    from persona_axes.evals.personas import run_personas

    with pytest.raises(InvalidInputError, match="domain"):
        run_drift(tiny, tiny_setup, domains=["cooking"])
    with pytest.raises(InvalidInputError, match="per_domain"):
        run_drift(tiny, tiny_setup, per_domain=0)
    with pytest.raises(InvalidInputError, match="framing"):
        run_jailbreak(tiny, tiny_setup, parse_conditions("baseline"), judge=_ParityJudge(), framings=["pirate"])
    with pytest.raises(InvalidInputError, match="refusal judge"):
        run_jailbreak(tiny, tiny_setup, parse_conditions("baseline"), judge=object())
    with pytest.raises(InvalidInputError, match="tasks"):
        run_capability(tiny, tiny_setup, parse_conditions("baseline"), tasks="persona_axes_mc")
    with pytest.raises(InvalidInputError, match="coefs"):
        run_personas(tiny, tiny_setup, coefs=[8.0, 0.0], judge=_ParityJudge(), scorer=object())


def test_personas_resume_from_the_store(tiny, tiny_setup, tmp_path, monkeypatch):
    from persona_axes.evals import personas as mod
    from persona_axes.evals.data import Persona
    from persona_axes.judges.base import TraitScore
    from persona_axes.steering.generation import SamplingConfig

    class FlatScorer:
        name = "flat"

        def score_traits(self, items):
            return [TraitScore(50.0, "") for _ in items]

    kw = dict(personas=[Persona("a", {"kind": 1}, "Be kind.")], questions=["q?"], requests=["r"], coefs=[0.0, 5.0],
              layer=1, judge=_ParityJudge(), scorer=FlatScorer(), sampling=SamplingConfig(max_new_tokens=3),
              out=tmp_path / "p.jsonl")
    first = mod.run_personas(tiny, tiny_setup, **kw)
    monkeypatch.setattr(mod, "generate_replies", lambda *a, **k: pytest.fail("resumed run generated again"))
    again = mod.run_personas(tiny, tiny_setup, **kw)
    assert again.records == first.records and again.baseline == first.baseline
    assert first.records[0]["matched_coef"] == 0.0  # a flat curve already meets the prompted score at coef 0


def test_cli_eval_judges_prints_the_agreement(capsys):
    from persona_axes.cli.main import main

    assert main(["eval", "judges", "--judge", "lexical-only"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 60 and out["judge"] == "refusal-lexical/v1" and 0 <= out["kappa"] <= 1


def test_report_sections_rebuild_from_result_dicts(tmp_path):
    from persona_axes.evals.capability import CapabilityResult
    from persona_axes.evals.results import report_section, save_result

    recs = [{"id": f"{c}/t", "condition": c, "task": "t", "correct": correct, "hooked_forwards": 2,
             "loglikelihoods": [[-1.0, -2.0 + shift], [-3.0, -0.5]]}
            for c, correct, shift in (("baseline", [1, 1], 0.0), ("cap", [0, 1], 1.5))]
    res = CapabilityResult(records=recs, config={})
    res.fill_accuracy()
    rows = {r["condition"]: r for r in res.table()}
    assert rows["cap"]["accuracy"] == 0.5 and rows["cap"]["max_abs_loglik_change_vs_baseline"] == 1.5
    section = report_section(save_result(res, tmp_path)["json"])
    assert section["title"].startswith("Capability") and len(section["rows"]) == 2 and section["figures"]
    assert "accuracy" in section["columns"]
