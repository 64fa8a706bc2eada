"""Load a model and its tokenizer: the model handle everything else in persona_axes works on.

``load_model()`` with no argument gives the embedded default, SmolLM2-135M-Instruct (see
:mod:`persona_axes.model.default`). ``load_model(x)`` takes

- a local folder with ``config.json`` and weights (an HF checkpoint);
- a ``.gguf`` file, or a folder plus ``gguf_file=``: dequantised once into the validated cache, tokenizer included
  (:func:`persona_axes.model.gguf.convert_gguf`), then loaded from there;
- a hub id (``"google/gemma-2-2b-it"``), which must already be in the local HF cache when the hub cannot be
  reached: offline, an id that is not cached fails at once with one line saying so, instead of HF's retries.

``chat_template=`` (a shipped name such as ``"gemma3"``, a ``.jinja`` path or the template text) sets the
tokenizer's template and adds its end-of-turn tokens to ``generation_config.eos_token_id``
(:mod:`persona_axes.model.templates`). Where the blocks are and what "layer L" means: :mod:`persona_axes.model.layers`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from persona_axes.core import ModelInfo
from persona_axes.errors import InvalidInputError, ModelLoadError
from persona_axes.model.cache import read_manifest_source
from persona_axes.model.default import DEFAULT_MODEL_NAME, default_model_path
from persona_axes.model.gguf import convert_gguf
from persona_axes.model.layers import DecoderLayers, find_layers
from persona_axes.model.templates import install_chat_template

_HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "subfolder")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@dataclass
class LoadedModel:
    """A model with its tokenizer and identity. Unpacks as ``model, tokenizer = load_model()``."""

    model: nn.Module
    tokenizer: Any
    name: str
    layers: DecoderLayers

    def __iter__(self):
        return iter((self.model, self.tokenizer))

    @property
    def info(self) -> ModelInfo:
        """The model's identity (name, number of decoder blocks, hidden size) as stored with every result."""
        return ModelInfo(name=self.name, n_layers=self.layers.n_layers, hidden_size=self.layers.hidden_size)


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def as_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """A torch dtype from ``"bf16"``/``"bfloat16"``/``"fp16"``/``"float32"``/... or a torch.dtype; ``"auto"`` and
    ``None`` pass through."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise InvalidInputError(f"dtype={dtype!r} is not a known dtype; use one of {sorted(DTYPES)}, 'auto' or a torch.dtype")


def _as_device(device: Any) -> torch.device:
    if device is None:
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise InvalidInputError(f"device must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    try:
        return torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise InvalidInputError(f"device={device!r} is not a torch device ({e}); use e.g. 'cpu', 'cuda', 'cuda:1'") from e


def _check_args(name_or_path, device_map, layers_path, trust_remote_code, gguf_file) -> None:
    if name_or_path is not None and not isinstance(name_or_path, (str, os.PathLike)):
        raise InvalidInputError(f"name_or_path must be a hub id or a path, got {type(name_or_path).__name__}")
    if device_map is not None and not isinstance(device_map, (str, dict)):
        raise InvalidInputError(f"device_map must be a string such as 'auto' or a dict, got {type(device_map).__name__}")
    if layers_path is not None and not isinstance(layers_path, str):
        raise InvalidInputError(f"layers_path must be a dotted attribute path, got {type(layers_path).__name__}")
    if not isinstance(trust_remote_code, bool):
        raise InvalidInputError(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    if gguf_file is not None and not isinstance(gguf_file, (str, os.PathLike)):
        raise InvalidInputError(f"gguf_file must be a file name, got {type(gguf_file).__name__}")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the HF hub endpoint opens (assumed true behind an HTTP proxy)."""
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_load_options(repo_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Extra ``from_pretrained`` options for a hub id: ``local_files_only=True`` when it is cached and the hub cannot
    be used; a one-line :class:`ModelLoadError` at once when it is not cached and the hub cannot be used."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=kwargs.get("cache_dir"),
                                        revision=kwargs.get("revision"))
    except HFValidationError:
        raise ModelLoadError(f"model {repo_id!r} is neither an existing local path nor a valid hub id "
                             "(like 'org/name'); pass a folder with config.json, a .gguf file or a hub id") from None
    usable = not (_offline() or kwargs.get("local_files_only")) and hub_reachable()
    if usable:
        return {}
    if isinstance(cached, str):
        return {"local_files_only": True}
    why = "HF_HUB_OFFLINE is set" if _offline() else "the HF hub cannot be reached from this machine"
    raise ModelLoadError(
        f"model {repo_id!r} is not in the local HF cache and {why}. Download it where the hub is reachable "
        f"(huggingface-cli download {repo_id}) and copy the cache over, or pass a local folder or .gguf file"
    )


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    layers_path: str | None = None,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    chat_template: str | os.PathLike | None = None,
    **from_pretrained_kwargs: Any,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode with gradients off.

    ``name_or_path=None`` gives the embedded SmolLM2-135M-Instruct; a ``.gguf`` file (or a folder plus
    ``gguf_file``) is dequantised once into the cache. ``device`` defaults to CPU; ``device_map`` (e.g. ``"auto"``,
    or a dict with ``"disk"`` entries plus ``offload_folder=``) is passed to ``from_pretrained`` and then ``device``
    is ignored. ``dtype`` defaults to float32 on CPU and to the checkpoint's dtype elsewhere. ``chat_template``
    installs a template (and its stop tokens) on the tokenizer; see the module docstring.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_args(name_or_path, device_map, layers_path, trust_remote_code, gguf_file)
    dev = _as_device(device)
    torch_dtype = as_dtype(dtype)
    extra: dict[str, Any] = {}
    if name_or_path is None:
        path, name = str(default_model_path()), DEFAULT_MODEL_NAME
    else:
        path = os.path.expanduser(os.fspath(name_or_path))
        is_gguf = gguf_file is not None or (path.lower().endswith(".gguf") and os.path.isfile(path))
        if is_gguf:
            folder = convert_gguf(path, gguf_file, chat_template=chat_template)
            chat_template = None  # installed (with its stop tokens) in the converted folder
            path, name = str(folder), str(read_manifest_source(folder).get("name") or folder.name)
        elif os.path.isdir(path):
            name = path.rstrip("/").split("/")[-1]
        elif os.path.exists(path):
            raise ModelLoadError(f"{path!r} is a file, not a model folder; pass a folder with config.json and "
                                 "weights, a .gguf file, or a hub id")
        elif path.startswith((".", "/", "~")) or path.count("/") > 1 or path.lower().endswith(".gguf"):
            raise ModelLoadError(f"model path {path!r} does not exist; pass an existing folder, a .gguf file or a "
                                 "hub model id")
        else:
            name = path
            extra = hub_load_options(path, from_pretrained_kwargs)
    if torch_dtype is None:
        torch_dtype = torch.float32 if dev.type == "cpu" and device_map is None else "auto"
    try:
        shared = {k: v for k, v in from_pretrained_kwargs.items() if k in _HUB_KWARGS}  # the tokenizer's too
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **shared, **extra)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, device_map=device_map, trust_remote_code=trust_remote_code,
            **{**from_pretrained_kwargs, **extra},
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"could not load model {path!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}. "
            "Pass an existing local folder with config.json and weights, a .gguf file, or a hub id that is already in "
            "your HF cache (this machine may have no hub access)."
        ) from e
    if device_map is None:
        model.to(dev)
    model.eval().requires_grad_(False)
    if chat_template is not None:
        install_chat_template(tokenizer, model, chat_template)
    layers = find_layers(model, layers_path)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, layers=layers)


__all__ = ["DTYPES", "LoadedModel", "as_dtype", "hub_load_options", "hub_reachable", "load_model",
           # re-exported for callers of the old single module
           "DEFAULT_MODEL_NAME", "DecoderLayers", "default_model_path", "find_layers"]
