"""Publishing a finished run: its vector files, its summary and a README written from the summary, copied to a
folder such as the repository's ``vectors/<model>/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from persona_axes.files import atomic_write
from persona_axes.judges.base import ROLE_ACCEPT_THRESHOLD
from persona_axes.runs.summary import RunSummary

__all__ = ["publish"]


def publish(result_dir: str | Path, dest: str | Path, command: str = "") -> Path:
    """Copy a finished run's vectors and ``summary.json`` (checksum checked, re-stamped) to ``dest`` and write
    ``dest/README.md`` from the summary."""
    src = Path(result_dir)
    summary = RunSummary.load(src / "summary.json")
    s = summary.to_dict()
    dest = Path(dest)
    (dest / "traits").mkdir(parents=True, exist_ok=True)
    for p in sorted((src / "vectors").rglob("*.safetensors")):
        target = dest / p.relative_to(src / "vectors")
        with atomic_write(target) as f:  # a copy, atomically: never half a vector file at dest
            f.write(p.read_bytes())
    summary.save(dest / "summary.json")
    with atomic_write(dest / "README.md", "w") as f:
        f.write(_readme(s, command))
    return dest


def _sampling(p: dict[str, Any]) -> str:
    if p.get("greedy_first") and p["samples"] > 1:
        return f"sample 0 greedy, {p['samples'] - 1} more at temperature {p['temperature']:g}, seeded per request"
    return "greedy" if p["temperature"] == 0 else f"temperature {p['temperature']:g}"


def _heldout_counts(s: dict[str, Any]) -> str:
    h = s.get("heldout") or {}
    n = h.get("n_heldout", {})
    if not n:
        return ""
    return (f" ({n.get('default', 0)} default-assistant vs {h.get('n_heldout_role_accepted', 0)} in-character role "
            f"replies of {n.get('role', 0)}; {len(h['split']['heldout_roles'])} held-out roles)")


def _readme(s: dict[str, Any], command: str) -> str:
    p = s["preset"]
    acc = s["role_acceptance"]
    on = s.get("layer_sweep_evaluated_on", "in-sample")
    lines = [
        f"# Persona vectors for {s['model']}",
        "",
        "Made by persona_axes' pipeline (rollouts -> judge -> capture -> vectors -> persona space) on a CPU.",
        "Layer L is the output of decoder block L (0-based). Every vector file holds one float32 tensor `vector` of",
        "shape `[num_layers, hidden_size]` with metadata (`model`, `hidden_size`, `num_layers`, `layer_site`,",
        "`method`, `n_samples`); `roles.safetensors` holds one such tensor per role, named by role.",
        "",
        "## How they were made",
        "",
        f"- Command: `{command or 'persona-axes pipeline --preset ' + p['name'] + ' --out runs/smollm2-quick'}`",
        f"- Preset `{p['name']}`: {p['description']}",
        "- Rollouts: " + ", ".join(f"{n} {k}" for k, n in s["n_rollouts"].items())
        + f" ({_sampling(p)}, {p['max_new_tokens']} new tokens)",
        f"- Judge: `{s['judge']}`; a role reply is kept when scored >= {ROLE_ACCEPT_THRESHOLD} of 3 "
        "(at least partly in character).",
        f"- Role acceptance: {s['role_acceptance_rate']:.1%} overall; {len(s['roles_kept'])} roles kept "
        f"with at least {s.get('min_role_samples', '?')} accepted replies; skipped (accepted count): "
        + (", ".join(f"{n} ({a})" for n, a in s["roles_skipped"].items()) or "none") + ".",
        f"- Time: {s['timings_s']['total_s'] / 60:.1f} min in all "
        f"(rollouts {s['timings_s']['rollouts_s'] / 60:.1f}, judge {s['timings_s']['judge_s'] / 60:.1f}, "
        f"capture {s['timings_s']['capture_s'] / 60:.1f}).",
        "",
        "## Files",
        "",
        "- `assistant_axis.safetensors`: mean(default-assistant replies) - mean(role vectors), per layer.",
        "- `default.safetensors`: the default Assistant's mean vector; `roles.safetensors`: one mean per role.",
        "- `traits/<trait>.safetensors`: mean-difference trait vectors (pos minus neg instruction replies).",
        f"- `capping.safetensors`: floor cap on the unit axis over layers {s['capping']['layers']} at the "
        f"{s['capping']['percentile']:g}th percentile of default-assistant projections.",
        "- `summary.json`: every number below and more (per-role acceptance, layer sweep, timings).",
        "",
        "## The Assistant Axis and PC1",
        "",
        f"Chosen layer: **{s['best_layer']}** (best separation of default-assistant from role replies along the axis;",
        f"AUROC, then Cohen's d), measured **{on}**" + (
            ": on replies to held-out roles, prompts and questions that built nothing"
            + _heldout_counts(s) + "; 95% bootstrap intervals in brackets." if on == "held-out"
            else ": on the replies that built the axis (no held-out replies in this preset)."),
        "",
        f"| layer | cos(axis, PC1) | PC1 explained variance | AUROC ({on}) | Cohen's d ({on}) |",
        "|---:|---:|---:|---|---|",
    ]
    sweep = {r["layer"]: r for r in s["layer_sweep"]}
    for L, (c, ev) in enumerate(zip(s["pc1_cosine_by_layer"], s["pc1_explained_variance_by_layer"])):
        r = sweep.get(L, {})
        auc, d = r.get("auroc"), r.get("cohens_d")
        auc_s = "" if auc is None else f"{auc:.3f}" + (f" [{r['auroc_ci'][0]:.3f}, {r['auroc_ci'][1]:.3f}]"
                                                       if "auroc_ci" in r else "")
        d_s = "" if d is None else f"{d:.2f}" + (f" [{r['cohens_d_ci'][0]:.2f}, {r['cohens_d_ci'][1]:.2f}]"
                                                 if "cohens_d_ci" in r else "")
        lines.append(f"| {L} | {c:+.3f} | {ev:.3f} | {auc_s} | {d_s} |")
    lines += [
        "",
        f"## Where things fall on PC1 (layer {s['best_layer']}; positive = towards the Assistant)",
        "",
        f"- Default Assistant: **{s['default_pc1_at_best_layer']:+.2f}**",
    ]
    for fam, v in sorted(s["family_mean_pc1_at_best_layer"].items(), key=lambda kv: -kv[1]):
        lines.append(f"- {fam} roles (mean): {v:+.2f}")
    roles_sorted = sorted(s["role_pc1_at_best_layer"].items(), key=lambda kv: -kv[1])
    lines += ["", "Most assistant-like roles: " + ", ".join(f"{n} ({v:+.1f})" for n, v in roles_sorted[:6]),
              "", "Least assistant-like roles: " + ", ".join(f"{n} ({v:+.1f})" for n, v in roles_sorted[-6:])]
    if s.get("traits"):
        lines += ["", "## Traits", "", "| trait | n pos | n neg | judge-filtered | cos with axis at chosen layer |",
                  "|---|---:|---:|---|---:|"]
        for t, i in sorted(s["traits"].items()):
            lines.append(f"| {t} | {i['n_pos']} | {i['n_neg']} | {i['judge_filtered']} | {i['cos_axis_at_best_layer']:+.3f} |")
    lines += ["", "## Role acceptance", "", "| role | accepted / total |", "|---|---:|"]
    for n, a in sorted(acc.items()):
        lines.append(f"| {n} | {a['accepted']} / {a['total']} |")
    return "\n".join(lines) + "\n"
