"""The run summary (``summary.json``): every number a pipeline run reports, as a typed dataclass.

:class:`RunSummary` has one field per JSON key; :meth:`RunSummary.to_dict` gives exactly the JSON the pipeline has
always written (same keys, same nesting), and :meth:`RunSummary.from_dict` reads it back, checking every key's type
and refusing unknown keys with :class:`~persona_axes.errors.FileFormatError`. Files carry a ``sha256`` key: the
SHA-256 of the canonical JSON of everything else (keys sorted, no spaces), so an edited or corrupted value is
refused with a FileFormatError naming the file; summaries written before the checksum existed load with a warning
that says how to re-stamp them (``RunSummary.load(path).save(path)``).

Readers use attributes (``s.best_layer``, ``s.capping.layers``); ``s["best_layer"]`` gives the JSON value of a key,
for code written against the dict.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from persona_axes.errors import FileFormatError

__all__ = ["RunSummary", "RoleAcceptance", "TraitSummary", "CappingSummary", "SUMMARY_CHECKSUM_KEY", "summary_checksum"]

SUMMARY_CHECKSUM_KEY = "sha256"


@dataclass(frozen=True)
class RoleAcceptance:
    """How many of a role's replies the judge accepted, of how many."""

    accepted: int
    total: int


@dataclass(frozen=True)
class TraitSummary:
    """A trait vector's sample counts (kept by the judge, and before filtering), whether the judge filtered it, and
    its cosine with the Assistant Axis at the chosen layer."""

    n_pos: int
    n_neg: int
    n_pos_all: int
    n_neg_all: int
    judge_filtered: bool
    cos_axis_at_best_layer: float


@dataclass(frozen=True)
class CappingSummary:
    """The calibrated cap: layers, percentile, kind and per-layer thresholds (keys are layer numbers as strings)."""

    layers: list[int]
    percentile: float
    kind: str
    thresholds: dict[str, float]


_NESTED = {"role_acceptance": RoleAcceptance, "traits": TraitSummary}


@dataclass(frozen=True)
class RunSummary:
    """Every number a pipeline run reports (see :mod:`persona_axes.runs.stages` for how each is made). Layers are
    0-based block indices; ``*_by_layer`` lists have one entry per layer."""

    model: str
    preset: dict[str, Any]
    judge: str
    n_rollouts: dict[str, int]
    rollouts_generated_this_run: int
    role_acceptance: dict[str, RoleAcceptance]
    role_acceptance_rate: float
    roles_kept: list[str]
    roles_skipped: dict[str, int]
    min_role_samples: int
    pc1_cosine_by_layer: list[float]
    pc1_explained_variance_by_layer: list[float]
    best_layer: int
    layer_sweep: list[dict[str, Any]]
    default_pc1_at_best_layer: float
    role_pc1_at_best_layer: dict[str, float]
    family_mean_pc1_at_best_layer: dict[str, float]
    traits: dict[str, TraitSummary]
    capping: CappingSummary
    timings_s: dict[str, float]
    empty_replies_left_out: list[str] = field(default_factory=list)
    #: what the layer sweep was measured on: "held-out" (replies nothing was fitted on) or "in-sample"
    layer_sweep_evaluated_on: str = "in-sample"
    #: the fit/held-out split (runs.splits.DataSplit.to_dict()) and held-out reply counts; {} without a split
    heldout: dict[str, Any] = field(default_factory=dict)

    # ---- the JSON form

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``summary.json`` (keys in the order the pipeline has always written them)."""
        d = asdict(self)
        order = ["model", "preset", "judge", "n_rollouts", "empty_replies_left_out"]
        return {k: d[k] for k in order} | {k: v for k, v in d.items() if k not in order}

    def __getitem__(self, key: str) -> Any:
        """The JSON value of ``key`` (as in ``summary.json``), for code written against the dict."""
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        value = getattr(self, key)
        return asdict(value) if hasattr(value, "__dataclass_fields__") else _plain(value)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | os.PathLike = "summary") -> RunSummary:
        """Read the JSON object back, checking every key; :class:`FileFormatError` naming ``source`` and the key."""
        where = str(source)
        if not isinstance(data, Mapping):
            raise FileFormatError(f"{where}: a run summary must be a JSON object, got {type(data).__name__}")
        names = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(names) - {SUMMARY_CHECKSUM_KEY})
        if unknown:
            raise FileFormatError(f"{where}: unknown key(s) {unknown} in a run summary")
        missing = [n for n, f in names.items() if n not in data and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            raise FileFormatError(f"{where}: the run summary lacks key(s) {missing}")
        kw: dict[str, Any] = {}
        try:
            for name in names:
                if name not in data:
                    continue
                v = data[name]
                if name in _NESTED:
                    _expect(v, dict, name)
                    kw[name] = {str(k): _nested(_NESTED[name], x, f"{name}.{k}") for k, x in v.items()}
                elif name == "capping":
                    kw[name] = _nested(CappingSummary, v, name)
                else:
                    kw[name] = v
            s = cls(**kw)
            s._check_types()
        except (TypeError, ValueError) as e:
            raise FileFormatError(f"{where}: malformed run summary: {e}") from None
        return s

    def _check_types(self) -> None:
        for name, kind in (("model", str), ("judge", str), ("preset", dict), ("n_rollouts", dict),
                           ("roles_kept", list), ("roles_skipped", dict), ("pc1_cosine_by_layer", list),
                           ("pc1_explained_variance_by_layer", list), ("layer_sweep", list),
                           ("role_pc1_at_best_layer", dict), ("family_mean_pc1_at_best_layer", dict),
                           ("timings_s", dict), ("empty_replies_left_out", list), ("heldout", dict),
                           ("layer_sweep_evaluated_on", str)):
            _expect(getattr(self, name), kind, name)
        for name in ("rollouts_generated_this_run", "min_role_samples", "best_layer"):
            _expect(getattr(self, name), int, name)
        for name in ("role_acceptance_rate", "default_pc1_at_best_layer"):
            _expect(getattr(self, name), float, name)
        n = len(self.pc1_cosine_by_layer)
        if len(self.pc1_explained_variance_by_layer) != n or not 0 <= self.best_layer < max(n, 1):
            raise ValueError(f"best_layer {self.best_layer} and the per-layer lists ({n} layers) do not agree")
        for name in ("pc1_cosine_by_layer", "pc1_explained_variance_by_layer"):
            for i, x in enumerate(getattr(self, name)):
                _expect(x, float, f"{name}[{i}]")
        for name in ("role_pc1_at_best_layer", "family_mean_pc1_at_best_layer", "timings_s"):
            for k, x in getattr(self, name).items():
                _expect(x, float, f"{name}.{k}")
        for k, x in self.n_rollouts.items():
            _expect(x, int, f"n_rollouts.{k}")

    # ---- the file

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``summary.json`` atomically, with its checksum."""
        from persona_axes.files import atomic_write

        d = self.to_dict()
        d[SUMMARY_CHECKSUM_KEY] = summary_checksum(d)
        with atomic_write(path, "w") as f:
            json.dump(d, f, indent=1)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunSummary:
        """Read ``summary.json``: checksum checked (a summary without one loads with a warning), then every key."""
        path = Path(path)
        if not path.is_file():
            raise FileFormatError(f"{path}: no such file; run the pipeline to the end first")
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise FileFormatError(f"{path}: not a readable run summary (corrupt or truncated JSON: {e})") from None
        if not isinstance(data, dict):
            raise FileFormatError(f"{path}: a run summary must be a JSON object")
        stored = data.pop(SUMMARY_CHECKSUM_KEY, None)
        if stored is None:
            warnings.warn(f"{path}: this run summary has no checksum (written by an older persona_axes), so changes to "
                          "it cannot be detected; re-stamp it with RunSummary.load(path).save(path)",
                          UserWarning, stacklevel=2)
        elif stored != summary_checksum(data):
            raise FileFormatError(f"{path}: the run summary fails its checksum ({SUMMARY_CHECKSUM_KEY}): it was changed "
                                  "or corrupted after it was written; run the pipeline again to rewrite it")
        return cls.from_dict(data, source=path)


def summary_checksum(data: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a summary's keys other than the checksum itself."""
    body = {k: v for k, v in data.items() if k != SUMMARY_CHECKSUM_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return asdict(value) if hasattr(value, "__dataclass_fields__") else value


def _expect(value: Any, kind: type, name: str) -> None:
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise TypeError(f"{name} must be {kind.__name__}, got {type(value).__name__} {value!r:.60}")


def _nested(cls: type, value: Any, name: str) -> Any:
    _expect(value, dict, name)
    names = [f.name for f in fields(cls)]
    if set(value) != set(names):
        raise ValueError(f"{name} must have keys {names}, got {sorted(value)}")
    out = cls(**value)
    for f in fields(cls):
        kind = {"int": int, "float": float, "bool": bool, "str": str}.get(str(f.type))
        if kind is bool:
            if not isinstance(getattr(out, f.name), bool):
                raise TypeError(f"{name}.{f.name} must be true or false")
        elif kind is not None:
            _expect(getattr(out, f.name), kind, f"{name}.{f.name}")
    if cls is CappingSummary:
        _expect(out.layers, list, f"{name}.layers")
        _expect(out.thresholds, dict, f"{name}.thresholds")
        if any(isinstance(L, bool) or not isinstance(L, int) for L in out.layers):
            raise TypeError(f"{name}.layers must be integers")
        for k, x in out.thresholds.items():
            _expect(x, float, f"{name}.thresholds.{k}")
    return out
