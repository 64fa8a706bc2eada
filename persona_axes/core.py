"""The bottom of the house: model identity, option enums, layer specs and argument checks, each defined once.

"Layer L" means the output of decoder block L (the residual stream right after block L), 0-based, everywhere: in
file metadata, the CLI and plots. In HF terms that is ``output_hidden_states[L + 1]``, except for the last block,
whose ``hidden_states`` entry is taken after the final norm.

Nothing here imports from the rest of the package except :mod:`persona_axes.errors`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import torch

from persona_axes.errors import InvalidInputError, LayerOutOfRangeError, ModelMismatchError

__version__ = "0.1.0"

LAYER_SITE = "block_output"
"""Name of the only layer site persona_axes uses: the output of decoder block L (the residual stream after it)."""


# ---------------------------------------------------------------------------------------------------------------
# Options as enums. Each is a ``str`` enum, so the plain strings users type (``positions="prompt"``) keep working
# and the CLI derives its choices from the enum instead of copying them.
# ---------------------------------------------------------------------------------------------------------------


class Choice(str, Enum):
    """Base of the option enums: compares equal to its string value and prints as it."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


class Positions(Choice):
    """Which token positions an intervention edits (see :mod:`persona_axes.steering.interventions`)."""

    ALL = "all"
    PROMPT = "prompt"
    GENERATED = "generated"


class Unit(Choice):
    """How a steering coefficient is measured: raw units, along the unit vector, relative to the default replies'
    mean norm, in standard deviations of default projections, or in default-minus-opposite gaps (defined once in
    :mod:`persona_axes.vectors.units`)."""

    RAW = "raw"
    UNIT = "unit"
    REL = "rel"
    SD = "sd"
    GAP = "gap"


class Reduce(Choice):
    """How capture reduces the tokens of one message: their mean, the last one, all of them (one row each), the
    mean of the first ``first_n``, or the token just before the content (``prompt_end``: for an assistant reply,
    the last token of the generation prompt, whose output predicts the reply's first token)."""

    MEAN = "mean"
    LAST = "last"
    ALL = "all"
    FIRST = "first"
    PROMPT_END = "prompt_end"


class Which(Choice):
    """Named message selections for capture (an integer message index is also accepted where ``which`` is)."""

    LAST_ASSISTANT = "last_assistant"
    ASSISTANT = "assistant"
    USER = "user"
    ALL = "all"


class CapKind(Choice):
    """Which side of the threshold a cap keeps: ``floor`` keeps the projection >= it, ``ceiling`` <= it."""

    FLOOR = "floor"
    CEILING = "ceiling"


class RolloutKind(Choice):
    """The three kinds of rollout: a role played, the default Assistant, a trait elicited."""

    ROLE = "role"
    DEFAULT = "default"
    TRAIT = "trait"


class PaddingSide(Choice):
    RIGHT = "right"
    LEFT = "left"


E = TypeVar("E", bound=Choice)


def as_choice(enum: type[E], value: Any, arg: str) -> E:
    """``value`` (a member or its string) as a member of ``enum``; :class:`InvalidInputError` naming ``arg`` and the
    accepted values otherwise. Used for arguments and for values read back from file metadata alike."""
    if isinstance(value, enum):
        return value
    if isinstance(value, str):
        try:
            return enum(value)
        except ValueError:
            pass
    raise InvalidInputError(f"{arg}={value!r} is not one of {', '.join(enum.values())}")


# ---------------------------------------------------------------------------------------------------------------
# Argument checks written as rules: every public function checks its arguments at the boundary with these.
# ---------------------------------------------------------------------------------------------------------------


def check_int(value: Any, arg: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer argument (a ``bool``, a float or a string is refused, even ``2.0`` or ``"2"``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point() \
                and value.dtype != torch.bool:
            value = int(value)
        else:
            raise InvalidInputError(f"{arg} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InvalidInputError(f"{arg} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidInputError(f"{arg} must be <= {maximum}, got {value}")
    return value


def check_float(value: Any, arg: str, *, positive: bool = False, nonnegative: bool = False,
                minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite real-number argument (a string or a bool is refused; NaN and infinities are refused)."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError(f"{arg} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidInputError(f"{arg} must be finite, got {value}")
    if positive and not value > 0:
        raise InvalidInputError(f"{arg} must be > 0, got {value}")
    if nonnegative and value < 0:
        raise InvalidInputError(f"{arg} must be >= 0, got {value}")
    if minimum is not None and value < minimum:
        raise InvalidInputError(f"{arg} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidInputError(f"{arg} must be <= {maximum}, got {value}")
    return value


def check_finite(t: torch.Tensor, arg: str) -> torch.Tensor:
    """Refuse a tensor holding NaN or infinities (anything that would be saved or steer by a wrong amount)."""
    if not isinstance(t, torch.Tensor):
        raise InvalidInputError(f"{arg} must be a tensor, got {type(t).__name__}")
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise InvalidInputError(f"{arg} holds NaN or infinite values")
    return t


# ---------------------------------------------------------------------------------------------------------------
# Model identity
# ---------------------------------------------------------------------------------------------------------------


def _norm_name(name: str) -> str:
    return name.rstrip("/").split("/")[-1].lower()


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the model a result was computed on: name, shape and layer site."""

    name: str
    n_layers: int
    hidden_size: int
    layer_site: str = LAYER_SITE

    def to_metadata(self) -> dict[str, str]:
        return {
            "model": self.name,
            "num_layers": str(self.n_layers),
            "hidden_size": str(self.hidden_size),
            "layer_site": self.layer_site,
        }

    @classmethod
    def from_metadata(cls, md: dict[str, str]) -> ModelInfo:
        return cls(
            name=md["model"],
            n_layers=int(md["num_layers"]),
            hidden_size=int(md["hidden_size"]),
            layer_site=md.get("layer_site", LAYER_SITE),
        )

    def check_compatible(self, other: ModelInfo, *, what: str = "these activations", strict_name: bool = True) -> None:
        """Raise :class:`ModelMismatchError` unless ``other`` has the same shape (and, if strict, the same name).

        Names compare by their last path component, case-insensitively, so ``org/Model`` matches ``Model``.
        """
        problems = []
        if self.hidden_size != other.hidden_size:
            problems.append(f"hidden size {self.hidden_size} here, {other.hidden_size} in the model")
        if self.n_layers != other.n_layers:
            problems.append(f"{self.n_layers} layers here, {other.n_layers} in the model")
        if self.layer_site != other.layer_site:
            problems.append(f"layer site {self.layer_site!r} here, {other.layer_site!r} in the model")
        if strict_name and _norm_name(self.name) != _norm_name(other.name):
            problems.append(f"made for model {self.name!r}, not {other.name!r}")
        if problems:
            only_name = len(problems) == 1 and problems[0].startswith("made for")
            raise ModelMismatchError(
                f"{what} were made for {self.name!r} and do not fit {other.name!r}: {'; '.join(problems)}. "
                "Recompute them on this model"
                + (" (or pass strict_name=False if only the name differs)." if only_name else ".")
            )


# ---------------------------------------------------------------------------------------------------------------
# Layers: one parser for Python arguments and command-line specs alike
# ---------------------------------------------------------------------------------------------------------------

LAYER_SPEC_FORMS = "accepted forms: '12' (one layer), '12,14,16' (a list), '8:12' (half-open range, 8..11), 'all'"


def normalize_layers(layers: int | Iterable[int] | None, n_layers: int) -> list[int]:
    """Sorted unique 0-based block indices; ``None`` means all; negative indices count from the end.

    Accepts an int, an iterable of ints (``range`` included) or a 0-d integer tensor; a command-line string goes
    through :func:`parse_layer_spec`. Floats, bools and strings inside the list are refused.
    """
    if isinstance(layers, str):
        return parse_layer_spec(layers, n_layers)
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, (int, torch.Tensor)) and not isinstance(layers, bool) and getattr(layers, "ndim", 0) == 0:
        layers = [layers]
    if isinstance(layers, torch.Tensor):
        layers = list(layers.flatten())
    try:
        items = list(layers)
    except TypeError:
        raise InvalidInputError(f"layers must be an integer or a list of integers, got {type(layers).__name__}") from None
    out = set()
    for L in items:
        if isinstance(L, bool) or not (isinstance(L, numbers.Integral) or (
                isinstance(L, torch.Tensor) and L.ndim == 0 and not L.is_floating_point())):
            raise InvalidInputError(f"layer indices must be integers, got {L!r}")
        L = int(L)
        if not -n_layers <= L < n_layers:
            raise LayerOutOfRangeError(
                f"layer {L} is out of range: this model has {n_layers} decoder blocks, so layers are 0..{n_layers - 1} "
                f"(or -{n_layers}..-1 from the end)"
            )
        out.add(L % n_layers)
    if not out:
        raise InvalidInputError("no layers were requested; pass layers=None for all of them")
    return sorted(out)


def parse_layer_spec(spec: str, n_layers: int) -> list[int]:
    """Layers from a text spec: ``"12"``, ``"12,14,16"``, ``"8:12"`` (half-open, like Python: 8..11) or ``"all"``;
    negative numbers count from the end. Sorted and unique; :class:`InvalidInputError` naming the spec and the
    accepted forms for anything else (empty, not a number, an empty range like ``12:8``, out of range)."""
    raw = spec
    spec = (spec or "").strip()

    def bad(why: str) -> InvalidInputError:
        return InvalidInputError(f"invalid layer spec {raw!r}: {why}; {LAYER_SPEC_FORMS}")

    if not spec:
        raise bad("it is empty")
    if spec.lower() == "all":
        return list(range(n_layers))

    def num(s: str) -> int:
        s = s.strip()
        try:
            v = int(s)
        except ValueError:
            raise bad(f"{s!r} is not an integer") from None
        if not -n_layers <= v < n_layers:
            raise bad(f"layer {v} is out of range for a model with {n_layers} layers (0..{n_layers - 1})")
        return v % n_layers

    out: set[int] = set()
    for part in spec.split(","):
        if ":" in part:
            pieces = part.split(":")
            if len(pieces) != 2 or not pieces[0].strip() or not pieces[1].strip():
                raise bad(f"range {part!r} needs both ends, as in 8:12")
            a, b = pieces
            lo = num(a)
            bs = b.strip()
            try:
                hi_raw = int(bs)
            except ValueError:
                raise bad(f"{bs!r} is not an integer") from None
            if not -n_layers <= hi_raw <= n_layers:
                raise bad(f"range end {hi_raw} is out of range for a model with {n_layers} layers")
            hi = hi_raw + n_layers if hi_raw < 0 else hi_raw
            if hi <= lo:
                raise bad(f"range {part.strip()!r} is empty (the end must be larger than the start)")
            out.update(range(lo, hi))
        else:
            if not part.strip():
                raise bad("it has an empty item")
            out.add(num(part))
    return sorted(out)


def format_layers(layers: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 7, 9, 10]`` -> ``"0-3, 7, 9-10"`` (for messages and summaries)."""
    xs = sorted({int(L) for L in layers})
    if not xs:
        return "none"
    parts, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# Directions
# ---------------------------------------------------------------------------------------------------------------


def unit(v: torch.Tensor, what: str = "vector", layer: int | None = None) -> torch.Tensor:
    """``v / ||v||`` along the last dimension, computed in float64 and returned in ``v``'s floating dtype
    (float32 for integer input). Refuses a non-finite vector or one with zero norm (it has no direction), naming
    ``what`` and, if given, the layer."""
    if not isinstance(v, torch.Tensor):
        raise InvalidInputError(f"the {what} must be a tensor, got {type(v).__name__}")
    where = f" at layer {layer}" if layer is not None else ""
    if v.is_floating_point() and not torch.isfinite(v).all():
        raise InvalidInputError(f"the {what} holds NaN or infinite values{where}")
    x = v.detach().to(torch.float64)
    n = x.norm(dim=-1, keepdim=True)
    if not bool((n > 0).all()):
        raise InvalidInputError(f"the {what} has zero norm{where}; it has no direction to act along")
    out_dtype = v.dtype if v.is_floating_point() else torch.float32
    return (x / n).to(out_dtype)


def cosine64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dimension in float64; 0 where either side has zero norm."""
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den > 0, (a * b).sum(-1) / den.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(den))


__all__ = [
    "__version__", "LAYER_SITE", "LAYER_SPEC_FORMS", "Choice", "Positions", "Unit", "Reduce", "Which", "CapKind", "RolloutKind",
    "PaddingSide", "as_choice", "check_int", "check_float", "check_finite", "ModelInfo", "normalize_layers",
    "parse_layer_spec", "format_layers", "unit", "cosine64",
]
