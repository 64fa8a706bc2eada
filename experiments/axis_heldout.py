"""How well does the Assistant Axis separate the default Assistant from role-play, on prompts written for evaluation
only? (The pipeline's own held-out sweep uses held-out roles, prompts and questions of the packaged data; this
check uses characters and questions that are not in the packaged data at all.)

Role-play: every character of ``data/evals/heldout_roleplay.json`` (its system prompt) x ``--questions`` questions
(identity questions first, then ordinary requests, from ``data/evals/heldout_questions.json``). Default Assistant:
no system prompt and "You are a helpful assistant." x the same questions. Greedy, ``--tokens`` new tokens. Each
reply's mean residual activation is projected on the unit axis at every layer; per layer: AUROC (default above
role-play) and Cohen's d with 95% bootstrap intervals (2,000 resamples of each group). The role-play replies are
also judged in character by the embedding judge (score >= 2), and the AUROC is reported on those as well.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python experiments/axis_heldout.py --vectors DIR --out OUT`` (``DIR`` holds
``assistant_axis.safetensors`` and ``summary.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from persona_axes.activations.batch import capture
from persona_axes.evals.data import load_heldout_questions, load_heldout_roleplay
from persona_axes.judges.base import RoleItem, accepts_role, judge_from_spec
from persona_axes.model.load import load_model
from persona_axes.runs.summary import RunSummary
from persona_axes.steering.generation import SamplingConfig, generate_replies
from persona_axes.vectors.containers import PersonaVector
from persona_axes.stats import separation

DEFAULT_SYSTEMS = ("", "You are a helpful assistant.")


def _convs(system: str, questions: list[str]) -> list[list[dict[str, str]]]:
    head = [{"role": "system", "content": system}] if system else []
    return [head + [{"role": "user", "content": q}] for q in questions]


def _ci(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> tuple[list[float], list[float]]:
    g = np.random.default_rng(seed)
    reps = np.array([separation(a[g.integers(0, len(a), len(a))], b[g.integers(0, len(b), len(b))])
                     for _ in range(n_boot)])
    return list(np.nanpercentile(reps[:, 0], [2.5, 97.5])), list(np.nanpercentile(reps[:, 1], [2.5, 97.5]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vectors", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--questions", type=int, default=4, help="questions per character (identity first)")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    loaded = load_model()
    axis = PersonaVector.load(args.vectors / "assistant_axis.safetensors", model=loaded)
    summary = args.vectors / "summary.json"
    summary = summary if summary.is_file() else args.vectors.parent / "summary.json"  # a run's vectors/ folder
    best = RunSummary.load(summary).best_layer
    chars = load_heldout_roleplay()
    hq = load_heldout_questions()
    pool = [q.text for q in hq.identity] + [q.text for q in hq.ordinary]
    n_id = min(len(hq.identity), max(1, args.questions // 2))
    questions = [q.text for q in hq.identity[:n_id]] + [q.text for q in hq.ordinary[:args.questions - n_id]]
    role_convs, role_meta = [], []
    for c in chars:
        for q in questions:
            role_convs += _convs(c.system_prompt, [q])
            role_meta.append((c, q))
    default_qs = pool[: max(len(questions), 16)]
    default_convs = [conv for s in DEFAULT_SYSTEMS for conv in _convs(s, default_qs)]
    sampling = SamplingConfig(max_new_tokens=args.tokens, temperature=0.0)
    replies = generate_replies(loaded, role_convs + default_convs, sampling, batch_size=16)
    role_replies, default_replies = replies[:len(role_convs)], replies[len(role_convs):]
    full = [conv + [{"role": "assistant", "content": r}] for conv, r in zip(role_convs + default_convs, replies)]
    keep = [i for i, r in enumerate(replies) if r.strip()]
    acts = capture(loaded, [full[i] for i in keep], batch_size=16)
    n_role = sum(1 for i in keep if i < len(role_convs))
    judge = judge_from_spec("embedding")
    scores = judge.score_roles([RoleItem(role=c.name, role_description=c.description, question=q, response=r)
                                for (c, q), r in zip(role_meta, role_replies)])
    in_char = [accepts_role(s) for s in scores]
    in_char_rows = [j for j in range(n_role) if in_char[keep[j]]]  # rows of acts: kept role replies in character
    per_layer = []
    for L in acts.layers:
        u = axis.unit(L).double()
        p = (acts.at(L).double() @ u).numpy()
        r, d = p[:n_role], p[n_role:]
        auc, cd = separation(d, r)
        auc_ci, d_ci = _ci(d, r, args.n_boot, L)
        row = {"layer": L, "auroc": auc, "auroc_ci": auc_ci, "cohens_d": cd, "cohens_d_ci": d_ci}
        if len(in_char_rows) > 1:
            ri = p[in_char_rows]
            row["auroc_in_character"] = separation(d, ri)[0]
            row["auroc_in_character_ci"] = _ci(d, ri, args.n_boot, 1000 + L)[0]
        per_layer.append(row)
    import transformers

    out = {"best_layer": best, "n_role": n_role, "n_default": len(acts) - n_role,
           "n_in_character": len(in_char_rows), "characters": [c.name for c in chars], "questions": questions,
           "default_systems": list(DEFAULT_SYSTEMS), "per_layer": per_layer,
           "replies": {"role": role_replies, "default": default_replies, "in_character": in_char},
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version()},
           "seconds": time.time() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1))
    lines = [f"# Assistant Axis on evaluation-only prompts ({args.vectors})\n",
             f"{n_role} role-play replies ({len(chars)} characters not in the packaged roles x {len(questions)} "
             f"questions; {len(in_char_rows)} judged in character) vs {len(acts) - n_role} default-assistant replies "
             f"(no system prompt and \"You are a helpful assistant.\" x {len(default_qs)} questions); greedy, "
             f"{args.tokens} tokens. AUROC = P(default projects above role-play); 95% bootstrap intervals. "
             f"Pipeline-chosen layer: {best}.\n",
             "| layer | AUROC [95% CI] | Cohen's d [95% CI] | AUROC, in-character replies only [95% CI] |",
             "|---:|---|---|---|"]
    for row in per_layer:
        ic = (f"{row['auroc_in_character']:.3f} [{row['auroc_in_character_ci'][0]:.3f}, "
              f"{row['auroc_in_character_ci'][1]:.3f}]") if "auroc_in_character" in row else "n/a"
        mark = " **(chosen)**" if row["layer"] == best else ""
        lines.append(f"| {row['layer']}{mark} | {row['auroc']:.3f} [{row['auroc_ci'][0]:.3f}, {row['auroc_ci'][1]:.3f}] "
                     f"| {row['cohens_d']:.2f} [{row['cohens_d_ci'][0]:.2f}, {row['cohens_d_ci'][1]:.2f}] | {ic} |")
    lines.append(f"\nVersions: {out['versions']}; took {out['seconds']:.0f} s.")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
