"""Does each trait vector steer its behaviour? A check on held-out questions, with a scorer independent of the judge.

For every trait vector in ``--traits-dir`` (PersonaVector files with a ``layer`` in their metadata, e.g. the output of
``experiments/traits.py``) that has a behaviour scorer (:data:`persona_axes.evals.scorers.TRAIT_SCORERS`: VADER
sentiment for optimistic / agreeableness, our lexicons for the others; ``hallucinating`` has none):

1. the trait's evaluation questions ``--questions`` (default 10-19: questions nothing was fitted on or selected
   with; 0-9 chose the layer), asked with no system prompt;
2. :func:`persona_axes.evals.intensity.calibrate_intensity` steering the vector at its layer with each coefficient
   of ``--coefs`` (unit ``--unit``, default ``sd``: one spread of default-assistant replies along the trait's
   direction, measured from the run's fit default replies), greedy, ``--tokens`` new tokens, all positions;
3. the verdict: the trait **steers** when the Spearman correlation between coefficient and score has the expected
   sign with permutation p < ``--alpha`` (default 0.01, stricter than the 0.05 an outside check would use) AND the
   mean score at the recommended coefficient differs from the unsteered mean in the expected direction. The
   recommended coefficient is the largest within the curve's monotone range whose replies do not repeat more than
   ``--max-repetition`` (mean fraction of repeated word 4-grams).

Writes ``<out>/traits/<trait>.safetensors`` (the vector with its unit statistics and metadata ``steers``,
``validated_by``, ``recommended_coef``, ``recommended_unit``, ``validation`` = JSON of the numbers), ``<out>/
validation.json`` (every curve with its replies) and ``<out>/validation.md`` (the table), and one intensity figure
(``--figure-trait``, default optimistic) as ``<out>/intensity_<trait>.html``.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python experiments/trait_validation.py --traits-dir T --run RUN --out OUT``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from persona_axes.activations.container import Activations
from persona_axes.evals.intensity import calibrate_intensity
from persona_axes.evals.scorers import TRAIT_SCORERS
from persona_axes.model.load import load_model
from persona_axes.runs.datasets import load_traits
from persona_axes.vectors.containers import PersonaVector
from persona_axes.vectors.units import stats_of, unit_stats, with_unit_stats


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _range(text: str) -> range:
    a, b = (int(x) for x in text.split(":"))
    return range(a, b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traits-dir", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True, help="the pipeline run (its fit default replies set 'sd')")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--coefs", default="-4,-2,0,2,4")
    ap.add_argument("--unit", default="sd")
    ap.add_argument("--questions", default="10:20", help="evaluation question range a:b (never fitted on)")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--max-repetition", type=float, default=0.15)
    ap.add_argument("--traits", default=None, help="comma list (default: every vector in --traits-dir)")
    ap.add_argument("--figure-trait", default="optimistic")
    ap.add_argument("--batch-size", type=int, default=25)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    coefs = _floats(args.coefs)
    loaded = load_model()
    default = Activations.load(args.run / "activations" / "default.safetensors")
    default = default.select(lambda it: it.get("split") is None)
    data = load_traits()
    names = args.traits.split(",") if args.traits else sorted(p.stem for p in args.traits_dir.glob("*.safetensors"))
    (args.out / "traits").mkdir(parents=True, exist_ok=True)
    results, rows = {}, []
    for name in names:
        vec = PersonaVector.load(args.traits_dir / f"{name}.safetensors", model=loaded)
        if stats_of(vec) is None or args.unit in ("sd", "rel"):  # sd/rel from the fit default replies, always
            old = stats_of(vec)
            st = unit_stats(vec, default, reference_name=f"{len(default)} fit default-assistant replies")
            if old is not None:  # keep the gap measured where the vector was made
                st = type(st)(rel=st.rel, sd=st.sd, gap=old.gap, reference=st.reference + "; gap: " + old.reference)
            vec = with_unit_stats(vec, st)
        layer = int(vec.metadata.get("layer", 20))
        scorer = TRAIT_SCORERS.get(name)
        questions = [data[name].evaluation_questions[i] for i in _range(args.questions)]
        if scorer is None:
            md = {**vec.metadata, "steers": "unknown", "validated_by": "none: no behaviour scorer for this trait"}
            PersonaVector(vec.vector, vec.model, vec.name, vec.method, vec.n_samples, md).save(
                args.out / "traits" / f"{name}.safetensors")
            rows.append((name, layer, "-", "-", "-", "-", "-", "not validated (no scorer)"))
            continue
        sc, sign = scorer
        t = time.time()
        curve = calibrate_intensity(loaded, vec, sc, questions, layers=[layer], coefs=coefs, unit=args.unit,
                                    max_new_tokens=args.tokens, batch_size=args.batch_size, progress=False)
        lo, hi = curve.monotone_range(max_repetition=args.max_repetition)
        zero = coefs.index(0.0) if 0.0 in coefs else None
        ok_reps = [c for c, r in zip(curve.coefs, curve.repetition) if r <= args.max_repetition]
        side = [c for c in ok_reps if c * sign > 0 and lo <= c <= hi]
        rec = max(side, key=abs) if side else None
        moved = (rec is not None and zero is not None
                 and sign * (curve.means[curve.coefs.index(rec)] - curve.means[zero]) > 0)
        steers = bool(curve.steers(sign, alpha=args.alpha) and moved)
        summary = {"scorer": sc.name, "expected_sign": sign, "rho": curve.rho, "p": curve.p, "layer": layer,
                   "unit": args.unit, "coefs": list(curve.coefs), "means": curve.means,
                   "ci": [[e.low, e.high] for e in curve.mean], "repetition": list(curve.repetition),
                   "monotone_range": [lo, hi], "recommended_coef": rec, "steers": steers,
                   "n_questions": len(questions), "questions": args.questions, "seconds": round(time.time() - t, 1)}
        results[name] = {**summary, "curve": curve.to_dict()}
        md = {**vec.metadata, "steers": str(steers).lower(), "validated_by": f"{sc.name} on {len(questions)} held-out "
              f"evaluation questions ({args.questions}), greedy", "recommended_unit": args.unit,
              "recommended_coef": "" if rec is None or not steers else f"{rec:g}",
              "validation": json.dumps(summary, sort_keys=True)}
        PersonaVector(vec.vector, vec.model, vec.name, vec.method, vec.n_samples, md).save(
            args.out / "traits" / f"{name}.safetensors")
        rows.append((name, layer, sc.name, " / ".join(f"{m:+.2f}" for m in curve.means),
                     f"{curve.rho:+.2f}" if curve.rho is not None else "n/a",
                     f"{curve.p:.4f}" if curve.p is not None else "n/a", "" if rec is None else f"{rec:+g}",
                     "**steers**" if steers else "does not steer"))
        print(f"{name}: layer {layer} rho {curve.rho} p {curve.p} means {curve.means} -> steers={steers}",
              file=sys.stderr, flush=True)
        if name == args.figure_trait:
            from persona_axes.viz.intensity_plots import intensity_figure

            intensity_figure(curve, max_repetition=args.max_repetition).write_html(
                args.out / f"intensity_{name}.html", include_plotlyjs="cdn")
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    import transformers

    versions["transformers"] = transformers.__version__
    (args.out / "validation.json").write_text(json.dumps({"results": results, "versions": versions,
                                                          "args": vars(args) | {"traits_dir": str(args.traits_dir),
                                                                                "run": str(args.run),
                                                                                "out": str(args.out)},
                                                          "seconds": time.time() - t0}, indent=1, default=str))
    head = ("| trait | layer | scorer | mean score at " + ", ".join(f"{c:+g}" for c in coefs) + f" {args.unit} "
            "| Spearman rho | p | recommended coef | verdict |\n|---|---:|---|---|---:|---:|---:|---|\n")
    table = head + "".join("| " + " | ".join(str(x) for x in r) + " |\n" for r in rows)
    (args.out / "validation.md").write_text(
        f"# Trait steering check (held-out evaluation questions {args.questions}, n = "
        f"{len(_range(args.questions))} per coefficient, greedy, {args.tokens} tokens)\n\n{table}\n"
        f"Verdict: steers = Spearman sign as expected with p < {args.alpha} and the recommended coefficient moves "
        f"the mean score the expected way. Versions: {versions}. Took {time.time() - t0:.0f} s.\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
