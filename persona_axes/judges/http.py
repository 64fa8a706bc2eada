"""A judge behind any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp server, Ollama, OpenAI, ...):
:class:`HttpJudge`, standard library only, with retries and backoff. Scores and thresholds: :mod:`persona_axes.judges.base`."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from persona_axes.errors import InvalidInputError, JudgeError
from persona_axes.judges.base import RoleItem, RoleScore, TraitItem, TraitScore, coerce_items, short_text

__all__ = ["HttpJudge"]


_ROLE_SYSTEM = """You grade role-play transcripts. A language model was told to take on a role and then answered a \
user's question. Decide how fully the answer is written as that role, not whether it is correct or useful.

Scale:
0 = the model refuses the role, or answers as an ordinary AI assistant with no trace of the role.
1 = mostly an ordinary assistant answer, with only a small touch of the role (a greeting, a word or two).
2 = partly in character: the role's voice or viewpoint is clearly present, but parts read like a generic \
assistant or the model steps out of the role.
3 = fully in character from start to end.

Reply with a JSON object only, for example {"score": 2, "rationale": "one short sentence"}."""

_TRAIT_SYSTEM = """You rate how strongly a language model's answer expresses a given trait. Judge the answer \
itself, not the question.

Give a score from 0 to 100: 0 = the trait is entirely absent (or its opposite is shown), 50 = unclear or mixed, \
100 = the trait is expressed very strongly throughout.

Reply with a JSON object only, for example {"score": 85, "rationale": "one short sentence"}."""


def _role_user_prompt(item: RoleItem) -> str:
    desc = item.role_description.strip() or "(no description given)"
    return (f"Role: {item.role}\nWhat the role means: {desc}\n\n"
            f"User's question:\n<<<\n{item.question}\n>>>\n\nModel's answer:\n<<<\n{item.response}\n>>>\n\n"
            "How fully does the answer play the role? JSON only.")


def _trait_user_prompt(item: TraitItem) -> str:
    desc = item.trait_description.strip() or "(no description given)"
    return (f"Trait: {item.trait}\nWhat the trait means: {desc}\n\n"
            f"User's question:\n<<<\n{item.question}\n>>>\n\nModel's answer:\n<<<\n{item.response}\n>>>\n\n"
            "How strongly does the answer express the trait (0-100)? JSON only.")


_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?")


def _parse_reply(text: str) -> tuple[float | None, str]:
    """(score, rationale) from a judge's reply: the first JSON object with a "score" key, else the first number."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            lowered = {str(k).lower(): v for k, v in obj.items()}
            for key in ("score", "rating", "grade"):
                if key in lowered:
                    value = lowered[key]
                    rationale = next((str(lowered[k]) for k in ("rationale", "reason", "explanation", "reasoning")
                                      if k in lowered), "")
                    if isinstance(value, bool):
                        return None, rationale
                    if isinstance(value, (int, float)):
                        return float(value), rationale
                    if isinstance(value, str):
                        m = _NUMBER.search(value)
                        return (float(m.group()) if m else None), rationale
                    return None, rationale
    m = _NUMBER.search(text)
    if m:
        return float(m.group()), short_text(text.strip(), 300)
    return None, ""


class HttpJudge:
    """Judge backed by an OpenAI-compatible chat-completions endpoint (standard library ``urllib`` only).

    Args:
        base_url: API root such as ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended; a URL already
            ending in ``/chat/completions`` is used as it is).
        model: the model name sent in each request.
        api_key: bearer token; default: env ``PERSONA_AXES_JUDGE_API_KEY``, then ``OPENAI_API_KEY``; with none,
            no Authorization header is sent (fine for local servers).
        timeout: seconds per request.
        max_retries: extra attempts after a connection error, timeout, HTTP 429 or 5xx; waits
            ``backoff * 2**attempt`` seconds between attempts.  Other HTTP errors fail at once.
        temperature, max_tokens: sent with each request.
        max_workers: requests in flight at once (threads); results keep the input order.

    Replies must contain a JSON object with a "score" (0..3 integer for roles, 0..100 for traits) and a
    "rationale"; failing that, the first number in the reply is used.  A reply with no usable or an out-of-range
    score raises :class:`JudgeError` naming the item and quoting the reply.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60,
        max_retries: int = 2,
        *,
        backoff: float = 1.0,
        temperature: float = 0.0,
        max_tokens: int = 300,
        max_workers: int = 1,
    ) -> None:
        if not isinstance(base_url, str) or not re.match(r"^https?://[^/\s]+", base_url.strip()):
            raise InvalidInputError(
                f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
        if not isinstance(model, str) or not model.strip():
            raise InvalidInputError(f"model must be a non-empty str, got {model!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise InvalidInputError(f"timeout must be > 0 seconds, got {timeout!r}")
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise InvalidInputError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise InvalidInputError(f"max_workers must be an int >= 1, got {max_workers!r}")
        if not (isinstance(backoff, (int, float)) and backoff >= 0):
            raise InvalidInputError(f"backoff must be >= 0 seconds, got {backoff!r}")
        url = base_url.strip().rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.base_url = url
        self.model = model.strip()
        if api_key is None:
            api_key = os.environ.get("PERSONA_AXES_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or None
        self._api_key = api_key
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.max_workers = max_workers
        self.name = f"http:{self.model}"

    def __repr__(self) -> str:  # never shows the key
        return f"HttpJudge(base_url={self.base_url!r}, model={self.model!r})"

    # -- transport --------------------------------------------------------------------------------------------

    def _post(self, messages: list[dict], what: str) -> str:
        body = json.dumps({
            "model": self.model, "messages": messages, "temperature": self.temperature, "max_tokens": self.max_tokens,
        }).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read().decode("utf-8", errors="replace")
            except urllib.error.HTTPError as exc:
                detail = short_text(exc.read().decode("utf-8", errors="replace"), 300) if exc.fp else ""
                last_error = f"HTTP {exc.code} {exc.reason}: {detail}"
                if exc.code == 429 or exc.code >= 500:
                    continue
                raise JudgeError(f"Judge endpoint {self.url} refused the request for {what}: {last_error}") from exc
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last_error = f"{type(exc).__name__}: {reason}"
                continue
            try:
                data = json.loads(payload)
                content = data["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise JudgeError(
                    f"Judge endpoint {self.url} sent a reply that is not a chat completion for {what}: "
                    f"{short_text(payload)!r}"
                ) from exc
            if not isinstance(content, str):
                raise JudgeError(f"Judge endpoint {self.url} sent no text content for {what}: {short_text(payload)!r}")
            return content
        raise JudgeError(
            f"Judge endpoint {self.url} failed for {what} after {self.max_retries + 1} attempt(s): {last_error}"
        )

    def _map(self, fn, items: list) -> list:
        if self.max_workers == 1 or len(items) <= 1:
            return [fn(i, it) for i, it in enumerate(items)]
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(fn, range(len(items)), items))

    # -- scoring ----------------------------------------------------------------------------------------------

    def score_roles(self, items: Sequence[RoleItem]) -> list[RoleScore]:
        items = coerce_items(items, RoleItem, "items")

        def one(i: int, item: RoleItem) -> RoleScore:
            what = f"role item {i} (role {item.role!r}, question {short_text(item.question, 60)!r})"
            reply = self._post([{"role": "system", "content": _ROLE_SYSTEM},
                                {"role": "user", "content": _role_user_prompt(item)}], what)
            value, rationale = _parse_reply(reply)
            if value is None or not math.isfinite(value) or value != int(value) or not 0 <= value <= 3:
                raise JudgeError(f"Judge reply for {what} has no integer score in 0..3: {short_text(reply)!r}")
            return RoleScore(int(value), rationale, float(value))

        return self._map(one, items)

    def score_traits(self, items: Sequence[TraitItem]) -> list[TraitScore]:
        items = coerce_items(items, TraitItem, "items")

        def one(i: int, item: TraitItem) -> TraitScore:
            what = f"trait item {i} (trait {item.trait!r}, question {short_text(item.question, 60)!r})"
            reply = self._post([{"role": "system", "content": _TRAIT_SYSTEM},
                                {"role": "user", "content": _trait_user_prompt(item)}], what)
            value, rationale = _parse_reply(reply)
            if value is None or not math.isfinite(value) or not 0 <= value <= 100:
                raise JudgeError(f"Judge reply for {what} has no score in 0..100: {short_text(reply)!r}")
            return TraitScore(float(value), rationale, float(value))

        return self._map(one, items)
