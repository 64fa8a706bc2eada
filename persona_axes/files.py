"""Files: atomic writes, and safetensors files that check themselves (tensors and metadata under one checksum).

Every file persona_axes writes goes through :func:`atomic_write` (write a temporary file in the same folder,
fsync, rename), or :func:`atomic_path` for writers that open the path themselves (a GGUF writer), so a crash
leaves either the old file or the new one, never half of one, and every file gets ordinary permissions (``0666``
less the umask, e.g. ``0644``). Two deliberate shapes of the same rule: the converted default model is written
into a temporary folder renamed into place, and the rollout store is an append-only log. A killed run may leave a
hidden ``.<name>.*.tmp`` file, never read as data.

Our safetensors files carry string metadata: ``format=persona_axes``, ``kind`` (what the file holds),
``format_version``, the model identity (``model``, ``num_layers``, ``hidden_size``, ``layer_site``),
``package_version``, the object's own fields, and ``sha256``: a checksum over every tensor (name, dtype, shape,
bytes) **and** every other metadata value, in a fixed order (:func:`checksum`). Safetensors has no checksum of its
own, so without it a flipped bit in a value, a layer list or a threshold would load as a plausible wrong number.
Loading refuses corrupt, truncated, edited or foreign files with :class:`FileFormatError` naming the file.

Versions: ``format_version "2"`` files must carry that checksum. Files written before it (``"1"``: no checksum,
or one over the tensor bytes only) still load, with a :class:`LegacyFileWarning` that names the file and says how
to re-stamp it (``persona-axes verify --restamp PATH``, or :func:`restamp`); their data checksum, if any, is
still checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from persona_axes.errors import FileFormatError, InvalidInputError

FORMAT = "persona_axes"
FORMAT_VERSION = "2"
LEGACY_FORMAT_VERSIONS = frozenset({"1"})
REQUIRED_KEYS = ("format", "kind", "format_version", "model", "num_layers", "hidden_size", "layer_site")
CHECKSUM_KEY = "sha256"
RESTAMP_HINT = "persona-axes verify --restamp"

#: Metadata keys :func:`save_tensors` writes itself; an object's free-form extras must not use them.
RESERVED_KEYS = frozenset(REQUIRED_KEYS) | {"package_version", CHECKSUM_KEY}

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}
_CHECKSUM_DOMAIN = b"persona_axes checksum v2\n"


class LegacyFileWarning(UserWarning):
    """A file written before the checksum over data and metadata: it loads, but edits to it are not detected."""


def package_version() -> str:
    from persona_axes.core import __version__

    return __version__


def _ordinary_permissions(path: str | os.PathLike) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that open the file themselves; on success it is fsynced,
    given ordinary permissions and renamed over ``path``; on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _ordinary_permissions(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def append_durably(path: str | os.PathLike, data: bytes) -> None:
    """Append ``data`` to ``path`` (created with ordinary permissions if absent) in one write, then fsync: the
    rule of an append-only log, where a kill can leave at most a torn last record, which its reader drops."""
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------------------
# The checksum
# ---------------------------------------------------------------------------------------------------------------


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's bytes as stored (little-endian, C order), without a copy for a contiguous CPU tensor."""
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def checksum(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """SHA-256 over the canonical metadata (every key but ``sha256``, sorted, JSON) and, in name order, each
    tensor's name, dtype, shape and bytes. Streams over the tensors: no serialised copy of the file is built."""
    h = hashlib.sha256(_CHECKSUM_DOMAIN)
    md = json.dumps({k: metadata[k] for k in sorted(metadata) if k != CHECKSUM_KEY}, ensure_ascii=False,
                    separators=(",", ":")).encode("utf-8")
    h.update(len(md).to_bytes(8, "little") + md)
    for name in sorted(tensors):
        t = tensors[name]
        desc = json.dumps([name, _DTYPES.get(t.dtype, str(t.dtype)), list(t.shape)]).encode("utf-8")
        h.update(len(desc).to_bytes(8, "little") + desc)
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _legacy_data_sha256(data: bytes) -> str:
    """The version-1 checksum: SHA-256 of the data region only (everything after the length and the header)."""
    return hashlib.sha256(memoryview(data)[8 + int.from_bytes(data[:8], "little"):]).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Writing and reading
# ---------------------------------------------------------------------------------------------------------------


def _write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], md: dict[str, str]) -> Path:
    """Stream a safetensors file (header, then each tensor's bytes straight from its buffer) atomically.
    Tensors are laid out by decreasing element size, then name, so every offset is aligned for its dtype."""
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, Any] = {"__metadata__": md}
    offset = 0
    for k in order:
        t = tensors[k]
        if t.dtype not in _DTYPES:
            raise TypeError(f"tensor {k!r} has dtype {t.dtype}, which our files do not store")
        n = t.numel() * t.element_size()
        header[k] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    head += b" " * (-(8 + len(head)) % 8)
    with atomic_write(path) as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for k in order:
            f.write(_tensor_bytes(tensors[k]))
    return Path(path)


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *,
                 kind: str) -> Path:
    """Write ``tensors`` and string ``metadata`` to a safetensors file, atomically, stamped with
    :func:`checksum`. The file is written once, straight from the tensors' buffers (no serialised copy)."""
    md = {"format": FORMAT, "kind": kind, "format_version": FORMAT_VERSION, "package_version": package_version()}
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise TypeError(f"metadata value for {k!r} must be a string, got {type(v).__name__}")
        if k != CHECKSUM_KEY:
            md[k] = v
    md.update({"format": FORMAT, "kind": kind, "format_version": FORMAT_VERSION})
    missing = [k for k in REQUIRED_KEYS if k not in md]
    if missing:
        raise ValueError(f"metadata lacks {missing}")
    tensors = {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}
    md[CHECKSUM_KEY] = checksum(tensors, md)
    return _write_safetensors(path, tensors, md)


def read_safetensors_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor entries and ``__metadata__``), without reading its data."""
    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"{p}: no such file")
    with open(p, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        if n <= 0 or n > p.stat().st_size - 8:
            raise FileFormatError(f"{p}: not a safetensors file (corrupt or truncated?)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FileFormatError(f"{p}: not a safetensors file (bad header: {e})") from e
    if not isinstance(header, dict):
        raise FileFormatError(f"{p}: not a safetensors file (the header is not a JSON object)")
    return header


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (``{}`` if it has none), without reading its data."""
    md = read_safetensors_header(path).get("__metadata__") or {}
    if not isinstance(md, dict):
        raise FileFormatError(f"{path}: the safetensors __metadata__ is not a JSON object")
    return md


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], bytes]:
    from safetensors.torch import load

    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        md = json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except Exception as e:  # safetensors raises its own error type for corrupt/truncated files
        raise FileFormatError(f"{path}: not a readable safetensors file (corrupt or truncated?): {e}") from e
    if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
        raise FileFormatError(f"{path}: the metadata is not a JSON object of strings; the file is corrupt")
    return tensors, md, data


def load_tensors(path: str | os.PathLike, *, kind: str | tuple[str, ...],
                 legacy_warning: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read one of our safetensors files; check it is ours, of the expected ``kind``, well-formed and intact.
    The metadata returned leaves out the checksum (it describes the file, not the object). A legacy file
    (``format_version "1"``) loads with a :class:`LegacyFileWarning` unless ``legacy_warning=False``."""
    path = Path(path)
    tensors, md, data = _read(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    if md.get("format") != FORMAT:
        raise FileFormatError(f"{path}: not a persona_axes file (metadata 'format' is {md.get('format')!r})")
    version = md.get("format_version")
    legacy = version in LEGACY_FORMAT_VERSIONS
    if version != FORMAT_VERSION and not legacy:
        raise FileFormatError(
            f"{path}: format version {version!r} is not {FORMAT_VERSION} (or a legacy "
            f"{', '.join(sorted(LEGACY_FORMAT_VERSIONS))}); upgrade persona_axes, or the file is corrupt"
        )
    digest = md.pop(CHECKSUM_KEY, None)
    if legacy:
        if digest is not None and digest != _legacy_data_sha256(data):
            raise FileFormatError(f"{path}: the tensor data fails its SHA-256 checksum; the file is corrupt (or "
                                  "its data was edited): write it again from its source")
    elif digest is None:
        raise FileFormatError(f"{path}: format version {FORMAT_VERSION} but no {CHECKSUM_KEY!r} checksum in the "
                              "metadata; the file is corrupt or was edited")
    elif digest != checksum(tensors, md):
        raise FileFormatError(f"{path}: the file fails its SHA-256 checksum (over its tensors and metadata); it "
                              "is corrupt, or its data or metadata was edited: write it again from its source")
    if md.get("kind") not in kinds:
        raise FileFormatError(f"{path}: holds {md.get('kind')!r}, expected {' or '.join(kinds)}")
    missing = [k for k in REQUIRED_KEYS if k not in md]
    if missing:
        raise FileFormatError(f"{path}: metadata lacks {missing}")
    try:
        int(md["num_layers"]), int(md["hidden_size"])
    except ValueError as e:
        raise FileFormatError(f"{path}: num_layers/hidden_size must be integers: {e}") from e
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise FileFormatError(f"{path}: tensor {name!r} holds NaN or infinite values")
    if legacy and legacy_warning:
        warnings.warn(
            f"{path} was written before persona_axes checksummed its metadata (format version {version}, "
            f"{'a data-only' if digest else 'no'} checksum): an edit to it would not be detected. Re-stamp it "
            f"with `{RESTAMP_HINT} {path}`", LegacyFileWarning, stacklevel=3,
        )
    return tensors, md


@dataclass(frozen=True)
class FileCheck:
    """Outcome of :func:`check_file`: ``status`` is ``"ok"`` (checksummed and intact) or ``"legacy"``."""

    path: Path
    kind: str
    status: str


def check_file(path: str | os.PathLike) -> FileCheck:
    """Check one of our safetensors files of any kind (FileFormatError if it is corrupt, edited or foreign)."""
    path = Path(path)
    md = read_safetensors_metadata(path)
    kind = md.get("kind")
    if not isinstance(kind, str):
        raise FileFormatError(f"{path}: not a persona_axes file (no 'kind' in its metadata)")
    _, md = load_tensors(path, kind=kind, legacy_warning=False)
    return FileCheck(path, kind, "ok" if md["format_version"] == FORMAT_VERSION else "legacy")


def restamp(path: str | os.PathLike, validate: Callable[[Path], Any] | None = None) -> FileCheck:
    """Re-write a legacy file with the current checksum, values and metadata unchanged (``format_version`` and
    the checksum aside). ``validate(path)`` (e.g. ``PersonaVector.load``) is run on it first; a file that fails
    it, or its old data checksum, is left alone and FileFormatError raised. A current file is left as it is."""
    path = Path(path)
    if validate is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LegacyFileWarning)
            validate(path)
    tensors, md = load_tensors(path, kind=read_safetensors_metadata(path).get("kind", "?"), legacy_warning=False)
    if md["format_version"] == FORMAT_VERSION:
        return FileCheck(path, md["kind"], "ok")
    md["format_version"] = FORMAT_VERSION
    md[CHECKSUM_KEY] = checksum(tensors, md)
    _write_safetensors(path, tensors, md)
    return check_file(path)


def json_meta(value: Any) -> str:
    """Encode a JSON-able value as a metadata string."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def parse_json_meta(md: dict[str, str], key: str, path: Any = "") -> Any:
    try:
        return json.loads(md[key])
    except (KeyError, json.JSONDecodeError) as e:
        raise FileFormatError(f"{path}: metadata {key!r} is missing or not JSON: {e}") from e


# ---------------------------------------------------------------------------------------------------------------
# The vectors shipped inside the package
# ---------------------------------------------------------------------------------------------------------------

DEFAULT_SHIPPED = "smollm2-135m-instruct"


def shipped_vectors_dir(model: str = DEFAULT_SHIPPED) -> Path:
    """The vectors shipped for ``model`` (assistant_axis, capping, roles, default, traits/, summary.json), inside
    the installed package (``data/vectors`` links to the repository's ``vectors/``; wheels carry the files)."""
    root = Path(__file__).resolve().parent / "data" / "vectors"
    if not isinstance(model, str) or not model or "/" in model or "\\" in model or model.startswith(".") \
            or not (root / model).is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise InvalidInputError(f"no shipped vectors for model={model!r}; shipped: {', '.join(known) or 'none'}")
    return root / model


__all__ = ["DEFAULT_SHIPPED", "shipped_vectors_dir", "exclusive_lock", "atomic_write", "atomic_path", "append_durably", "save_tensors", "load_tensors", "checksum", "read_safetensors_header",
           "read_safetensors_metadata", "check_file", "restamp", "FileCheck", "LegacyFileWarning", "RESERVED_KEYS",
           "json_meta", "parse_json_meta"]


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike, busy: str) -> Iterator[None]:
    """Hold ``lock_file`` (a :mod:`filelock` lock, its folder made if needed) for one writer; a second process
    that tries meanwhile gets :class:`InvalidInputError` with ``busy`` (what is locked and how to proceed) and the
    lock's path, at once, instead of waiting or interleaving its writes."""
    from filelock import FileLock, Timeout

    Path(lock_file).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InvalidInputError(f"{busy} (lock {lock.lock_file})") from None
    try:
        yield
    finally:
        lock.release()
