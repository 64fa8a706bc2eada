"""The capping trade-off on held-out prompts: which floor cuts role-play most while leaving ordinary replies alone.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/capping_tradeoff.py \\
        --axis vectors/smollm2-135m-instruct/assistant_axis.safetensors --out experiments/results/capping_smollm2

Inputs are arguments so the same script runs on any run's axis: ``--axis`` (an Assistant Axis PersonaVector file),
``--axis-layer`` (where projections are read; default the ``best_layer`` of a ``summary.json`` next to the axis,
else 20), ``--reference`` (a JSON of default-assistant replies; made and cached here when missing: default prompts
0-5, the fit split's, x the first 2 questions of each category of ``data/questions.json``, greedy, 64 tokens),
``--shipped-cap`` (a capping file to check as it is, e.g. the one shipped now). The reference replies are captured
per token (``reduce="all"``); per-token settings take floor percentiles over those tokens, "mean" settings over
reply means of the same capture (the recipe of the cap shipped before).

Evaluation prompts are evaluation-only (``data/evals/heldout_roleplay.json``, ``heldout_questions.json``): role-play
= ``--characters`` characters (taken round-robin over the families) x ``--questions-per-character`` questions (an
identity question, then an ordinary request), ordinary = the first ``--ordinary`` ordinary requests (no system
prompt), checkable = the first ``--checkable`` checkable
questions. Greedy, ``--tokens`` new tokens; uncapped replies are generated once. Each setting's result is appended
to ``<out>.json`` as it finishes, and a rerun skips settings already there. Writes ``<out>.md`` (the table, the
chosen default and why) and ``<out>.json``; with a chosen setting, ``<out>_cap.safetensors`` (its CapConfig, the
capped positions in ``extra["positions"]``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

DEFAULT_SETTINGS = [  # (percentile, band, positions, per_token), most informative first (the run may be cut short)
    (10, (17, 18, 19, 20, 21, 22, 23), "all", True),
    (25, (17, 18, 19, 20, 21, 22, 23), "generated", True),
    (50, (17, 18, 19, 20, 21, 22, 23), "generated", True),
    (5, (17, 18, 19, 20, 21, 22, 23), "all", True),
    (25, (17, 18, 19, 20, 21, 22, 23), "generated", False),
    (25, (17, 18, 19, 20, 21, 22, 23), "all", True),
    (10, (17, 18, 19, 20, 21, 22, 23), "generated", True),
    (1, (17, 18, 19, 20, 21, 22, 23), "all", True),
    (10, (19, 20, 21), "all", True),
    (10, tuple(range(12, 26)), "all", True),
    (10, tuple(range(10, 17)), "all", True),
]


def reference_replies(model, path: Path) -> list[dict]:
    from persona_axes.steering.generation import SamplingConfig, generate_replies

    if path.is_file():
        return json.loads(path.read_text())["items"]
    root = Path(__file__).resolve().parents[1] / "persona_axes" / "data"
    prompts = json.loads((root / "default_prompts.json").read_text())["prompts"][:6]
    by_cat: dict[str, list] = {}
    for q in json.loads((root / "questions.json").read_text())["questions"]:
        by_cat.setdefault(q["category"], []).append(q)
    chosen = [q for qs in by_cat.values() for q in qs[:2]]
    convs, meta = [], []
    for pi, p in enumerate(prompts):
        for q in chosen:
            convs.append(([{"role": "system", "content": p}] if p else []) + [{"role": "user", "content": q["text"]}])
            meta.append({"prompt": pi, "question": q["id"]})
    replies = generate_replies(model, convs, SamplingConfig(max_new_tokens=64), batch_size=16, progress=True)
    items = [{**m, "messages": c, "reply": r} for m, c, r in zip(meta, convs, replies)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"note": "default-assistant replies: default prompts 0-5 x 2 fit questions per "
                                        "category, greedy, 64 new tokens", "items": items}, indent=1))
    return items


def _ci(e: dict, fmt="{:.2f}") -> str:
    if e["value"] is None:
        return "n/a"
    lo, hi = e["low"], e["high"]
    return f"{fmt.format(e['value'])} [{fmt.format(lo)}, {fmt.format(hi)}]" if lo is not None else fmt.format(e["value"])


def _row(r: dict) -> str:
    return (f"| {r['label']} | {r['threshold_kind']} | {_ci(r['in_character_without'])} | {_ci(r['in_character_with'])} "
            f"| {_ci(r['cut'])} | {r['self_id_without']['value']:.2f} -> {r['self_id_with']['value']:.2f} "
            f"| {r['service_without']['value']:.2f} -> {r['service_with']['value']:.2f} "
            f"| {r['repetition_without']['value']:.3f} -> {r['repetition_with']['value']:.3f} "
            f"| {r['unchanged']}/{r['n_ordinary']} | {r['correct_without']['value']:.2f} -> {r['correct_with']['value']:.2f} "
            f"| {r['projection_without']['value']:+.1f} -> {r['projection_with']['value']:+.1f} |")


def _parse_settings(text: str | None) -> list[tuple]:
    """``"5:4-27:all:token;10:17-23:generated:mean"`` -> [(5, (4..27), "all", True), ...] (bands inclusive)."""
    out = []
    for part in filter(None, (text or "").split(";")):
        pct, band, pos, kind = part.split(":")
        a, b = (int(x) for x in band.split("-"))
        out.append((float(pct) if "." in pct else int(pct), tuple(range(a, b + 1)), pos, kind == "token"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--axis", default="vectors/smollm2-135m-instruct/assistant_axis.safetensors")
    ap.add_argument("--axis-layer", type=int, default=None)
    ap.add_argument("--reference", default="experiments/results/capping_smollm2_reference.json")
    ap.add_argument("--shipped-cap", default="vectors/smollm2-135m-instruct/capping.safetensors",
                    help="a capping file checked as it is ('' to skip)")
    ap.add_argument("--out", default="experiments/results/capping_smollm2")
    ap.add_argument("--characters", type=int, default=16)
    ap.add_argument("--questions-per-character", type=int, choices=(1, 2), default=2,
                    help="1: an identity question only; 2: and an ordinary request")
    ap.add_argument("--ordinary", type=int, default=8)
    ap.add_argument("--checkable", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--extra-settings", default=None,
                    help='more settings after the defaults, e.g. "5:4-27:all:token;10:17-23:generated:mean"')
    ap.add_argument("--limit-settings", type=int, default=None, help="only the first N default settings (smoke runs)")
    ap.add_argument("--model", default=None, help="model to load (default: the embedded SmolLM2)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()

    import transformers

    from persona_axes.activations.batch import capture
    from persona_axes.evals.cap_check import (CapBehaviour, CapSetting, cap_behaviour, choose_cap, explore_caps,
                                              reply_means, roleplay_prompts, uncapped_replies, Uncapped)
    from persona_axes.evals.data import load_heldout_questions, load_heldout_roleplay
    from persona_axes.judges.embedding import EmbeddingJudge
    from persona_axes.model.load import load_model
    from persona_axes.steering.capping import CapConfig, calibrate_cap
    from persona_axes.vectors.containers import PersonaVector

    model = load_model(args.model) if args.model else load_model()
    axis = PersonaVector.load(args.axis, model=model)
    axis_layer = args.axis_layer
    summary = Path(args.axis).parent / "summary.json"
    if axis_layer is None:
        best = json.loads(summary.read_text()).get("best_layer") if summary.is_file() else None
        axis_layer = best if isinstance(best, int) else 20
    judge = EmbeddingJudge()
    by_family: dict[str, list] = {}
    for c in load_heldout_roleplay():
        by_family.setdefault(c.family, []).append(c)
    # round-robin over families, so a subset still covers every family
    chars = [c for group in itertools.zip_longest(*by_family.values()) for c in group if c is not None][: args.characters]
    qs = load_heldout_questions()
    rp = [p for i, c in enumerate(chars) for p in (
        roleplay_prompts([c], [qs.identity[i % len(qs.identity)].text])
        + roleplay_prompts([c], [qs.ordinary[-1 - i % len(qs.ordinary)].text]))[: args.questions_per_character]]
    ordinary, checkable = list(qs.ordinary[: args.ordinary]), list(qs.checkable[: args.checkable])

    ref_items = reference_replies(model, Path(args.reference))
    settings_src = DEFAULT_SETTINGS[: args.limit_settings] + _parse_settings(args.extra_settings)
    layers = sorted({L for _, band, _, _ in settings_src for L in band} | {axis_layer})
    ref = capture(model, [it["messages"] + [{"role": "assistant", "content": it["reply"]}] for it in ref_items
                          if it["reply"].strip()], layers=layers, reduce="all", batch_size=16, progress=False)
    means = reply_means(ref)
    print(f"reference: {len(means)} replies, {len(ref)} tokens ({time.time() - t0:.0f}s)", flush=True)

    out_json = Path(args.out).with_suffix(".json")
    done = {}
    if out_json.is_file():
        done = {r["label"]: r for r in json.loads(out_json.read_text()).get("results", [])}
    prev = json.loads(out_json.read_text()).get("uncapped") if out_json.is_file() else None
    if prev and [len(prev[k]) for k in ("roleplay", "ordinary", "checkable")] == [len(rp), len(ordinary), len(checkable)] \
            and prev["max_new_tokens"] == args.tokens:
        un = Uncapped(tuple(prev["roleplay"]), tuple(prev["ordinary"]), tuple(prev["checkable"]), args.tokens)
    else:
        un = uncapped_replies(model, rp, ordinary, checkable, max_new_tokens=args.tokens)
    print(f"uncapped replies ({time.time() - t0:.0f}s)", flush=True)

    # where the floors sit: per-token vs reply-mean percentiles of the reference, and role-play reply tokens
    u = axis.vector[axis_layer].float() / axis.vector[axis_layer].float().norm()
    rp_tok = capture(model, [p.messages() + [{"role": "assistant", "content": r}] for p, r in zip(rp, un.roleplay)
                             if r.strip()], layers=[axis_layer], reduce="all", progress=False).at(axis_layer) @ u
    tok, mean = (ref.at(axis_layer) @ u).numpy(), (means.at(axis_layer) @ u).numpy()
    pcts = [1, 5, 10, 25, 50]
    diag = {"layer": axis_layer, "percentiles": pcts,
            "reference_tokens": [float(np.percentile(tok, p)) for p in pcts],
            "reference_reply_means": [float(np.percentile(mean, p)) for p in pcts],
            "roleplay_tokens": [float(np.percentile(rp_tok.numpy(), p)) for p in pcts],
            "roleplay_tokens_below_token_floor": [float((rp_tok.numpy() < np.percentile(tok, p)).mean()) for p in pcts],
            "roleplay_tokens_below_mean_floor": [float((rp_tok.numpy() < np.percentile(mean, p)).mean()) for p in pcts]}

    results: list[CapBehaviour] = [CapBehaviour.from_dict(done[k]) for k in done]

    def save():
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps({"results": [r.to_dict() for r in results], "diagnostics": diag,
                                        "uncapped": {**asdict(un)}}, indent=1))

    todo = [CapSetting(p, b, pos, t) for p, b, pos, t in settings_src]

    def meta_now(chosen, cap_path=None):
        return {"command": "OMP_NUM_THREADS=1 nice -n 10 " + " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
                "torch": torch.__version__, "transformers": transformers.__version__,
                "python": platform.python_version(), "model": getattr(model, "name", str(args.model)), "axis": args.axis,
                "axis_layer": axis_layer, "n_roleplay": len(rp), "n_ordinary": len(ordinary),
                "n_checkable": len(checkable), "max_new_tokens": args.tokens, "reference_replies": len(means),
                "reference_tokens": len(ref), "chosen": None if chosen is None else chosen.label,
                "chosen_cap_file": str(cap_path) if cap_path else None,
                "minutes_this_run": round((time.time() - t0) / 60, 1),
                "settings_done": [r.label for r in results],
                "settings_planned": [s.label for s in todo] + (["shipped file"] if args.shipped_cap else [])}

    def report(final=False):
        save()
        chosen = choose_cap([r for r in results if r.label != "shipped file"])
        write_markdown(Path(args.out).with_suffix(".md"), meta_now(chosen), diag, [r.to_dict() for r in results],
                       chosen, final)

    for i, s in enumerate(todo):
        if s.label not in done:
            results.extend(explore_caps(model, axis, ref, roleplay=rp, ordinary=ordinary, checkable=checkable,
                                        judge=judge, settings=[s], max_new_tokens=args.tokens, axis_layer=axis_layer,
                                        uncapped=un))
            report()
            print(f"{s.label} ({time.time() - t0:.0f}s)", flush=True)
        if i == 2 and args.shipped_cap and "shipped file" not in done:
            shipped = CapConfig.load(args.shipped_cap, model=model)
            results.append(cap_behaviour(model, shipped, roleplay=rp, ordinary=ordinary, checkable=checkable,
                                         judge=judge, max_new_tokens=args.tokens, axis=axis, axis_layer=axis_layer,
                                         uncapped=un, label="shipped file"))
            report()
            print(f"shipped file ({time.time() - t0:.0f}s)", flush=True)

    chosen = choose_cap([r for r in results if r.label != "shipped file"])
    cap_path = None
    s = None if chosen is None else next((s for s in todo if s.label == chosen.label), None)
    if s is not None:
        cap = calibrate_cap(axis, ref if s.per_token else means, list(s.layers), percentile=s.percentile,
                            reference_name=f"{len(means)} default-assistant replies ({len(ref)} tokens), default "
                                           "prompts 0-5 x 12 fit questions, greedy")
        cap.extra["positions"] = s.positions
        cap_path = cap.save(Path(args.out + "_cap.safetensors"))
    meta = meta_now(chosen, cap_path)
    out_json.write_text(json.dumps({"meta": meta, "diagnostics": diag, "results": [r.to_dict() for r in results],
                                    "uncapped": asdict(un)}, indent=1))
    write_markdown(Path(args.out).with_suffix(".md"), meta, diag, [r.to_dict() for r in results], chosen, True)
    print(f"wrote {out_json} and the markdown ({meta['minutes_this_run']} min)")


def write_markdown(path: Path, meta: dict, diag: dict, rows: list[dict], chosen, final: bool) -> None:
    n = meta
    todo = [s for s in n["settings_planned"] if s not in n["settings_done"]]
    lines = [
        "# Capping trade-off on held-out prompts (SmolLM2-135M-Instruct)", "",
        f"Command: `{n['command']}`  ", f"torch {n['torch']}, transformers {n['transformers']}, Python {n['python']}; "
        f"{n['minutes_this_run']} min on shared CPU cores.", "",
        *([] if final else [f"**Partial**: {len(n['settings_done'])} of {len(n['settings_planned'])} settings done; "
                            f"not run yet: {', '.join(todo)}. Rerun the command to continue (finished settings are "
                            "kept).", ""]),
        f"Axis `{n['axis']}`, projections read at layer {n['axis_layer']} (reply mean, without the cap). Reference: "
        f"{n['reference_replies']} default-assistant replies ({n['reference_tokens']} tokens). Evaluation-only prompts: "
        f"{n['n_roleplay']} role-play (held-out characters x an identity question [+ an ordinary request]), "
        f"{n['n_ordinary']} ordinary requests (no system prompt), {n['n_checkable']} checkable questions; greedy, "
        f"{n['max_new_tokens']} new tokens. In character = EmbeddingJudge role score >= 2. CIs: 95% bootstrap over items.",
        "",
        "Setting = floor percentile, capped layers, capped positions (all tokens or generated only), thresholds from "
        "per-token projections of the reference ('token') or from reply means ('mean', the recipe of the cap shipped "
        "before). 'shipped file' is the capping file as shipped.", "",
        "| setting | thresholds | in character w/o | in character with cap | relative cut | self-ID | service phrases "
        "| repetition | ordinary unchanged | checkable correct | projection |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[_row(r) for r in rows], "",
        "## Chosen default", "",
        "Rule (`persona_axes.evals.cap_check.choose_cap`): among settings that leave >= 7/8 of the ordinary replies "
        "exactly unchanged, do not lower checkable correctness and cut the in-character rate at all, the largest relative cut of the in-character rate "
        "(ties: more unchanged, then fewer layers).", "",
    ]
    if chosen is None:
        lines.append("No setting met the constraints; nothing is chosen (the shipped cap should not be called "
                     "behaviour-preserving).")
    else:
        c = chosen.to_dict()
        target = "meets" if c["cut"]["value"] >= 0.5 and c["unchanged"] >= 7 / 8 * c["n_ordinary"] else "does NOT meet"
        lines += [f"**{c['label']}** ({c['threshold_kind']} thresholds): in-character rate "
                  f"{_ci(c['in_character_without'])} -> {_ci(c['in_character_with'])} (cut {_ci(c['cut'])}), "
                  f"{c['unchanged']}/{c['n_ordinary']} ordinary replies unchanged, checkable correctness "
                  f"{c['correct_without']['value']:.2f} -> {c['correct_with']['value']:.2f}. It {target} the target "
                  "(cut >= 0.5 with >= 7/8 unchanged).", "",
                  f"Thresholds: {', '.join(f'L{k} {v:+.2f}' for k, v in c['thresholds'].items())}. "
                  f"Cap file: `{n['chosen_cap_file']}` (positions in its metadata `positions`)."]
    lines += ["", "## Where the floors sit", "",
              f"Projections at layer {diag['layer']} on the unit axis; percentiles {diag['percentiles']}.", "",
              "| | " + " | ".join(f"p{p}" for p in diag["percentiles"]) + " |",
              "|---|" + "---|" * len(diag["percentiles"]),
              "| reference reply tokens | " + " | ".join(f"{v:+.1f}" for v in diag["reference_tokens"]) + " |",
              "| reference reply means | " + " | ".join(f"{v:+.1f}" for v in diag["reference_reply_means"]) + " |",
              "| role-play reply tokens (uncapped) | " + " | ".join(f"{v:+.1f}" for v in diag["roleplay_tokens"]) + " |",
              "| role-play tokens below the per-token floor | "
              + " | ".join(f"{v:.2f}" for v in diag["roleplay_tokens_below_token_floor"]) + " |",
              "| role-play tokens below the reply-mean floor | "
              + " | ".join(f"{v:.2f}" for v in diag["roleplay_tokens_below_mean_floor"]) + " |", ""]
    ex = next((r for r in rows if chosen is not None and r["label"] == chosen.label), None)
    if ex:
        lines += ["## Examples (chosen setting)", ""]
        for e in ex["examples"]:
            lines += [f"- **{e['character']}** / {e['question']}", f"  - without: {e['without'][:220]!r}",
                      f"  - with: {e['with'][:220]!r}"]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
