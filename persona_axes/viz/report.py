"""A persona-space report for a finished pipeline run: the numbers as a terminal summary and as one standalone
HTML page (plotly figures inlined, works offline).

The report reads everything from the run (``PipelineResult`` plus the files under its ``out_dir``); it computes
nothing that the pipeline did not already record, except the projections it plots. A steering sweep along the
Assistant Axis, when asked for, is the one thing that runs the model again (:func:`steering_sweep`).

"Layer L" is the output of decoder block L (0-based), as everywhere in persona_axes.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from persona_axes.activations.container import Activations
from persona_axes.errors import InvalidInputError
from persona_axes.files import atomic_write
from persona_axes.judges.base import role_item_accepted
from persona_axes.runs.stages import PipelineResult
from persona_axes.runs.summary import RunSummary
from persona_axes.runs.store import RolloutStore
from persona_axes.viz.figures import include_plotlyjs, write_plotlyjs

_STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
tr.best td { background: #fff4c2; font-weight: bold; }
.kv td:first-child { text-align: left; color: #555; } code { background: #f3f3f3; padding: 0 0.2em; }
blockquote { margin: 0.3em 0 0.8em 0; padding: 0.3em 0.8em; border-left: 3px solid #bbb; color: #333; }
"""


@dataclass(frozen=True)
class SteeredReply:
    """One reply generated with ``coef`` x the unit Assistant Axis added at ``layer`` (generated positions);
    ``unit``: a steering unit of :mod:`persona_axes.vectors.units` (``"unit"``: raw residual units along the unit
    axis; ``"rel"``, ``"sd"``, ``"gap"``: multiples of the reply-mean norm, the default replies' spread, the
    default-minus-role gap at that layer)."""

    coef: float
    layer: int
    unit: str
    question: str
    reply: str


UNIT_WORDS = {"unit": "residual units", "rel": "multiples of the mean norm of default reply means there",
              "sd": "standard deviations of default-assistant projections there",
              "gap": "multiples of the default-minus-role gap there", "raw": "multiples of the stored axis"}


def steering_sweep(model: Any, axis: Any, layer: int, coefs: Sequence[float], *, question: str,
                   reference: Activations | None = None, system: str | None = None,
                   max_new_tokens: int = 40, unit: str | None = None) -> list[SteeredReply]:
    """Generate one reply per coefficient in a single batched ``generate``, steering along the ``axis`` at
    ``layer`` on generated tokens (positive = towards the Assistant). ``unit`` (see
    :mod:`persona_axes.vectors.units`; its size from ``reference`` default-assistant activations or the axis's
    stored unit statistics) defaults to ``"rel"`` with a ``reference`` and to ``"unit"`` without."""
    from persona_axes.steering.generation import SamplingConfig, generate_replies
    from persona_axes.steering.interventions import Steer

    coefs = [float(c) for c in coefs]
    if not coefs:
        raise InvalidInputError("coefs is empty: give at least one steering coefficient, e.g. [-3, 0, 3]")
    conv = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    if unit is None:
        unit = "unit" if reference is None else "rel"
    with Steer(model, axis, layers=[layer], coef=torch.tensor(coefs), unit=unit, reference=reference,
               positions="generated"):
        replies = generate_replies(model, [conv] * len(coefs), SamplingConfig(max_new_tokens=max_new_tokens),
                                   batch_size=len(coefs))
    return [SteeredReply(c, layer, str(unit), question, r) for c, r in zip(coefs, replies)]


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _role_samples(out_dir: Path, per_role: int = 2) -> dict[str, list[str]]:
    store = out_dir / "rollouts.jsonl"
    samples: dict[str, list[str]] = {}
    if not store.is_file():
        return samples
    for r in RolloutStore(store).records():
        key = r.name if r.kind == "role" else ("default Assistant" if r.kind == "default" else None)
        if key is not None and r.response.strip() and len(samples.setdefault(key, [])) < per_role:
            samples[key].append(r.response)
    return samples


def _activations(out_dir: Path, group: str, model: Any) -> Activations | None:
    path = out_dir / "activations" / f"{group}.safetensors"
    return Activations.load(path, model=model) if path.is_file() else None


def report_layer(result: PipelineResult, layer: int | None = None) -> int:
    """The layer a report centres on: ``layer`` when given (checked against the fitted layers), else the layer the
    pipeline's sweep chose."""
    chosen = int(result.summary.best_layer) if layer is None else layer
    if isinstance(chosen, bool) or not isinstance(chosen, int) or chosen not in result.space.layers_:
        raise InvalidInputError(f"layer {layer!r} is not one of the fitted layers {list(result.space.layers_)}")
    return chosen


def _per_layer(s: RunSummary) -> list[tuple[int, float, float, float | None, float | None]]:
    """``(layer, cos(axis, PC1), PC1 explained variance, AUROC, Cohen's d)`` for every layer of a run's summary
    (AUROC and d are ``None`` for layers the sweep did not cover)."""
    sweep = {r["layer"]: r for r in s.layer_sweep}
    return [(k, c, ev, sweep.get(k, {}).get("auroc"), sweep.get(k, {}).get("cohens_d"))
            for k, (c, ev) in enumerate(zip(s.pc1_cosine_by_layer, s.pc1_explained_variance_by_layer))]


def _pc1_ranking(result: PipelineResult, layer: int) -> tuple[float, list[tuple[str, float]]]:
    """The default Assistant's PC1 coordinate at ``layer`` and every role's, most assistant-like first."""
    j = result.space.layers_.index(layer)
    loadings = result.space.loadings_[:, j, 0].tolist()
    ranked = sorted(zip(result.space.role_names_, loadings), key=lambda kv: -kv[1])
    return float(result.space.default_loadings_[j, 0]), ranked


def text_summary(result: PipelineResult, *, layer: int | None = None) -> str:
    """The run's persona-space numbers as a few lines of plain text (what the CLI prints)."""
    s = result.summary
    L = report_layer(result, layer)
    lines = [
        f"{s.model}: {sum(s.n_rollouts.values())} rollouts ({', '.join(f'{n} {k}' for k, n in s.n_rollouts.items())}), "
        f"judge {s.judge}, role acceptance {s.role_acceptance_rate:.0%}, {len(s.roles_kept)} roles kept",
        f"layer {L} ({'chosen by the sweep' if layer is None else 'given'}): cos(axis, PC1) {s.pc1_cosine_by_layer[L]:+.3f}, "
        f"PC1 explains {s.pc1_explained_variance_by_layer[L]:.1%} of role variance",
        "",
        f"AUROC and d measured {s.layer_sweep_evaluated_on}"
        + (" (replies to roles, prompts or questions the axis was not built from)"
           if s.layer_sweep_evaluated_on == "held-out" else " (on the replies that built the axis)"),
        f"{'layer':>5}  {'cos(axis,PC1)':>13}  {'PC1 var':>7}  {'AUROC':>6}  {'d':>5}",
    ]
    nan = float("nan")
    for k, c, ev, auc, d in _per_layer(s):
        mark = "  <" if k == L else ""
        lines.append(f"{k:>5}  {c:>+13.3f}  {ev:>7.3f}  {nan if auc is None else auc:>6.3f}  "
                     f"{nan if d is None else d:>5.2f}{mark}")
    default_pc1, ranked = _pc1_ranking(result, L)
    lines += ["", f"PC1 at layer {L} (positive = towards the Assistant): default Assistant {default_pc1:+.2f}",
              "  most assistant-like:  " + ", ".join(f"{n} {v:+.1f}" for n, v in ranked[:5]),
              "  least assistant-like: " + ", ".join(f"{n} {v:+.1f}" for n, v in ranked[-5:])]
    return "\n".join(lines)


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, left: int = 0,
               highlight: int | None = None) -> str:
    """An HTML table, every cell escaped; the first ``left`` columns left-aligned; row ``highlight`` marked."""
    th = "".join(f"<th{' class=l' if i < left else ''}>{_esc(h)}</th>" for i, h in enumerate(header))
    body = []
    for k, row in enumerate(rows):
        tds = "".join(f"<td{' class=l' if i < left else ''}>{_esc(v)}</td>" for i, v in enumerate(row))
        body.append(f"<tr{' class=best' if k == highlight else ''}>{tds}</tr>")
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def pipeline_report(result: PipelineResult, *, layer: int | None = None,
                    steering: Sequence[SteeredReply] | None = None, title: str | None = None,
                    notes: Mapping[str, Any] | None = None,
                    sections: Sequence[tuple[str, str]] = (), evaluations: Any = None,
                    plotlyjs: str = "inline") -> str:
    """The report as one standalone HTML page (plotly.js inlined once, so it opens offline; ``plotlyjs=
    "directory"`` refers to a ``plotly.min.js`` beside the page instead, which :func:`write_report` writes).

    ``layer``: the layer the figures centre on (default: the sweep's choice). ``steering``: replies from
    :func:`steering_sweep`. ``notes``: extra ``{label: value}`` rows for the header table (e.g. the experiment
    config). ``sections``: ``(heading, html)`` pairs appended at the end; their html is inserted as given.
    ``evaluations``: results of :mod:`persona_axes.evals` (result objects, their ``<name>.json`` files, or folders
    of them), one section each; by default every ``<out_dir>/evals/*.json`` that exists."""
    from persona_axes.viz import plots

    first_js = include_plotlyjs(plotlyjs)
    s = result.summary
    L = report_layer(result, layer)
    out_dir = Path(result.out_dir)
    info = result.space.model_
    figures: list[tuple[str, str, Any]] = []  # (heading, caption, figure)

    figures.append(("Layer sweep", "How well the Assistant Axis separates default-assistant replies from role "
                    f"replies at each layer (AUROC, Cohen's d; measured {s.layer_sweep_evaluated_on}) and how "
                    "closely it aligns with PC1.",
                    plots.layer_sweep(s.layer_sweep)))
    samples = _role_samples(out_dir)
    figures.append((f"Persona map at layer {L}", "Each role's mean vector on the first two principal components, "
                    "coloured by its projection onto the Assistant Axis; the star is the default Assistant. "
                    "Hover for sample replies.",
                    plots.persona_map(result.space, L, families=result.roles, samples=samples, roles=result.roles)))
    figures.append((f"Scree at layer {L}", "Share of the role vectors' variance per principal component.",
                    plots.scree(result.space, L)))
    default_acts = result.activations.get("default") or _activations(out_dir, "default", info)
    role_acts = result.activations.get("role") or _activations(out_dir, "role", info)
    if default_acts is not None and role_acts is not None:
        accepted = role_acts.select(role_item_accepted)
        threshold = s.capping.thresholds.get(str(L)) if s.capping is not None else None
        figures.append((f"Projections at layer {L}", "Every default-assistant reply and every accepted role reply, "
                        "projected onto the unit Assistant Axis; the dashed line is the capping floor when this "
                        "layer is capped.",
                        plots.projection_histogram({"default Assistant": default_acts, "roles (accepted)": accepted},
                                                   axis=result.axis, layer=L, threshold=threshold)))
    if result.traits:
        figures.append((f"Trait vectors at layer {L}", "Cosine similarity between the trait vectors, with the "
                        "Assistant Axis last.", plots.trait_cosine_heatmap(result.traits, L, axis=result.axis)))

    t = s.timings_s or {}
    head_rows = [
        ("model", s.model), ("layers x hidden size", f"{info.n_layers} x {info.hidden_size}"),
        ("preset", f"{s.preset['name']}: {s.preset['description']}"),
        ("rollouts", ", ".join(f"{n} {k}" for k, n in s.n_rollouts.items())),
        ("judge", s.judge),
        ("role acceptance", f"{s.role_acceptance_rate:.1%}; {len(s.roles_kept)} roles kept, "
                            f"{len(s.roles_skipped)} skipped (fewer than {s.min_role_samples} accepted)"),
        ("report layer", f"{L} ({'chosen by the layer sweep' if layer is None else 'given'})"),
        (f"cos(axis, PC1) at layer {L}", f"{s.pc1_cosine_by_layer[L]:+.3f}"),
        (f"PC1 explained variance at layer {L}", f"{s.pc1_explained_variance_by_layer[L]:.1%}"),
        ("time", f"{t.get('total_s', float('nan')) / 60:.1f} min (rollouts {t.get('rollouts_s', 0) / 60:.1f}, "
                 f"judge {t.get('judge_s', 0) / 60:.1f}, capture {t.get('capture_s', 0) / 60:.1f})"),
        *((str(k), str(v)) for k, v in (notes or {}).items()),
    ]
    parts = [f"<h1>{_esc(title or 'Persona space of ' + s.model)}</h1>",
             "<p>Layer L is the output of decoder block L (0-based). The Assistant Axis is mean(default-assistant "
             "replies) - mean(role vectors); PC1 is flipped to point towards the Assistant.</p>",
             "<table class=kv>" + "".join(f"<tr><td>{_esc(k)}</td><td class=l>{_esc(v)}</td></tr>"
                                          for k, v in head_rows) + "</table>"]
    for k, (heading, caption, fig) in enumerate(figures):
        div = fig.to_html(full_html=False, include_plotlyjs=first_js if k == 0 else False,
                          default_height="520px")
        parts.append(f"<h2>{_esc(heading)}</h2><p>{_esc(caption)}</p>{div}")

    rows = [(k, f"{c:+.3f}", f"{ev:.3f}", "" if auc is None else f"{auc:.3f}", "" if d is None else f"{d:.2f}")
            for k, c, ev, auc, d in _per_layer(s)]
    parts.append("<h2>Per layer</h2>" + html_table(("layer", "cos(axis, PC1)", "PC1 explained variance",
                                                   f"AUROC ({s.layer_sweep_evaluated_on})",
                                                   f"Cohen's d ({s.layer_sweep_evaluated_on})"), rows, highlight=L))

    default_pc1, ranked = _pc1_ranking(result, L)
    fam = result.roles.families
    fam_means: dict[str, list[float]] = {}
    for n, v in ranked:
        fam_means.setdefault(fam.get(n, "(no family)"), []).append(v)
    fam_rows = [(f, f"{sum(v) / len(v):+.2f}", len(v)) for f, v in
                sorted(fam_means.items(), key=lambda kv: -sum(kv[1]) / len(kv[1]))]
    parts.append(f"<h2>Where roles fall on PC1 at layer {L}</h2><p>Default Assistant: "
                 f"<b>{default_pc1:+.2f}</b></p>"
                 + html_table(("family", "mean PC1", "roles"), fam_rows, left=1)
                 + html_table(("role", "family", "PC1"), [(n, fam.get(n, ""), f"{v:+.2f}") for n, v in ranked], left=2))

    if s.traits:
        parts.append("<h2>Trait vectors</h2>" + html_table(
            ("trait", "n pos", "n neg", "judge-filtered", f"cos with axis at layer {s.best_layer}"),
            [(n, i.n_pos, i.n_neg, i.judge_filtered, f"{i.cos_axis_at_best_layer:+.3f}")
             for n, i in sorted(s.traits.items())], left=1))
    cap = s.capping
    if cap:
        parts.append(f"<h2>Activation cap</h2><p>A {_esc(cap.kind)} at the {cap.percentile:g}th percentile of "
                     f"default-assistant projections, over layers {_esc(cap.layers)}.</p>" + html_table(
                         ("layer", "threshold"), [(k, f"{v:+.3f}") for k, v in cap.thresholds.items()]))
    if steering:
        parts.append(f"<h2>Steering along the Assistant Axis</h2><p>One batched generation, a coefficient per row, "
                     f"added along the unit axis at layer {steering[0].layer} to generated tokens, in "
                     f"{UNIT_WORDS.get(steering[0].unit, steering[0].unit)}"
                     f". Question: "
                     f"<i>{_esc(steering[0].question)}</i></p>"
                     + "".join(f"<p><b>coef {r.coef:+g}</b></p><blockquote>{_esc(r.reply)}</blockquote>"
                               for r in steering))
    if evaluations is None:
        evaluations = [out_dir / "evals"] if (out_dir / "evals").is_dir() else []
    parts += [f"<h2>{_esc(heading)}</h2>{content}" for heading, content in
              [*evaluation_sections(evaluations), *sections]]
    body = "\n".join(parts)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(title or 'persona space')}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")


def evaluation_sections(evaluations: Any) -> list[tuple[str, str]]:
    """``(heading, html)`` for each evaluation result of :mod:`persona_axes.evals`: a headline, its figure and its
    table. ``evaluations``: result objects, ``<name>.json`` paths, or folders whose ``*.json`` files are results
    (written by ``persona-axes eval ... --out FOLDER``), in the order given. Figures refer to the plotly.js that
    the page already carries."""
    from persona_axes.evals import EVALUATIONS
    from persona_axes.evals.results import report_section

    if isinstance(evaluations, (str, os.PathLike, dict)) or not isinstance(evaluations, Iterable):
        evaluations = [evaluations]
    items: list[Any] = []
    for ev in evaluations:
        if isinstance(ev, (str, os.PathLike)) and Path(ev).is_dir():  # the results of `persona-axes eval --out`
            items += [p for p in sorted(Path(ev).glob("*.json")) if p.stem in EVALUATIONS]
        elif isinstance(ev, (str, os.PathLike)) and not Path(ev).is_file():
            raise InvalidInputError(f"evaluations: {ev} is neither a result file nor a folder of them")
        else:
            items.append(ev)
    out = []
    for item in items:
        sec = report_section(item)
        figs = "".join(fig.to_html(full_html=False, include_plotlyjs=False, default_height="480px")
                       for fig in sec["figures"])
        table = html_table(sec["columns"], [[("" if v is None else f"{v:.3g}" if isinstance(v, float) else v)
                                              for v in row] for row in sec["rows"]], left=1) if sec["rows"] else ""
        out.append((sec["title"], f"<p>{_esc(sec['headline'])}</p>{figs}{table}"))
    return out


def write_report(result: PipelineResult, path: str | os.PathLike | None = None, **kwargs: Any) -> Path:
    """Write :func:`pipeline_report` to ``path`` (default ``<out_dir>/report.html``), atomically; with
    ``plotlyjs="directory"`` also ``plotly.min.js`` beside it (once, shared by every page in that folder)."""
    path = Path(path) if path is not None else Path(result.out_dir) / "report.html"
    page = pipeline_report(result, **kwargs)
    if kwargs.get("plotlyjs") == "directory":
        write_plotlyjs(path.parent)
    with atomic_write(path, "wb") as f:
        f.write(page.encode("utf-8"))
    return path


__all__ = ["html_table", "SteeredReply", "steering_sweep", "text_summary", "pipeline_report", "write_report", "report_layer",
           "evaluation_sections"]
