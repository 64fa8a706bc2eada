"""Rollout engines: the protocol's checks, the HF engine against generate_replies, and the HTTP engine's requests,
concurrency bound, retries and errors against an in-process fake server (httpx.MockTransport; the real llama.cpp
server is in test_engines_llama_server.py)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from persona_axes.engines.base import EngineReply, EngineRequest, check_requests
from persona_axes.engines.hf import HFEngine
from persona_axes.engines.openai_http import OpenAIEngine
from persona_axes.errors import EngineError, InvalidInputError
from persona_axes.steering.generation import SamplingConfig, generate_replies


def _req(i: int, text: str = "hello") -> EngineRequest:
    return EngineRequest(f"r{i}", ({"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{text} {i}"}), 100 + i)


def _completion(text: str, reason: str = "stop", completion_tokens: int = 3) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}],
            "usage": {"prompt_tokens": 11, "completion_tokens": completion_tokens}}


def _engine(handler, **kw) -> OpenAIEngine:
    kw.setdefault("backoff", 0.0)
    return OpenAIEngine("http://127.0.0.1:9/v1", "m", client=httpx.Client(transport=httpx.MockTransport(handler)), **kw)


# ---- protocol


def test_request_checks():
    with pytest.raises(InvalidInputError, match="last message must be a user turn"):
        EngineRequest("a", ({"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}), 0)
    with pytest.raises(InvalidInputError, match="messages\\[0\\]"):
        EngineRequest("a", ({"role": "robot", "content": "x"},), 0)
    with pytest.raises(InvalidInputError, match="non-empty string"):
        EngineRequest("", ({"role": "user", "content": "x"},), 0)
    with pytest.raises(InvalidInputError, match="seed"):
        EngineRequest("a", ({"role": "user", "content": "x"},), 1.5)
    with pytest.raises(InvalidInputError, match="appears twice"):
        check_requests([_req(1), _req(1)])
    with pytest.raises(InvalidInputError, match="requests\\[1\\]"):
        check_requests([_req(1), "r2"])


# ---- HF engine


def test_hf_engine_matches_generate_replies(tiny):
    reqs = [_req(i, "word " * (i * 3)) for i in range(5)]
    sampling = SamplingConfig(max_new_tokens=6, temperature=0.9, top_p=0.95, seed=3)
    engine = HFEngine(tiny, batch_size=2)
    got = engine.generate(reqs, sampling)
    assert [r.id for r in got] == [r.id for r in reqs]  # request order, whatever the generation order
    for r, reply in zip(reqs, got):  # one at a time: a reply depends only on its own conversation and seed
        alone = generate_replies(tiny, [list(r.messages)], sampling, seeds=[r.seed], batch_size=1)[0]
        assert reply.text == alone
        n = len(tiny.tokenizer(reply.text, add_special_tokens=False)["input_ids"]) if reply.text else 0
        assert reply.completion_tokens == n  # the reply text re-tokenized (see engines.hf)
        assert reply.finish_reason == ("length" if n >= 6 else "stop")
    groups = list(engine.stream(reqs, sampling))
    assert [len(g) for g in groups] == [2, 2, 1]  # one group per batch, longest prompts first
    assert [g.id for g in groups[0]] == ["r4", "r3"]
    assert engine.name == "tiny-llama" and HFEngine(tiny, name="x").name == "x"


# ---- HTTP engine against a fake server


def test_http_engine_sends_sampling_and_seed_and_returns_in_order():
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        assert request.url.path == "/v1/chat/completions"
        return httpx.Response(200, json=_completion(f"  reply to {body['messages'][-1]['content']} \n",
                                                   "length" if body["seed"] == 102 else "stop"))

    sampling = SamplingConfig(max_new_tokens=7, temperature=0.5, top_p=0.9, seed=1)
    engine = _engine(handler, stop=["\n\n"], concurrency=3)
    got = engine.generate([_req(i) for i in range(5)], sampling)
    assert [r.text for r in got] == [f"reply to hello {i}" for i in range(5)]
    assert got[2] == EngineReply("r2", "reply to hello 2", 3, "length", 11)
    assert {b["seed"] for b in bodies} == {100, 101, 102, 103, 104}
    b = bodies[0]
    assert (b["model"], b["max_tokens"], b["temperature"], b["top_p"], b["stop"], b["n"]) == ("m", 7, 0.5, 0.9, ["\n\n"], 1)
    assert b["messages"][0] == {"role": "system", "content": "Be brief."}
    assert engine.attempts == 5


def test_http_engine_bounds_concurrency():
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def handler(request):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        return httpx.Response(200, json=_completion("ok"))

    got = _engine(handler, concurrency=3).generate([_req(i) for i in range(12)])
    assert len(got) == 12
    assert 1 < state["max"] <= 3


def test_http_engine_retries_429_and_5xx_then_succeeds():
    calls: dict[str, int] = {}

    def handler(request):
        rid = json.loads(request.content)["messages"][-1]["content"]
        calls[rid] = calls.get(rid, 0) + 1
        if calls[rid] == 1:
            return httpx.Response(429, headers={"Retry-After": "0"})
        if calls[rid] == 2:
            return httpx.Response(503)
        return httpx.Response(200, json=_completion("fine"))

    engine = _engine(handler, max_retries=2)
    assert [r.text for r in engine.generate([_req(0), _req(1)])] == ["fine", "fine"]
    assert calls == {"hello 0": 3, "hello 1": 3} and engine.attempts == 6


def test_http_engine_raises_engine_error_after_last_retry():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(500, text="boom")

    with pytest.raises(EngineError, match=r"r0.*HTTP 500 after 3 tries.*boom"):
        _engine(handler, max_retries=2).generate([_req(0)])
    assert len(calls) == 3


def test_http_engine_does_not_retry_client_errors():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(400, json={"error": "bad model"})

    with pytest.raises(EngineError, match="HTTP 400.*bad model"):
        _engine(handler, max_retries=5).generate([_req(0)])
    assert len(calls) == 1


def test_http_engine_connection_errors_are_retried_then_reported():
    calls = []

    def handler(request):
        calls.append(1)
        raise httpx.ConnectError("connection refused")

    with pytest.raises(EngineError, match="after 2 tries.*ConnectError.*server running"):
        _engine(handler, max_retries=1).generate([_req(0)])
    assert len(calls) == 2


@pytest.mark.parametrize("payload, match", [
    ({"nothing": 1}, "not a chat completion"),
    (_completion("x", reason="abort"), "finish_reason 'abort'"),
])
def test_http_engine_refuses_replies_that_are_not_finished_answers(payload, match):
    with pytest.raises(EngineError, match=match):
        _engine(lambda r: httpx.Response(200, json=payload)).generate([_req(0)])


def test_http_engine_hands_out_finished_replies_before_the_error():
    def handler(request):
        if json.loads(request.content)["seed"] == 103:
            return httpx.Response(404, text="gone")
        return httpx.Response(200, json=_completion("ok"))

    seen = []
    with pytest.raises(EngineError, match="r3.*HTTP 404"):
        for group in _engine(handler, concurrency=2).stream([_req(i) for i in range(6)]):
            seen.extend(r.id for r in group)
    assert "r3" not in seen and {"r0", "r1", "r2"} <= set(seen)  # every reply before the failure was handed out


@pytest.mark.parametrize("kw, match", [
    ({"base_url": "127.0.0.1:8000"}, "base_url"),
    ({"model": ""}, "model"),
    ({"concurrency": 0}, "concurrency"),
    ({"max_retries": -1}, "max_retries"),
    ({"timeout": 0}, "timeout"),
    ({"stop": "\n"}, "stop"),
])
def test_http_engine_argument_checks(kw, match):
    args = {"base_url": "http://127.0.0.1:8000", "model": "m", **kw}
    with pytest.raises(InvalidInputError, match=match):
        OpenAIEngine(args.pop("base_url"), args.pop("model"), **args)


def test_http_engine_base_url_gets_v1():
    assert OpenAIEngine("http://127.0.0.1:8000/", "m").base_url == "http://127.0.0.1:8000/v1"
    assert OpenAIEngine("http://127.0.0.1:8000/v1", "m").base_url == "http://127.0.0.1:8000/v1"


def test_hf_engine_gives_the_replies_run_rollouts_stores(tiny, tmp_path):
    from persona_axes.runs.requests import RolloutRequest, derive_seed
    from persona_axes.runs.rollouts import run_rollouts
    from persona_axes.runs.store import RolloutStore

    reqs = [RolloutRequest("default", "default", p, f"q{q}", 0, "Be brief." if p else "", f"Question {q}: " + "why? " * q)
            for p in range(2) for q in range(3)]
    sampling = SamplingConfig(max_new_tokens=5, temperature=0.8, seed=2)
    run_rollouts(tiny, reqs, tmp_path / "s.jsonl", sampling, batch_size=4, progress=False)
    store = RolloutStore(tmp_path / "s.jsonl")
    got = HFEngine(tiny, batch_size=4).generate(
        [EngineRequest(r.id, tuple(r.messages()), derive_seed(2, r.id)) for r in reqs], sampling)
    assert [x.text for x in got] == [store.get(r.id).response for r in reqs]
