"""Files: atomic writes, and safetensors with validated persona_axes metadata.

Every file persona_axes writes goes through :func:`atomic_write` (write a temporary file in the same folder,
fsync, rename), so a crash leaves either the old file or the new one, never half of one. Two deliberate shapes of
the same rule: the converted default model is written into a temporary folder renamed into place, and the rollout
store is an append-only log (one write and an fsync per batch; a torn last line is dropped on reading, and
rewrites go through :func:`atomic_write`). A killed run may leave a hidden ``.<name>.*.tmp`` file, never read as
data. Our safetensors files
carry string metadata: ``format=persona_axes``, ``kind`` (what the file holds), ``format_version``, the model
identity (``model``, ``num_layers``, ``hidden_size``, ``layer_site``), ``package_version`` and ``sha256``, a checksum
of the tensor bytes (safetensors has none of its own, so a flipped byte in the data would otherwise load as a
plausible wrong number). Loading checks them all and refuses corrupt, truncated or foreign files with
:class:`FileFormatError`; files written before the checksum existed load without that check.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from persona_axes.errors import FileFormatError

FORMAT = "persona_axes"
FORMAT_VERSION = "1"
REQUIRED_KEYS = ("format", "kind", "format_version", "model", "num_layers", "hidden_size", "layer_site")
CHECKSUM_KEY = "sha256"


def _data_sha256(blob: bytes) -> str:
    """SHA-256 of a safetensors file's data region (everything after the 8-byte length and the JSON header)."""
    return hashlib.sha256(memoryview(blob)[8 + int.from_bytes(blob[:8], "little"):]).hexdigest()


def package_version() -> str:
    from persona_axes.core import __version__

    return __version__


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, kind: str) -> Path:
    """Write ``tensors`` (contiguous, CPU) and string ``metadata`` to a safetensors file, atomically."""
    from safetensors.torch import save

    md = {"format": FORMAT, "kind": kind, "format_version": FORMAT_VERSION, "package_version": package_version()}
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise TypeError(f"metadata value for {k!r} must be a string, got {type(v).__name__}")
        md[k] = v
    missing = [k for k in REQUIRED_KEYS if k not in md]
    if missing:
        raise ValueError(f"metadata lacks {missing}")
    tensors = {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}
    # The data region does not depend on the header, so serialise once to checksum it, then with the checksum.
    md[CHECKSUM_KEY] = _data_sha256(save(tensors, metadata=md))
    blob = save(tensors, metadata=md)
    with atomic_write(path) as f:
        f.write(blob)
    return Path(path)


def load_tensors(path: str | os.PathLike, *, kind: str | tuple[str, ...]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read one of our safetensors files; check it is ours, of the expected ``kind``, well-formed and intact.
    The metadata returned leaves out the checksum (it describes the file, not the object)."""
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        md = json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except Exception as e:  # safetensors raises its own error type for corrupt/truncated files
        raise FileFormatError(f"{path}: not a readable safetensors file (corrupt or truncated?): {e}") from e
    kinds = (kind,) if isinstance(kind, str) else kind
    if md.get("format") != FORMAT:
        raise FileFormatError(f"{path}: not a persona_axes file (metadata 'format' is {md.get('format')!r})")
    if md.get("kind") not in kinds:
        raise FileFormatError(f"{path}: holds {md.get('kind')!r}, expected {' or '.join(kinds)}")
    if md.get("format_version") != FORMAT_VERSION:
        raise FileFormatError(
            f"{path}: format version {md.get('format_version')!r} is not {FORMAT_VERSION}; upgrade persona_axes"
        )
    missing = [k for k in REQUIRED_KEYS if k not in md]
    if missing:
        raise FileFormatError(f"{path}: metadata lacks {missing}")
    try:
        int(md["num_layers"]), int(md["hidden_size"])
    except ValueError as e:
        raise FileFormatError(f"{path}: num_layers/hidden_size must be integers: {e}") from e
    if CHECKSUM_KEY in md and md.pop(CHECKSUM_KEY) != _data_sha256(data):
        raise FileFormatError(f"{path}: the tensor data fails its SHA-256 checksum; the file is corrupt (or its "
                              "data was edited): write it again from its source")
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise FileFormatError(f"{path}: tensor {name!r} holds NaN or infinite values")
    return tensors, md


def json_meta(value: Any) -> str:
    """Encode a JSON-able value as a metadata string."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def parse_json_meta(md: dict[str, str], key: str, path: Any = "") -> Any:
    try:
        return json.loads(md[key])
    except (KeyError, json.JSONDecodeError) as e:
        raise FileFormatError(f"{path}: metadata {key!r} is missing or not JSON: {e}") from e


__all__ = ["atomic_write", "save_tensors", "load_tensors", "json_meta", "parse_json_meta"]
