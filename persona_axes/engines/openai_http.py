"""Rollouts through any OpenAI-compatible chat-completions server: vLLM, SGLang, TGI, llama.cpp's server.

The server applies the model's own chat template (``POST {base_url}/chat/completions`` with the messages), and
each request carries its own ``seed`` together with ``temperature``, ``top_p``, ``max_tokens`` and the engine's
``stop`` strings. Whether a server honours the seed is up to the server (vLLM and llama.cpp do); with
``temperature=0`` (greedy) the seed does not matter.

Concurrency is bounded: at most ``concurrency`` requests are in flight, on a thread pool sharing one ``httpx``
client. A request that fails with a connection error, a timeout, HTTP 429 or a 5xx is retried up to
``max_retries`` times, waiting ``backoff * 2**attempt`` seconds (capped at ``max_backoff``; a server's numeric
``Retry-After`` is honoured up to the same cap); after the last try, or at once for any other error status or an
unreadable reply, :class:`~persona_axes.errors.EngineError` names the request, the URL and what went wrong. Replies
are yielded one by one as they finish, so a caller writing them to the rollout store loses only the requests in
flight when it is killed, and a rerun skips every reply already written.

Example (a vLLM server started with ``vllm serve Qwen/Qwen3-32B``)::

    engine = OpenAIEngine("http://127.0.0.1:8000/v1", "Qwen/Qwen3-32B", concurrency=64)
    run_rollouts(engine, requests, "rollouts.jsonl", sampling)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import httpx

from persona_axes.core import check_float, check_int
from persona_axes.engines.base import Engine, EngineReply, EngineRequest, check_requests, check_sampling
from persona_axes.errors import EngineError, InvalidInputError
from persona_axes.steering.generation import SamplingConfig

__all__ = ["OpenAIEngine", "RETRY_STATUSES"]

#: HTTP statuses worth another try: rate limited, or a server-side failure.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# what servers say when a reply ended on a stop token or string, or on the token budget
_STOP_REASONS = frozenset({"stop", "eos", "eos_token", "stop_sequence", "end_turn"})
_LENGTH_REASONS = frozenset({"length", "max_tokens"})


def _base_url(url: Any) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidInputError(f"base_url must be an http(s) URL such as 'http://127.0.0.1:8000/v1', got {url!r}")
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class OpenAIEngine(Engine):
    """Generate with an OpenAI-compatible server at ``base_url`` (``.../v1`` is added when missing).

    Args:
        base_url: the server, e.g. ``"http://127.0.0.1:8000/v1"``.
        model: the model name the server serves (sent with every request).
        name: the model name rollouts record (default: ``model``).
        concurrency: requests in flight at once (>= 1).
        timeout: seconds allowed for one HTTP request.
        max_retries: further tries after a retryable failure (>= 0).
        backoff, max_backoff: the wait before retry ``k`` is ``min(backoff * 2**k, max_backoff)`` seconds.
        stop: extra stop strings (the server's end-of-turn token always stops a reply).
        api_key: sent as ``Authorization: Bearer ...`` when given.
        client: an ``httpx.Client`` to use instead of the engine's own (custom transport, hooks); not closed by
            :meth:`close`.
    """

    def __init__(self, base_url: str, model: str, *, name: str | None = None, concurrency: int = 8,
                 timeout: float = 120.0, max_retries: int = 4, backoff: float = 0.5, max_backoff: float = 30.0,
                 stop: Sequence[str] = (), api_key: str | None = None, client: httpx.Client | None = None):
        self.base_url = _base_url(base_url)
        if not isinstance(model, str) or not model:
            raise InvalidInputError(f"model must be the served model's name (a non-empty string), got {model!r}")
        self.model = model
        self.name = model if name is None else str(name)
        self.concurrency = check_int(concurrency, "concurrency", minimum=1)
        self.timeout = check_float(timeout, "timeout", positive=True)
        self.max_retries = check_int(max_retries, "max_retries", minimum=0)
        self.backoff = check_float(backoff, "backoff", nonnegative=True)
        self.max_backoff = check_float(max_backoff, "max_backoff", nonnegative=True)
        if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
            raise InvalidInputError(f"stop must be a list of non-empty strings, got {stop!r}")
        self.stop = tuple(stop)
        if api_key is not None and not isinstance(api_key, str):
            raise InvalidInputError("api_key must be a string or None")
        if client is not None and not isinstance(client, httpx.Client):
            raise InvalidInputError(f"client must be an httpx.Client, got {type(client).__name__}")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own_client = client is None
        self.client = client if client is not None else httpx.Client(timeout=self.timeout, headers=headers)
        self.attempts = 0  # HTTP requests sent, retries included
        self._lock = threading.Lock()

    # ---- one request

    def body(self, request: EngineRequest, sampling: SamplingConfig) -> dict[str, Any]:
        """The JSON body sent for ``request``."""
        body: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in request.messages],
                                "max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                                "top_p": sampling.top_p, "seed": request.seed, "n": 1, "stream": False}
        if self.stop:
            body["stop"] = list(self.stop)
        return body

    def _wait(self, attempt: int, response: httpx.Response | None) -> float:
        delay = self.backoff * 2**attempt
        after = response.headers.get("retry-after") if response is not None else None
        if after is not None:
            try:
                delay = max(delay, float(after))
            except ValueError:
                pass  # an HTTP date: keep our own backoff
        return min(delay, self.max_backoff)

    def _post(self, request: EngineRequest, sampling: SamplingConfig) -> EngineReply:
        url = f"{self.base_url}/chat/completions"
        body = self.body(request, sampling)
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            with self._lock:
                self.attempts += 1
            try:
                response = self.client.post(url, json=body, timeout=self.timeout)
            except httpx.TransportError as e:  # refused, reset, timed out
                if last:
                    raise EngineError(f"request {request.id!r} to {url} failed after {attempt + 1} tries: "
                                      f"{type(e).__name__}: {e}. Is the server running there?") from e
                time.sleep(self._wait(attempt, None))
                continue
            if response.status_code in RETRY_STATUSES and not last:
                time.sleep(self._wait(attempt, response))
                continue
            if response.status_code != 200:
                tries = f" after {attempt + 1} tries" if response.status_code in RETRY_STATUSES else ""
                raise EngineError(f"request {request.id!r} to {url} got HTTP {response.status_code}{tries}: "
                                  f"{response.text[:300]!r}")
            return self._reply(request, response, url)
        raise AssertionError("unreachable")  # the loop returns or raises on its last try

    def _reply(self, request: EngineRequest, response: httpx.Response, url: str) -> EngineReply:
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            reason = choice.get("finish_reason")
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise EngineError(f"request {request.id!r}: {url} answered with something that is not a chat "
                              f"completion ({type(e).__name__}: {e}): {response.text[:300]!r}") from e
        if not isinstance(text, str):
            raise EngineError(f"request {request.id!r}: the reply's content is not a string: {text!r}")
        if reason in _LENGTH_REASONS:
            finish = "length"
        elif reason in _STOP_REASONS or reason is None:
            finish = "stop"
        else:  # e.g. vLLM's "abort": the reply is not a finished answer, so it must not be stored as one
            raise EngineError(f"request {request.id!r}: the server ended the reply with finish_reason {reason!r}, "
                              f"not a stop or the length limit")
        completion, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens")
        return EngineReply(request.id, text.strip(), completion if isinstance(completion, int) else None,
                           finish, prompt if isinstance(prompt, int) else None)

    # ---- many requests

    def stream(self, requests: Sequence[EngineRequest], sampling: SamplingConfig | None = None
               ) -> Iterator[list[EngineReply]]:
        requests = check_requests(requests)
        sampling = check_sampling(sampling)
        if not requests:
            return
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai-engine")
        todo = iter(requests)
        pending: set[Future] = set()
        error: BaseException | None = None
        try:
            while pending or error is None:
                while error is None and len(pending) < self.concurrency:  # at most `concurrency` in flight
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    pending.add(pool.submit(self._post, nxt, sampling))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    if fut.exception() is not None:
                        error = error or fut.exception()  # stop sending; let the requests in flight finish
                    else:
                        yield [fut.result()]
            if error is not None:  # raised after every finished reply was handed out (and can be stored)
                raise error
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def __repr__(self) -> str:
        return f"OpenAIEngine({self.base_url!r}, {self.model!r}, concurrency={self.concurrency})"
