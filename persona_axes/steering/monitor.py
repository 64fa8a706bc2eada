"""Drift monitoring: the projection of each conversation turn onto an axis, offline or live.

Offline, :func:`monitor_transcript` runs one forward pass over a stored conversation and reports the mean
projection of every assistant (and user) message onto the unit axis at one layer. Live, :class:`LiveMonitor`
keeps a conversation with the model, generates each reply (optionally under an :class:`ActivationCap`) and
projects each new turn as it arrives.

Alerts: with the Assistant Axis (assistant end positive), drift *away* from the assistant shows as a falling
projection, so the default ``direction="below"`` alerts when the (optionally smoothed) projection falls below
``threshold``. Smoothing: ``ema=alpha`` (exponential moving average over assistant turns) and/or
``dead_band=width`` (hysteresis: once alerting, the alert clears only when the value is back past
``threshold + width``).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from persona_axes.activations.readers.base import as_backend
from persona_axes.activations.batch import capture
from persona_axes.model.chat import validate_messages
from persona_axes.errors import ConversationError, FileFormatError, InvalidInputError
from persona_axes.core import check_float, check_int, unit
from persona_axes.steering.interventions import layer_vectors, name_of


@dataclass(frozen=True)
class TurnProjection:
    """One message's mean projection onto the unit axis at ``layer`` (``smoothed``/``alert`` for assistant turns)."""

    message: int
    role: str
    turn: int
    projection: float
    smoothed: float | None
    alert: bool
    n_tokens: int
    layer: int
    text: str = field(default="", repr=False)


@dataclass
class DriftReport:
    """Per-turn projections of a conversation, with the thresholds used."""

    records: list[TurnProjection]
    layer: int
    threshold: float | None
    direction: str
    axis_name: str = "axis"

    def __post_init__(self):
        if not isinstance(self.records, list) or not all(isinstance(r, TurnProjection) for r in self.records):
            raise InvalidInputError("records must be a list of TurnProjection")
        self.layer = check_int(self.layer, "layer", minimum=0)
        self.threshold = _Smoother(self.threshold, self.direction, None, 0.0).threshold  # the same checks
        if not isinstance(self.axis_name, str):
            raise InvalidInputError(f"axis_name must be a string, got {type(self.axis_name).__name__}")

    def assistant(self) -> list[TurnProjection]:
        return [r for r in self.records if r.role == "assistant"]

    @property
    def alerts(self) -> list[TurnProjection]:
        return [r for r in self.records if r.alert]

    def to_records(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.records]

    def to_dataframe(self):
        """A pandas DataFrame of the records (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as e:  # pragma: no cover - pandas is in the dev extra
            raise InvalidInputError("to_dataframe() needs pandas: pip install pandas") from e
        return pd.DataFrame(self.to_records())

    def figure(self, title: str | None = None):
        """A plotly figure: projection per turn, assistant and user, with the threshold line and alerts marked."""
        if title is not None and not isinstance(title, str):
            raise InvalidInputError(f"title must be a string (or None), got {type(title).__name__}")
        import plotly.graph_objects as go

        fig = go.Figure()
        for role, colour in (("assistant", "#1f77b4"), ("user", "#aaaaaa")):
            rs = [r for r in self.records if r.role == role]
            if rs:
                fig.add_trace(go.Scatter(x=[r.turn for r in rs], y=[r.projection for r in rs], mode="lines+markers",
                                         name=f"{role} turns", line=dict(color=colour),
                                         hovertext=[r.text[:200] for r in rs]))
        sm = [r for r in self.assistant() if r.smoothed is not None and r.smoothed != r.projection]
        if sm:
            fig.add_trace(go.Scatter(x=[r.turn for r in sm], y=[r.smoothed for r in sm], mode="lines",
                                     name="smoothed", line=dict(dash="dot", color="#1f77b4")))
        if self.alerts:
            fig.add_trace(go.Scatter(x=[r.turn for r in self.alerts], y=[r.projection for r in self.alerts],
                                     mode="markers", name="alert", marker=dict(color="red", size=12, symbol="x")))
        if self.threshold is not None:
            fig.add_hline(y=self.threshold, line_dash="dash", line_color="red",
                          annotation_text=f"threshold {self.threshold:+.3g} ({self.direction})")
        fig.update_layout(title=title or f"Projection onto {self.axis_name} at layer {self.layer}",
                          xaxis_title="turn", yaxis_title="projection (residual units)",
                          xaxis=dict(tickformat="d", dtick=1))  # turns are whole numbers
        return fig


def load_transcript(path: str | os.PathLike) -> list[dict[str, str]]:
    """Messages from a JSON file (a list of messages, or ``{"messages": [...]}``) or JSONL (one message a line)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such transcript file")
    text = path.read_text()
    try:
        if path.suffix == ".jsonl":
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FileFormatError(f"{path}: not valid JSON ({e})") from e
    if isinstance(data, Mapping):
        if not isinstance(data.get("messages"), list):
            raise FileFormatError(f"{path}: a JSON object transcript needs a \"messages\" list; it has keys "
                                  f"{sorted(data)[:8]}")
        data = data["messages"]
    try:
        return validate_messages(data)
    except ConversationError as e:
        raise ConversationError(f"{path}: {e}") from e


class _Smoother:
    def __init__(self, threshold, direction, ema, dead_band):
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
                raise InvalidInputError(f"threshold must be a number (finite), got {threshold!r}")
            threshold = float(threshold)
        if not isinstance(direction, str) or direction not in DIRECTIONS:
            raise InvalidInputError(f"direction must be 'below' or 'above', got {direction!r}")
        if ema is not None:
            ema = check_float(ema, "ema")
            if not 0 < ema <= 1:
                raise InvalidInputError(f"ema must be in (0, 1], got {ema}")
        dead_band = check_float(dead_band, "dead_band")
        if dead_band < 0:
            raise InvalidInputError(f"dead_band must be >= 0, got {dead_band}")
        self.threshold, self.direction, self.ema, self.dead_band = threshold, direction, ema, dead_band
        self.value: float | None = None
        self.alerting = False

    def __call__(self, x: float) -> tuple[float, bool]:
        self.value = x if self.value is None or self.ema is None else self.ema * x + (1 - self.ema) * self.value
        v = self.value
        if self.threshold is None:
            return v, False
        sign = 1.0 if self.direction == "below" else -1.0
        crossed = sign * (self.threshold - v) > 0
        cleared = sign * (v - self.threshold) >= self.dead_band
        self.alerting = crossed or (self.alerting and not cleared)
        return v, self.alerting


DIRECTIONS = ("below", "above")


def _unit_axis(axis: Any, info, layer: int) -> torch.Tensor:
    return unit(layer_vectors(axis, info, [layer], "axis")[layer], "axis", layer)


def _one_layer(backend, layer: Any) -> int:
    """The one layer a monitor reads (an integer, negative counts from the end), checked against the model."""
    return backend.layers([check_int(layer, "layer")])[0]


def monitor_transcript(
    model: Any,
    messages: Sequence[Mapping[str, str]] | str | os.PathLike,
    axis: Any,
    layer: int,
    *,
    roles: Sequence[str] = ("assistant", "user"),
    threshold: float | None = None,
    direction: Literal["below", "above"] = "below",
    ema: float | None = None,
    dead_band: float = 0.0,
    backend: str = "hf",
) -> DriftReport:
    """Mean projection of each message of a conversation onto the unit ``axis`` at ``layer``, in one forward pass.

    ``messages`` is a message list or a path to a JSON/JSONL transcript. Smoothing and alerts follow assistant
    turns only; user turns are reported with their raw projection.
    """
    if isinstance(messages, (str, os.PathLike)):
        messages = load_transcript(messages)
    msgs = validate_messages(messages)
    if isinstance(roles, str) or not isinstance(roles, (Sequence, set, frozenset)) or not roles \
            or not all(isinstance(r, str) and r in ("system", "user", "assistant") for r in roles):
        raise InvalidInputError(f"roles must be a non-empty list of 'system', 'user', 'assistant' (the messages to "
                                f"report), got {roles!r}")
    if not any(m["role"] == "assistant" for m in msgs):
        raise ConversationError("the transcript has no assistant turn to monitor; it needs at least one reply")
    be = as_backend(model, backend)
    L = _one_layer(be, layer)
    u = _unit_axis(axis, be.info, L)
    acts = capture(be, [msgs], layers=[L], which="messages", progress=False)
    proj = (acts.at(L) @ u).tolist()
    smoother = _Smoother(threshold, direction, ema, dead_band)
    records = []
    for it, p in zip(acts.items, proj):
        if it["role"] not in roles:
            continue
        sm, alert = smoother(p) if it["role"] == "assistant" else (None, False)
        records.append(TurnProjection(message=it["message"], role=it["role"], turn=it["turn"], projection=p,
                                      smoothed=sm, alert=alert, n_tokens=it["n_tokens"], layer=L,
                                      text=msgs[it["message"]]["content"]))
    return DriftReport(records=records, layer=L, threshold=smoother.threshold, direction=direction,
                       axis_name=name_of(axis, "axis"))


class LiveMonitor:
    """Chat with a model turn by turn and project each new turn onto an axis as it arrives.

    >>> mon = LiveMonitor(loaded, axis, layer=20, threshold=-5.0, cap=cap_config)
    >>> rec = mon.say("Tell me about yourself.")     # generates the reply, returns its TurnProjection
    >>> mon.report().figure()
    """

    def __init__(self, model: Any, axis: Any, layer: int, *, system: str | None = None, cap: Any = None,
                 sampling: Any = None, threshold: float | None = None, direction: Literal["below", "above"] = "below",
                 ema: float | None = None, dead_band: float = 0.0, backend: str = "hf"):
        from persona_axes.steering.generation import SamplingConfig

        from persona_axes.steering.capping import CapConfig

        self.backend = as_backend(model, backend)
        self.layer = _one_layer(self.backend, layer)
        if cap is not None and not isinstance(cap, CapConfig):
            raise InvalidInputError(f"cap must be a CapConfig (or None), got {type(cap).__name__}")
        if sampling is not None and not isinstance(sampling, SamplingConfig):
            raise InvalidInputError(f"sampling must be a SamplingConfig (or None), got {type(sampling).__name__}")
        if system is not None and not isinstance(system, str):
            raise InvalidInputError(f"system must be a string (or None), got {type(system).__name__}")
        self.axis = _unit_axis(axis, self.backend.info, self.layer)
        self.axis_name = name_of(axis, "axis")
        self.cap = cap
        self.sampling = sampling or SamplingConfig(max_new_tokens=96)
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.records: list[TurnProjection] = []
        self._smoother = _Smoother(threshold, direction, ema, dead_band)
        self.threshold, self.direction = self._smoother.threshold, direction

    def say(self, text: str) -> TurnProjection:
        """Add a user message, generate the reply (under the cap, if any), and project both new turns."""
        from persona_axes.steering.generation import generate_replies
        from persona_axes.steering.capping import ActivationCap

        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a string (the user's message), got {type(text).__name__}")
        self.messages.append({"role": "user", "content": text})
        try:
            if self.cap is not None:
                with ActivationCap(self.backend, self.cap):
                    reply = generate_replies(self.backend, [self.messages], self.sampling)[0]
            else:
                reply = generate_replies(self.backend, [self.messages], self.sampling)[0]
        except BaseException:
            self.messages.pop()  # keep the conversation consistent if generation fails
            raise
        self.messages.append({"role": "assistant", "content": reply})
        return self._project_last_turn()

    def add_turn(self, user: str, assistant: str) -> TurnProjection:
        """Record a turn whose reply came from elsewhere (e.g. replaying a transcript) and project it."""
        for arg, value in (("user", user), ("assistant", assistant)):
            if not isinstance(value, str):
                raise InvalidInputError(f"{arg} must be a string (the message text), got {type(value).__name__}")
        self.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return self._project_last_turn()

    def _project_last_turn(self) -> TurnProjection:
        n = len(self.messages)
        acts = capture(self.backend, [self.messages], layers=[self.layer], which="messages", progress=False)
        out = None
        for it, p in zip(acts.items[-2:], (acts.at(self.layer)[-2:] @ self.axis).tolist()):
            sm, alert = self._smoother(p) if it["role"] == "assistant" else (None, False)
            rec = TurnProjection(message=it["message"], role=it["role"], turn=it["turn"], projection=p, smoothed=sm,
                                 alert=alert, n_tokens=it["n_tokens"], layer=self.layer,
                                 text=self.messages[it["message"]]["content"])
            self.records.append(rec)
            out = rec
        assert out is not None and out.message == n - 1
        return out

    def report(self) -> DriftReport:
        return DriftReport(records=list(self.records), layer=self.layer, threshold=self.threshold,
                           direction=self.direction, axis_name=self.axis_name)


__all__ = ["DriftReport", "LiveMonitor", "TurnProjection", "load_transcript", "monitor_transcript"]
