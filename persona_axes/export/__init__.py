"""Export and import a :class:`~persona_axes.vectors.containers.PersonaVector` in the formats other tools read.

Four formats, all round-tripping:

``"safetensors"``
    Our own file (:meth:`PersonaVector.save` / :meth:`PersonaVector.load`), bit-exact, every layer.
``"gguf"``
    A llama.cpp control vector (:mod:`persona_axes.export.gguf`), usable with ``llama-cli --control-vector FILE``
    (or ``--control-vector-scaled FILE:SCALE``); it can bake a steer's layers, unit and coefficient in.
``"repeng"``
    repeng's control-vector file and in-memory form (:mod:`persona_axes.export.repeng`).
``"numpy"``
    A plain ``.npz`` (:mod:`persona_axes.export.numpy`), bit-exact, every layer.

:func:`export_vector` / :func:`import_vector` dispatch on a format name (the importer guesses it from the file's
first bytes, then from its suffix, :func:`guess_format`). Layer L is the output of decoder block L (0-based) in
every format; llama.cpp cannot steer layer 0. :func:`read_gguf_directions` / :func:`read_gguf_metadata` read any
control-vector file without interpreting it (for ``persona-axes info``).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from persona_axes.errors import FileFormatError, InvalidInputError
from persona_axes.export.directions import check_vector
from persona_axes.export.gguf import export_gguf_control_vector, gguf_layers, import_gguf_control_vector
from persona_axes.export.gguf_io import GGUF_ARCH, NS, read_gguf, read_gguf_directions, read_gguf_metadata
from persona_axes.export.numpy import export_numpy, import_numpy
from persona_axes.export.repeng import (
    export_repeng_gguf,
    from_repeng,
    import_repeng_gguf,
    repeng_layers,
    to_repeng,
)
from persona_axes.vectors.containers import PersonaVector

FORMATS = ("safetensors", "gguf", "repeng", "numpy")
"""Names accepted by :func:`export_vector` / :func:`import_vector`."""

_ALIASES = {"st": "safetensors", "llama.cpp": "gguf", "llamacpp": "gguf", "npz": "numpy"}
_SUFFIXES = {".safetensors": "safetensors", ".gguf": "gguf", ".npz": "numpy"}


def _format_name(format: Any) -> str:
    key = format.lower() if isinstance(format, str) else format
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise InvalidInputError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    return key


def _call(fn: Callable[..., Any], args: tuple, opts: dict, fixed: int, what: str) -> Any:
    params = list(inspect.signature(fn).parameters)[fixed:]
    unknown = sorted(set(opts) - set(params))
    if unknown:
        raise InvalidInputError(f"{what} takes no option(s) {unknown}; its options are {params or 'none'}")
    return fn(*args, **opts)


def _save_safetensors(vector: PersonaVector, path: str | os.PathLike) -> Path:
    return check_vector(vector).save(path)


def _load_safetensors(path: str | os.PathLike, model: Any = None, *, strict_name: bool = True) -> PersonaVector:
    return PersonaVector.load(path, model=model, strict_name=strict_name)


_EXPORTERS: dict[str, Callable[..., Path]] = {
    "safetensors": _save_safetensors, "gguf": export_gguf_control_vector, "repeng": export_repeng_gguf,
    "numpy": export_numpy,
}
_IMPORTERS: dict[str, Callable[..., PersonaVector]] = {
    "safetensors": _load_safetensors, "gguf": import_gguf_control_vector, "repeng": import_repeng_gguf,
    "numpy": import_numpy,
}


def export_vector(vector: PersonaVector, path: str | os.PathLike, format: str = "safetensors", **opts: Any) -> Path:
    """Write ``vector`` to ``path`` in ``format`` (one of :data:`FORMATS`; ``"npz"`` and ``"llama.cpp"`` are
    aliases), passing ``opts`` to that format's exporter (e.g. ``layers``, ``scale``, ``normalize``,
    ``model_hint`` for ``"gguf"``). Unknown formats or options raise InvalidInputError."""
    fmt = _format_name(format)
    return _call(_EXPORTERS[fmt], (vector, path), opts, 2, f"export format {fmt!r}")


def guess_format(path: str | os.PathLike) -> str:
    """The format of an existing file, from its first bytes, else its suffix. A GGUF file is ``"gguf"`` if it
    carries our ``persona_axes.*`` metadata and ``"repeng"`` (a bare control vector) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if head[:4] == b"GGUF":
        try:
            fields, _ = read_gguf(path)
        except FileFormatError:
            return "gguf"  # let the importer report the problem
        return "gguf" if any(k.startswith(NS) for k in fields) else "repeng"  # ours if it has any key of ours
    if head[:4] == b"PK\x03\x04":
        return "numpy"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise FileFormatError(
            f"{path}: cannot tell its format from its contents or its suffix (known suffixes: "
            f"{', '.join(sorted(_SUFFIXES))}); it is not a file persona_axes reads, or it is damaged"
        )
    return fmt


def import_vector(path: str | os.PathLike, format: str | None = None, **opts: Any) -> PersonaVector:
    """Read a PersonaVector from ``path`` in ``format`` (guessed by :func:`guess_format` when ``None``), passing
    ``opts`` to that format's importer (``model``, ``strict_name``; ``name``/``method`` for ``"repeng"``, which
    needs ``model``)."""
    fmt = guess_format(path) if format is None else _format_name(format)
    return _call(_IMPORTERS[fmt], (path,), opts, 1, f"import format {fmt!r}")


def exported_layers(vector: PersonaVector, format: str, layers: Any = None) -> list[int]:
    """The layers a file of ``format`` written for ``vector`` with ``layers`` holds (every layer for our own
    formats; see :func:`~persona_axes.export.gguf.gguf_layers` and :func:`~persona_axes.export.repeng.repeng_layers`)."""
    fmt = _format_name(format)
    if fmt == "gguf":
        return gguf_layers(vector, layers)
    if fmt == "repeng":
        return repeng_layers(vector, layers)
    return list(range(vector.model.n_layers))


__all__ = [
    "FORMATS", "GGUF_ARCH", "export_vector", "import_vector", "guess_format", "exported_layers",
    "export_gguf_control_vector", "import_gguf_control_vector", "to_repeng", "from_repeng", "export_repeng_gguf",
    "import_repeng_gguf", "export_numpy", "import_numpy", "read_gguf_directions", "read_gguf_metadata",
]
