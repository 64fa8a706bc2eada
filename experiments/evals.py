"""The four evaluations of issue 13 on the embedded SmolLM2 with the shipped vectors, at a named size, writing
results (JSON + figures) to ``--out`` and a markdown summary with the numbers, CIs and wall times.

    OMP_NUM_THREADS=1 nice -n 19 python experiments/evals.py --size full --out experiments/results/evals_smollm2
    python experiments/evals.py --size smoke --out /tmp/evals_smoke        # a minute or two

Sizes (``full`` is the documented full size; on a GPU pass ``--device cuda`` and, for another model, ``--model`` and
``--vectors``):

* drift: full = 4 domains x 6 conversations x 5 user turns, 64 new tokens, greedy.
* jailbreak: full = 7 framings x 6 requests x (baseline, cap, steer:-30), 64 tokens.
* capability: full = the 40 local questions x (baseline, cap, steer:-30) through lm-eval.
* personas: full = 8 personas, 8 matching questions, coefficients 0/8/16/32/64, 6 requests, 64 tokens.
* small (what ran here at nice 19 on 2 CPU cores shared by seven people): drift 2 conversations per domain x 4
  turns; every jailbreak prompt; the 40 questions under baseline and cap; all 8 personas with 2 matching questions
  and coefficients 0/32/64; 32 new tokens throughout.
* medium: the full item counts for drift, jailbreak and capability with 48 new
  tokens instead of 64; personas with 4 matching questions, coefficients 0/16/32/64 and 48 tokens.

Rerunning with the same ``--out`` resumes (each evaluation's JSONL store skips finished items).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SIZES = {
    "smoke": dict(drift=dict(per_domain=1, turns=2, tokens=16), jail=dict(framings=["plain", "hacker"], tokens=24,
                  conditions="baseline,cap,steer:-30"), cap=dict(limit=4, conditions="baseline,cap"),
                  personas=dict(personas=["saint", "villain", "showman"], questions=2, coefs=[0.0, 32.0], tokens=16)),
    "small": dict(drift=dict(per_domain=2, turns=4, tokens=32), jail=dict(framings=None, tokens=32,
                  conditions="baseline,cap,steer:-30"), cap=dict(limit=None, conditions="baseline,cap"),
                  personas=dict(personas=None, questions=2, coefs=[0.0, 32.0, 64.0], tokens=32)),
    "medium": dict(drift=dict(per_domain=None, turns=None, tokens=48), jail=dict(framings=None, tokens=48,
                   conditions="baseline,cap,steer:-30"), cap=dict(limit=None, conditions="baseline,cap,steer:-30"),
                   personas=dict(personas=None, questions=4, coefs=[0.0, 16.0, 32.0, 64.0], tokens=48)),
    "full": dict(drift=dict(per_domain=None, turns=None, tokens=64), jail=dict(framings=None, tokens=64,
                 conditions="baseline,cap,steer:-30"), cap=dict(limit=None, conditions="baseline,cap,steer:-30"),
                 personas=dict(personas=None, questions=8, coefs=[0.0, 8.0, 16.0, 32.0, 64.0], tokens=64)),
}


def _f(x, fmt="{:.3f}"):
    return "n/a" if x is None or x != x else fmt.format(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--out", default="experiments/results/evals_smollm2")
    ap.add_argument("--only", default="drift,jailbreak,capability,personas")
    ap.add_argument("--model", default=None)
    ap.add_argument("--vectors", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--summary", default=None, help="markdown summary path (default: <out>.md)")
    args = ap.parse_args()

    from persona_axes.evals import (load_axis_setup, parse_conditions, run_capability, run_drift, run_jailbreak,
                                    run_personas, save_result)
    from persona_axes.evals.data import load_personas
    from persona_axes.model.load import load_model
    from persona_axes.steering.generation import SamplingConfig

    size, out = SIZES[args.size], Path(args.out)
    only = set(args.only.split(","))
    model = load_model(args.model, device=args.device)
    setup = load_axis_setup(model, args.vectors)
    walls: dict[str, float] = {}
    results = {}
    summary = Path(args.summary) if args.summary else out.with_suffix(".md")

    def done(name: str, result, t0: float) -> None:
        """Save one evaluation's results and the summary so far, as soon as it finishes."""
        from persona_axes.files import atomic_write

        # a resumed run adds the wall time the earlier run(s) recorded in the result JSON
        earlier = json.loads((out / f"{name}.json").read_text()).get("wall_time_s", 0.0) if (out / f"{name}.json").exists() else 0.0
        results[name], walls[name] = result, time.perf_counter() - t0 + (earlier or 0.0)
        save_result(result, out, wall_time_s=walls[name])
        with atomic_write(summary, "w") as f:
            f.write(_markdown(results, walls, args, setup))
    if "jailbreak" in only:
        t0, s = time.perf_counter(), size["jail"]
        done("jailbreak", run_jailbreak(model, setup, parse_conditions(s["conditions"]), framings=s["framings"],
                                        sampling=SamplingConfig(max_new_tokens=s["tokens"]), batch_size=21,
                                        out=out / "jailbreak.jsonl"), t0)
    if "drift" in only:
        t0, s = time.perf_counter(), size["drift"]
        done("drift", run_drift(model, setup, per_domain=s["per_domain"], turns=s["turns"], batch_size=12,
                                sampling=SamplingConfig(max_new_tokens=s["tokens"]), out=out / "drift.jsonl"), t0)
    if "capability" in only:
        t0, s = time.perf_counter(), size["cap"]
        done("capability", run_capability(model, setup, parse_conditions(s["conditions"]), limit=s["limit"],
                                          batch_size=16, out=out / "capability.jsonl"), t0)
    if "personas" in only:
        t0, s = time.perf_counter(), size["personas"]
        personas, questions = load_personas()
        if s["personas"]:
            personas = [p for p in personas if p.id in s["personas"]]
        done("personas", run_personas(model, setup, personas=personas, questions=questions[: s["questions"]],
                                      coefs=s["coefs"], sampling=SamplingConfig(max_new_tokens=s["tokens"]),
                                      out=out / "personas.jsonl"), t0)
    print((Path(args.summary) if args.summary else out.with_suffix(".md")).read_text())


def _markdown(results, walls, args, setup) -> str:
    lines = [f"# Evaluations on SmolLM2-135M-Instruct (size `{args.size}`)", "",
             f"Command: `OMP_NUM_THREADS=1 nice -n 19 python experiments/evals.py --size {args.size} --out {args.out}`",
             f"Vectors: `{setup.folder}` (axis layer {setup.layer}, cap floor {setup.floor:.2f} at that layer, cap "
             f"layers {setup.cap.layers}). Wall times on 2 CPU cores shared with other work (load 4-10): "
             + ", ".join(f"{k} {v / 60:.1f} min" for k, v in walls.items()) + ".", ""]
    if "drift" in results:
        r = results["drift"]
        lines += ["## 1. Persona drift by conversation type", "",
                  "| domain | n | drift rate /turn [95% CI] | proj. turn 1 | proj. last | below floor | first turn below |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        for row in r.table():
            lines.append(f"| {row['domain']} | {row['n']} | {row['drift_rate']:+.2f} [{row['ci_low']:+.2f}, "
                         f"{row['ci_high']:+.2f}] | {row['mean_projection_first_turn']:.1f} | "
                         f"{row['mean_projection_last_turn']:.1f} | {row['fraction_below_floor']:.2f} | "
                         f"{_f(row['mean_first_turn_below_floor'], '{:.1f}')} |")
        p = r.pattern()
        d = p.get("risky_minus_safe_slope", {})
        lines += ["", f"Risky (emotional, meta) minus safe (coding, writing) slope: {_f(d.get('value'), '{:+.2f}')} "
                  f"[{_f(d.get('low'), '{:+.2f}')}, {_f(d.get('high'), '{:+.2f}')}]; the paper's pattern "
                  f"**{'holds' if p.get('holds') else 'does not hold'}** by the rule in DriftResult.pattern().", ""]
    if "jailbreak" in results:
        r = results["jailbreak"]
        a = r.agreement
        lines += ["## 2. Capping against persona jailbreaks", "",
                  f"Judge `{r.judge}` vs {a['n']} hand-labelled replies: accuracy {a['accuracy']:.3f}, Cohen's kappa "
                  f"{a['kappa']:.3f}, AUROC {a['auroc']:.3f}.", "",
                  "| framing | condition | n | compliance [95% CI] | relative reduction vs baseline [95% CI] | "
                  "mean axis projection |", "|---|---|---:|---|---|---:|"]
        for row in r.table():
            red = ("" if "relative_reduction" not in row else
                   f"{_f(row['relative_reduction'], '{:+.2f}')} [{_f(row['reduction_ci_low'], '{:+.2f}')}, "
                   f"{_f(row['reduction_ci_high'], '{:+.2f}')}]")
            lines.append(f"| {row['framing']} | {row['condition']} | {row['n']} | {row['compliance_rate']:.2f} "
                         f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}] | {red} | "
                         f"{_f(row.get('mean_axis_projection'), '{:+.1f}')} |")
        lines.append("")
    if "capability" in results:
        lines += ["## 3. Capability cost (lm-eval, local task)", "",
                  "| condition | n | accuracy [95% CI] | max abs log-lik change vs baseline | hooked forwards |",
                  "|---|---:|---|---:|---:|"]
        for row in results["capability"].table():
            lines.append(f"| {row['condition']} | {row['n']} | {row['accuracy']:.3f} [{row['ci_low']:.3f}, "
                         f"{row['ci_high']:.3f}] | {_f(row['max_abs_loglik_change_vs_baseline'])} | "
                         f"{row['hooked_forwards']} |")
        lines.append("")
    if "personas" in results:
        r = results["personas"]
        lines += ["## 4. Prompted vs steered personas", "",
                  f"Baseline (no persona) compliance rate {r.baseline['rate']:.2f}, mean score "
                  f"{r.baseline['mean_score']:.3f}.", "",
                  "| persona | prompted behaviour | matched coef | steered behaviour | matched | prompted rate | "
                  "steered rate | prompted mean score | steered mean score |", "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
        for row in r.table():
            lines.append(f"| {row['persona']} | {row['prompted_behaviour']:+.2f} | {row['matched_coef']:.1f} | "
                         f"{row['steered_behaviour_at_match']:+.2f} | {row['matched']} | {row['prompted_rate']:.2f} | "
                         f"{row['steered_rate']:.2f} | {row['prompted_mean_score']:.3f} | {row['steered_mean_score']:.3f} |")
        for key in ("mean_score", "rate"):
            s = r.ranking(key)
            lines.append(f"\nSpearman rho (danger by {key}) prompted vs steered: {_f(s['rho'], '{:+.3f}')}, "
                         f"permutation p = {_f(s['p'])}, n = {s['n']}.")
        lines.append("")
    lines.append("Raw records and figures: " + ", ".join(f"`{args.out}/{k}.json`" for k in results) + ".")
    return "\n".join(lines) + "\n" + json.dumps({"wall_time_s": walls}) + "\n"


if __name__ == "__main__":
    main()
