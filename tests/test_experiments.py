"""The paper-reproduction experiment: its configs are valid for their models, bad configs are refused clearly, and
an end-to-end run (smoke preset, SmolLM2) writes a report whose numbers agree with the pipeline's files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from persona_axes.errors import InvalidInputError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "experiments" / "configs"
# decoder blocks per model, from the models' published configs
N_LAYERS = {"smollm2-quick": 30, "gemma-2-27b": 46, "qwen3-32b": 64, "llama-3.3-70b": 80}


def _reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "experiments" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", sorted(N_LAYERS))
def test_configs_fit_their_models(name):
    cfg = _reproduce().ExperimentConfig.load(CONFIGS / f"{name}.json")
    n = N_LAYERS[name]
    assert cfg.name == name
    if cfg.target_layer is not None:
        assert 0 <= cfg.target_layer < n
    if cfg.cap_layers is not None:
        assert all(0 <= L < n for L in cfg.cap_layers)
        assert list(cfg.cap_layers) == list(range(cfg.cap_layers[0], cfg.cap_layers[-1] + 1))  # a contiguous band
    assert cfg.preset in {"quick", "paper"} and 0 <= cfg.cap_percentile <= 100


def test_bad_configs_are_refused(tmp_path):
    load = _reproduce().ExperimentConfig.load
    with pytest.raises(InvalidInputError, match="no config file"):
        load(tmp_path / "missing.json")
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"name": "x", "target_layr": 3}))
    with pytest.raises(InvalidInputError, match=r"unknown keys \['target_layr'\]"):
        load(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({"model": None}))
    with pytest.raises(InvalidInputError, match="needs a 'name'"):
        load(tmp_path / "c.json")


@pytest.mark.slow
def test_reproduce_end_to_end_on_smollm(smollm, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"name": "smoke-test", "preset": "smoke", "judge": "none", "target_layer": 20,
                               "cap_layers": [18, 19, 20, 21], "steer_coefs": [-0.5, 0.0, 0.5], "reply_tokens": 8}))
    assert _reproduce().main([str(cfg), "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "experiment.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert res["target_layer"] == 20 and res["cap_layers"] == [18, 19, 20, 21]
    assert res["pc1_cosine_at_target"] == summary["pc1_cosine_by_layer"][20]
    assert [s["coef"] for s in res["steering"]] == [-0.5, 0.0, 0.5]
    assert len(res["capping_check"]["capped"]) == len(res["capping_check"]["prompts"]) == 4
    assert (out / "vectors" / "capping_smoke-test.safetensors").is_file()
    page = (out / "report.html").read_text()
    assert "Activation capping under role-play pressure" in page and "Persona map at layer 20" in page
    # a target layer the model does not have is refused in one line, after the (cached) pipeline
    cfg.write_text(json.dumps({"name": "smoke-test", "preset": "smoke", "judge": "none", "target_layer": 30}))
    assert _reproduce().main([str(cfg), "--out", str(out), "--quiet"]) == 2
    assert "target_layer 30 is out of range" in capsys.readouterr().err


def test_capping_check_leaves_empty_replies_out(tiny, monkeypatch):
    """An empty reply has no tokens to average: its projection is None and the mean is over the others, each equal
    to an independent capture of that reply."""
    import torch

    import persona_axes as pa
    from helpers import conversations

    mod = _reproduce()
    torch.manual_seed(0)
    axis = pa.PersonaVector(vector=torch.randn(4, 64), model=pa.ModelInfo("tiny-llama", 4, 64), name="axis",
                          method="test")
    ref = pa.capture(tiny, conversations(4), progress=False)
    cap = pa.calibrate_cap(axis, ref, [1, 2], percentile=25)
    replies = iter([["", "Arr, matey!", "The treasure lies beyond.", "Hello there!"]] * 2)
    monkeypatch.setattr(pa, "generate_replies", lambda *a, **k: next(replies))
    check = mod.capping_check(tiny, axis, cap, 2, reply_tokens=4)
    got = [r["projection"] for r in check["uncapped"]]
    assert got[0] is None and all(isinstance(p, float) for p in got[1:])
    for prompt, reply, p in zip(mod.PRESSURE[1:], ["Arr, matey!", "The treasure lies beyond.", "Hello there!"],
                                got[1:]):
        conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
        alone = pa.capture(tiny, [conv], layers=[2], progress=False).at(2)[0] @ axis.unit(2)
        assert p == pytest.approx(float(alone), abs=1e-4)
    assert check["mean_uncapped"] == pytest.approx(sum(got[1:]) / 3)
    assert "(empty reply)" in mod._capping_html(check, cap)
