"""Dequantise a GGUF file once into an ordinary HF checkpoint in the validated cache, tokenizer included.

``convert_gguf("model.gguf")`` (or ``convert_gguf(folder, gguf_file="model.gguf")``) reads the GGUF with
transformers' GGUF loader (which dequantises every tensor to float32), saves model, tokenizer and generation config
with ``save_pretrained`` into ``<cache_dir()>/models/<name>-<digest>/`` under a file lock, with a manifest, exactly
like the embedded default model (see :mod:`persona_axes.model.cache`), and returns that folder. Later calls validate
and reuse it. ``load_model("model.gguf")`` goes through here.

The cache key covers the file (its size and a hash of its first and last 4 MiB, cheap even for 50 GB files) and the
chat template given, so another template gives another folder.

Chat templates: capture and generation render conversations with the tokenizer's chat template, and base models'
GGUF files usually have none. Without one, conversion stops *before* the slow work with a
:class:`ChatTemplateError` saying how to pass one: ``chat_template="gemma3"`` (a shipped name, see
:func:`~persona_axes.model.templates.chat_template_names`), a path to a ``.jinja`` file, or the template text. A
supplied template's end-of-turn tokens are added to the saved ``generation_config.eos_token_id``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from persona_axes.errors import ChatTemplateError, InvalidInputError, ModelLoadError
from persona_axes.model.cache import cached_build
from persona_axes.model.templates import chat_template_names, install_chat_template, load_chat_template

_EDGE = 4 << 20  # bytes hashed at each end of the file for the cache key


def resolve_gguf(path_or_folder: str | os.PathLike, gguf_file: str | None = None) -> Path:
    """The GGUF file named by ``path_or_folder`` (a ``.gguf`` file) or by a folder plus ``gguf_file``."""
    if not isinstance(path_or_folder, (str, os.PathLike)):
        raise InvalidInputError(f"path_or_folder must be a path, got {type(path_or_folder).__name__}")
    if gguf_file is not None and not isinstance(gguf_file, (str, os.PathLike)):
        raise InvalidInputError(f"gguf_file must be a file name, got {type(gguf_file).__name__}")
    base = Path(path_or_folder).expanduser()
    path = base / gguf_file if gguf_file is not None else base
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.gguf"))
        raise InvalidInputError(
            f"{str(path)!r} is a folder; name the GGUF file in it with gguf_file= (found: {found or 'no .gguf file'})"
        )
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelLoadError(f"{str(path)!r} is not a GGUF file (it does not start with the GGUF magic bytes)")
    return path


_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def gguf_metadata(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """The scalar or string values of ``keys`` in a GGUF file's metadata (missing keys are left out; array values
    are skipped). Reads the header only, walking past the tokenizer's arrays without decoding them: a fraction of a
    second where ``gguf.GGUFReader`` takes a minute on a 262k-token vocabulary."""
    import mmap
    import struct

    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"{str(path)!r} is not a readable GGUF file: {why}")

    out: dict[str, Any] = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        try:
            magic, version, _n_tensors, n_kv = struct.unpack_from("<4sIQQ", mm, 0)
            if magic != b"GGUF" or version < 2:
                raise bad(f"magic {magic!r}, version {version}")
            pos = 24

            def string(pos: int) -> tuple[str, int]:
                (n,) = struct.unpack_from("<Q", mm, pos)
                return mm[pos + 8 : pos + 8 + n].decode("utf-8", "replace"), pos + 8 + n

            def skip(vtype: int, pos: int, count: int = 1) -> int:
                if vtype in _SCALAR:
                    return pos + count * struct.calcsize(_SCALAR[vtype])
                if vtype == _STRING:
                    for _ in range(count):
                        pos += 8 + struct.unpack_from("<Q", mm, pos)[0]
                    return pos
                if vtype == _ARRAY:
                    for _ in range(count):
                        etype, n = struct.unpack_from("<IQ", mm, pos)
                        pos = skip(etype, pos + 12, n)
                    return pos
                raise bad(f"unknown value type {vtype}")

            for _ in range(n_kv):
                key, pos = string(pos)
                (vtype,) = struct.unpack_from("<I", mm, pos)
                pos += 4
                if key in keys and vtype == _STRING:
                    out[key], pos = string(pos)
                elif key in keys and vtype in _SCALAR:
                    out[key] = struct.unpack_from(_SCALAR[vtype], mm, pos)[0]
                    pos = skip(vtype, pos)
                else:
                    pos = skip(vtype, pos)
        except (struct.error, IndexError, OverflowError) as e:
            raise bad(f"truncated or damaged header ({e})") from e
    return out


def _digest(path: Path, template: str | None) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if size > 2 * _EDGE:
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))
    h.update(b"\x00template\x00" + (template or "").encode())
    return h.hexdigest()[:12]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "model"


def dequantise_gguf(gguf: Path, out: Path, *, name: str, chat_template: str | None = None) -> None:
    """Load ``gguf`` with transformers (dequantised to float32) and save model + tokenizer into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # Drop the quantiser so that the dequantised float32 weights save as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = name
    if chat_template is not None:
        install_chat_template(tok, model, chat_template)
    if not getattr(tok, "chat_template", None):
        raise ChatTemplateError(no_template_message(gguf))
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


def no_template_message(gguf: Path) -> str:
    return (
        f"{gguf.name} has no chat template (a base model?), so conversations cannot be rendered for it. Pass one: "
        f"chat_template='<name>' for a shipped template ({', '.join(chat_template_names())}), a path to a .jinja "
        "file, or the template text, e.g. load_model(path, chat_template='gemma3')"
    )


def convert_gguf(
    path_or_folder: str | os.PathLike,
    gguf_file: str | None = None,
    *,
    chat_template: str | os.PathLike | None = None,
    name: str | None = None,
    cache: str | os.PathLike | None = None,
) -> Path:
    """Dequantise a GGUF file once into the validated cache and return the HF checkpoint folder.

    Args:
        path_or_folder: a ``.gguf`` file, or the folder holding ``gguf_file``.
        gguf_file: the file's name inside ``path_or_folder`` (as transformers' ``gguf_file=``).
        chat_template: a shipped template name, a ``.jinja`` path or the template text; required when the GGUF has
            none (:class:`ChatTemplateError` otherwise, raised before any slow work). Overrides the file's own.
        name: the model's name (stored as ``config.name_or_path``; default: the file name without ``.gguf``).
        cache: the cache root (default ``$PERSONA_AXES_CACHE`` or ``~/.cache/persona_axes``).
    """
    gguf = resolve_gguf(path_or_folder, gguf_file)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise InvalidInputError(f"name must be a non-empty string, got {name!r}")
    if cache is not None and not isinstance(cache, (str, os.PathLike)):
        raise InvalidInputError(f"cache must be a folder path, got {type(cache).__name__}")
    template = load_chat_template(chat_template) if chat_template is not None else None
    meta = gguf_metadata(gguf, ("tokenizer.chat_template", "general.architecture"))
    if template is None and not meta.get("tokenizer.chat_template"):
        raise ChatTemplateError(no_template_message(gguf))
    if name is None:
        name = gguf.name[: -len(".gguf")] if gguf.name.lower().endswith(".gguf") else gguf.name
    key = f"{_slug(name)}-{_digest(gguf, template)}"
    source = {"gguf": gguf.name, "gguf_size": gguf.stat().st_size, "name": name,
              "architecture": str(meta.get("general.architecture", "")), "chat_template_supplied": template is not None}
    return cached_build(key, lambda out: dequantise_gguf(gguf, out, name=name, chat_template=template), source, cache)


__all__ = ["convert_gguf", "dequantise_gguf", "gguf_metadata", "resolve_gguf"]
