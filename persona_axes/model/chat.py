"""Render a conversation with the tokenizer's chat template, and find the token span of every message's content.

A span covers the *content* tokens of one message only: role headers, ``<|im_start|>``-style markers, BOS and
end-of-turn tokens are excluded, so a mean over an assistant span is a mean over what the assistant said.

How spans are found: the conversation is rendered twice, once as it is and once with every content replaced by a
unique sentinel. The sentinel rendering splits the template into literal pieces; walking the real rendering piece
by piece pins each content to an exact character range (templates that ``trim`` content are handled), and the
tokenizer's offset mapping turns character ranges into token ranges.

Thinking text (Qwen3-style ``<think>...</think>`` at the start of an assistant message) is not reply content: an
assistant span covers only the visible reply after the last ``</think>``, whether the template keeps the thinking
in the rendering or drops it (as Qwen3's template does for past turns). A mean over an assistant span is then a mean
over what the user was shown, the same with either kind of template.

Models whose template has no system role (Gemma 2/3, some Mistral templates): the system text is folded into the
first user message as ``"{system}\\n\\n{user}"``, and the system span points at the system part of that turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from persona_axes.errors import ChatTemplateError, ConversationError, InvalidInputError, SpanError

ROLES = ("system", "user", "assistant")
SYSTEM_FOLD_SEPARATOR = "\n\n"
_SENTINEL = "\u2063PAXSENT{}\u2063"  # invisible separator + a marker no real text contains
THINK_END = "</think>"

Message = Mapping[str, str]


@dataclass(frozen=True)
class MessageSpan:
    """Tokens ``[start, end)`` of one message's content in the rendered conversation.

    ``index`` is the message's position in the list given; ``turn`` counts user messages (0-based), so a user
    message and the assistant reply after it share a turn; a leading system message is turn 0.
    """

    index: int
    role: str
    turn: int
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class RenderedChat:
    """Token ids of a rendered conversation and the content span of every message (one per message, in order)."""

    input_ids: tuple[int, ...]
    spans: tuple[MessageSpan, ...]
    text: str
    system_folded: bool = False
    add_generation_prompt: bool = False
    messages: tuple[dict[str, str], ...] = field(default=(), repr=False)

    def __len__(self) -> int:
        return len(self.input_ids)

    def select(self, which: str | int = "last_assistant") -> list[MessageSpan]:
        """Spans chosen by ``which``: ``"last_assistant"``, ``"assistant"``, ``"user"``, ``"system"``,
        ``"messages"`` (all), ``"sequence"`` (one span over every token, e.g. with ``reduce="last"`` for the last
        prompt token), or an int message index (negative counts from the end)."""
        if isinstance(which, bool):
            raise SpanError(f"which={which!r} is not a valid span selector")
        if isinstance(which, int):
            n = len(self.spans)
            if not -n <= which < n:
                raise SpanError(f"message index {which} is out of range for a conversation of {n} messages")
            return [self.spans[which]]
        if which == "sequence":
            return [MessageSpan(index=-1, role="sequence", turn=-1, start=0, end=len(self.input_ids))]
        if which == "messages":
            return list(self.spans)
        if which == "last_assistant":
            found = [s for s in self.spans if s.role == "assistant"]
            if not found:
                raise SpanError(
                    "the conversation has no assistant message to reduce over "
                    f"(roles: {[s.role for s in self.spans]}); add the assistant's reply, or pick another span "
                    "with which='user' / which='sequence'"
                )
            return found[-1:]
        if which in ROLES:
            found = [s for s in self.spans if s.role == which]
            if not found:
                raise SpanError(f"the conversation has no {which} message (roles: {[s.role for s in self.spans]})")
            return found
        raise SpanError(
            f"unknown span selector {which!r}; use 'last_assistant', 'assistant', 'user', 'system', 'messages', "
            "'sequence' or a message index"
        )


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Check a conversation: a non-empty list of ``{"role", "content"}`` dicts with known roles."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ConversationError(
            f"a conversation must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}"
        )
    if len(messages) == 0:
        raise ConversationError("the conversation is empty: pass at least one {'role': ..., 'content': ...} message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ConversationError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ConversationError(f"message {i} has role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ConversationError(f"message {i} ({role}) content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def _apply(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    if messages[0]["role"] != "system":
        raise ChatTemplateError(
            "this chat template has no system role, and the system message is not first, so it cannot be folded "
            "into the first user message; put the system message first"
        )
    if len(messages) < 2 or messages[1]["role"] != "user":
        raise ChatTemplateError(
            "this chat template has no system role; to fold the system text into the first user message, "
            "the system message must be followed by a user message"
        )
    system, user = messages[0]["content"], messages[1]["content"]
    return [{"role": "user", "content": system + SYSTEM_FOLD_SEPARATOR + user}] + messages[2:]


def _render_with_fold(tokenizer, messages, add_generation_prompt: bool) -> tuple[str, list[dict[str, str]], bool]:
    """Render; if the template rejects or silently drops the system message, fold it into the first user turn."""
    has_system = any(m["role"] == "system" for m in messages)
    try:
        sentinel_msgs = [{"role": m["role"], "content": _SENTINEL.format(i)} for i, m in enumerate(messages)]
        text = _apply(tokenizer, sentinel_msgs, add_generation_prompt)
        if all(_SENTINEL.format(i) in text for i in range(len(messages))):
            return text, sentinel_msgs, False
        if not has_system:
            missing = [i for i in range(len(messages)) if _SENTINEL.format(i) not in text]
            raise ChatTemplateError(f"the chat template dropped messages {missing} from the conversation")
    except ChatTemplateError:
        raise
    except Exception as e:  # templates raise jinja TemplateError (or anything) for unsupported roles
        if not has_system:
            raise ChatTemplateError(f"the chat template failed to render this conversation: {e}") from e
    # Fold: system sentinel + separator + user sentinel inside the first user message.
    folded = _fold_system([{"role": m["role"], "content": _SENTINEL.format(i)} for i, m in enumerate(messages)])
    try:
        text = _apply(tokenizer, folded, add_generation_prompt)
    except Exception as e:
        raise ChatTemplateError(f"the chat template failed to render this conversation even with the system "
                                f"message folded into the first user turn: {e}") from e
    return text, folded, True


def visible_reply(content: str) -> str:
    """The part of an assistant message the user sees: the text after the last ``</think>``, leading whitespace
    removed (the message itself when it has no thinking block)."""
    return content.rsplit(THINK_END, 1)[-1].lstrip() if THINK_END in content else content


def _candidates(content: str, thinks: bool) -> list[str]:
    forms = [content, content.strip(), content.lstrip(), content.rstrip()]
    if thinks and THINK_END in content:
        v = visible_reply(content)
        forms += [v, v.rstrip()]
    return forms


def _locate(template_text: str, n: int, contents: list[str], real_text: str,
            thinks: list[bool] | None = None) -> list[tuple[int, int]]:
    """Character range of each content in ``real_text``, walking the literal template pieces in order. Where
    ``thinks[i]`` (an assistant message), the range covers only the reply after a ``</think>``."""
    thinks = thinks or [False] * n
    pieces: list[str] = []
    rest = template_text
    order: list[int] = []
    while True:
        best = None
        for i in range(n):
            pos = rest.find(_SENTINEL.format(i))
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, i)
        if best is None:
            pieces.append(rest)
            break
        pos, i = best
        pieces.append(rest[:pos])
        order.append(i)
        rest = rest[pos + len(_SENTINEL.format(i)):]
    if sorted(order) != list(range(n)):
        raise ChatTemplateError("the chat template repeats or reorders message contents; spans cannot be mapped")
    ranges: dict[int, tuple[int, int]] = {}
    p = 0
    for k, i in enumerate(order):
        if not real_text.startswith(pieces[k], p):
            raise ChatTemplateError("the chat template renders its fixed text differently for different contents; "
                                    "spans cannot be mapped")
        p += len(pieces[k])
        content = contents[i]
        for cand in _candidates(content, thinks[i]):
            if real_text.startswith(cand, p) and real_text.startswith(pieces[k + 1], p + len(cand)):
                start = p
                if thinks[i] and THINK_END in cand:  # the template kept the thinking: skip it
                    start = p + len(cand) - len(visible_reply(cand))
                ranges[i] = (start, p + len(cand))
                p += len(cand)
                break
        else:
            raise ChatTemplateError(
                f"could not find the content of message {i} in the rendered conversation: the chat template "
                "changes message text beyond trimming whitespace"
            )
    return [ranges[i] for i in range(n)]


def _inside(text: str, s: int, e: int, a: int, b: int) -> bool:
    """Whether token ``[s, e)`` belongs to content ``[a, b)``: it lies inside it, or it straddles its edge carrying
    content text while whatever it covers outside is whitespace (a SentencePiece or byte-level token such as
    ``" Arr"`` carries the space the template put before the content, as after Mistral's ``[/INST]``)."""
    if not (e > s and e > a and s < b):
        return False
    if s >= a and e <= b:
        return True
    return not text[s:a].strip() and not text[b:e].strip() and bool(text[max(s, a):min(e, b)].strip())


def render_chat(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = False,
) -> RenderedChat:
    """Render ``messages`` with ``tokenizer``'s chat template; return token ids and every message's content span.

    ``add_generation_prompt=True`` appends the header of a new assistant turn (as for generation). Raises
    :class:`ConversationError` for an empty or malformed conversation and :class:`ChatTemplateError` for a
    tokenizer without a chat template.
    """
    msgs = validate_messages(messages)
    if not isinstance(add_generation_prompt, bool):
        raise InvalidInputError(f"add_generation_prompt must be True or False, got {add_generation_prompt!r}")
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ChatTemplateError(
            f"the tokenizer of {name!r} has no chat template, so conversations cannot be rendered. Use a chat/instruct "
            "model, pass chat_template='<name>' to load_model (shipped: gemma3, gemma2, llama3, qwen3, mistral), or "
            "set tokenizer.chat_template to a Jinja template first"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ChatTemplateError("content spans need a fast tokenizer (with offset mapping); load it with use_fast=True")
    template_text, _, folded = _render_with_fold(tokenizer, msgs, add_generation_prompt)
    real_layout = _fold_system(msgs) if folded else msgs
    real_text = _apply(tokenizer, real_layout, add_generation_prompt)
    # Sentinel i stands for message i; when folded, the separator is literal template text between 0 and 1.
    contents = [m["content"] for m in msgs]
    char_ranges = _locate(template_text, len(msgs), contents, real_text, [m["role"] == "assistant" for m in msgs])

    enc = tokenizer(real_text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
    spans = []
    turn = -1
    for i, (m, (a, b)) in enumerate(zip(msgs, char_ranges)):
        if m["role"] == "user":
            turn += 1
        toks = [t for t, (s, e) in enumerate(offsets) if _inside(real_text, s, e, a, b)]
        start, end = (toks[0], toks[-1] + 1) if toks else (0, 0)
        if toks and end - start != len(toks):
            raise ChatTemplateError(f"message {i} content tokens are not contiguous after tokenisation")
        spans.append(MessageSpan(index=i, role=m["role"], turn=max(turn, 0), start=start, end=end))
    return RenderedChat(
        input_ids=tuple(ids),
        spans=tuple(spans),
        text=real_text,
        system_folded=folded,
        add_generation_prompt=add_generation_prompt,
        messages=tuple(msgs),
    )


__all__ = ["MessageSpan", "RenderedChat", "render_chat", "validate_messages", "visible_reply", "ROLES",
           "SYSTEM_FOLD_SEPARATOR", "THINK_END"]
