"""Figures of persona space at one layer: the persona map (roles on principal components) and the scree plot.

- :func:`persona_map` — roles as points on two or three principal components at one layer, coloured by their
  projection onto the Assistant Axis or by family, with the default Assistant starred and the roles at both ends
  of the axis named in place.
- :func:`scree` — explained-variance ratio per component, with the cumulative curve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from persona_axes.errors import InvalidInputError
from persona_axes.vectors.containers import VectorSet
from persona_axes.vectors.space import PersonaSpace
from persona_axes.viz.figures import DEFAULT_COLOUR, PALETTE, esc, fmt, layer_label, plotly_go, space_position, \
    wrap_text

_NO_FAMILY = "(no family)"


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
    label: int = 3,
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
    the space was fitted with one) is drawn as a star (a diamond in 3D), outside the colour scale. ``label``: how
    many roles at EACH end of the Assistant Axis (by their projection; by the first plotted component when the
    space has no axis) are named in place, as text that shows in a static image too; 0 names none.
    """
    go = plotly_go()
    j = space_position(space, layer)
    L = space.layers_[j]
    dims = _check_dims(dims, space.n_components_)
    if isinstance(label, bool) or not isinstance(label, int) or label < 0:
        raise InvalidInputError(f"label must be a non-negative integer (roles named at each end), got {label!r}")
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
        lines = [f"<b>{esc(name)}</b>"]
        if family is not None:
            lines.append(f"family: {esc(family)}")
        lines.append(", ".join(f"{n} = {fmt(float(v))}" for n, v in zip(pc_names, xyz)))
        if p is not None:
            lines.append(f"Assistant Axis projection{'' if exact else ' (≈)'}: {fmt(float(p))}")
        for s in smp.get(name, [])[:2]:
            lines.append("“" + wrap_text(s) + "”")
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
                marker=dict(size=size, color=PALETTE[g % len(PALETTE)], line=dict(width=0.5, color="white")),
            ))
    else:
        marker: dict[str, Any] = dict(size=size, line=dict(width=0.5, color="white"))
        if colour_by == "axis":
            marker.update(color=proj.tolist(), colorscale="Viridis", showscale=True,
                          colorbar=dict(title=dict(text=f"{'' if exact else '≈ '}projection on<br>Assistant Axis")))
        else:
            marker.update(color=PALETTE[0])
        fig.add_trace(Scatter(**xyz_kwargs(coords), mode="markers", name="roles", text=names, hovertext=texts,
                              hovertemplate="%{hovertext}<extra></extra>", marker=marker))

    if label:  # name the extremes in place, as annotations: hover text does not survive a static image
        key = proj.tolist() if proj is not None else coords[:, 0].tolist()
        order = sorted(range(len(names)), key=lambda i: key[i])
        low = set(order[:label])
        notes = [dict(x=float(coords[i, 0]), y=float(coords[i, 1]), text=esc(names[i]), showarrow=False,
                      yshift=-12 if i in low else 12, font=dict(size=11, color=DEFAULT_COLOUR))
                 for i in sorted(low | set(order[-label:]), key=lambda i: key[i])]
        if three:
            for n, i in zip(notes, sorted(low | set(order[-label:]), key=lambda i: key[i])):
                n.pop("yshift")
                n["z"] = float(coords[i, 2])
            fig.update_layout(scene=dict(annotations=notes))
        else:
            for n in notes:
                fig.add_annotation(**n)

    if has_axis:
        dcoords = space.default_loadings_[j][list(dims)].double()[None]
        # (default - mean) = axis, so the default's projection on the unit axis is mean . u + |axis| exactly.
        dproj = float(space.project(space.mean_[j], L, "axis")) + float(space.assistant_axis_[j].double().norm())
        dtext = hover(default_label, None, dcoords[0].tolist(), dproj)
        fig.add_trace(Scatter(
            **xyz_kwargs(dcoords), mode="markers+text", name=default_label, text=[default_label],
            textposition="top center", hovertext=[dtext], hovertemplate="%{hovertext}<extra></extra>",
            marker=dict(size=(9 if three else 20), symbol=("diamond" if three else "star"), color="gold",
                        line=dict(width=1.5, color=DEFAULT_COLOUR)),
        ))

    title = title or f"Persona space at {layer_label(L)}: {space.n_roles_} roles"
    if three:
        fig.update_layout(scene=dict(xaxis_title=ax_titles[0], yaxis_title=ax_titles[1], zaxis_title=ax_titles[2]))
    else:
        fig.update_layout(xaxis_title=ax_titles[0], yaxis_title=ax_titles[1])
    fig.update_layout(title=dict(text=title), legend_title_text="family" if colour_by == "family" else None,
                      hoverlabel=dict(align="left"))
    if colour_by != "family":  # the star is labelled in place; a legend would only collide with the colour bar
        fig.update_layout(showlegend=False)
    return fig


def scree(space: PersonaSpace, layer: int, n: int | None = None, *, title: str | None = None):
    """Explained-variance ratio of the first ``n`` components (default: all kept) at model ``layer``, as bars,
    with the cumulative ratio as a line. The ratios are fractions of the total role variance at that layer (so
    the cumulative line reaches 1 only if every component with variance is kept)."""
    go = plotly_go()
    j = space_position(space, layer)
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
                         hovertemplate="%{hovertext}<extra></extra>", marker_color=PALETTE[0]))
    fig.add_trace(go.Scatter(x=x, y=cum, mode="lines+markers", name="cumulative",
                             hovertext=[f"PC1..PC{i}: {100 * c:.2f}% of variance" for i, c in zip(x, cum)],
                             hovertemplate="%{hovertext}<extra></extra>", line=dict(color=PALETTE[1])))
    fig.update_layout(
        title=dict(text=title or f"Scree plot of persona space at {layer_label(L)}"),
        xaxis=dict(title=dict(text="principal component (1 = PC1)"), tickmode="linear", dtick=1),
        yaxis=dict(title=dict(text="fraction of role variance explained"), tickformat=".0%", rangemode="tozero"),
    )
    return fig


__all__ = ["persona_map", "scree"]
