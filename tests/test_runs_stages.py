"""The whole pipeline on a tiny random model with a tiny preset: files written, numbers consistent, resumable."""

import json

import torch

import persona_axes as pa
from persona_axes.steering.interventions import CapConfig
from persona_axes.runs.stages import PipelineConfig, run_pipeline
from persona_axes.runs.rollouts import RolloutPreset
from persona_axes.vectors.containers import PersonaVector, VectorSet

TINY = RolloutPreset(name="tiny", roles=("pirate", "accountant", "dog", "oracle"), prompts_per_role=1, questions=3,
                     default_prompts=2, traits=("evil", "humorous"), trait_pairs=1, trait_questions=3, samples=1,
                     max_new_tokens=6, temperature=0.0, batch_size=8)


def test_pipeline_end_to_end_and_resume(tiny, tmp_path, monkeypatch):
    cfg = PipelineConfig(preset=TINY, judge="none", min_role_samples=2, min_trait_samples=2, n_components=3)
    res = run_pipeline(tiny, tmp_path, cfg, progress=False)
    v = tmp_path / "vectors"
    axis = PersonaVector.load(v / "assistant_axis.safetensors", model=tiny)
    roles = VectorSet.load(v / "roles.safetensors", model=tiny)
    assert axis.vector.shape == (4, 64) and axis.method == "assistant_axis"
    assert set(roles.names) == set(TINY.roles)
    # the axis is mean(default) - mean(roles), recomputed independently from the stored activations
    d = pa.Activations.load(tmp_path / "activations" / "default.safetensors").values.double().mean(0)
    r_acts = pa.Activations.load(tmp_path / "activations" / "role.safetensors")
    r_means = torch.stack([r_acts.where(name=n).values.double().mean(0) for n in TINY.roles])
    assert torch.allclose(axis.vector.double(), d - r_means.mean(0), atol=1e-4)
    for t in TINY.traits:
        tv = PersonaVector.load(v / "traits" / f"{t}.safetensors", model=tiny)
        ta = pa.Activations.load(tmp_path / "activations" / "trait.safetensors")
        ref = ta.where(name=t, polarity="pos").values.double().mean(0) - ta.where(name=t, polarity="neg").values.double().mean(0)
        assert torch.allclose(tv.vector.double(), ref, atol=1e-4)
    cap = CapConfig.load(v / "capping.safetensors", model=tiny)
    assert cap.kind == "floor" and res.summary["best_layer"] in cap.layers
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["pc1_cosine_by_layer"]) == 4 and summary["n_rollouts"]["role"] == 12
    # resume: nothing is generated or captured again
    calls = []
    real = pa.capture
    monkeypatch.setattr("persona_axes.activations.extraction.capture", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = run_pipeline(tiny, tmp_path, cfg, progress=False)
    assert again.summary["rollouts_generated_this_run"] == 0 and calls == []
    assert torch.equal(again.axis.vector, res.axis.vector)
