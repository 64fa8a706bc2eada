"""experiments/traits.py on a synthetic run folder (mean variant only, no model)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from persona_axes.activations.container import Activations
from persona_axes.core import ModelInfo
from persona_axes.vectors.containers import PersonaVector
from persona_axes.vectors.probes import probe_sweep
from persona_axes.vectors.units import stats_of

INFO = ModelInfo("toy", n_layers=4, hidden_size=16)
ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("traits_experiment", ROOT / "experiments" / "traits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path, poison_check=True):
    """Three traits; 'a' and 'b' share direction 0 (plus their own), 'c' its own; signal strongest at layer 2.
    Evaluation questions >= 10 are poisoned (labels flipped, huge) so any use of them would show."""
    g = torch.Generator().manual_seed(0)
    own = {"a": 1, "b": 2, "c": 3}
    rows, items = [], []
    for name in ("a", "b", "c"):
        for split, qs in (("extraction", range(12)), ("evaluation", range(20))):
            for q in qs:
                for pol, sign in (("pos", 1.0), ("neg", -1.0)):
                    x = torch.randn(4, 16, generator=g)
                    for L, s in enumerate((0.3, 1.0, 3.0, 1.5)):
                        x[L, own[name]] += sign * s
                        if name in "ab":
                            x[L, 0] += sign * s
                    if split == "evaluation" and q >= 10 and poison_check:
                        x = -100.0 * x
                    rows.append(x)
                    items.append({"id": f"trait/{name}/{pol}/{split}/q{q:02d}", "name": name, "polarity": pol,
                                  "split": split, "question_id": f"q{q:02d}", "prompt_index": 0,
                                  "score": 90.0 if pol == "pos" else 5.0})
    acts = Activations(values=torch.stack(rows), layers=(0, 1, 2, 3), items=items, model=INFO)
    (tmp_path / "run" / "activations").mkdir(parents=True)
    acts.save(tmp_path / "run" / "activations" / "trait.safetensors")
    default = Activations(values=torch.randn(8, 4, 16, generator=g), layers=(0, 1, 2, 3),
                          items=[{"split": None} for _ in range(8)] + [], model=INFO)
    default.save(tmp_path / "run" / "activations" / "default.safetensors")
    return acts


def test_traits_script_fits_selects_on_q0_9_and_purifies(tmp_path, capsys):
    acts = _run(tmp_path)
    mod = _module()
    assert mod.main([str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--threshold", "0.3"]) == 0
    rep = json.loads((tmp_path / "out" / "traits.json").read_text())
    # the held-out sweep equals one computed here on evaluation questions 0-9 only
    a = acts.where(name="a")
    fit = a.select(lambda it: it["split"] == "extraction")
    sel = a.select(lambda it: it["split"] == "evaluation" and int(it["question_id"][1:]) < 10)
    ref = probe_sweep(fit.where(polarity="pos"), fit.where(polarity="neg"), sel.where(polarity="pos"),
                      sel.where(polarity="neg"), layers=[0, 1, 2])  # the default band: n/5 .. 4n/5
    got = rep["traits"]["a"]["variants"]["mean"]["sweep"]
    assert [r["accuracy"] for r in got] == pytest.approx(ref.accuracy.tolist())
    assert [r["cohens_d"] for r in got] == pytest.approx(ref.cohens_d.tolist())
    assert rep["traits"]["a"]["layer"] == ref.best_layer == 2 and rep["candidate_layers"] == [0, 1, 2]
    assert rep["traits"]["a"]["n_check_unused"] == 20 and rep["traits"]["a"]["select"]["n_pos"] == 10
    # a and b share a direction (cos 0.5 by construction): flagged and purified; c untouched
    assert rep["register"]["groups"] == [["a", "b"]]
    va = PersonaVector.load(tmp_path / "out" / "a.safetensors")
    vc = PersonaVector.load(tmp_path / "out" / "c.safetensors")
    assert va.metadata["purified_against"] == '["b"]' and vc.metadata["purified_against"] == "[]"
    assert va.metadata["layer"] == str(ref.best_layer) and va.metadata["judge_filtered"] == "true"
    assert float(va.metadata["probe_accuracy"]) == pytest.approx(float(ref.accuracy[ref.best_index]), abs=1e-4)
    assert va.metadata["n_pos"] == "12" and va.method == "purified" and vc.method == "mean_diff"
    assert "held-out acc" in (tmp_path / "out" / "traits.md").read_text()
    stats = stats_of(va)  # steering units measured on the purified vector, as the pipeline's vectors carry them
    L = ref.best_layer
    u = va.vector[L].double() / va.vector[L].double().norm()
    pos = fit.where(polarity="pos").values[:, L].double() @ u
    neg = fit.where(polarity="neg").values[:, L].double() @ u
    assert stats.gap[L] == pytest.approx(float(pos.mean() - neg.mean()), rel=1e-4)


def test_evaluation_items_without_a_question_number_are_refused(tmp_path):
    acts = _run(tmp_path)
    mod = _module()
    items = [dict(it, question_id="x-7") if it["split"] == "evaluation" else it for it in acts.items]
    bad = Activations(values=acts.values, layers=acts.layers, items=items, model=INFO)
    with pytest.raises(Exception, match="question_id"):
        mod.split_trait(bad, "a", 10)
