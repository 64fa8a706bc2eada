"""The rollout engine protocol: something that turns chat requests into reply texts.

An :class:`Engine` receives a batch of :class:`EngineRequest` (an id, the chat messages ending with a user turn,
and the request's own seed) and one :class:`~persona_axes.steering.generation.SamplingConfig`, and gives back one
:class:`EngineReply` per request (the reply text, its token count, why it ended). Two engines ship:

* :class:`~persona_axes.engines.hf.HFEngine` - in-process HF ``generate`` through
  :func:`~persona_axes.steering.generation.generate_replies` (the one generation path);
* :class:`~persona_axes.engines.openai_http.OpenAIEngine` - any OpenAI-compatible chat-completions server (vLLM,
  SGLang, TGI, llama.cpp's server), with bounded concurrency and retries.

:meth:`Engine.stream` yields replies in groups as soon as they are finished (a batch for HF, one reply for HTTP),
so a caller that writes each group durably (the rollout store) loses at most the work in flight when killed.
:meth:`Engine.generate` collects them back in request order.

The engine only generates text. The activation pass afterwards re-renders each conversation (system, question,
returned reply) with the HF tokenizer, so what is captured does not depend on which engine wrote the reply.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from persona_axes.core import check_int
from persona_axes.errors import InvalidInputError
from persona_axes.steering.generation import SamplingConfig

__all__ = ["EngineRequest", "EngineReply", "Engine", "FINISH_REASONS", "check_requests", "check_sampling"]

#: Why a reply ended: a stop token or stop string ("stop"), or the token budget ("length").
FINISH_REASONS = ("stop", "length")

_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class EngineRequest:
    """One conversation to answer: ``id`` (unique within a call), ``messages`` (``{"role", "content"}`` dicts,
    the last one a user turn) and ``seed`` (this request's own sampling seed; ignored by greedy decoding)."""

    id: str
    messages: tuple[Mapping[str, str], ...]
    seed: int

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidInputError(f"an engine request's id must be a non-empty string, got {self.id!r}")
        if isinstance(self.messages, (str, bytes)) or not isinstance(self.messages, Sequence) or not self.messages:
            raise InvalidInputError(f"request {self.id!r}: messages must be a non-empty list of message dicts")
        msgs = tuple(dict(m) if isinstance(m, Mapping) else m for m in self.messages)
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
                raise InvalidInputError(f"request {self.id!r}: messages[{j}] must be a dict with role in {_ROLES} "
                                        f"and string content, got {m!r}")
        if msgs[-1]["role"] != "user":
            raise InvalidInputError(f"request {self.id!r}: the last message must be a user turn to answer, got "
                                    f"{msgs[-1]['role']!r}")
        object.__setattr__(self, "messages", msgs)
        check_int(self.seed, f"seed of request {self.id!r}")


@dataclass(frozen=True)
class EngineReply:
    """The answer to one request: ``text`` (stripped, without stop tokens), ``completion_tokens`` generated,
    ``finish_reason`` (one of :data:`FINISH_REASONS`) and ``prompt_tokens`` (both counts None when the engine does
    not report them)."""

    id: str
    text: str
    completion_tokens: int | None
    finish_reason: str
    prompt_tokens: int | None = None


def check_requests(requests: Any) -> list[EngineRequest]:
    """The requests as a list, each an :class:`EngineRequest` with a unique id (else :class:`InvalidInputError`)."""
    if isinstance(requests, (str, bytes, Mapping)) or not isinstance(requests, Sequence):
        raise InvalidInputError(f"requests must be a list of EngineRequest, got {type(requests).__name__}")
    seen: set[str] = set()
    for i, r in enumerate(requests):
        if not isinstance(r, EngineRequest):
            raise InvalidInputError(f"requests[{i}] must be an EngineRequest, got {type(r).__name__}")
        if r.id in seen:
            raise InvalidInputError(f"request id {r.id!r} appears twice; every request must be unique")
        seen.add(r.id)
    return list(requests)


def check_sampling(sampling: Any) -> SamplingConfig:
    """``sampling`` itself (default ``SamplingConfig()``), refused unless it is a SamplingConfig."""
    sampling = SamplingConfig() if sampling is None else sampling
    if not isinstance(sampling, SamplingConfig):
        raise InvalidInputError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    return sampling


class Engine(abc.ABC):
    """Generates replies for chat requests. Subclasses set :attr:`name` and implement :meth:`stream`.

    ``name`` is the model name recorded with every rollout the engine writes; a rollout store refuses to mix
    records of two names, so replies of two engines never end up in one run by accident.
    """

    name: str = ""

    @abc.abstractmethod
    def stream(self, requests: Sequence[EngineRequest], sampling: SamplingConfig | None = None
               ) -> Iterator[list[EngineReply]]:
        """Yield replies in groups as they finish (any order); every request is answered exactly once, or an
        error is raised after the groups already yielded."""

    def generate(self, requests: Sequence[EngineRequest], sampling: SamplingConfig | None = None
                 ) -> list[EngineReply]:
        """One reply per request, in request order."""
        requests = check_requests(requests)
        got: dict[str, EngineReply] = {}
        for group in self.stream(requests, sampling):
            for reply in group:
                got[reply.id] = reply
        missing = [r.id for r in requests if r.id not in got]
        if missing:  # an engine that drops requests is a bug, never a silent hole in the results
            raise RuntimeError(f"{type(self).__name__} returned no reply for {len(missing)} request(s), e.g. "
                               f"{missing[:3]}")
        return [got[r.id] for r in requests]

    def close(self) -> None:
        """Release what the engine holds (connections, worker threads)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
