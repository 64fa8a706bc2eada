"""User simulators for multi-turn evaluations: something that writes the user's next message of a conversation.

A :class:`UserSimulator` has ``name`` and ``next_turns(topics, conversations) -> list[str]`` (one new user message
per conversation, batched). :class:`ScriptedUser` replays shipped turns; :class:`ModelUserSimulator` asks a model
(the one under test or another loaded model) to play the user, by showing it the conversation with the roles
swapped; :class:`HttpUserSimulator` asks any OpenAI-compatible endpoint the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from persona_axes.errors import InvalidInputError
from persona_axes.judges.http import HttpJudge
from persona_axes.steering.generation import SamplingConfig, generate_replies

__all__ = ["UserSimulator", "ScriptedUser", "ModelUserSimulator", "HttpUserSimulator", "simulator_prompt"]


@runtime_checkable
class UserSimulator(Protocol):
    name: str

    def next_turns(self, topics: Sequence[str], conversations: Sequence[Sequence[Mapping[str, str]]]) -> list[str]: ...


def simulator_prompt(topic: str) -> str:
    """The system prompt a simulating model gets: play a user of this kind, one short message at a time."""
    return (f"You are role-playing a human user who is chatting with an AI assistant. The conversation is about: "
            f"{topic}. Write only the user's next message: one or two sentences, in the first person, that follow "
            "naturally from what the assistant just said. Never write the assistant's part.")


def flipped(topic: str, messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """The conversation as the simulator sees it: its own (user) turns as assistant turns and vice versa."""
    swap = {"user": "assistant", "assistant": "user"}
    body = [{"role": swap[m["role"]], "content": m["content"]} for m in messages if m["role"] in swap]
    if not body or body[-1]["role"] != "user":
        raise InvalidInputError("a user simulator continues a conversation that ends with an assistant reply")
    return [{"role": "system", "content": simulator_prompt(topic)}, *body]


class ScriptedUser:
    """Replays fixed user turns: ``turns[i][k]`` is conversation i's k-th user message."""

    name = "scripted"

    def __init__(self, turns: Sequence[Sequence[str]]):
        self.turns = [list(t) for t in turns]

    def next_turns(self, topics, conversations):
        out = []
        for i, conv in enumerate(conversations):
            k = sum(m["role"] == "user" for m in conv)
            if k >= len(self.turns[i]):
                raise InvalidInputError(f"conversation {i} has only {len(self.turns[i])} scripted user turns")
            out.append(self.turns[i][k])
        return out


class ModelUserSimulator:
    """A loaded model plays the user (greedy by default, or sampled with ``sampling``); pass the model under test
    to have it talk to itself."""

    def __init__(self, model: Any, sampling: SamplingConfig | None = None, *, batch_size: int = 8):
        self.model = model
        self.sampling = sampling or SamplingConfig(max_new_tokens=48)
        self.batch_size = batch_size
        self.name = f"model-user:{getattr(model, 'name', type(model).__name__)}"

    def next_turns(self, topics, conversations):
        prompts = [flipped(t, c) for t, c in zip(topics, conversations)]
        replies = generate_replies(self.model, prompts, self.sampling, batch_size=self.batch_size)
        return [r if r.strip() else "Please go on." for r in replies]


class _ChatEndpoint(HttpJudge):
    """The HTTP transport of :class:`HttpJudge` (retries, backoff, key handling) used for plain chat."""

    def chat(self, messages: list[dict], what: str) -> str:
        return self._post(messages, what)


class HttpUserSimulator:
    """An OpenAI-compatible endpoint plays the user (arguments as for :class:`~persona_axes.judges.http.HttpJudge`,
    e.g. ``HttpUserSimulator("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-7B-Instruct", temperature=0.7)``)."""

    def __init__(self, base_url: str, model: str, **kwargs: Any):
        self.endpoint = _ChatEndpoint(base_url, model, **kwargs)
        self.name = f"http-user:{self.endpoint.model}"

    def next_turns(self, topics, conversations):
        return [self.endpoint.chat(flipped(t, c), f"user turn of conversation {i}").strip() or "Please go on."
                for i, (t, c) in enumerate(zip(topics, conversations))]
