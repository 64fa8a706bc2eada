"""Reading and validating the persona data files (roles, traits, questions, default prompts): the strict,
hand-written schema checker whose errors name the file and the field path, and the packaged / user file readers.
The records and loaders built on them are in :mod:`persona_axes.runs.datasets`."""

from __future__ import annotations

import json
import re
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from persona_axes.errors import DataSchemaError

__all__ = ["PathLike", "Extra", "PACKAGE_PREFIX", "NAME_RE", "ID_RE", "describe_value", "SchemaChecker", "join_path",
           "package_data", "parse_json", "read_packaged", "read_user", "as_paths", "merge_entries"]

PathLike = Union[str, Path]
Extra = Union[PathLike, Sequence[PathLike], None]

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
PACKAGE_PREFIX = "package:"


# --------------------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------------------


def describe_value(value: Any) -> str:
    """Short, readable rendering of a JSON value for error messages."""
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "...'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class SchemaChecker:
    """Validates one parsed JSON document and builds error messages naming the file and the field path."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, path: str, problem: str, fix: str) -> DataSchemaError:
        return DataSchemaError(f"{self.label}: {path}: {problem}. Fix: {fix}")

    def obj(self, value: Any, path: str, required: Sequence[str], what: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected an object ({what}), got {describe_value(value)}",
                            f"write {what} as a JSON object with keys {', '.join(required)}")
        for key in required:
            if key not in value:
                raise self.fail(join_path(path, key), "missing required field",
                                f"add the key {key!r} to {what} (required keys: {', '.join(required)})")
        for key in value:
            if key not in required and not (isinstance(key, str) and key.startswith("_")):
                raise self.fail(join_path(path, key), "unknown field",
                                f"remove it or rename it (allowed keys: {', '.join(required)}; "
                                "keys starting with '_' are ignored and can hold comments)")
        return value

    def string(self, value: Any, path: str, fix: str = "use a quoted, non-empty JSON string") -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"expected a non-empty string, got {describe_value(value)}", fix)
        return value

    def name(self, value: Any, path: str) -> str:
        self.string(value, path)
        if not NAME_RE.match(value):
            raise self.fail(path, f"expected a snake_case name, got {describe_value(value)}",
                            "use lowercase letters, digits and single underscores, starting with a letter "
                            "(e.g. 'noir_detective')")
        return value

    def choice(self, value: Any, path: str, allowed: Sequence[str], what: str) -> str:
        self.string(value, path)
        if value not in allowed:
            raise self.fail(path, f"unknown {what} {describe_value(value)}", f"use one of: {', '.join(allowed)}")
        return value

    def array(self, value: Any, path: str, what: str, *, exactly: int | None = None,
              non_empty: bool = True) -> list:
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list ({what}), got {describe_value(value)}",
                            f"write {what} as a JSON array")
        if exactly is not None and len(value) != exactly:
            raise self.fail(path, f"expected exactly {exactly} {what}, got {len(value)}",
                            f"give exactly {exactly} {what}")
        if non_empty and not value:
            raise self.fail(path, f"expected at least one of {what}, got an empty list",
                            f"add at least one of {what}")
        return value

    def strings(self, value: Any, path: str, what: str, *, exactly: int | None = None) -> tuple[str, ...]:
        items = self.array(value, path, what, exactly=exactly)
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            self.string(item, f"{path}[{i}]", f"write each of {what} as a quoted, non-empty JSON string")
            if item in seen:
                raise self.fail(f"{path}[{i}]", f"duplicate of {path}[{seen[item]}] ({describe_value(item)})",
                                f"make {what} distinct: reword or remove one of the duplicates")
            seen[item] = i
        return tuple(items)

    def schema_tag(self, doc: Any, expected: str, required: Sequence[str], what: str) -> dict:
        if not isinstance(doc, dict):
            raise self.fail("(document)", f"expected a JSON object at top level, got {describe_value(doc)}",
                            f"the file must look like {{\"schema\": \"{expected}\", ...}}")
        if "schema" not in doc:
            raise self.fail("schema", "missing required field",
                            f"add \"schema\": \"{expected}\" at the top level of the {what} file")
        if doc["schema"] != expected:
            raise self.fail("schema", f"expected {expected!r}, got {describe_value(doc['schema'])}",
                            f"set \"schema\": \"{expected}\" (is this the right kind of file?)")
        return self.obj(doc, "(document)", ("schema", *required), f"a {what} file")


def join_path(path: str, key: str) -> str:
    return key if path in ("", "(document)") else f"{path}.{key}"


# --------------------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------------------


def package_data() -> Any:
    return resources.files("persona_axes").joinpath("data")


def parse_json(text: str, label: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataSchemaError(
            f"{label}: (document): invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}). "
            "Fix: correct the JSON syntax there (common causes: a trailing comma, single quotes, "
            "an unescaped double quote inside a string)"
        ) from None


def read_packaged(relative: str) -> tuple[Any, str, str]:
    """Parse a packaged file; returns ``(document, label, source)``."""
    resource = package_data()
    for part in relative.split("/"):
        resource = resource.joinpath(part)
    try:
        text = resource.read_text(encoding="utf-8")
    except (FileNotFoundError, OSError) as exc:  # a broken installation
        raise DataSchemaError(
            f"{relative}: (document): packaged data file could not be read ({exc}). "
            "Fix: reinstall persona-axes; its package data must include data/**/*.json"
        ) from exc
    return parse_json(text, relative), relative, PACKAGE_PREFIX + relative


def read_user(path: PathLike) -> tuple[Any, str, str]:
    """Parse a user file; returns ``(document, label, source)``. The label is the path as given."""
    p = Path(path).expanduser()
    label = str(path)
    if not p.is_file():
        problem = "is a folder, not a file" if p.is_dir() else "file not found"
        raise DataSchemaError(f"{label}: (document): {problem}. Fix: pass the path of an existing JSON file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataSchemaError(f"{label}: (document): not valid UTF-8 text. Fix: save the file as UTF-8 JSON") \
            from None
    return parse_json(text, label), label, str(p)


def as_paths(extra: Extra) -> list[PathLike]:
    if extra is None:
        return []
    if isinstance(extra, (str, Path)):
        return [extra]
    if isinstance(extra, Iterable):
        paths = list(extra)
        for p in paths:
            if not isinstance(p, (str, Path)):
                raise DataSchemaError(
                    f"(arguments): extra: expected a path or a list of paths, got an item {describe_value(p)}. "
                    "Fix: pass str or pathlib.Path values"
                )
        return paths
    raise DataSchemaError(
        f"(arguments): extra: expected a path or a list of paths, got {describe_value(extra)}. "
        "Fix: pass a str, a pathlib.Path, or a list of them"
    )


def merge_entries(merged: dict, new: dict, kind: str, label: str) -> None:
    """Add ``new`` entries to ``merged``; a same-key entry replaces the old one with a warning."""
    for key, value in new.items():
        if key in merged:
            old = merged[key]
            where = "the packaged" if old.source.startswith(PACKAGE_PREFIX) else f"the one from {old.source}"
            warnings.warn(f"{label}: {kind} {key!r} replaces {where} {kind} of the same name",
                          UserWarning, stacklevel=3)
        merged[key] = value  # a replacement keeps the position of the entry it replaces
