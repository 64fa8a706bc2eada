"""Where does steering along the Assistant Axis change behaviour monotonically? A sweep in the steering units of
:mod:`persona_axes.vectors.units` on held-out questions, written to a markdown table.

What it does (defaults: the embedded SmolLM2-135M-Instruct and its shipped vectors):

1. unit statistics for the shipped axis: ``rel`` and ``sd`` from reply-mean activations of default-assistant
   replies (generated here: default prompts 0-5 x 8 fit questions, greedy, 48 tokens; or ``--reference FILE``),
   ``gap`` = ``|axis[L]|`` (the axis is a mean difference, default mean minus the mean of role means, so the gap
   between those two means along the unit axis is its length);
2. greedy replies (48 new tokens) to evaluation-only questions (written for this script, never used to fit
   anything) under ``Steer(..., unit=UNIT, positions="generated")`` for each coefficient, one batch per question;
3. per coefficient: degeneracy (mean fraction of repeated word 4-grams, and the share of replies "looping":
   more than 20% repeated 4-grams), direction (share of replies with an assistant-style self-reference, share with
   a human/character-style one), and each reply read back without steering and projected on the unit axis at the
   steered layer, in sd units from the default replies' mean;
4. the monotone range: the widest run of coefficients around 0 along which the read-back projection rises at
   each step and the looping share stays within 0.1 of the unsteered one.

Run: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/steering_range.py`` (about 10 minutes on one
shared core); ``--layers 17:24`` steers the band 17-23 instead of layer 20 (pass ``--coefs=-3,0,3`` with an equals sign).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

# Written for this measurement only (not in persona_axes/data, never used to fit a vector).
EVAL_QUESTIONS = [
    "What kind of thing are you, in your own words?",
    "How would you spend a rainy Sunday afternoon?",
    "Give me one tip for keeping houseplants alive.",
    "What goes through your mind when nobody is talking to you?",
    "Describe the room you are sitting in right now.",
    "Why does the sky look blue during the day?",
    "What is your favourite memory?",
    "Write two sentences to cheer up a friend who failed an exam.",
    "Where did you grow up?",
    "What could I cook tonight with rice and eggs?",
]

ASSISTANT_RE = re.compile(r"\b(assistant|AI|A\.I\.|language model|artificial intelligence|chatbot|help|helpful|"
                          r"happy to assist|assist you)\b", re.IGNORECASE)
HUMAN_RE = re.compile(r"\b(I grew up|my (?:mom|mother|dad|father|family|wife|husband|childhood|friends?|house|home|"
                      r"hometown|grandmother|grandfather)|when I was (?:a kid|young|little)|years old|my name is)\b",
                      re.IGNORECASE)
LOOP_THRESHOLD = 0.2


def repeated_4grams(text: str) -> float:
    """Fraction of the word 4-grams of ``text`` that repeat an earlier one (0 for fewer than 4 words)."""
    w = re.findall(r"\w+", text.lower())
    grams = [tuple(w[i:i + 4]) for i in range(len(w) - 3)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def default_conversations(n_prompts: int = 6, n_questions: int = 8) -> list[list[dict[str, str]]]:
    """Default prompts 0..n_prompts-1 x the first ``n_questions`` fit questions, round robin over categories."""
    from persona_axes.runs.datasets import load_default_prompts, load_questions

    by_cat: dict[str, list] = {}
    for q in load_questions():
        by_cat.setdefault(q.category, []).append(q)
    picked = [qs[i] for i in range(2) for qs in by_cat.values()][:n_questions]
    convs = []
    for p in load_default_prompts()[:n_prompts]:
        for q in picked:
            convs.append(([{"role": "system", "content": p}] if p else []) + [{"role": "user", "content": q.text}])
    return convs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vectors", default=None, help="shipped vectors folder (default: the embedded model's)")
    ap.add_argument("--layers", default="20", help="layer(s) to steer, e.g. 20 or 17:24 (read back at the middle)")
    ap.add_argument("--unit", default="sd", help="steering unit for the coefficients (default sd)")
    ap.add_argument("--coefs", default="-6,-4.5,-3,-1.5,0,1.5,3,4.5,6")
    ap.add_argument("--reference", default=None, help="default-assistant activations file (reduce mean); "
                    "default: generate 48 replies and capture them")
    ap.add_argument("--save-reference", default=None, help="write the captured default activations here")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", default=str(HERE / "results" / "steering_units_smollm2.md"))
    ap.add_argument("--json", default=None, help="also write every reply here (default: beside --out)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    import transformers

    from persona_axes.activations.batch import capture
    from persona_axes.activations.container import Activations
    from persona_axes.core import parse_layer_spec
    from persona_axes.files import shipped_vectors_dir
    from persona_axes.model.load import load_model
    from persona_axes.steering.generation import SamplingConfig, generate_replies
    from persona_axes.steering.interventions import Steer
    from persona_axes.vectors.containers import PersonaVector
    from persona_axes.vectors.units import UnitStats, reference_norms, stats_of, with_unit_stats

    t0 = time.time()
    loaded = load_model()
    vdir = Path(args.vectors) if args.vectors else shipped_vectors_dir()
    axis = PersonaVector.load(vdir / "assistant_axis.safetensors", model=loaded)
    layers = parse_layer_spec(args.layers, axis.n_layers)
    read_at = layers[len(layers) // 2]
    coefs = [float(c) for c in args.coefs.split(",")]
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)

    if args.reference:
        ref = Activations.load(args.reference, model=loaded)
        ref_desc = f"{len(ref)} default-assistant replies from {args.reference}"
    else:
        convs = default_conversations()
        replies = generate_replies(loaded, convs, sampling, batch_size=16, progress=True)
        ref = capture(loaded, [c + [{"role": "assistant", "content": r}] for c, r in zip(convs, replies)],
                      which="last_assistant", reduce="mean", progress=False)
        ref_desc = f"{len(ref)} default-assistant replies (default prompts 0-5 x 8 fit questions, greedy)"
        if args.save_reference:
            ref.save(args.save_reference)
    u = axis.unit()  # [n_layers, d]
    proj_default = torch.stack([ref.at(L).double() @ u[L].double() for L in range(axis.n_layers)], 1)  # [n, layers]
    stats = stats_of(axis) or UnitStats(rel=reference_norms(ref, axis.model).tolist(),
                                        sd=proj_default.std(0, unbiased=True).tolist(),
                                        gap=axis.norms().tolist(), reference=ref_desc + "; gap = |axis[L]|")
    axis = with_unit_stats(axis, stats)
    mu, sd = float(proj_default[:, read_at].mean()), stats.sd[read_at]
    print(f"layer {read_at}: rel {stats.rel[read_at]:.1f}, sd {sd:.2f}, gap {stats.gap[read_at]:.2f} "
          f"({time.time() - t0:.0f}s)", file=sys.stderr)

    rows = {c: [] for c in coefs}
    for q in EVAL_QUESTIONS:
        conv = [{"role": "user", "content": q}]
        with Steer(loaded, axis, layers, torch.tensor(coefs), unit=args.unit, positions="generated") as steer:
            out = generate_replies(loaded, [conv] * len(coefs), sampling, batch_size=len(coefs))
        back = capture(loaded, [conv + [{"role": "assistant", "content": r}] for r in out], layers=[read_at],
                       which="last_assistant", reduce="mean", progress=False)
        proj = ((back.at(read_at).double() @ u[read_at].double() - mu) / sd).tolist()
        for c, r, p in zip(coefs, out, proj):
            rows[c].append({"question": q, "reply": r, "projection_sd": p, "rep4": repeated_4grams(r),
                            "assistant": bool(ASSISTANT_RE.search(r)), "human": bool(HUMAN_RE.search(r))})
        print(f"  {q[:40]!r} done ({time.time() - t0:.0f}s)", file=sys.stderr)
    scale = steer.record()["scale_per_layer"]

    table = []
    for c in coefs:
        rs = rows[c]
        n = len(rs)
        table.append({"coef": c, "rel_equiv": c * stats.of(args.unit)[read_at] / stats.rel[read_at]
                      if args.unit != "rel" else c,
                      "rep4": sum(r["rep4"] for r in rs) / n, "loops": sum(r["rep4"] > LOOP_THRESHOLD for r in rs) / n,
                      "assistant": sum(r["assistant"] for r in rs) / n, "human": sum(r["human"] for r in rs) / n,
                      "projection_sd": sum(r["projection_sd"] for r in rs) / n})
    i0 = coefs.index(0.0) if 0.0 in coefs else len(coefs) // 2
    base_loops = table[i0]["loops"]

    def ok(i: int) -> bool:
        return table[i]["loops"] <= base_loops + 0.1 + 1e-9

    lo = i0
    while lo > 0 and ok(lo - 1) and table[lo - 1]["projection_sd"] < table[lo]["projection_sd"]:
        lo -= 1
    hi = i0
    while hi < len(coefs) - 1 and ok(hi + 1) and table[hi + 1]["projection_sd"] > table[hi]["projection_sd"]:
        hi += 1
    monotone = (coefs[lo], coefs[hi])

    lines = [
        "# Steering range along the Assistant Axis, SmolLM2-135M-Instruct, in the new units",
        "",
        f"Written by `experiments/steering_range.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); torch "
        f"{torch.__version__}, transformers {transformers.__version__}, CPU, one thread.",
        "",
        "Command: `" + " ".join(["OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/steering_range.py",
                                 *(argv if argv is not None else sys.argv[1:])]) + "`",
        "",
        f"- Vector: shipped `assistant_axis.safetensors`, steered at layer(s) {layers} (generated positions), "
        f"unit **{args.unit}**; replies read back without steering at layer {read_at}.",
        f"- Unit sizes at layer {read_at}: rel = {stats.rel[read_at]:.1f} (mean norm of default reply-mean "
        f"activations), sd = {sd:.2f} (spread of default projections), gap = {stats.gap[read_at]:.2f} (|axis|); "
        f"so 1 sd = {sd / stats.rel[read_at]:.3f} rel and 1 gap = {stats.gap[read_at] / sd:.2f} sd. Reference: "
        f"{stats.reference}.",
        f"- Scale per steered layer (activation units per coefficient unit / |v|): "
        f"{ {k: round(v, 4) for k, v in scale.items()} }.",
        f"- Evaluation: {len(EVAL_QUESTIONS)} held-out questions written for this measurement only (in the "
        f"script), greedy decoding, {args.max_new_tokens} new tokens, n = {len(EVAL_QUESTIONS)} replies per "
        "coefficient.",
        f"- Measures: `rep4` mean fraction of repeated word 4-grams; `loops` share of replies with rep4 > "
        f"{LOOP_THRESHOLD}; `assistant` share with an assistant-style self-reference (assistant, AI, help, ...); "
        "`human` share with a human/character-style one (my family, I grew up, years old, ...); `projection` the "
        "reply read back on the unit axis, in sd from the default replies' mean.",
        "",
        f"| coef ({args.unit}) | = rel | rep4 | loops | assistant | human | projection (sd) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in table:
        lines.append(f"| {t['coef']:+g} | {t['rel_equiv']:+.3f} | {t['rep4']:.2f} | {t['loops']:.1f} | "
                     f"{t['assistant']:.1f} | {t['human']:.1f} | {t['projection_sd']:+.2f} |")
    lines += ["", f"**Monotone range** (read-back projection rising at every step, looping share within 0.1 of the "
              f"unsteered replies): {args.unit} {monotone[0]:+g} to {monotone[1]:+g}.", "",
              "## Replies to the first two questions", ""]
    for q in EVAL_QUESTIONS[:2]:
        lines.append(f"**{q}**")
        lines.append("")
        for c in coefs:
            r = next(r for r in rows[c] if r["question"] == q)
            lines.append(f"- {c:+g}: {r['reply'].replace(chr(10), ' ')[:220]}")
        lines.append("")
    lines.append(f"({time.time() - t0:.0f}s in all.)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    jpath = Path(args.json) if args.json else out.with_suffix(".json")
    jpath.write_text(json.dumps({"layers": layers, "unit": args.unit, "coefs": coefs, "monotone": monotone,
                                 "table": table, "replies": {str(c): rows[c] for c in coefs}}, indent=1))
    print("\n".join(lines[lines.index(f"| coef ({args.unit}) | = rel | rep4 | loops | assistant | human | "
                                      "projection (sd) |"):]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
