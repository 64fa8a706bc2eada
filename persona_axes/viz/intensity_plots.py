"""The trait-intensity curve (:func:`persona_axes.evals.intensity.calibrate_intensity`) as a figure: the behaviour
score against the steering coefficient, with its 95% bootstrap band over questions, the isotonic fit that
:meth:`~persona_axes.evals.intensity.IntensityCurve.coef_for` inverts, the monotone range shaded and, when asked,
a requested target with the coefficient that gives it.
"""

from __future__ import annotations

import math

from persona_axes.core import check_float
from persona_axes.errors import InvalidInputError
from persona_axes.evals.intensity import IntensityCurve
from persona_axes.viz.figures import PALETTE, esc, fmt, plotly_go, wrap_text


def intensity_figure(curve: IntensityCurve, *, target: float | None = None, title: str | None = None,
                     max_repetition: float | None = None):
    """Mean score per coefficient with its 95% bootstrap band, the individual replies' scores as faint points
    (hover shows the reply), the isotonic fit (dashed), the monotone range shaded (``max_repetition`` leaves out
    coefficients whose replies repeat more than that) and mean repetition on a right axis. ``target``: a requested
    score, drawn as a horizontal line with the coefficient :meth:`IntensityCurve.coef_for` returns for it (a target
    out of reach raises :class:`~persona_axes.errors.TargetOutOfRangeError`)."""
    if not isinstance(curve, IntensityCurve):
        raise InvalidInputError(f"curve must be an IntensityCurve (from calibrate_intensity), got {type(curve).__name__}")
    go = plotly_go()
    from plotly.subplots import make_subplots

    x = list(curve.coefs)
    means = curve.means

    def finite(v: float) -> float | None:
        return v if math.isfinite(v) else None

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    band_hi = [finite(e.high) for e in curve.mean]
    band_lo = [finite(e.low) for e in curve.mean]
    fig.add_trace(go.Scatter(x=x + x[::-1], y=band_hi + band_lo[::-1], fill="toself", fillcolor="rgba(31,119,180,0.18)",
                             line=dict(width=0), hoverinfo="skip", name="95% bootstrap CI (questions)"),
                  secondary_y=False)
    px, py, ph = [], [], []
    for c, scores, replies in zip(x, curve.scores, curve.replies):
        for s, r in zip(scores, replies):
            px.append(c)
            py.append(s)
            ph.append(f"coef {fmt(c)} · score {fmt(s)}<br>{wrap_text(r)}")
    fig.add_trace(go.Scatter(x=px, y=py, mode="markers", name="replies", marker=dict(size=5, color=PALETTE[7],
                             opacity=0.35), hovertext=ph, hovertemplate="%{hovertext}<extra></extra>"),
                  secondary_y=False)
    hover = [f"<b>coef {fmt(c)}</b><br>mean {esc(curve.scorer)} = {fmt(e.value)} [{fmt(e.low)}, {fmt(e.high)}]"
             f"<br>repetition = {fmt(r)}" for c, e, r in zip(x, curve.mean, curve.repetition)]
    fig.add_trace(go.Scatter(x=x, y=means, mode="lines+markers", name=f"mean {curve.scorer}",
                             line=dict(color=PALETTE[0]), hovertext=hover,
                             hovertemplate="%{hovertext}<extra></extra>"), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=curve.fit(), mode="lines", name="isotonic fit",
                             line=dict(color=PALETTE[0], dash="dash", width=1)), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=list(curve.repetition), mode="lines+markers", name="repetition (right axis)",
                             line=dict(color=PALETTE[3], dash="dot"), marker=dict(size=5)), secondary_y=True)
    lo, hi = curve.monotone_range(max_repetition=max_repetition)
    if hi > lo:  # after the traces: plotly skips shapes on subplots that hold none yet
        fig.add_vrect(x0=lo, x1=hi, fillcolor=PALETTE[2], opacity=0.12, line_width=0,
                      annotation_text=f"monotone range [{fmt(lo)}, {fmt(hi)}]", annotation_position="top left")
    if target is not None:
        target = check_float(target, "target")
        c_star = curve.coef_for(target)
        fig.add_hline(y=target, line_dash="dot", line_color="black", annotation_text=f"target {fmt(target)}")
        fig.add_trace(go.Scatter(x=[c_star], y=[target], mode="markers", name=f"coef for target: {fmt(c_star)}",
                                 marker=dict(symbol="star", size=16, color="gold", line=dict(width=1.5, color="black"))),
                      secondary_y=False)
    rho = "n/a" if curve.rho is None else f"{curve.rho:+.2f} (p = {fmt(curve.p)})"
    fig.update_xaxes(title_text=f"steering coefficient ({esc(curve.settings.get('unit', 'raw'))} units)")
    fig.update_yaxes(title_text=f"{esc(curve.scorer)} score (higher = more of the behaviour)", secondary_y=False)
    fig.update_yaxes(title_text="repetition (0 = none)", range=[0, 1.02], showgrid=False, secondary_y=True,
                     title_font=dict(color=PALETTE[3]), tickfont=dict(color=PALETTE[3]))
    fig.update_layout(title=dict(text=title or f"Behaviour vs steering coefficient: {esc(curve.scorer)}, "
                                               f"Spearman rho {rho}"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


__all__ = ["intensity_figure"]
