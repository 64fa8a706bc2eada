"""The whole pipeline on a tiny random model with a tiny preset: files written, numbers consistent, resumable."""

import json

import pytest

import torch

import persona_axes as pa
from persona_axes.steering.capping import CapConfig
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


# ----------------------------------------------------------------------------------------------------------------
# Two processes writing one run folder at once
# ----------------------------------------------------------------------------------------------------------------

WRITER = """
import os, sys, time
sys.path.insert(0, {tests!r})
from helpers import slow_down, tiny_loaded
from persona_axes.runs import rollouts as R
from persona_axes.runs.stages import PipelineConfig, run_pipeline
from test_runs_stages import TINY

loaded = tiny_loaded()
slow_down(R, "_generate_batch", 0.3)
print("ready", flush=True)
while not os.path.exists({go!r}):  # both processes start the run at the same moment
    time.sleep(0.002)
if {mode!r} == "pipeline":
    run_pipeline(loaded, {out!r}, PipelineConfig(preset=TINY, judge="none", min_role_samples=2, min_trait_samples=2,
                                                 n_components=3), progress=False)
else:
    R.run_rollouts(loaded, TINY.build_requests(), {out!r} + "/rollouts.jsonl", TINY.sampling(), batch_size=4,
                   progress=False)
print("finished", flush=True)
"""


@pytest.mark.parametrize("mode", ["pipeline", "rollouts"])
def test_two_processes_writing_one_run_folder(tmp_path, mode):
    """Two real processes start writing the same run folder at the same moment: exactly one does the work, the other
    is refused with a message saying another process is writing it; the store holds every request once, every line
    checked (nothing lost, nothing interleaved)."""
    import os
    import subprocess
    import sys
    import warnings
    from pathlib import Path

    from persona_axes.runs.store import RolloutStore

    tests = Path(__file__).resolve().parent
    out = tmp_path / "run"
    script = tmp_path / "writer.py"
    go = tmp_path / "go"
    script.write_text(WRITER.format(tests=str(tests), out=str(out), mode=mode, go=str(go)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)]), "OMP_NUM_THREADS": "1"}
    errs = [open(tmp_path / f"stderr{i}.txt", "wb") for i in range(2)]  # files, so a full pipe never blocks a child
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=errs[i], env=env)
             for i in range(2)]
    try:
        for i, p in enumerate(procs):  # wait until both are loaded and waiting, then let them go together
            line = b""
            while line.strip() != b"ready":  # (the test tokenizer's training prints blank lines first)
                line = p.stdout.readline()
                assert line, (tmp_path / f"stderr{i}.txt").read_text()[-2000:]  # it exited before it was ready
        go.touch()
        results = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for e in errs:
            e.close()
    stderr = [(tmp_path / f"stderr{i}.txt").read_text() for i in range(2)]
    codes = [p.returncode for p in procs]
    ok = [i for i, c in enumerate(codes) if c == 0]
    assert len(ok) == 1, [e[-2000:] for e in stderr]
    refused = stderr[1 - ok[0]]
    assert "InvalidInputError" in refused and "being written by another" in refused, refused[-2000:]
    assert b"finished" in results[ok[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every line whole and checked: no torn line, no legacy line
        store = RolloutStore(out / "rollouts.jsonl")
    want = [r.id for r in TINY.build_requests()]
    assert sorted(store.completed_ids()) == sorted(want)
    assert len((out / "rollouts.jsonl").read_bytes().splitlines()) == len(want)  # each once
    if mode == "pipeline":
        from persona_axes.runs.summary import RunSummary

        assert RunSummary.load(out / "summary.json").n_rollouts["role"] == 12


# ----------------------------------------------------------------------------------------------------------------
# A preset with held-out splits: vectors from fit replies only, the layer sweep on held-out ones
# ----------------------------------------------------------------------------------------------------------------

HELD = RolloutPreset(name="held", roles=("pirate", "accountant", "dog", "oracle", "chef", "dragon"),
                     prompts_per_role=1, questions=2, default_prompts=2, traits=("evil",), trait_pairs=2,
                     trait_questions=2, samples=2, max_new_tokens=5, temperature=0.7, batch_size=8, heldout=True,
                     heldout_questions=2, default_questions=3, greedy_first=True, trait_samples=1,
                     trait_pairs_per_question=1, trait_extra_questions=1, trait_select_questions=1)


def test_heldout_pipeline_fits_on_fit_replies_and_sweeps_on_heldout_ones(tiny, tmp_path):
    from persona_axes.runs.store import RolloutStore
    from persona_axes.stats import auroc

    cfg = PipelineConfig(preset=HELD, judge="none", min_role_samples=1, min_trait_samples=1, n_components=3)
    res = run_pipeline(tiny, tmp_path, cfg, progress=False)
    recs = RolloutStore(tmp_path / "rollouts.jsonl").records()
    # sample 0 greedy, sample 1 sampled at the preset's temperature
    assert {r.sampling["temperature"] for r in recs if r.sample == 0} == {0.0}
    assert {r.sampling["temperature"] for r in recs if r.sample == 1} == {0.7}
    held_roles = {r.name for r in recs if r.kind == "role" and r.split == "evaluation"}
    assert held_roles == {"chef", "dragon"}  # index 4 of their families
    assert set(res.roles.names) == {"pirate", "accountant", "dog", "oracle"}
    acts = {k: pa.Activations.load(tmp_path / "activations" / f"{k}.safetensors") for k in ("role", "default", "trait")}
    fit_d = acts["default"].select(lambda it: it["split"] is None).values.double().mean(0)
    fit_r = torch.stack([acts["role"].select(lambda it, n=n: it["name"] == n and it["split"] is None)
                         .values.double().mean(0) for n in ("pirate", "accountant", "dog", "oracle")])
    assert torch.allclose(res.axis.vector.double(), fit_d - fit_r.mean(0), atol=1e-4)
    ev = acts["trait"].select(lambda it: it["split"] == "extraction")
    ref = ev.where(polarity="pos").values.double().mean(0) - ev.where(polarity="neg").values.double().mean(0)
    assert torch.allclose(res.traits["evil"].vector.double(), ref, atol=1e-4)
    assert any(it["split"] == "evaluation" for it in acts["trait"].items)  # captured, never fitted on
    s = res.summary
    assert s.layer_sweep_evaluated_on == "held-out" and s.heldout["n_heldout"]["role"] == 2 * 2 * 2 * 2
    hd = acts["default"].select(lambda it: it["split"] == "evaluation")
    hr = acts["role"].select(lambda it: it["split"] == "evaluation")
    for row in s.layer_sweep:
        u = res.axis.vector[row["layer"]].double()
        u = u / u.norm()
        p1, p0 = (hd.at(row["layer"]).double() @ u).tolist(), (hr.at(row["layer"]).double() @ u).tolist()
        assert row["auroc"] == pytest.approx(auroc([True] * len(p1) + [False] * len(p0), p1 + p0), abs=1e-9)
        lo, hi = row["auroc_ci"]
        assert lo <= row["auroc"] + 1e-9 and row["auroc"] - 1e-9 <= hi
