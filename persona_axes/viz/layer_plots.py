"""Figures across layers and vectors: the layer sweep (where the Assistant Axis separates best) and the cosine
heatmap of trait vectors at one layer.

- :func:`layer_sweep` — AUROC and cos(axis, PC1) per layer on a shared axis, Cohen's d on its own, the chosen
  layer highlighted.
- :func:`trait_cosine_heatmap` — pairwise cosines of trait vectors (and the axis) at one layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from persona_axes.core import cosine64
from persona_axes.errors import InvalidInputError
from persona_axes.vectors.containers import PersonaVector, VectorSet
from persona_axes.vectors.space import LayerSweep
from persona_axes.viz.figures import PALETTE, esc, fmt, layer_label, plotly_go


_SWEEP_KEYS = ("layer", "auroc", "cohens_d", "pc1_cosine")


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
    """Per layer, two scales that each read naturally: AUROC and |cos(Assistant Axis, PC1)| share the left axis,
    fixed to [0, 1] (both are "1 = perfect"; the cosine's sign only reflects PCA's arbitrary sign of PC1, so its
    absolute value is drawn and the signed one is in the hover text); Cohen's d, in standard deviations and
    unbounded, has the right axis to itself, with its zero marked. The chosen layer (``best_layer``, or the record
    with ``best=True``) is starred and marked with a vertical line.

    Accepts a :class:`~persona_axes.vectors.space.LayerSweep`, its ``to_records()`` list, or a DataFrame of it.
    Infinite Cohen's d values (zero spread) are left out of the line and named in the hover text.
    """
    go = plotly_go()
    from plotly.subplots import make_subplots

    recs, best = _sweep_records(sweep_or_records)
    recs = sorted(recs, key=lambda r: r["layer"])
    x = [r["layer"] for r in recs]

    def finite(v: float) -> float | None:
        return v if math.isfinite(v) else None

    def hov(r: dict[str, Any]) -> str:
        star = " (chosen)" if r["layer"] == best else ""
        return (f"<b>layer {r['layer']}{star}</b><br>AUROC = {fmt(r['auroc'])}<br>Cohen's d = {fmt(r['cohens_d'])}"
                f"<br>cos(axis, PC1) = {fmt(r['pc1_cosine'])}")

    texts = [hov(r) for r in recs]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    common = dict(mode="lines+markers", hovertext=texts, hovertemplate="%{hovertext}<extra></extra>")
    fig.add_trace(go.Scatter(x=x, y=[finite(r["auroc"]) for r in recs], name="AUROC",
                             line=dict(color=PALETTE[0]), **common), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=[finite(abs(r["pc1_cosine"])) for r in recs], name="|cos(axis, PC1)|",
                             line=dict(color=PALETTE[2], dash="dot"), **common), secondary_y=False)
    d_vals = [finite(r["cohens_d"]) for r in recs]
    fig.add_trace(go.Scatter(x=x, y=d_vals, name="Cohen's d (right axis)",
                             line=dict(color=PALETTE[1], dash="dash"), **common), secondary_y=True)
    if best is not None:
        r = next(r for r in recs if r["layer"] == best)
        fig.add_trace(go.Scatter(x=[best], y=[finite(r["auroc"])], mode="markers", name=f"chosen layer {best}",
                                 marker=dict(symbol="star", size=18, color="gold", line=dict(width=1.5, color="black")),
                                 hovertext=[hov(r)], hovertemplate="%{hovertext}<extra></extra>"), secondary_y=False)
        fig.add_vline(x=best, line_dash="dash", line_color="grey", annotation_text=f"chosen: layer {best}")
    finite_d = [v for v in d_vals if v is not None]
    lo, hi = min([0.0, *finite_d]), max([0.0, *finite_d])
    pad = 0.05 * (hi - lo or 1.0)
    fig.update_xaxes(title_text="layer L (output of decoder block L, 0-based)", tickmode="linear", dtick=1
                     if len(x) <= 40 else None)
    fig.update_yaxes(title_text="AUROC and |cos(axis, PC1)| (0 to 1)", range=[0.0, 1.02], secondary_y=False)
    fig.update_yaxes(title_text="Cohen's d, default − roles (standard deviations)", secondary_y=True,
                     showgrid=False, range=[lo - pad, hi + pad], zeroline=True, zerolinecolor=PALETTE[1],
                     title_font=dict(color=PALETTE[1]), tickfont=dict(color=PALETTE[1]))
    sub = f" (chosen: layer {best})" if best is not None else ""
    fig.update_layout(title=dict(text=title or f"Assistant Axis separation per layer{sub}"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


def trait_cosine_heatmap(vectors: Mapping[str, PersonaVector] | VectorSet, layer: int, *,
                         axis: PersonaVector | None = None, title: str | None = None):
    """Pairwise cosine similarities of the trait vectors (and ``axis``, appended last, when given) at model
    ``layer``, as an annotated symmetric heatmap on a diverging colour scale fixed to [-1, 1].

    ``vectors``: ``{name: PersonaVector}`` (the keys label the rows) or a VectorSet. Raises on a zero vector at
    that layer (it has no direction) and on vectors of different models.
    """
    go = plotly_go()
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
    hover = [[f"{esc(a)} · {esc(b)}<br>cos = {z[i][jj]:.3f}" for jj, b in enumerate(names)]
             for i, a in enumerate(names)]
    fig = go.Figure(go.Heatmap(
        z=z, x=names, y=names, zmin=-1.0, zmax=1.0, zmid=0.0, colorscale="RdBu_r",
        text=[[f"{v:.2f}" for v in row] for row in z], texttemplate="%{text}", hovertext=hover,
        hovertemplate="%{hovertext}<extra></extra>", colorbar=dict(title=dict(text="cosine")),
    ))
    fig.update_layout(
        title=dict(text=title or f"Cosine similarity of trait vectors at {layer_label(L)}"),
        xaxis=dict(title=dict(text="vector"), tickangle=-45),
        yaxis=dict(title=dict(text="vector"), autorange="reversed"),
    )
    return fig


__all__ = ["layer_sweep", "trait_cosine_heatmap"]
