"""Chat templates shipped with persona_axes, and installing one on a tokenizer with its stop tokens.

Base checkpoints and many GGUF files carry no chat template. persona_axes ships templates for the families the
paper studies, as Jinja files in ``persona_axes/data/chat_templates/`` (our own wording of each family's turn
format): ``gemma3``, ``gemma2``, ``llama3``, ``qwen3``, ``mistral``. :func:`chat_template_names` lists them and
:func:`load_chat_template` reads one; ``chat_template=`` arguments (of ``load_model`` and ``convert_gguf``) accept a
shipped name, a path to a ``.jinja`` file, or the template text itself.

Stop tokens: a chat model ends its turn with an end-of-turn token (``<end_of_turn>``, ``<|eot_id|>``,
``<|im_end|>``, ``</s>``) which is often not the tokenizer's ``eos_token``. :func:`install_chat_template` adds the
end-of-turn tokens that the template writes to ``generation_config.eos_token_id`` (a list, never replacing what is
there), so that generation stops at the end of the turn.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from persona_axes.errors import ChatTemplateError, InvalidInputError

TEMPLATE_SUFFIX = ".jinja"
#: End-of-turn markers of the common chat formats. A template's stop tokens are those of these it writes.
END_OF_TURN_MARKERS: tuple[str, ...] = (
    "<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "</s>", "<|endoftext|>", "<eos>",
    "<|end_of_text|>",
)


def _template_dir():
    return resources.files("persona_axes").joinpath("data", "chat_templates")


def chat_template_names() -> list[str]:
    """Names of the chat templates shipped with persona_axes (``"gemma3"``, ``"llama3"``, ...), sorted."""
    return sorted(p.name[: -len(TEMPLATE_SUFFIX)] for p in _template_dir().iterdir()
                  if p.name.endswith(TEMPLATE_SUFFIX))


def load_chat_template(template: str | os.PathLike) -> str:
    """The text of a chat template given as a shipped name, a path to a template file, or the template text."""
    if isinstance(template, os.PathLike):
        return _read_file(Path(template))
    if not isinstance(template, str) or not template.strip():
        raise InvalidInputError(
            f"chat_template must be a shipped name ({', '.join(chat_template_names())}), a path to a .jinja file or "
            f"the template text, got {type(template).__name__} {template!r:.60}"
        )
    if "{%" in template or "{{" in template:
        return template
    if template in chat_template_names():
        return _template_dir().joinpath(template + TEMPLATE_SUFFIX).read_text(encoding="utf-8")
    path = Path(template).expanduser()
    if path.suffix or os.sep in template:
        return _read_file(path)
    raise ChatTemplateError(
        f"unknown chat template {template!r}: shipped templates are {', '.join(chat_template_names())}; "
        "or pass a path to a .jinja file, or the Jinja template text"
    )


def _read_file(path: Path) -> str:
    if not path.is_file():
        raise ChatTemplateError(f"chat template file {str(path)!r} does not exist; shipped templates are "
                                f"{', '.join(chat_template_names())}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ChatTemplateError(f"chat template file {str(path)!r} is empty")
    return text


def end_of_turn_tokens(template_text: str, tokenizer: Any) -> list[int]:
    """Ids of the end-of-turn markers that ``template_text`` writes and that are single tokens of ``tokenizer``."""
    ids = []
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for marker in END_OF_TURN_MARKERS:
        if marker in template_text and marker in vocab:
            ids.append(int(vocab[marker]))
    return ids


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id generation should stop at: ``generation_config.eos_token_id`` (int or list) plus the tokenizer's
    ``eos_token_id``, in that order, without repeats."""
    out: list[int] = []
    cfg = getattr(model, "generation_config", None)
    for v in (getattr(cfg, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if hasattr(v, "tolist"):  # a tensor
            v = v.tolist()
        for i in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(i, int) and not isinstance(i, bool) and i not in out:
                out.append(i)
    return out


def install_chat_template(tokenizer: Any, model: Any, template: str | os.PathLike) -> list[int]:
    """Set ``tokenizer.chat_template`` and add the template's end-of-turn tokens to the model's
    ``generation_config.eos_token_id`` (kept as a list; existing ids stay first). Returns the stop ids."""
    text = load_chat_template(template)
    tokenizer.chat_template = text
    extra = end_of_turn_tokens(text, tokenizer)
    cfg = getattr(model, "generation_config", None)
    if cfg is None:
        return extra
    ids = stop_token_ids(model, tokenizer)
    for i in extra:
        if i not in ids:
            ids.append(i)
    cfg.eos_token_id = ids
    return ids


__all__ = ["END_OF_TURN_MARKERS", "chat_template_names", "end_of_turn_tokens", "install_chat_template",
           "load_chat_template", "stop_token_ids"]
