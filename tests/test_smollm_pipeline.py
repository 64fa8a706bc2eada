"""Integration on SmolLM2: the pipeline's mean-difference trait vectors equal an independent computation from the
stored rollouts (plain HF forward with output_hidden_states, response tokens found by tokenising the prompt
prefix, one sample at a time)."""

import json

import pytest
import torch

from persona_axes.runs.stages import PipelineConfig, run_pipeline
from persona_axes.runs.rollouts import RolloutPreset

pytestmark = pytest.mark.slow

MICRO = RolloutPreset(name="micro", roles=("pirate", "accountant"), prompts_per_role=1, questions=2,
                      default_prompts=2, traits=("evil", "optimistic"), trait_pairs=1, trait_questions=2, samples=1,
                      max_new_tokens=12, temperature=0.0, batch_size=8)


def _response_mean(loaded, rec) -> torch.Tensor:
    m, tok = loaded
    msgs = [{"role": "system", "content": rec["system"]}] if rec["system"] else []
    msgs.append({"role": "user", "content": rec["question"]})
    prefix = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": rec["response"]}], tokenize=False)
    assert full.startswith(prefix) and full[len(prefix):] == rec["response"] + "<|im_end|>\n"
    n_prefix = len(tok(prefix, add_special_tokens=False)["input_ids"])
    ids = tok(full, add_special_tokens=False)["input_ids"]
    start, end = n_prefix, len(ids) - 2  # drop "<|im_end|>" and "\n"
    assert tok.decode(ids[start:end]) == rec["response"]
    last = {}
    h = loaded.layers.blocks[-1].register_forward_hook(lambda mod, a, o: last.setdefault("o", o))
    try:
        with torch.no_grad():
            hs = m(torch.tensor([ids]), output_hidden_states=True).hidden_states
    finally:
        h.remove()
    rows = [hs[L + 1][0, start:end].double().mean(0) for L in range(loaded.layers.n_layers - 1)]
    rows.append(last["o"][0, start:end].double().mean(0))
    return torch.stack(rows)


def test_trait_vectors_equal_independent_computation(smollm, tmp_path):
    res = run_pipeline(smollm, tmp_path, PipelineConfig(preset=MICRO, judge="none", min_role_samples=1,
                                                        min_trait_samples=1, n_components=1), progress=False)
    recs = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    for trait in MICRO.traits:
        pos = [_response_mean(smollm, r) for r in recs if r["name"] == trait and r["polarity"] == "pos"]
        neg = [_response_mean(smollm, r) for r in recs if r["name"] == trait and r["polarity"] == "neg"]
        ref = torch.stack(pos).mean(0) - torch.stack(neg).mean(0)
        got = res.traits[trait].vector.double()
        rel = (got - ref).norm(dim=-1) / ref.norm(dim=-1)
        assert rel.max() < 1e-4, (trait, rel.max())
