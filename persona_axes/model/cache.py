"""The validated model cache: converted checkpoints built once, guarded by a lock, checked by a manifest.

A converted model lives in ``<cache_dir()>/models/<key>/`` (``$PERSONA_AXES_CACHE``, default
``~/.cache/persona_axes``). :func:`cached_build` builds it under a file lock into a ``.<key>.partial-*`` folder,
writes a manifest (sizes and SHA-256 checksums of every file) last, and renames the folder into place, so that
concurrent first loads share one build and a killed build never leaves a folder that could be loaded. Later calls
validate the folder against its manifest (hashing once per process and file stamp) and reuse it; a folder that fails
validation is moved aside to ``<key>.corrupt-<time>`` and built again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from persona_axes.errors import CacheCorruptError, InvalidInputError
from persona_axes.files import atomic_write

log = logging.getLogger(__name__)

CACHE_ENV = "PERSONA_AXES_CACHE"
MANIFEST = "persona_axes_manifest.json"
MANIFEST_VERSION = 1


def cache_dir() -> Path:
    """The user cache folder of persona_axes (``$PERSONA_AXES_CACHE`` or ``~/.cache/persona_axes``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "persona_axes"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, source: dict[str, Any]) -> None:
    """Write the manifest of every file in ``folder`` (written last: a folder without it is known to be partial)."""
    files = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(Path(folder).iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"version": MANIFEST_VERSION, "source": source, "files": files, "created": time.time()}
    with atomic_write(Path(folder) / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)


@functools.lru_cache(maxsize=16)
def _validated(folder: str, stamp: tuple) -> bool:  # memoised per (folder, stat stamp): hash once per process
    manifest = json.loads((Path(folder) / MANIFEST).read_text())
    if manifest.get("version") != MANIFEST_VERSION:
        raise CacheCorruptError(f"{folder}: manifest version {manifest.get('version')!r} is not {MANIFEST_VERSION}")
    for name, meta in manifest["files"].items():
        p = Path(folder) / name
        if not p.is_file():
            raise CacheCorruptError(f"{folder}: {name} is missing")
        if p.stat().st_size != meta["size"]:
            raise CacheCorruptError(f"{folder}: {name} has {p.stat().st_size} bytes, manifest says {meta['size']}")
        if sha256_file(p) != meta["sha256"]:
            raise CacheCorruptError(f"{folder}: {name} fails its SHA-256 checksum")
    return True


def validate_cached_model(folder: str | os.PathLike) -> None:
    """Check a converted model folder against its manifest; raise :class:`CacheCorruptError` if it fails."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise CacheCorruptError(f"{folder}: no {MANIFEST} (the folder was not written by persona_axes, or is partial)")
    try:
        stamp = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()))
        _validated(str(folder), stamp)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CacheCorruptError(f"{folder}: unreadable manifest ({e})") from e


def read_manifest_source(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``source`` record of a validated cache folder (what it was built from)."""
    validate_cached_model(folder)
    return dict(json.loads((Path(folder) / MANIFEST).read_text()).get("source") or {})


def cached_build(key: str, build: Callable[[Path], None], source: dict[str, Any],
                 root: str | os.PathLike | None = None) -> Path:
    """``<root>/models/<key>``, built once by ``build(tmp_folder)`` (safe across processes), validated on reuse.

    ``root`` defaults to :func:`cache_dir`. ``source`` is recorded in the manifest (what the folder was built from).
    """
    from filelock import FileLock

    if not isinstance(key, str) or not key or "/" in key or key.startswith("."):
        raise InvalidInputError(f"cache key must be a plain folder name, got {key!r}")
    models = Path(root).expanduser() / "models" if root is not None else cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    final = models / key
    with FileLock(str(models / f"{key}.lock")):
        for stale in models.glob(f".{key}.partial-*"):  # left by a build that was killed (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            try:
                validate_cached_model(final)
                return final
            except CacheCorruptError as e:
                aside = models / f"{key}.corrupt-{int(time.time())}"
                log.warning("cached model failed validation (%s); moving it to %s and converting again", e, aside)
                final.rename(aside)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.partial-", dir=models))
        try:
            log.info("building %s (once)", final)
            build(tmp)
            write_manifest(tmp, source)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the cache is as readable as any other folder
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    validate_cached_model(final)
    return final


__all__ = ["CACHE_ENV", "MANIFEST", "cache_dir", "cached_build", "read_manifest_source", "sha256_file",
           "validate_cached_model", "write_manifest"]
