"""The paper's pipeline end to end: rollouts -> judge -> capture -> role/trait vectors -> persona space -> files.

Every stage writes to ``out_dir`` and is skipped when its output is already there, so an interrupted run resumes
where it stopped (rollouts resume item by item; activations chunk by chunk):

    out_dir/rollouts.jsonl                      generated replies, judge scores cached inside
    out_dir/activations/{role,default,trait}.safetensors
    out_dir/vectors/assistant_axis.safetensors  the Assistant Axis, [num_layers, hidden_size]
    out_dir/vectors/roles.safetensors           one mean vector per accepted role
    out_dir/vectors/default.safetensors         the default Assistant's mean vector
    out_dir/vectors/traits/<trait>.safetensors  contrastive trait vectors (mean difference)
    out_dir/vectors/capping.safetensors         an activation cap calibrated on default-assistant replies
    out_dir/summary.json                        every number the report quotes
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from persona_axes.activations.container import Activations
from persona_axes.activations.readers.base import as_backend
from persona_axes.runs.datasets import load_roles, load_traits
from persona_axes.errors import FileFormatError, InvalidInputError, StaleCheckpointError
from persona_axes.activations.extraction import extract
from persona_axes.steering.interventions import calibrate_cap
from persona_axes.files import atomic_write
from persona_axes.judges.base import accepts_role, judge_from_spec, keeps_trait_sample
from persona_axes.runs.rollouts import PRESETS, RolloutPreset, RolloutStore, judge_rollouts, run_rollouts
from persona_axes.vectors.space import PersonaSpace
from persona_axes.vectors.containers import VectorSet, mean_vector, role_vectors, trait_vector

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """What to run. ``cap_band`` is the half-width of the band of capped layers around the chosen layer."""

    preset: str | RolloutPreset = "quick"
    judge: str = "embedding"
    min_role_samples: int = 3
    min_trait_samples: int = 4
    n_components: int = 10
    cap_percentile: float = 25.0
    cap_band: int = 3
    capture_batch_size: int = 16
    seed: int = 0

    def resolved_preset(self) -> RolloutPreset:
        if isinstance(self.preset, RolloutPreset):
            return self.preset
        if self.preset not in PRESETS:
            raise InvalidInputError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[self.preset]


@dataclass
class PipelineResult:
    out_dir: Path
    space: PersonaSpace
    axis: Any
    roles: VectorSet
    traits: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)


def _capture_group(be, records, path: Path, judge_name: str, batch_size: int, progress: bool) -> Activations:
    """Activations of one group of rollouts (resumable chunk by chunk; reused when ``path`` already holds them).
    Judge scores are labels, not inputs: new scores relabel stored activations without computing them again."""
    meta = []
    for r in records:
        score = r.score(judge_name)
        meta.append({"id": r.id, "kind": r.kind, "name": r.name, "polarity": r.polarity, "prompt_index": r.prompt_index,
                     "question_id": r.question_id, "score": None if score is None or (isinstance(score, float) and math.isnan(score)) else score})
    convs = [r.messages() for r in records]
    try:
        res = extract(be, convs, path, metadata=meta, batch_size=batch_size, progress=progress)
    except StaleCheckpointError as e:  # the rollouts changed since the checkpoint was made: it is of no use
        log.warning("%s; extracting again", e)
        res = extract(be, convs, path, metadata=meta, batch_size=batch_size, progress=progress, restart=True)
    return res.activations


def _band(center: int, half: int, n_layers: int) -> list[int]:
    return [L for L in range(center - half, center + half + 1) if 0 <= L < n_layers]


def run_pipeline(model: Any, out_dir: str | Path, config: PipelineConfig | None = None, *,
                 progress: bool = True) -> PipelineResult:
    """Run (or resume) the whole pipeline on ``model`` and write every result under ``out_dir``."""
    config = config or PipelineConfig()
    preset = config.resolved_preset()
    out = Path(out_dir)
    (out / "activations").mkdir(parents=True, exist_ok=True)
    be = as_backend(model)
    t0 = time.time()
    timings: dict[str, float] = {}

    # 1. rollouts (resumable item by item)
    store = RolloutStore(out / "rollouts.jsonl")
    requests = preset.build_requests()
    report = run_rollouts(be, requests, store, preset.sampling(config.seed), batch_size=preset.batch_size,
                          progress=progress)
    timings["rollouts_s"] = time.time() - t0
    # A resumed run keeps the timings of the stages it did not redo, so reports quote what the work cost.
    previous: dict[str, float] = {}
    if (out / "summary.json").is_file():
        try:
            previous = json.loads((out / "summary.json").read_text()).get("timings_s", {})
        except (json.JSONDecodeError, OSError):
            previous = {}
    if report.generated == 0 and "rollouts_s" in previous:
        timings["rollouts_s"] = previous["rollouts_s"]
    wanted = {r.id for r in requests}
    records = [r for r in store.records() if r.id in wanted]

    # 2. judge (scores cached in the store)
    t = time.time()
    judge = judge_from_spec(config.judge)
    roles_data, traits_data = load_roles(), load_traits()
    n_judged = judge_rollouts(store, judge, roles=roles_data, traits=traits_data, progress=progress)
    store = RolloutStore(out / "rollouts.jsonl")
    records = [r for r in store.records() if r.id in wanted]
    timings["judge_s"] = previous["judge_s"] if n_judged == 0 and "judge_s" in previous else time.time() - t

    # 3. capture, per group
    t = time.time()
    empty = [r.id for r in records if not r.response.strip()]
    if empty:  # an empty reply has no tokens to reduce over; it is reported, not captured
        log.warning("%d rollouts have an empty reply and are left out: %s", len(empty), empty[:5])
    groups = {k: [r for r in records if r.kind == k and r.response.strip()] for k in ("role", "default", "trait")}
    cached = all((out / "activations" / f"{k}.safetensors").exists() for k, recs in groups.items() if recs)
    acts = {k: _capture_group(be, recs, out / "activations" / f"{k}.safetensors", judge.name,
                              config.capture_batch_size, progress) for k, recs in groups.items() if recs}
    timings["capture_s"] = time.time() - t
    if cached and "capture_s" in previous and timings["capture_s"] < 0.5 * previous["capture_s"]:
        timings["capture_s"] = previous["capture_s"]
    if "role" not in acts or "default" not in acts:
        raise InvalidInputError("the preset produced no role or no default rollouts; both are needed for the axis")

    # 4. vectors
    t_vectors = time.time()
    role_acts = acts["role"]
    accepted = role_acts.select(lambda it: it["score"] is None or accepts_role(int(it["score"])))
    acceptance = {}
    for name in dict.fromkeys(it["name"] for it in role_acts.items):
        n_all = sum(it["name"] == name for it in role_acts.items)
        n_ok = sum(it["name"] == name for it in accepted.items)
        acceptance[name] = (n_ok, n_all)
    families = {n: roles_data[n].family for n in acceptance if n in roles_data}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped roles are reported in the summary instead
        roles = role_vectors(accepted, key="name", min_count=config.min_role_samples, families=families)
    skipped_roles = {n: a for n, (a, _) in acceptance.items() if n not in roles.names}
    default_vec = mean_vector(acts["default"], name="default_assistant")
    space = PersonaSpace(n_components=config.n_components).fit(roles, default=default_vec)
    axis = space.assistant_axis()
    sweep = space.layer_sweep(acts["default"], accepted)
    best = sweep.best_layer

    traits: dict[str, Any] = {}
    trait_info: dict[str, Any] = {}
    if "trait" in acts:
        ta = acts["trait"]
        for name in dict.fromkeys(it["name"] for it in ta.items):
            pos_all = ta.where(name=name, polarity="pos")
            neg_all = ta.where(name=name, polarity="neg")
            pos = pos_all.select(lambda it: it["score"] is None or keeps_trait_sample(float(it["score"]), True))
            neg = neg_all.select(lambda it: it["score"] is None or keeps_trait_sample(float(it["score"]), False))
            filtered = len(pos) >= config.min_trait_samples and len(neg) >= config.min_trait_samples
            if not filtered:
                pos, neg = pos_all, neg_all
            traits[name] = trait_vector(pos, neg, "mean_diff", name=name,
                                        metadata={"judge_filtered": str(filtered).lower(), "judge": judge.name})
            trait_info[name] = {"n_pos": len(pos), "n_neg": len(neg), "n_pos_all": len(pos_all),
                                "n_neg_all": len(neg_all), "judge_filtered": filtered,
                                "cos_axis_at_best_layer": float(traits[name].cosine(axis)[best])}

    cap = calibrate_cap(axis, acts["default"], _band(best, config.cap_band, be.info.n_layers),
                        percentile=config.cap_percentile, kind="floor",
                        reference_name=f"{len(acts['default'])} default-assistant replies ({preset.name} preset)")

    # 5. files
    vdir = out / "vectors"
    (vdir / "traits").mkdir(parents=True, exist_ok=True)
    axis.save(vdir / "assistant_axis.safetensors")
    roles.save(vdir / "roles.safetensors")
    default_vec.save(vdir / "default.safetensors")
    for name, vec in traits.items():
        vec.save(vdir / "traits" / f"{name}.safetensors")
    cap.save(vdir / "capping.safetensors")

    j_best = space.layers_.index(best)
    loadings = space.loadings_[:, j_best, 0]
    role_pc1 = {n: float(loadings[i]) for i, n in enumerate(space.role_names_)}
    fam_pc1: dict[str, list[float]] = {}
    for n, v in role_pc1.items():
        fam_pc1.setdefault(families.get(n, "?"), []).append(v)
    summary = {
        "model": be.info.name,
        "preset": asdict(preset),
        "judge": judge.name,
        "n_rollouts": {k: len(v) for k, v in groups.items()},
        "empty_replies_left_out": empty,
        "rollouts_generated_this_run": report.generated,
        "role_acceptance": {n: {"accepted": a, "total": b} for n, (a, b) in acceptance.items()},
        "role_acceptance_rate": sum(a for a, _ in acceptance.values()) / max(1, sum(b for _, b in acceptance.values())),
        "roles_kept": roles.names,
        "roles_skipped": skipped_roles,
        "min_role_samples": config.min_role_samples,
        "pc1_cosine_by_layer": [float(x) for x in space.pc1_cosine_],
        "pc1_explained_variance_by_layer": [float(x) for x in space.explained_variance_ratio_[:, 0]],
        "best_layer": best,
        "layer_sweep": sweep.to_records(),
        "default_pc1_at_best_layer": float(space.default_loadings_[j_best, 0]),
        "role_pc1_at_best_layer": role_pc1,
        "family_mean_pc1_at_best_layer": {f: sum(v) / len(v) for f, v in fam_pc1.items()},
        "traits": trait_info,
        "capping": {"layers": cap.layers, "percentile": cap.percentile, "kind": cap.kind,
                    "thresholds": {str(L): cap.thresholds[L] for L in cap.layers}},
        "timings_s": {**timings, "vectors_s": time.time() - t_vectors,
                      "total_s": sum(timings.values()) + time.time() - t_vectors},
    }
    with atomic_write(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    return PipelineResult(out_dir=out, space=space, axis=axis, roles=roles, traits=traits, summary=summary)


__all__ = ["PipelineConfig", "PipelineResult", "run_pipeline"]


def publish(result_dir: str | Path, dest: str | Path, command: str = "") -> Path:
    """Copy a finished run's vectors to ``dest`` and write ``dest/README.md`` from its ``summary.json``."""
    src = Path(result_dir)
    summary_path = src / "summary.json"
    if not summary_path.is_file():
        raise FileFormatError(f"{src}: no summary.json; run the pipeline to the end first")
    s = json.loads(summary_path.read_text())
    dest = Path(dest)
    (dest / "traits").mkdir(parents=True, exist_ok=True)
    for p in sorted((src / "vectors").rglob("*.safetensors")):
        target = dest / p.relative_to(src / "vectors")
        with atomic_write(target) as f:  # a copy, atomically: never half a vector file at dest
            f.write(p.read_bytes())
    with atomic_write(dest / "summary.json", "w") as f:
        json.dump(s, f, indent=1)
    with atomic_write(dest / "README.md", "w") as f:
        f.write(_readme(s, command))
    return dest


def _readme(s: dict[str, Any], command: str) -> str:
    p = s["preset"]
    acc = s["role_acceptance"]
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
        + f" ({'greedy' if p['temperature'] == 0 else 'temperature ' + str(p['temperature'])}, "
        f"{p['max_new_tokens']} new tokens)",
        f"- Judge: `{s['judge']}`; a role reply is kept when scored >= 2 of 3 (at least partly in character).",
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
        "AUROC, then Cohen's d).",
        "",
        "| layer | cos(axis, PC1) | PC1 explained variance | AUROC | Cohen's d |",
        "|---:|---:|---:|---:|---:|",
    ]
    sweep = {r["layer"]: r for r in s["layer_sweep"]}
    for L, (c, ev) in enumerate(zip(s["pc1_cosine_by_layer"], s["pc1_explained_variance_by_layer"])):
        r = sweep.get(L, {})
        auc, d = r.get("auroc"), r.get("cohens_d")
        lines.append(f"| {L} | {c:+.3f} | {ev:.3f} | {'' if auc is None else f'{auc:.3f}'} | "
                     f"{'' if d is None else f'{d:.2f}'} |")
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


__all__ += ["publish"]
