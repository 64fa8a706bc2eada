"""The job planner: counts against the requests the presets really build, sizes and times against hand arithmetic."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from persona_axes.errors import InvalidInputError
from persona_axes.runs.plan import KNOWN_SHAPES, ModelShape, Throughput, calibrate, job_size, model_shape, plan_job
from persona_axes.runs.presets import get_preset

CONFIGS = Path(__file__).resolve().parent.parent / "experiments" / "configs"


@pytest.mark.parametrize("preset", ["smoke", "quick", "paper"])
def test_counts_match_the_requests_the_preset_builds(preset):
    built = Counter(r.kind for r in get_preset(preset).build_requests())
    size = job_size(preset, KNOWN_SHAPES[None], prompt_tokens=10)
    assert size.replies == {"role": built["role"], "default": built["default"], "trait": built["trait"]}
    assert size.max_new_tokens == get_preset(preset).max_new_tokens


def test_paper_scale_overrides_by_hand():
    # the paper: 275 roles x 5 prompts x 240 questions, one sample; the packaged 8 default prompts; traits as packaged
    size = job_size("paper", KNOWN_SHAPES["Qwen/Qwen3-32B"], prompt_tokens=100, roles=275, questions=240, samples=1)
    trait_per_sample = Counter(r.kind for r in get_preset("paper").build_requests())["trait"] // 3
    assert size.replies == {"role": 330_000, "default": 8 * 240, "trait": trait_per_sample}
    n = 330_000 + 1_920 + trait_per_sample
    assert size.total_replies == n
    assert size.generated_tokens == n * 512
    assert size.capture_tokens == n * (100 + 512)
    assert size.activation_bytes == n * 64 * 5120 * 4


def _cfg(name):
    return json.loads((CONFIGS / f"{name}.json").read_text())


def test_plan_by_hand_qwen3_32b_on_8_gpus():
    plan = plan_job(CONFIGS / "qwen3-32b.json", gpus=8, engine="vllm", generate_tps=2500.0, capture_tps=20000.0,
                    prompt_tokens=60.0)
    # 32.8e9 bf16 parameters = 61.1 GiB, x1.25 = 76.4 GiB: one 80 GiB GPU per replica, 8 replicas
    assert plan.gpus_per_replica == 1 and plan.replicas == 8
    n = plan.size.total_replies
    assert n == 110_304  # 70 roles x 5 x 96 x 3 + 8 x 96 x 3 + 7200 trait replies (packaged data)
    assert math.isclose(plan.rollout_seconds, n * 512 / (2500 * 8))
    assert math.isclose(plan.capture_seconds, n * (60 + 512) / (20000 * 8))
    assert math.isclose(plan.total_seconds, plan.rollout_seconds + plan.capture_seconds)
    text = plan.format()
    assert "replies: 110,304" in text and "8 replica(s)" in text and f"{n * 512:,}" in text


def test_plan_llama_70b_needs_three_gpus_per_replica():
    plan = plan_job(_cfg("llama-3.3-70b"), gpus=8, generate_tps=1.0, capture_tps=1.0, prompt_tokens=1.0)
    # 70.6e9 x 2 bytes = 131.5 GiB, x1.25 = 164.4 GiB over 80 GiB GPUs -> 3 per replica, 8 // 3 = 2 replicas
    assert (plan.gpus_per_replica, plan.replicas) == (3, 2)
    with pytest.raises(InvalidInputError, match="needs 3 GPUs"):
        plan_job(_cfg("llama-3.3-70b"), gpus=2, generate_tps=1.0, capture_tps=1.0, prompt_tokens=1.0)
    assert plan_job(_cfg("llama-3.3-70b"), gpus=8, gpu_memory_gib=141, generate_tps=1.0, capture_tps=1.0,
                    prompt_tokens=1.0).gpus_per_replica == 2
    vllm = plan_job(_cfg("llama-3.3-70b"), gpus=8, engine="vllm", generate_tps=1.0, capture_tps=1.0, prompt_tokens=1.0)
    assert (vllm.gpus_per_replica, vllm.replicas) == (4, 2)  # tensor parallel over a power of two GPUs


def test_calibration_is_scaled_by_parameters_and_given_figures_win():
    cal = (Throughput(1000.0, 5000.0, "measured"), 40.0)
    plan = plan_job(_cfg("gemma-2-27b"), calibration=cal)
    f = KNOWN_SHAPES[None].n_params / 27.2e9
    assert math.isclose(plan.throughput.generate_tps, 1000 * f) and math.isclose(plan.throughput.capture_tps, 5000 * f)
    assert plan.size.prompt_tokens == 40.0 and "rough guide" in plan.format()
    mixed = plan_job(_cfg("gemma-2-27b"), calibration=cal, generate_tps=7.0)
    assert mixed.throughput.generate_tps == 7.0 and math.isclose(mixed.throughput.capture_tps, 5000 * f)
    same = plan_job(_cfg("smollm2-quick"), calibration=cal)  # the calibrated model itself: no scaling
    assert same.throughput.generate_tps == 1000.0 and not same.notes
    on_cpu = plan_job(_cfg("smollm2-quick"), calibration=(Throughput(1.0, 1.0, "m", "cpu"), 4.0))
    assert any("calibrated on a CPU" in n for n in on_cpu.notes)


def test_calibrate_on_a_tiny_model(tiny):
    reqs = get_preset("smoke").build_requests()
    thr, prompt = calibrate(reqs, model=tiny, n=4, max_new_tokens=4)
    assert thr.generate_tps > 0 and thr.capture_tps > 0 and thr.device == tiny.model.device.type
    from persona_axes.activations.batch import render_all

    sample = reqs[:: len(reqs) // 4][:4]
    lengths = [len(r) for r in render_all(tiny.tokenizer, [r.messages() for r in sample], add_generation_prompt=True)]
    assert prompt == sum(lengths) / 4


def test_model_shape_from_a_local_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 4, "hidden_size": 64, "vocab_size": 400}))
    assert model_shape(str(tmp_path)) == ModelShape(4, 64, 12 * 4 * 64 * 64 + 400 * 64)
    with pytest.raises(InvalidInputError, match="unknown model"):
        model_shape("nobody/nothing")


def test_bad_configs_and_arguments(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "dtype": "int3"}))
    with pytest.raises(InvalidInputError, match="dtype 'int3'"):
        plan_job(bad, generate_tps=1.0, capture_tps=1.0, prompt_tokens=1.0)
    with pytest.raises(InvalidInputError, match="no config file"):
        plan_job(tmp_path / "none.json")
    with pytest.raises(InvalidInputError, match="engine"):
        plan_job(_cfg("qwen3-32b"), engine="tgi-ish", generate_tps=1.0, capture_tps=1.0, prompt_tokens=1.0)
    with pytest.raises(InvalidInputError, match="calibration"):
        plan_job(_cfg("qwen3-32b"), gpus=8)
    with pytest.raises(InvalidInputError, match="generate_tps"):
        Throughput(0.0, 1.0)


def test_cli_plan_prints_the_plan(capsys):
    from persona_axes.cli.main import main

    rc = main(["plan", "--config", str(CONFIGS / "qwen3-32b.json"), "--gpus", "8", "--engine", "vllm",
               "--throughput", "2500", "--capture-throughput", "20000", "--prompt-tokens", "60"])
    out = capsys.readouterr().out
    assert rc == 0
    n = 110_304
    minutes = (n * 512 / (2500 * 8) + n * 572 / (20000 * 8)) / 60
    assert "replies: 110,304" in out and f"estimated wall time: {minutes:.1f} min" in out
