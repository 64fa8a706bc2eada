"""Plotly figures for persona space, the Assistant Axis, trait vectors and drift monitoring.

Every function returns a :class:`plotly.graph_objects.Figure` with a title, axis labels and hover text; show it
with ``fig.show()`` or write it with :func:`save_figure` (standalone HTML always works offline; PNG/SVG need the
``kaleido`` package and a Chrome/Chromium it can drive).

"Layer L" is the output of decoder block L (the residual stream after block L), 0-based, as everywhere in
persona_axes; axis titles say so.

- :func:`persona_map` — roles as points on two or three principal components at one layer, coloured by their
  projection onto the Assistant Axis or by family, with the default Assistant starred.
- :func:`scree` — explained-variance ratio per component, with the cumulative curve.
- :func:`layer_sweep` — AUROC, Cohen's d and cos(axis, PC1) per layer, the chosen layer highlighted.
- :func:`trait_cosine_heatmap` — pairwise cosines of trait vectors (and the axis) at one layer.
- :func:`drift_curves` — assistant-turn projections of several conversations, threshold and alerts.
- :func:`projection_histogram` — overlaid histograms of projections onto an axis.
"""

from __future__ import annotations

import html
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from persona_axes.activations.container import Activations
from persona_axes.errors import InvalidInputError, LayerOutOfRangeError
from persona_axes.files import atomic_write
from persona_axes.steering.monitor import DriftReport
from persona_axes.vectors.space import LayerSweep, PersonaSpace
from persona_axes.vectors.containers import PersonaVector, VectorSet, cosine64

#: Qualitative colours for discrete groups (families, conversations, histogram groups).
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf")
_DEFAULT_COLOUR = "#111111"
_NO_FAMILY = "(no family)"
_SAMPLE_CHARS = 200
_WRAP = 60
_IMAGE_SUFFIXES = {".png": "png", ".svg": "svg", ".pdf": "pdf", ".jpg": "jpg", ".jpeg": "jpeg", ".webp": "webp"}


# ---------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------


def _go():
    import plotly.graph_objects as go

    return go


def _layer_label(layer: int) -> str:
    return f"layer {layer} (output of decoder block {layer}, 0-based)"


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=False)


def _wrap_text(text: str, limit: int = _SAMPLE_CHARS, width: int = _WRAP) -> str:
    """Truncate ``text`` to ``limit`` characters, wrap it at ``width`` and HTML-escape each line."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    lines = textwrap.wrap(text, width=width, break_long_words=True, break_on_hyphens=False) or [""]
    return "<br>".join(_esc(line) for line in lines)


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def _space_pos(space: Any, layer: Any) -> int:
    """Position of model layer ``layer`` among the fitted layers of ``space`` (typed errors otherwise)."""
    if not isinstance(space, PersonaSpace):
        raise InvalidInputError(f"expected a fitted PersonaSpace, got {type(space).__name__}")
    space.check_fitted()
    return space.layer_position(layer)


def _check_bins(bins: Any) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise InvalidInputError(f"bins must be a positive integer, got {bins!r}")
    return bins


def _check_number(x: Any, what: str) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise InvalidInputError(f"{what} must be a finite number or None, got {x!r}")
    return float(x)


# ---------------------------------------------------------------------------------------------------------------
# Persona map
# ---------------------------------------------------------------------------------------------------------------


def _check_dims(dims: Any, k: int) -> tuple[int, ...]:
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
        raise InvalidInputError(f"dims must be a pair or triple of component indices, got {dims!r}")
    dims = tuple(dims)
    if len(dims) not in (2, 3):
        raise InvalidInputError(f"dims must hold 2 or 3 component indices (0-based), got {len(dims)}: {dims!r}")
    for i in dims:
        if isinstance(i, bool) or not isinstance(i, int):
            raise InvalidInputError(f"dims must be integers (0-based component indices), got {dims!r}")
        if not 0 <= i < k:
            raise InvalidInputError(
                f"component index {i} is out of range: this space keeps {k} components (0..{k - 1}); "
                "refit with a larger n_components"
            )
    if len(set(dims)) != len(dims):
        raise InvalidInputError(f"dims must be distinct, got {dims!r}")
    return dims


def _families_map(families: Any) -> dict[str, str]:
    if families is None:
        return {}
    if isinstance(families, VectorSet):
        return dict(families.families)
    if isinstance(families, Mapping):
        return {str(k): str(v) for k, v in families.items()}
    raise InvalidInputError(
        f"families must be a mapping {{role: family}} or a VectorSet, got {type(families).__name__}"
    )


def _samples_map(samples: Any) -> dict[str, list[str]]:
    if samples is None:
        return {}
    if not isinstance(samples, Mapping):
        raise InvalidInputError(f"samples must be a mapping {{role: [response, ...]}}, got {type(samples).__name__}")
    out = {}
    for k, v in samples.items():
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, Sequence) or not all(isinstance(s, str) for s in v):
            raise InvalidInputError(f"samples[{k!r}] must be a list of strings")
        out[str(k)] = list(v)
    return out


def _role_axis_projections(space: PersonaSpace, j: int, roles: VectorSet | None) -> tuple[torch.Tensor, bool]:
    """``[n_roles]`` projections of the role vectors on the unit Assistant Axis at fitted position ``j``.

    Exact when the role vectors are given, or when the kept components span the centred role vectors; otherwise
    computed from their reconstruction in the kept PCA subspace (second value False)."""
    L = space.layers_[j]
    u = space.direction(L, "axis").double()
    if roles is not None:
        if not isinstance(roles, VectorSet):
            raise InvalidInputError(f"roles must be the VectorSet the space was fitted on, got {type(roles).__name__}")
        missing = [n for n in space.role_names_ if n not in roles]
        if missing:
            raise InvalidInputError(f"roles lacks vectors for {missing[:10]}; pass the VectorSet the space was fit on")
        X = torch.stack([roles.vectors[n][L] for n in space.role_names_]).double()
        return (X @ u).to(torch.float32), True
    mean = space.mean_[j].double()
    comps = space.components_[j].double()  # [k, d]
    recon = mean + space.loadings_[:, j].double() @ comps
    exact = space.n_components_ >= min(space.n_roles_ - 1, comps.shape[-1])
    return (recon @ u).to(torch.float32), exact


def persona_map(
    space: PersonaSpace,
    layer: int,
    *,
    dims: Sequence[int] = (0, 1),
    colour_by: str | None = "axis",
    families: Mapping[str, str] | VectorSet | None = None,
    samples: Mapping[str, Sequence[str]] | None = None,
    roles: VectorSet | None = None,
    default_label: str = "default Assistant",
    title: str | None = None,
):
    """Roles as points in persona space at model ``layer``: their PCA coordinates on components ``dims``.

    ``dims``: two (2D) or three (3D) distinct 0-based component indices, ``(0, 1)`` = PC1/PC2.
    ``colour_by``: ``"axis"`` — a continuous scale of each role's projection onto the unit Assistant Axis (the
    same units as :meth:`PersonaSpace.project`; needs a space fitted with a default); ``"family"`` — one colour
    per family (needs ``families``); ``None`` — one colour. ``families``: ``{role: family}`` or the role
    VectorSet (its ``families``); roles without one show as "(no family)". ``samples``: ``{role: [response,
    ...]}``; up to two are shown in the hover text, truncated, wrapped and HTML-escaped (the key
    ``default_label`` gives the default's). ``roles``: the VectorSet the space was fitted on; it makes the axis
    colours exact when the space kept fewer components than the role vectors span (otherwise they come from
    the roles' reconstruction in the kept components, and the colour bar says "≈"). The default Assistant (when
    the space was fitted with one) is drawn as a star (a diamond in 3D), outside the colour scale.
    """
    go = _go()
    j = _space_pos(space, layer)
    L = space.layers_[j]
    dims = _check_dims(dims, space.n_components_)
    if colour_by not in ("axis", "family", None):
        raise InvalidInputError(f"colour_by must be 'axis', 'family' or None, got {colour_by!r}")
    fam = _families_map(families)
    if roles is not None and not fam and isinstance(roles, VectorSet):
        fam = dict(roles.families)
    smp = _samples_map(samples)
    if colour_by == "family" and not fam:
        raise InvalidInputError("colour_by='family' needs families={role: family} (or the role VectorSet)")
    has_axis = space.assistant_axis_ is not None
    if colour_by == "axis" and not has_axis:
        raise InvalidInputError(
            "colour_by='axis' needs a space fitted with the default Assistant (fit(roles, default=...)); "
            "use colour_by='family' or None"
        )

    coords = space.loadings_[:, j][:, list(dims)].double()  # [n_roles, len(dims)]
    names = list(space.role_names_)
    proj, exact = _role_axis_projections(space, j, roles) if has_axis else (None, True)
    ratio = space.explained_variance_ratio_[j]
    pc_names = [f"PC{i + 1}" for i in dims]
    ax_titles = [f"PC{i + 1} ({100 * float(ratio[i]):.1f}% of variance)" for i in dims]

    def hover(name: str, family: str | None, xyz: Sequence[float], p: float | None) -> str:
        lines = [f"<b>{_esc(name)}</b>"]
        if family is not None:
            lines.append(f"family: {_esc(family)}")
        lines.append(", ".join(f"{n} = {_fmt(float(v))}" for n, v in zip(pc_names, xyz)))
        if p is not None:
            lines.append(f"Assistant Axis projection{'' if exact else ' (≈)'}: {_fmt(float(p))}")
        for s in smp.get(name, [])[:2]:
            lines.append("“" + _wrap_text(s) + "”")
        return "<br>".join(lines)

    three = len(dims) == 3
    Scatter = go.Scatter3d if three else go.Scatter

    def xyz_kwargs(rows: torch.Tensor) -> dict[str, Any]:
        kw = {"x": rows[:, 0].tolist(), "y": rows[:, 1].tolist()}
        if three:
            kw["z"] = rows[:, 2].tolist()
        return kw

    fig = go.Figure()
    role_fam = [fam.get(n, _NO_FAMILY) if fam else None for n in names]
    texts = [hover(n, f, coords[i].tolist(), None if proj is None else proj[i]) for i, (n, f) in
             enumerate(zip(names, role_fam))]
    size = 6 if three else 10
    if colour_by == "family":
        groups: dict[str, list[int]] = {}
        for i, f in enumerate(role_fam):
            groups.setdefault(f, []).append(i)
        for g, (f, idx) in enumerate(groups.items()):
            fig.add_trace(Scatter(
                **xyz_kwargs(coords[idx]), mode="markers", name=f, text=[names[i] for i in idx],
                hovertext=[texts[i] for i in idx], hovertemplate="%{hovertext}<extra></extra>",
                marker=dict(size=size, color=_PALETTE[g % len(_PALETTE)], line=dict(width=0.5, color="white")),
            ))
    else:
        marker: dict[str, Any] = dict(size=size, line=dict(width=0.5, color="white"))
        if colour_by == "axis":
            marker.update(color=proj.tolist(), colorscale="Viridis", showscale=True,
                          colorbar=dict(title=dict(text=f"{'' if exact else '≈ '}projection on<br>Assistant Axis")))
        else:
            marker.update(color=_PALETTE[0])
        fig.add_trace(Scatter(**xyz_kwargs(coords), mode="markers", name="roles", text=names, hovertext=texts,
                              hovertemplate="%{hovertext}<extra></extra>", marker=marker))

    if has_axis:
        dcoords = space.default_loadings_[j][list(dims)].double()[None]
        # (default - mean) = axis, so the default's projection on the unit axis is mean . u + |axis| exactly.
        dproj = float(space.project(space.mean_[j], L, "axis")) + float(space.assistant_axis_[j].double().norm())
        dtext = hover(default_label, None, dcoords[0].tolist(), dproj)
        fig.add_trace(Scatter(
            **xyz_kwargs(dcoords), mode="markers+text", name=default_label, text=[default_label],
            textposition="top center", hovertext=[dtext], hovertemplate="%{hovertext}<extra></extra>",
            marker=dict(size=(9 if three else 20), symbol=("diamond" if three else "star"), color="gold",
                        line=dict(width=1.5, color=_DEFAULT_COLOUR)),
        ))

    title = title or f"Persona space at {_layer_label(L)}: {space.n_roles_} roles"
    if three:
        fig.update_layout(scene=dict(xaxis_title=ax_titles[0], yaxis_title=ax_titles[1], zaxis_title=ax_titles[2]))
    else:
        fig.update_layout(xaxis_title=ax_titles[0], yaxis_title=ax_titles[1])
    fig.update_layout(title=dict(text=title), legend_title_text="family" if colour_by == "family" else None,
                      hoverlabel=dict(align="left"))
    if colour_by != "family":  # the star is labelled in place; a legend would only collide with the colour bar
        fig.update_layout(showlegend=False)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Scree
# ---------------------------------------------------------------------------------------------------------------


def scree(space: PersonaSpace, layer: int, n: int | None = None, *, title: str | None = None):
    """Explained-variance ratio of the first ``n`` components (default: all kept) at model ``layer``, as bars,
    with the cumulative ratio as a line. The ratios are fractions of the total role variance at that layer (so
    the cumulative line reaches 1 only if every component with variance is kept)."""
    go = _go()
    j = _space_pos(space, layer)
    L = space.layers_[j]
    k = space.n_components_
    if n is None:
        n = k
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= k:
        raise InvalidInputError(f"n must be an integer in 1..{k} (the components kept) or None, got {n!r}")
    ratio = [float(v) for v in space.explained_variance_ratio_[j, :n]]
    cum = [sum(ratio[: i + 1]) for i in range(n)]
    x = list(range(1, n + 1))
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=ratio, name="explained variance ratio",
                         hovertext=[f"PC{i}: {100 * r:.2f}% of variance" for i, r in zip(x, ratio)],
                         hovertemplate="%{hovertext}<extra></extra>", marker_color=_PALETTE[0]))
    fig.add_trace(go.Scatter(x=x, y=cum, mode="lines+markers", name="cumulative",
                             hovertext=[f"PC1..PC{i}: {100 * c:.2f}% of variance" for i, c in zip(x, cum)],
                             hovertemplate="%{hovertext}<extra></extra>", line=dict(color=_PALETTE[1])))
    fig.update_layout(
        title=dict(text=title or f"Scree plot of persona space at {_layer_label(L)}"),
        xaxis=dict(title=dict(text="principal component (1 = PC1)"), tickmode="linear", dtick=1),
        yaxis=dict(title=dict(text="fraction of role variance explained"), tickformat=".0%", rangemode="tozero"),
    )
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Layer sweep
# ---------------------------------------------------------------------------------------------------------------

_SWEEP_KEYS = ("layer", "auroc", "cohens_d", "pc1_cosine")


def _sweep_records(obj: Any) -> tuple[list[dict[str, Any]], int | None]:
    if isinstance(obj, LayerSweep):
        return obj.to_records(), obj.best_layer
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):  # a pandas DataFrame of to_records()
        obj = obj.to_dict(orient="records")
    if isinstance(obj, Mapping) or isinstance(obj, (str, bytes)) or not isinstance(obj, Sequence):
        raise InvalidInputError(
            f"expected a LayerSweep or its to_records() list, got {type(obj).__name__}"
        )
    recs = list(obj)
    if not recs:
        raise InvalidInputError("the layer sweep has no layers to plot")
    out = []
    for i, r in enumerate(recs):
        if not isinstance(r, Mapping):
            raise InvalidInputError(f"sweep record {i} is a {type(r).__name__}, not a mapping")
        missing = [k for k in _SWEEP_KEYS if k not in r]
        if missing:
            raise InvalidInputError(f"sweep record {i} lacks {missing} (expected the keys of LayerSweep.to_records())")
        try:
            out.append({"layer": int(r["layer"]), "auroc": float(r["auroc"]), "cohens_d": float(r["cohens_d"]),
                        "pc1_cosine": float(r["pc1_cosine"]), "best": bool(r.get("best", False))})
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"sweep record {i} holds a non-numeric value: {e}") from e
    layers = [r["layer"] for r in out]
    if len(set(layers)) != len(layers):
        raise InvalidInputError(f"the sweep repeats layers: {layers}")
    best = [r["layer"] for r in out if r["best"]]
    if len(best) > 1:
        raise InvalidInputError(f"more than one layer is marked best: {best}")
    return out, (best[0] if best else None)


def layer_sweep(sweep_or_records: LayerSweep | Sequence[Mapping[str, Any]], *, title: str | None = None):
    """Per layer: AUROC and cos(Assistant Axis, PC1) on the left axis, Cohen's d on the right axis; the chosen
    layer (``best_layer``, or the record with ``best=True``) is marked with a vertical line.

    Accepts a :class:`~persona_axes.vectors.space.LayerSweep`, its ``to_records()`` list, or a DataFrame of it.
    Infinite Cohen's d values (zero spread) are left out of the line and named in the hover text.
    """
    go = _go()
    from plotly.subplots import make_subplots

    recs, best = _sweep_records(sweep_or_records)
    recs = sorted(recs, key=lambda r: r["layer"])
    x = [r["layer"] for r in recs]

    def finite(v: float) -> float | None:
        return v if math.isfinite(v) else None

    def hov(r: dict[str, Any]) -> str:
        star = " (chosen)" if r["layer"] == best else ""
        return (f"<b>layer {r['layer']}{star}</b><br>AUROC = {_fmt(r['auroc'])}<br>Cohen's d = {_fmt(r['cohens_d'])}"
                f"<br>cos(axis, PC1) = {_fmt(r['pc1_cosine'])}")

    texts = [hov(r) for r in recs]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    common = dict(mode="lines+markers", hovertext=texts, hovertemplate="%{hovertext}<extra></extra>")
    fig.add_trace(go.Scatter(x=x, y=[finite(r["auroc"]) for r in recs], name="AUROC",
                             line=dict(color=_PALETTE[0]), **common), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=[finite(r["pc1_cosine"]) for r in recs], name="cos(axis, PC1)",
                             line=dict(color=_PALETTE[2], dash="dot"), **common), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=[finite(r["cohens_d"]) for r in recs], name="Cohen's d",
                             line=dict(color=_PALETTE[1], dash="dash"), **common), secondary_y=True)
    if best is not None:
        r = next(r for r in recs if r["layer"] == best)
        fig.add_trace(go.Scatter(x=[best], y=[finite(r["auroc"])], mode="markers", name=f"chosen layer {best}",
                                 marker=dict(symbol="star", size=18, color="gold", line=dict(width=1.5, color="black")),
                                 hovertext=[hov(r)], hovertemplate="%{hovertext}<extra></extra>"), secondary_y=False)
        fig.add_vline(x=best, line_dash="dash", line_color="grey", annotation_text=f"chosen: layer {best}")
    fig.update_xaxes(title_text="layer L (output of decoder block L, 0-based)", tickmode="linear", dtick=1
                     if len(x) <= 40 else None)
    fig.update_yaxes(title_text="AUROC, cos(axis, PC1)", range=[-1.05, 1.05], secondary_y=False)
    fig.update_yaxes(title_text="Cohen's d (default − roles)", secondary_y=True, showgrid=False)
    sub = f" (chosen: layer {best})" if best is not None else ""
    fig.update_layout(title=dict(text=title or f"Assistant Axis separation per layer{sub}"))
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Trait cosines
# ---------------------------------------------------------------------------------------------------------------


def trait_cosine_heatmap(vectors: Mapping[str, PersonaVector] | VectorSet, layer: int, *,
                         axis: PersonaVector | None = None, title: str | None = None):
    """Pairwise cosine similarities of the trait vectors (and ``axis``, appended last, when given) at model
    ``layer``, as an annotated symmetric heatmap on a diverging colour scale fixed to [-1, 1].

    ``vectors``: ``{name: PersonaVector}`` (the keys label the rows) or a VectorSet. Raises on a zero vector at
    that layer (it has no direction) and on vectors of different models.
    """
    go = _go()
    if isinstance(vectors, VectorSet):
        items = list(vectors.items())
    elif isinstance(vectors, Mapping):
        items = [(str(k), v) for k, v in vectors.items()]
    else:
        raise InvalidInputError(f"vectors must be a mapping {{name: PersonaVector}} or a VectorSet, got "
                                f"{type(vectors).__name__}")
    if not items:
        raise InvalidInputError("no trait vectors to compare")
    if axis is not None:
        if not isinstance(axis, PersonaVector):
            raise InvalidInputError(f"axis must be a PersonaVector or None, got {type(axis).__name__}")
        label = axis.name
        taken = {k for k, _ in items}
        while label in taken:
            label += " (axis)"
        items.append((label, axis))
    if len(items) < 2:
        raise InvalidInputError("need at least two vectors (or one plus an axis) to compare")
    first = items[0][1]
    for k, v in items:
        if not isinstance(v, PersonaVector):
            raise InvalidInputError(f"vectors[{k!r}] must be a PersonaVector, got {type(v).__name__}")
        v.model.check_compatible(first.model, what=f"the vector {k!r}")
    rows = torch.stack([v.at(layer) for _, v in items]).double()  # at() checks the layer range
    L = layer % first.model.n_layers
    zero = [k for (k, _), n in zip(items, rows.norm(dim=-1)) if not n > 0]
    if zero:
        raise InvalidInputError(f"vectors {zero} have zero norm at layer {L}; they have no direction")
    C = cosine64(rows[:, None, :], rows[None, :, :])
    C = ((C + C.T) / 2).clamp(-1.0, 1.0)
    C.fill_diagonal_(1.0)
    names = [k for k, _ in items]
    z = C.tolist()
    hover = [[f"{_esc(a)} · {_esc(b)}<br>cos = {z[i][jj]:.3f}" for jj, b in enumerate(names)]
             for i, a in enumerate(names)]
    fig = go.Figure(go.Heatmap(
        z=z, x=names, y=names, zmin=-1.0, zmax=1.0, zmid=0.0, colorscale="RdBu_r",
        text=[[f"{v:.2f}" for v in row] for row in z], texttemplate="%{text}", hovertext=hover,
        hovertemplate="%{hovertext}<extra></extra>", colorbar=dict(title=dict(text="cosine")),
    ))
    fig.update_layout(
        title=dict(text=title or f"Cosine similarity of trait vectors at {_layer_label(L)}"),
        xaxis=dict(title=dict(text="vector"), tickangle=-45),
        yaxis=dict(title=dict(text="vector"), autorange="reversed"),
    )
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Drift curves
# ---------------------------------------------------------------------------------------------------------------


def drift_curves(reports: Mapping[str, DriftReport], *, threshold: float | None = None, title: str | None = None):
    """Assistant-turn projections of several conversations on one figure (e.g. ``{"uncapped": r1, "capped":
    r2}``): one line per report, its alerts marked with red crosses, and the threshold as a horizontal line.

    ``threshold``: the line to draw; ``None`` draws each report's own threshold (once per distinct value).
    """
    go = _go()
    if not isinstance(reports, Mapping) or not reports:
        raise InvalidInputError("reports must be a non-empty mapping {label: DriftReport}")
    threshold = _check_number(threshold, "threshold")
    for k, r in reports.items():
        if not isinstance(r, DriftReport):
            raise InvalidInputError(f"reports[{k!r}] must be a DriftReport, got {type(r).__name__}")
        if not r.assistant():
            raise InvalidInputError(f"reports[{k!r}] has no assistant turn to plot")
    layers = sorted({r.layer for r in reports.values()})
    axes = sorted({r.axis_name for r in reports.values()})
    fig = go.Figure()
    for g, (label, rep) in enumerate(reports.items()):
        colour = _PALETTE[g % len(_PALETTE)]
        recs = rep.assistant()
        name = str(label) if len(layers) == 1 else f"{label} (layer {rep.layer})"

        def hov(t, name=name):
            sm = "" if t.smoothed is None or t.smoothed == t.projection else f"<br>smoothed = {_fmt(t.smoothed)}"
            al = "<br><b>ALERT</b>" if t.alert else ""
            txt = f"<br>{_wrap_text(t.text)}" if t.text else ""
            return f"<b>{_esc(name)}</b>, turn {t.turn}<br>projection = {_fmt(t.projection)}{sm}{al}{txt}"

        fig.add_trace(go.Scatter(
            x=[t.turn for t in recs], y=[t.projection for t in recs], mode="lines+markers", name=_esc(name),
            legendgroup=str(g), line=dict(color=colour), hovertext=[hov(t) for t in recs],
            hovertemplate="%{hovertext}<extra></extra>",
        ))
        alerts = [t for t in recs if t.alert]
        if alerts:
            fig.add_trace(go.Scatter(
                x=[t.turn for t in alerts], y=[t.projection for t in alerts], mode="markers",
                name=f"{_esc(name)}: alert", legendgroup=str(g), hovertext=[hov(t) for t in alerts],
                hovertemplate="%{hovertext}<extra></extra>",
                marker=dict(symbol="x", size=12, color="red", line=dict(width=1, color=colour)),
            ))
    lines = [threshold] if threshold is not None else sorted({r.threshold for r in reports.values()
                                                              if r.threshold is not None})
    for t in lines:
        fig.add_hline(y=t, line_dash="dash", line_color="red", annotation_text=f"threshold {_fmt(t)}")
    where = _layer_label(layers[0]) if len(layers) == 1 else f"layers {layers} (outputs of decoder blocks, 0-based)"
    axis = axes[0] if len(axes) == 1 else "the axes " + ", ".join(axes)
    fig.update_layout(
        title=dict(text=title or f"Drift: assistant turns projected onto {_esc(axis)} at {where}"),
        xaxis=dict(title=dict(text="conversation turn"), tickmode="linear", dtick=1),
        yaxis=dict(title=dict(text="projection onto the unit axis (residual-stream units)")),
        hoverlabel=dict(align="left"),
    )
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Projection histograms
# ---------------------------------------------------------------------------------------------------------------


def _unit_direction(axis: Any, layer: int | None, d: int | None) -> tuple[torch.Tensor, str, Any]:
    """``([d] unit direction float64, its name, model identity or None)``."""
    if isinstance(axis, PersonaSpace):
        if layer is None:
            raise InvalidInputError("projecting onto a PersonaSpace's axis needs layer=")
        _space_pos(axis, layer)
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
    go = _go()
    if not isinstance(groups, Mapping) or not groups:
        raise InvalidInputError("groups must be a non-empty mapping {label: projections or activations}")
    bins = _check_bins(bins)
    threshold = _check_number(threshold, "threshold")
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
            x=v, name=f"{_esc(k)} (n={len(v)})", xbins=dict(start=lo, end=end, size=size), autobinx=False,
            histnorm="probability" if normalize else None, opacity=0.6, marker_color=_PALETTE[g % len(_PALETTE)],
            hovertemplate=f"<b>{_esc(k)}</b> (n={len(v)}, mean {_fmt(mean)})<br>bin %{{x}}<br>"
                          + ("fraction %{y:.3f}" if normalize else "count %{y}") + "<extra></extra>",
        ))
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color="red", annotation_text=f"threshold {_fmt(threshold)}")
    onto = axis_name or "the axis"
    at = f" at {_layer_label(_model_layer(layer, axis, groups))}" if layer is not None and axis_name else ""
    fig.update_layout(
        title=dict(text=title or f"Projections onto {_esc(onto)}{at}"),
        barmode="overlay",
        xaxis=dict(title=dict(text=f"projection onto the unit {'axis' if axis_name is None else _esc(onto)} "
                                   "(residual-stream units)")),
        yaxis=dict(title=dict(text="fraction of the group" if normalize else "count")),
    )
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------------

_KALEIDO_HELP = (
    "Image export needs the kaleido package: pip install kaleido (version 1 or later). Kaleido drives a "
    "Chrome/Chromium browser, which must be installed too (kaleido can fetch one with `plotly_get_chrome` or "
    "kaleido.get_chrome_sync()). Or save the figure as .html, which needs nothing more."
)


def save_figure(fig: Any, path: str | os.PathLike, *, width: int | None = None, height: int | None = None,
                scale: float | None = None) -> Path:
    """Write ``fig`` to ``path``, atomically; returns the path.

    ``.html`` / ``.htm``: a standalone page with plotly.js inlined (works offline). ``.png``, ``.svg``, ``.pdf``,
    ``.jpg``/``.jpeg``, ``.webp``: a static image via kaleido (``width``/``height``/``scale`` apply); when kaleido
    or its browser is not usable this raises :class:`InvalidInputError` saying how to enable it — it never
    writes nothing silently.
    """
    go = _go()
    if not isinstance(fig, go.Figure):
        raise InvalidInputError(f"fig must be a plotly.graph_objects.Figure, got {type(fig).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"path must be a string or path, got {type(path).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        page = fig.to_html(full_html=True, include_plotlyjs=True)
        with atomic_write(path, "wb") as f:
            f.write(page.encode("utf-8"))
        return path
    if suffix not in _IMAGE_SUFFIXES:
        raise InvalidInputError(
            f"cannot tell the format of {path.name!r}: use .html, or an image suffix {sorted(_IMAGE_SUFFIXES)}"
        )
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise InvalidInputError(f"cannot write {path.name}: {_KALEIDO_HELP}") from None
    try:
        blob = fig.to_image(format=_IMAGE_SUFFIXES[suffix], width=width, height=height, scale=scale)
    except Exception as e:  # kaleido raises assorted errors when it cannot start its browser
        raise InvalidInputError(f"cannot write {path.name}: image export failed ({type(e).__name__}: {e}). "
                                f"{_KALEIDO_HELP}") from e
    if not blob:
        raise InvalidInputError(f"cannot write {path.name}: the image backend returned no data. {_KALEIDO_HELP}")
    with atomic_write(path, "wb") as f:
        f.write(blob)
    return path


__all__ = [
    "persona_map",
    "scree",
    "layer_sweep",
    "trait_cosine_heatmap",
    "drift_curves",
    "projection_histogram",
    "save_figure",
]
