"""Figures of projections onto an axis: drift of assistant turns over a conversation, and histograms of groups.

- :func:`drift_curves` — assistant-turn projections of several conversations, threshold and alerts.
- :func:`projection_histogram` — overlaid histograms of projections onto an axis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from persona_axes.activations.container import Activations
from persona_axes.errors import InvalidInputError, LayerOutOfRangeError
from persona_axes.steering.monitor import DriftReport
from persona_axes.vectors.containers import PersonaVector
from persona_axes.vectors.space import PersonaSpace
from persona_axes.viz.figures import PALETTE, check_bins, check_number, esc, fmt, layer_label, plotly_go, \
    space_position, wrap_text


def drift_curves(reports: Mapping[str, DriftReport], *, threshold: float | None = None, title: str | None = None):
    """Assistant-turn projections of several conversations on one figure (e.g. ``{"uncapped": r1, "capped":
    r2}``): one line per report, its alerts marked with red crosses, and the threshold as a horizontal line.

    ``threshold``: the line to draw; ``None`` draws each report's own threshold (once per distinct value).
    """
    go = plotly_go()
    if not isinstance(reports, Mapping) or not reports:
        raise InvalidInputError("reports must be a non-empty mapping {label: DriftReport}")
    threshold = check_number(threshold, "threshold")
    for k, r in reports.items():
        if not isinstance(r, DriftReport):
            raise InvalidInputError(f"reports[{k!r}] must be a DriftReport, got {type(r).__name__}")
        if not r.assistant():
            raise InvalidInputError(f"reports[{k!r}] has no assistant turn to plot")
    layers = sorted({r.layer for r in reports.values()})
    axes = sorted({r.axis_name for r in reports.values()})
    fig = go.Figure()
    for g, (label, rep) in enumerate(reports.items()):
        colour = PALETTE[g % len(PALETTE)]
        recs = rep.assistant()
        name = str(label) if len(layers) == 1 else f"{label} (layer {rep.layer})"

        def hov(t, name=name):
            sm = "" if t.smoothed is None or t.smoothed == t.projection else f"<br>smoothed = {fmt(t.smoothed)}"
            al = "<br><b>ALERT</b>" if t.alert else ""
            txt = f"<br>{wrap_text(t.text)}" if t.text else ""
            return f"<b>{esc(name)}</b>, turn {t.turn}<br>projection = {fmt(t.projection)}{sm}{al}{txt}"

        fig.add_trace(go.Scatter(
            x=[t.turn for t in recs], y=[t.projection for t in recs], mode="lines+markers", name=esc(name),
            legendgroup=str(g), line=dict(color=colour), hovertext=[hov(t) for t in recs],
            hovertemplate="%{hovertext}<extra></extra>",
        ))
        alerts = [t for t in recs if t.alert]
        if alerts:
            fig.add_trace(go.Scatter(
                x=[t.turn for t in alerts], y=[t.projection for t in alerts], mode="markers",
                name=f"{esc(name)}: alert", legendgroup=str(g), hovertext=[hov(t) for t in alerts],
                hovertemplate="%{hovertext}<extra></extra>",
                marker=dict(symbol="x", size=12, color="red", line=dict(width=1, color=colour)),
            ))
    lines = [threshold] if threshold is not None else sorted({r.threshold for r in reports.values()
                                                              if r.threshold is not None})
    for t in lines:
        fig.add_hline(y=t, line_dash="dash", line_color="red", annotation_text=f"threshold {fmt(t)}")
        # the value in the legend too (a line across the plot has no legend entry of its own)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"threshold {fmt(t)}",
                                 line=dict(color="red", dash="dash"), hoverinfo="skip"))
    n_turns = max(t.turn for r in reports.values() for t in r.assistant()) + 1
    where = layer_label(layers[0]) if len(layers) == 1 else f"layers {layers} (outputs of decoder blocks, 0-based)"
    axis = axes[0] if len(axes) == 1 else "the axes " + ", ".join(axes)
    fig.update_layout(
        title=dict(text=title or f"Drift: assistant turns projected onto {esc(axis)} at {where}"),
        xaxis=dict(title=dict(text="conversation turn (0 = first)"), tickformat="d",
                   **(dict(tickmode="linear", dtick=1) if n_turns <= 30 else {})),
        yaxis=dict(title=dict(text="projection onto the unit axis (residual-stream units)")),
        hoverlabel=dict(align="left"),
    )
    return fig


def _unit_direction(axis: Any, layer: int | None, d: int | None) -> tuple[torch.Tensor, str, Any]:
    """``([d] unit direction float64, its name, model identity or None)``."""
    if isinstance(axis, PersonaSpace):
        if layer is None:
            raise InvalidInputError("projecting onto a PersonaSpace's axis needs layer=")
        space_position(axis, layer)
        return axis.direction(layer, "axis").double(), "the Assistant Axis", axis.model_
    if isinstance(axis, PersonaVector):
        if layer is None:
            raise InvalidInputError(f"projecting onto the vector {axis.name!r} needs layer=")
        return axis.unit(layer).double(), axis.name, axis.model
    if isinstance(axis, torch.Tensor):
        a = axis.detach().cpu().double()
        if a.ndim == 2:
            if layer is None:
                raise InvalidInputError("a [n_layers, d] axis tensor needs layer=")
            if not -a.shape[0] <= layer < a.shape[0]:
                raise LayerOutOfRangeError(f"layer {layer} is out of range for an axis with {a.shape[0]} layers")
            a = a[layer]
        if a.ndim != 1 or (d is not None and a.shape[0] != d):
            raise InvalidInputError(f"the axis tensor must be [d] or [n_layers, d] with d={d}, got {tuple(axis.shape)}")
        n = a.norm()
        if not torch.isfinite(a).all() or not n > 0:
            raise InvalidInputError("the axis tensor must be finite and non-zero")
        return a / n, "axis", None
    raise InvalidInputError(f"axis must be a PersonaVector, PersonaSpace or tensor, got {type(axis).__name__}")


def _group_values(key: str, g: Any, axis: Any, layer: int | None) -> tuple[list[float], str | None]:
    """Projections of one group, and the axis name when this function projected them."""
    if isinstance(g, Activations):
        if axis is None or layer is None:
            raise InvalidInputError(f"group {key!r} holds Activations: pass axis= and layer= to project them")
        u, name, info = _unit_direction(axis, layer, g.model.hidden_size)
        if info is not None:
            g.model.check_compatible(info, what=f"the activations of group {key!r}")
        x = g.at(layer).double()
        if x.shape[0] == 0:
            raise InvalidInputError(f"group {key!r} is empty")
        vals = x @ u
        return _finite_list(key, vals), name
    if not isinstance(g, torch.Tensor):
        try:
            import numpy as np

            g = torch.as_tensor(np.asarray(g, dtype=float))
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"group {key!r} must be a tensor, array, list of numbers or Activations") from e
    t = g.detach().cpu().double()
    if t.ndim == 1:
        if t.numel() == 0:
            raise InvalidInputError(f"group {key!r} is empty")
        return _finite_list(key, t), None
    if t.ndim == 2:
        if axis is None:
            raise InvalidInputError(f"group {key!r} is [n, d]: pass axis= (and layer=) to project it")
        if t.shape[0] == 0:
            raise InvalidInputError(f"group {key!r} is empty")
        u, name, _ = _unit_direction(axis, layer, t.shape[1])
        return _finite_list(key, t @ u), name
    raise InvalidInputError(f"group {key!r} must be [n] projections or [n, d] rows, got shape {tuple(t.shape)}")


def _model_layer(layer: int, axis: Any, groups: Mapping[str, Any]) -> int:
    """``layer`` as a non-negative model layer index, where the inputs tell the number of layers."""
    if isinstance(axis, PersonaSpace):
        return axis.layers_[axis.layer_position(layer)]
    n = axis.model.n_layers if isinstance(axis, PersonaVector) else None
    if n is None:
        n = next((g.model.n_layers for g in groups.values() if isinstance(g, Activations)), None)
    return layer % n if n and -n <= layer < 0 else layer


def _finite_list(key: str, t: torch.Tensor) -> list[float]:
    if not torch.isfinite(t).all():
        raise InvalidInputError(f"group {key!r} holds NaN or infinite values")
    return t.tolist()


def projection_histogram(
    groups: Mapping[str, Any],
    *,
    axis: PersonaVector | PersonaSpace | torch.Tensor | None = None,
    layer: int | None = None,
    threshold: float | None = None,
    bins: int = 40,
    normalize: bool = True,
    title: str | None = None,
):
    """Overlaid histograms of projections, one per group (e.g. ``{"default": ..., "roles": ...}``).

    A group is either ready projections (a 1-D tensor, array or list), or activations to project onto the unit
    ``axis`` at model ``layer``: :class:`Activations`, or a ``[n, d]`` tensor. ``axis``: a PersonaVector, a fitted
    PersonaSpace (its Assistant Axis) or a ``[d]`` / ``[n_layers, d]`` tensor. All groups share the same ``bins``
    bin edges. ``normalize``: plot each group's fraction per bin (so groups of different sizes compare) rather
    than counts. ``threshold``: a vertical line (e.g. a capping floor).
    """
    go = plotly_go()
    if not isinstance(groups, Mapping) or not groups:
        raise InvalidInputError("groups must be a non-empty mapping {label: projections or activations}")
    bins = check_bins(bins)
    threshold = check_number(threshold, "threshold")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise InvalidInputError(f"layer must be an integer or None, got {layer!r}")
    values: dict[str, list[float]] = {}
    axis_name = None
    for k, g in groups.items():
        values[str(k)], name = _group_values(str(k), g, axis, layer)
        axis_name = axis_name or name
    lo = min(min(v) for v in values.values())
    hi = max(max(v) for v in values.values())
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    size = (hi - lo) / bins
    end = hi + size * 1e-6  # keep the maximum inside the last bin
    fig = go.Figure()
    for g, (k, v) in enumerate(values.items()):
        mean = sum(v) / len(v)
        fig.add_trace(go.Histogram(
            x=v, name=f"{esc(k)} (n={len(v)})", xbins=dict(start=lo, end=end, size=size), autobinx=False,
            histnorm="probability" if normalize else None, opacity=0.6, marker_color=PALETTE[g % len(PALETTE)],
            hovertemplate=f"<b>{esc(k)}</b> (n={len(v)}, mean {fmt(mean)})<br>bin %{{x}}<br>"
                          + ("fraction %{y:.3f}" if normalize else "count %{y}") + "<extra></extra>",
        ))
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color="red", annotation_text=f"threshold {fmt(threshold)}")
    onto = axis_name or "the axis"
    at = f" at {layer_label(_model_layer(layer, axis, groups))}" if layer is not None and axis_name else ""
    fig.update_layout(
        title=dict(text=title or f"Projections onto {esc(onto)}{at}"),
        barmode="overlay",
        xaxis=dict(title=dict(text=f"projection onto the unit {'axis' if axis_name is None else esc(onto)} "
                                   "(residual-stream units)")),
        yaxis=dict(title=dict(text="fraction of the group" if normalize else "count")),
    )
    return fig


__all__ = ["drift_curves", "projection_histogram"]
