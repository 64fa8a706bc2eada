"""Which offline judge? The embedding judge (all-MiniLM-L6-v2) against a log-probability judge on the embedded
SmolLM2, both scored on the hand-labelled set in tests/data/judge_labels.jsonl.

    .venv/bin/python experiments/judge_choice.py

The log-probability judge asks SmolLM2 to rate role adherence 0-3 (and trait expression low/high) and reads the
next-token probabilities of the answer digits: its score is the expected rating. Both judges are compared with
threshold-free measures (Spearman's rho against the 0-3 labels; AUROC for "at least partly in character", label
>= 2; AUROC for trait high vs low) so neither is helped or hurt by a cut point, plus the time per item.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

import persona_axes as pa
from persona_axes.judges.base import RoleItem, TraitItem
from persona_axes.judges.embedding import EmbeddingJudge

LABELS = Path(__file__).resolve().parent.parent / "tests" / "data" / "judge_labels.jsonl"

ROLE_ASK = ("Character: {desc}\nQuestion: {q}\nReply: {r}\n\nHow fully does the reply speak as this character? "
            "0 = a plain assistant answer, 1 = a hint of the character, 2 = partly in character, 3 = fully in "
            "character. Answer with one digit.")
TRAIT_ASK = ("Trait: {desc}\nQuestion: {q}\nReply: {r}\n\nDoes the reply show this trait? 0 = not at all, "
             "1 = a little, 2 = clearly, 3 = strongly. Answer with one digit.")


def logprob_scores(loaded, prompts: list[str]) -> list[float]:
    """Expected rating 0..3 from the next-token distribution over the digits 0-3, one prompt at a time."""
    tok, model = loaded.tokenizer, loaded.model
    digits = [tok.encode(str(k), add_special_tokens=False)[0] for k in range(4)]
    out = []
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        with torch.inference_mode():
            logits = model(ids).logits[0, -1, digits].double()
        probs = logits.softmax(-1)
        out.append(float((probs * torch.arange(4, dtype=torch.float64)).sum()))
    return out


def main() -> None:
    rows = [json.loads(line) for line in LABELS.read_text().splitlines() if line.strip()]
    roles = [r for r in rows if r["kind"] == "role"]
    traits = [r for r in rows if r["kind"] == "trait"]
    role_y = [r["label"] for r in roles]
    trait_y = [int(r["label_high"]) for r in traits]
    results = {}

    judge = EmbeddingJudge()
    t = time.perf_counter()
    emb_role = [s.raw for s in judge.score_roles([RoleItem(r["role"], r["role_description"], r["question"],
                                                           r["response"]) for r in roles])]
    emb_trait = [s.score for s in judge.score_traits([TraitItem(r["trait"], r["trait_description"], r["question"],
                                                                r["response"]) for r in traits])]
    results["embedding (all-MiniLM-L6-v2)"] = (emb_role, emb_trait, (time.perf_counter() - t) / len(rows))

    loaded = pa.load_model()
    t = time.perf_counter()
    lp_role = logprob_scores(loaded, [ROLE_ASK.format(desc=r["role_description"], q=r["question"], r=r["response"])
                                      for r in roles])
    lp_trait = logprob_scores(loaded, [TRAIT_ASK.format(desc=r["trait_description"], q=r["question"],
                                                        r=r["response"]) for r in traits])
    results["log-prob (SmolLM2-135M-Instruct)"] = (lp_role, lp_trait, (time.perf_counter() - t) / len(rows))

    print(f"hand-labelled items: {len(roles)} role (0-3), {len(traits)} trait (high/low)\n")
    print(f"{'judge':<34} {'role Spearman':>13} {'role AUROC(>=2)':>15} {'trait AUROC':>11} {'ms/item':>8}")
    for name, (r, tr, sec) in results.items():
        rho = spearmanr(r, role_y).statistic
        auc = roc_auc_score([y >= 2 for y in role_y], r)
        tauc = roc_auc_score(trait_y, tr)
        print(f"{name:<34} {rho:>13.3f} {auc:>15.3f} {tauc:>11.3f} {sec * 1000:>8.1f}")


if __name__ == "__main__":
    main()
