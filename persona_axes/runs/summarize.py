"""The numbers a finished pipeline run reports, gathered from its state into a :class:`RunSummary` (what
:func:`persona_axes.runs.stages.write_stage` saves as ``summary.json``)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from persona_axes.judges.base import role_item_accepted
from persona_axes.runs.datasets import load_default_prompts, load_questions, load_roles
from persona_axes.runs.splits import split_data
from persona_axes.runs.summary import CappingSummary, RoleAcceptance, RunSummary, TraitSummary

__all__ = ["summarize"]


def summarize(run: Any) -> RunSummary:
    space, best, cap = run.space, run.best_layer, run.cap
    j_best = space.layers_.index(best)
    loadings = space.loadings_[:, j_best, 0]
    role_pc1 = {n: float(loadings[i]) for i, n in enumerate(space.role_names_)}
    fam_pc1: dict[str, list[float]] = {}
    for n, v in role_pc1.items():
        fam_pc1.setdefault(run.families.get(n, "?"), []).append(v)
    acc = run.acceptance
    timings = {k: run.timings[k] for k in ("rollouts_s", "judge_s", "capture_s", "vectors_s") if k in run.timings}
    timings["total_s"] = sum(timings.values())
    return RunSummary(
        model=run.backend.info.name,
        preset=asdict(run.preset),
        judge=run.judge.name,
        n_rollouts={k: len(v) for k, v in run.groups.items()},
        empty_replies_left_out=list(run.empty),
        rollouts_generated_this_run=run.generated,
        role_acceptance={n: RoleAcceptance(a, b) for n, (a, b) in acc.items()},
        role_acceptance_rate=sum(a for a, _ in acc.values()) / max(1, sum(b for _, b in acc.values())),
        roles_kept=list(run.roles.names),
        roles_skipped={n: a for n, (a, _) in acc.items() if n not in run.roles.names},
        min_role_samples=run.config.min_role_samples,
        pc1_cosine_by_layer=[float(x) for x in space.pc1_cosine_],
        pc1_explained_variance_by_layer=[float(x) for x in space.explained_variance_ratio_[:, 0]],
        best_layer=best,
        layer_sweep=run.sweep.to_records(),
        default_pc1_at_best_layer=float(space.default_loadings_[j_best, 0]),
        role_pc1_at_best_layer=role_pc1,
        family_mean_pc1_at_best_layer={f: sum(v) / len(v) for f, v in fam_pc1.items()},
        traits={n: TraitSummary(**c, cos_axis_at_best_layer=float(run.traits[n].cosine(run.axis)[best]))
                for n, c in run.trait_counts.items()},
        capping=CappingSummary(layers=list(cap.layers), percentile=cap.percentile, kind=str(cap.kind),
                               thresholds={str(L): cap.thresholds[L] for L in cap.layers}),
        timings_s=timings,
        layer_sweep_evaluated_on=run.sweep.evaluated_on,
        heldout=_heldout_summary(run),
    )


def _heldout_summary(run: Any) -> dict[str, Any]:
    """The split and held-out counts (empty without held-out replies)."""
    if not run.preset.heldout:
        return {}
    split = split_data(load_roles(), load_questions(), len(load_default_prompts()))
    counts = {k: len(h) if (h := run.heldout(k)) is not None else 0 for k in run.activations}
    role = run.heldout("role")
    accepted = 0 if role is None else len(role.select(role_item_accepted))
    return {"split": split.to_dict(), "n_heldout": counts, "n_heldout_role_accepted": accepted}
