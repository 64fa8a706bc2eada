"""``persona-axes verify PATH...``: check that files are intact (checksums over data and metadata, then a full
load by their own loader), and re-stamp legacy files with the current checksum."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from persona_axes.cli.common import add_command

#: What a folder is searched for (a file named explicitly is checked whatever its name): our tensor files and
#: exports by suffix, a run's summary and rollout store by name (other .json/.jsonl files are data, not ours).
SUFFIXES = (".safetensors", ".gguf", ".npz")
NAMES = ("summary.json", "rollouts.jsonl")


def _loaders() -> dict[str, Callable[[Path], Any]]:
    """Our safetensors kinds -> the loader that checks their meaning as well as their checksum."""
    from persona_axes.activations.container import Activations
    from persona_axes.steering.capping import CapConfig
    from persona_axes.vectors.containers import PersonaVector, VectorSet

    return {"vector": PersonaVector.load, "vector_set": VectorSet.load, "capping": CapConfig.load,
            "activations": Activations.load}


def check_path(path: Path, *, restamp: bool = False) -> tuple[str, str]:
    """``(status, detail)`` for one file: status ``ok``, ``legacy``, ``restamped``, ``unchecked`` (a format
    without a checksum of ours) or ``FAILED``. Never raises for a damaged file."""
    from persona_axes.files import LegacyFileWarning, check_file, read_safetensors_metadata
    from persona_axes.files import restamp as restamp_file
    from persona_axes.errors import FileFormatError, PersonaAxesError
    from persona_axes.export import guess_format, import_vector

    try:
        if path.name == "summary.json":
            return _check_summary(path, restamp)
        if path.suffix == ".jsonl":
            return _check_store(path, restamp)
        fmt = guess_format(path)
        if fmt == "safetensors":
            kind = read_safetensors_metadata(path).get("kind", "?")
            loader = _loaders().get(kind)
            if loader is None:
                raise FileFormatError(f"{path}: holds {kind!r}, not a kind persona_axes reads")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LegacyFileWarning)
                loader(path)
            result = check_file(path)
            if result.status == "legacy" and restamp:
                restamp_file(path, validate=loader)
                return "restamped", f"{kind}: values checked, re-written with the current checksum"
            if result.status == "legacy":
                return "legacy", (f"{kind}: written before the checksum over metadata; re-stamp it with "
                                  f"'persona-axes verify --restamp {path}'")
            return "ok", f"{kind}: checksum over tensors and metadata matches"
        if fmt == "repeng":
            return "unchecked", "repeng control vector: readable, but the format carries no checksum"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import_vector(path, fmt)
        if any(issubclass(w.category, LegacyFileWarning) for w in caught):
            return "legacy", f"{fmt}: exported before the checksum over metadata; export it again"
        if fmt == "numpy":
            return "ok", "numpy: readable, zip CRC-32 of every member matches"
        return "ok", "gguf control vector: checksum over directions and metadata matches"
    except PersonaAxesError as e:
        return "FAILED", str(e)


def _check_summary(path: Path, restamp: bool) -> tuple[str, str]:
    from persona_axes.runs.summary import RunSummary

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = RunSummary.load(path)
    if not caught:
        return "ok", "run summary: checksum matches"
    if restamp:
        summary.save(path)
        RunSummary.load(path)
        return "restamped", "run summary: every key checked, re-written with its checksum"
    return "legacy", f"run summary without a checksum; re-stamp it with 'persona-axes verify --restamp {path}'"


def _check_store(path: Path, restamp: bool) -> tuple[str, str]:
    from persona_axes.runs.store import RolloutStore

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = RolloutStore(path)
    torn = [w for w in caught if "truncated last line" in str(w.message)]
    if store.legacy_lines and restamp:
        n = store.restamp()
        return "restamped", f"rollout store: {len(store)} records, {n} line(s) given their check"
    if store.legacy_lines:
        return "legacy", (f"rollout store: {store.legacy_lines} of {len(store)} line(s) carry no check; re-stamp "
                          f"with 'persona-axes verify --restamp {path}'")
    if torn:
        return "ok", f"rollout store: {len(store)} records; a torn last line (an interrupted run) will be re-done"
    return "ok", f"rollout store: {len(store)} records, every line's check matches"


def _walk(paths: list[str]) -> Iterator[Path]:
    from persona_axes.errors import FileFormatError

    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")
                           and (q.suffix in SUFFIXES or q.name in NAMES))
            if not found:
                raise FileFormatError(f"{p}: no {', '.join(SUFFIXES + NAMES)} files in this folder")
            yield from found
        elif p.is_file():
            yield p
        else:
            raise FileFormatError(f"{p}: no such file or folder")


def _cmd_verify(args: argparse.Namespace) -> int:
    counts: dict[str, int] = {}
    for path in _walk(args.paths):
        status, detail = check_path(path, restamp=args.restamp)
        counts[status] = counts.get(status, 0) + 1
        print(f"{status:<9} {path}: {detail}", file=sys.stdout if status != "FAILED" else sys.stderr)
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 1 if counts.get("FAILED") else 0


def register(sub: Any) -> None:
    sp = add_command(
        sub, "verify", "check files for damage (checksums and a full load); re-stamp legacy files",
        "Check each file (folders: every .safetensors, .gguf, .npz, summary.json and rollouts.jsonl inside, "
        "recursively): our safetensors files "
        "(vectors, vector sets, capping configs, activations) against their checksum over tensors and metadata "
        "and by loading them; GGUF control vectors we exported against theirs; .npz by their zip CRCs; a run's "
        "summary.json against its checksum and a rollout store (.jsonl) line by line. Prints one "
        "line per file (ok, legacy, restamped, unchecked or FAILED) and exits non-zero if any FAILED.\n\n"
        "Legacy files (written before the checksum covered metadata) still load, with a warning; --restamp "
        "re-writes them with the current checksum after loading them in full, values unchanged.",
        "examples:\n  persona-axes verify vectors/smollm2-135m-instruct\n"
        "  persona-axes verify --restamp old_axis.safetensors",
        _cmd_verify)
    sp.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    sp.add_argument("--restamp", action="store_true", help="re-write legacy files with the current checksum")


__all__ = ["check_path", "register"]
