"""Trait vectors with a held-out layer choice and shared-register removal, from a pipeline run's trait replies.

Input: a run folder (``persona-axes pipeline --out RUN``) whose ``activations/trait.safetensors`` items carry
``name``, ``polarity`` (pos/neg), ``split`` (``"extraction"`` / ``"evaluation"``), ``question_id``, ``prompt_index``
and the judge ``score``. Per trait:

1. **fit** on extraction replies: the mean-difference vector of judge-kept replies
   (:func:`persona_axes.judges.base.trait_item_kept`; unfiltered when fewer than ``--min-samples`` are kept on a
   side, as the pipeline's ``vectors_stage`` does);
2. **layer** by a held-out probe sweep (:func:`persona_axes.vectors.probes.probe_sweep`): probes fitted on the same
   extraction replies, scored on evaluation questions ``q00``-``q09`` only (judge-kept the same way); the layer
   with the best held-out accuracy, then AUROC, then Cohen's d, among ``--layers`` (default: the middle 60% of
   the model, 6-23 of SmolLM2's 30: in the first blocks a reply token still carries the instruction's own words,
   which separates the sides perfectly without being the behaviour, and the last blocks are output-specific);
3. **shared register**: pairs of traits whose cosine at their layers exceeds ``--threshold`` are purified
   symmetrically (:func:`persona_axes.vectors.register.remove_shared_register`).

Evaluation questions 10 and up are for the steering check only: they are dropped here before anything is fitted
or selected (their count is reported, nothing else). Capture variants (``--variants``): ``mean`` (the reply mean
stored by the run), ``prompt_end`` (the last generation-prompt token before the reply) and ``first`` (the mean of
the first ``--first-n`` reply tokens); the last two are captured again here from ``rollouts.jsonl`` with the model
(default: the embedded SmolLM2). ``--ship`` picks which variant's vectors are written.

Output (``--out``): one ``<trait>.safetensors`` PersonaVector per trait (metadata: layer, probe_accuracy,
probe_auroc, probe_cohens_d, n_pos, n_neg, judge_filtered, purified_against, capture, ...), ``traits.json``
(every sweep, counts and the register report) and ``traits.md`` (the tables). With ``--ship mean`` and the run's
``default.safetensors``, each vector carries its steering-unit statistics (rel/sd/gap, measured on the final,
purified vector with fit default replies and its own kept extraction replies), as the pipeline's vectors do.

Run: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/traits.py RUN --out OUT [--variants mean,prompt_end,first]``
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

from persona_axes.activations.batch import capture
from persona_axes.activations.container import Activations
from persona_axes.core import parse_layer_spec
from persona_axes.errors import InvalidInputError
from persona_axes.files import json_meta
from persona_axes.judges.base import trait_item_kept
from persona_axes.vectors.methods import trait_vector
from persona_axes.vectors.probes import probe_sweep
from persona_axes.vectors.register import remove_shared_register
from persona_axes.vectors.units import unit_stats, with_unit_stats

VARIANTS = ("mean", "prompt_end", "first")
_QID = re.compile(r"^q(\d+)$")


def eval_question_index(item: dict) -> int:
    """The evaluation question's number (``q07`` -> 7); an evaluation item with another id is an error."""
    m = _QID.match(str(item.get("question_id")))
    if not m:
        raise InvalidInputError(f"evaluation item {item.get('id')!r} has question_id {item.get('question_id')!r}; "
                                "expected q<number>")
    return int(m.group(1))


def split_trait(acts: Activations, name: str, select_questions: int) -> dict:
    """The trait's extraction items and its layer-selection items (evaluation questions < ``select_questions``);
    the steering-validation items (evaluation questions >= it) are only counted."""
    mine = acts.where(name=name)
    splits = {it.get("split") for it in mine.items}
    if not splits <= {"extraction", "evaluation"} or "extraction" not in splits or "evaluation" not in splits:
        raise InvalidInputError(f"trait {name!r}: items have splits {sorted(map(str, splits))}; this script needs "
                                "'extraction' and 'evaluation' items (a run of the standard preset)")
    fit = mine.select(lambda it: it["split"] == "extraction")
    select = mine.select(lambda it: it["split"] == "evaluation" and eval_question_index(it) < select_questions)
    n_check = sum(it["split"] == "evaluation" and eval_question_index(it) >= select_questions for it in mine.items)
    return {"fit": fit, "select": select, "n_check_unused": n_check}


def judged(acts: Activations, min_samples: int) -> tuple[Activations, Activations, bool, dict]:
    """pos/neg judge-kept items, or all of them when a side keeps fewer than ``min_samples`` (as vectors_stage)."""
    pos_all, neg_all = acts.where(polarity="pos"), acts.where(polarity="neg")
    pos = pos_all.select(lambda it: trait_item_kept(it, True))
    neg = neg_all.select(lambda it: trait_item_kept(it, False))
    filtered = len(pos) >= min_samples and len(neg) >= min_samples
    if not filtered:
        pos, neg = pos_all, neg_all
    return pos, neg, filtered, {"n_pos": len(pos), "n_neg": len(neg), "n_pos_all": len(pos_all),
                                "n_neg_all": len(neg_all), "judge_filtered": filtered}


def recapture(run: Path, acts: Activations, variant: str, first_n: int, model) -> Activations:
    """The same items captured again with ``reduce=variant`` from the run's rollouts (same order and metadata)."""
    from persona_axes.runs.store import RolloutStore

    store = RolloutStore(run / "rollouts.jsonl")
    convs = []
    for it in acts.items:
        rec = store.get(it["id"])
        if rec is None:
            raise InvalidInputError(f"rollout {it['id']!r} is not in {run / 'rollouts.jsonl'}")
        convs.append(rec.messages())
    keep = ("id", "kind", "name", "polarity", "prompt_index", "question_id", "split", "sample", "score")
    meta = [{k: it[k] for k in keep if k in it} for it in acts.items]
    return capture(model, convs, which="last_assistant", reduce=variant, first_n=first_n, metadata=meta,
                   batch_size=16, progress=False)


def run_variant(acts: Activations, names: list[str], args) -> dict:
    """Per trait: the fitted vector, the sweep and the counts."""
    out = {}
    for name in names:
        parts = split_trait(acts, name, args.select_questions)
        pos, neg, filtered, counts = judged(parts["fit"], args.min_samples)
        spos, sneg, sfiltered, scounts = judged(parts["select"], args.min_samples)
        sweep = probe_sweep(pos, neg, spos, sneg, C=args.C, layers=args.layer_list, name=name)
        vec = trait_vector(pos, neg, "mean_diff", name=name, metadata={"judge_filtered": str(filtered).lower()})
        out[name] = {"vector": vec, "sweep": sweep, "fit": counts, "select": scounts, "pos": pos, "neg": neg,
                     "n_check_unused": parts["n_check_unused"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="pipeline run folder with activations/trait.safetensors")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variants", default="mean", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--ship", default="mean", choices=VARIANTS, help="the variant whose vectors are written")
    ap.add_argument("--first-n", type=int, default=8)
    ap.add_argument("--select-questions", type=int, default=10, help="evaluation questions 0..N-1 choose the layer")
    ap.add_argument("--min-samples", type=int, default=4)
    ap.add_argument("--threshold", type=float, default=0.3, help="cosine above which two traits share a register")
    ap.add_argument("--C", type=float, default=1.0, help="probe regularisation (inverse L2 strength)")
    ap.add_argument("--traits", default=None, help="comma list (default: every trait in the file)")
    ap.add_argument("--layers", default=None,
                    help="candidate layers, e.g. 6:24 (default: the middle 60%% of the model, n/5 .. 4n/5)")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or args.ship not in variants:
        ap.error(f"--variants must be a comma list of {VARIANTS} including --ship {args.ship!r}")
    t0 = time.time()
    acts = Activations.load(args.run / "activations" / "trait.safetensors")
    names = list(dict.fromkeys(it["name"] for it in acts.items))
    if args.traits:
        want = [n.strip() for n in args.traits.split(",")]
        missing = [n for n in want if n not in names]
        if missing:
            ap.error(f"no trait items for {missing}; the file has {names}")
        names = want
    acts = acts.select(lambda it: it["name"] in names)
    n = acts.model.n_layers
    args.layer_list = parse_layer_spec(args.layers, n) if args.layers else list(range(n // 5, (4 * n) // 5))

    model = None
    results = {}
    for v in variants:
        if v == "mean":
            if acts.reduction != "mean":
                raise InvalidInputError(f"the run's trait activations are reduced by {acts.reduction!r}, not 'mean'")
            va = acts
        else:
            if model is None:
                from persona_axes.model.load import load_model
                torch.set_num_threads(1)
                model = load_model()
            tv = time.time()
            va = recapture(args.run, acts, v, args.first_n, model)
            print(f"captured {len(va)} replies with reduce={v!r} in {time.time() - tv:.0f} s", file=sys.stderr)
        results[v] = run_variant(va, names, args)

    ship = results[args.ship]
    layers = {n: ship[n]["sweep"].best_layer for n in names}
    reg = remove_shared_register({n: ship[n]["vector"] for n in names}, layer=layers, threshold=args.threshold) \
        if len(names) > 1 else None

    default_path = args.run / "activations" / "default.safetensors"
    default = None
    if args.ship == "mean" and default_path.exists():  # steering-unit statistics, as the pipeline stores them
        default = Activations.load(default_path).select(lambda it: it.get("split") is None)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"run": str(args.run), "ship": args.ship, "candidate_layers": args.layer_list,
              "first_n": args.first_n, "select_questions": args.select_questions,
              "threshold": args.threshold, "C": args.C, "traits": {}, "register": None}
    for n in names:
        r, sw = ship[n], ship[n]["sweep"]
        L, j = layers[n], sw.best_index
        vec = reg.vectors[n] if reg is not None else r["vector"]
        if default is not None:
            vec = with_unit_stats(vec, unit_stats(vec, default, r["pos"], r["neg"]))
        purified_against = sorted({p.b if p.a == n else p.a for p in reg.pairs if n in (p.a, p.b)}) if reg else []
        grp = next((g for g in reg.groups if n in g), ()) if reg else ()
        md = dict(vec.metadata)
        md.update({"layer": str(L), "probe_accuracy": f"{float(sw.accuracy[j]):.4f}",
                   "probe_auroc": f"{float(sw.auroc[j]):.4f}", "probe_cohens_d": f"{float(sw.cohens_d[j]):.4f}",
                   "n_pos": str(r["fit"]["n_pos"]), "n_neg": str(r["fit"]["n_neg"]),
                   "judge_filtered": str(r["fit"]["judge_filtered"]).lower(),
                   "purified_against": json_meta([m for m in grp if m != n]) if grp else "[]",
                   "capture": args.ship if args.ship != "first" else f"first{args.first_n}",
                   "layer_selection": f"held-out probe, evaluation questions 0-{args.select_questions - 1}",
                   "n_select_pos": str(r["select"]["n_pos"]), "n_select_neg": str(r["select"]["n_neg"])})
        vec.metadata = md
        vec.save(args.out / f"{n}.safetensors")
        report["traits"][n] = {
            "layer": L, "fit": r["fit"], "select": r["select"], "n_check_unused": r["n_check_unused"],
            "flagged_with": purified_against, "kept_norm": reg.kept_norm[n] if reg else 1.0,
            "variants": {v: {"best_layer": results[v][n]["sweep"].best_layer,
                             "sweep": results[v][n]["sweep"].to_records()} for v in variants},
        }
    if reg is not None:
        report["register"] = {"pairs": reg.to_records(), "groups": [list(g) for g in reg.groups],
                              "shared_cos": {k: list(v) for k, v in reg.shared_cos.items()},
                              "cosines_at_layers": _cosines(ship, names, layers)}
    (args.out / "traits.json").write_text(json.dumps(report, indent=1))
    (args.out / "traits.md").write_text(_markdown(report, results, names, variants, reg))
    print((args.out / "traits.md").read_text())
    print(f"done in {time.time() - t0:.0f} s; vectors in {args.out}", file=sys.stderr)
    return 0


def _cosines(ship: dict, names: list[str], layers: dict) -> dict:
    """``{"a|b": cosine at a's layer}`` of the unpurified vectors, every pair (for the register table)."""
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            va, vb = ship[a]["vector"].vector[layers[a]].double(), ship[b]["vector"].vector[layers[a]].double()
            out[f"{a}|{b}"] = float(va @ vb / (va.norm() * vb.norm()))
    return out


def _markdown(report: dict, results: dict, names: list[str], variants: list[str], reg) -> str:
    lines = [f"# Trait vectors: held-out layer choice (evaluation questions 0-{report['select_questions'] - 1})", "",
             f"Shipped variant: `{report['ship']}`. Probe C={report['C']}; candidate layers "
             f"{report['candidate_layers'][0]}-{report['candidate_layers'][-1]}. Accuracy/AUROC/d are held out (probes "
             "fitted on extraction replies, scored on the layer-selection questions); evaluation questions "
             f"{report['select_questions']}+ were not used.", "",
             "| trait | variant | layer | held-out acc | AUROC | d | train acc | n fit (pos/neg) | n select | judge-filtered |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        for v in variants:
            r = results[v][n]
            sw = r["sweep"]
            j = sw.best_index
            lines.append(f"| {n} | {v} | {sw.best_layer} | {float(sw.accuracy[j]):.3f} | {float(sw.auroc[j]):.3f} | "
                         f"{float(sw.cohens_d[j]):.2f} | {float(sw.train_accuracy[j]):.3f} | "
                         f"{r['fit']['n_pos']}/{r['fit']['n_neg']} | {r['select']['n_pos']}/{r['select']['n_neg']} | "
                         f"{r['fit']['judge_filtered']} |")
    lines += ["", f"## Shared register (threshold cos > {report['threshold']})", ""]
    if reg is None or not reg.pairs:
        lines.append("No pair above the threshold; no vector was purified.")
    else:
        lines += ["| pair | layer | cos before | cos after | norm kept (a / b) |", "|---|---|---|---|---|"]
        for p in reg.to_records():
            lines.append(f"| {p['a']} / {p['b']} | {p['layer']} | {p['cos_before']:+.3f} | {p['cos_after']:+.3f} | "
                         f"{p['kept_norm_a']:.3f} / {p['kept_norm_b']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
