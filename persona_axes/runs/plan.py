"""The job planner: how big a run is and about how long it takes, before starting it.

:func:`plan_job` reads an experiment config (``experiments/configs/*.json``: ``model``, ``dtype``, ``preset``)
and gives a :class:`JobPlan`:

* the job size (:class:`JobSize`): replies per kind from the preset's counts over the packaged data (roles x
  prompts x questions x samples, default prompts x questions x samples, traits x pairs x 2 sides x questions x
  samples; each count can be overridden, e.g. the paper's 275 roles and 240 questions), generated tokens (at most
  ``max_new_tokens`` per reply), tokens the activation pass reads (prompt + reply), and the bytes of the captured
  activations (one float32 row of ``hidden_size`` per reply and layer, every layer, as the pipeline stores them);
* throughput per model replica (:class:`Throughput`): given (``generate_tps``, ``capture_tps``: tokens/s), or
  measured by :func:`calibrate` on a model here (the embedded SmolLM2 by default) and scaled to the target by
  parameter count (decode and forward cost grow about linearly with parameters: a rough guide, said so in the
  output);
* the layout: GPUs one replica needs (weights in the config's dtype plus 25% for the KV cache and activations,
  over ``gpu_memory_gib``; rounded up to a power of two for vLLM's tensor parallelism), and the replicas ``gpus``
  allow; the estimated wall time is rollouts + capture, each
  tokens / (throughput x replicas).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_axes.core import check_float, check_int
from persona_axes.errors import InvalidInputError
from persona_axes.runs.presets import RolloutPreset, get_preset

__all__ = ["ModelShape", "KNOWN_SHAPES", "model_shape", "JobSize", "job_size", "Throughput", "calibrate",
           "JobPlan", "plan_job", "load_job_config", "DTYPE_BYTES", "HEADROOM"]

#: Bytes per weight for the dtypes a config may name (None: float32, the CPU default).
DTYPE_BYTES = {None: 4, "float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
#: Memory a replica needs beyond its weights (KV cache, activations), as a fraction of the weights.
HEADROOM = 0.25
ACTIVATION_BYTES = 4  # captured activations are stored as float32


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about a model: blocks, width and parameter count."""

    n_layers: int
    hidden_size: int
    n_params: float


#: Shapes of the models the shipped configs name (from their published configs), and of the embedded default.
KNOWN_SHAPES: dict[str | None, ModelShape] = {
    None: ModelShape(30, 576, 134.5e6),  # SmolLM2-135M-Instruct, the embedded default
    "HuggingFaceTB/SmolLM2-135M-Instruct": ModelShape(30, 576, 134.5e6),
    "Qwen/Qwen3-32B": ModelShape(64, 5120, 32.8e9),
    "google/gemma-2-27b-it": ModelShape(46, 4608, 27.2e9),
    "meta-llama/Llama-3.3-70B-Instruct": ModelShape(80, 8192, 70.6e9),
}


def model_shape(model: str | None) -> ModelShape:
    """The shape of ``model``: a known name, or a local folder with a ``config.json`` (``num_hidden_layers``,
    ``hidden_size``; parameters estimated as 12 x layers x width^2 + vocabulary x width)."""
    if model in KNOWN_SHAPES:
        return KNOWN_SHAPES[model]
    cfg_path = Path(str(model)) / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        cfg = cfg.get("text_config", cfg)
        try:
            n, d, v = int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), int(cfg.get("vocab_size", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidInputError(f"{cfg_path}: no num_hidden_layers/hidden_size ({e})") from None
        return ModelShape(n, d, 12.0 * n * d * d + v * d)
    raise InvalidInputError(f"unknown model {model!r} for the planner: use one of {sorted(k for k in KNOWN_SHAPES if k)}"
                            ", a local folder with config.json, or give the shape (n_layers, hidden_size, n_params)")


@dataclass(frozen=True)
class JobSize:
    """Replies per kind, the reply budget, and the mean prompt length in tokens."""

    replies: dict[str, int]
    max_new_tokens: int
    prompt_tokens: float
    shape: ModelShape

    @property
    def total_replies(self) -> int:
        return sum(self.replies.values())

    @property
    def generated_tokens(self) -> int:
        """At most this many tokens are generated (every reply at its budget)."""
        return self.total_replies * self.max_new_tokens

    @property
    def capture_tokens(self) -> float:
        """Tokens the activation pass reads: each conversation, prompt and (at most) full reply."""
        return self.total_replies * (self.prompt_tokens + self.max_new_tokens)

    @property
    def activation_bytes(self) -> int:
        """Bytes of the captured activations: one float32 row per reply, layer and hidden unit."""
        return self.total_replies * self.shape.n_layers * self.shape.hidden_size * ACTIVATION_BYTES


def job_size(preset: str | RolloutPreset, shape: ModelShape, *, prompt_tokens: float, roles: int | None = None,
             questions: int | None = None, samples: int | None = None, max_new_tokens: int | None = None
             ) -> JobSize:
    """The size of a preset's run. Counts come from the preset over the packaged data; ``roles``, ``questions``
    (role and default questions), ``samples`` and ``max_new_tokens`` override them (e.g. the paper's 275 roles x
    240 questions)."""
    from persona_axes.runs.datasets import load_default_prompts, load_questions, load_roles, load_traits

    p = get_preset(preset)
    check_float(prompt_tokens, "prompt_tokens", nonnegative=True)
    n_roles = len(p.roles) if p.roles is not None else len(load_roles())
    n_questions = len(load_questions()) if p.questions is None else min(p.questions, len(load_questions()))
    n_default = len(load_default_prompts()) if p.default_prompts is None else p.default_prompts
    roles = n_roles if roles is None else check_int(roles, "roles", minimum=0)
    questions = n_questions if questions is None else check_int(questions, "questions", minimum=1)
    samples = p.samples if samples is None else check_int(samples, "samples", minimum=1)
    budget = p.max_new_tokens if max_new_tokens is None else check_int(max_new_tokens, "max_new_tokens", minimum=1)
    trait_q = 0
    for t in load_traits(p.traits).values():
        n = len(t.extraction_questions)
        trait_q += n if p.trait_questions is None else min(n, p.trait_questions)
    replies = {"role": roles * p.prompts_per_role * questions * samples,
               "default": n_default * questions * samples,
               "trait": trait_q * p.trait_pairs * 2 * samples}
    return JobSize(replies, budget, float(prompt_tokens), shape)


@dataclass(frozen=True)
class Throughput:
    """Tokens per second of ONE model replica: generated (``generate_tps``) and read by the activation pass
    (``capture_tps``); ``source`` says where the figures come from."""

    generate_tps: float
    capture_tps: float
    source: str = "given"
    device: str = ""  # where a calibration ran ("cpu", "cuda"); "" for given figures

    def __post_init__(self) -> None:
        check_float(self.generate_tps, "generate_tps", positive=True)
        check_float(self.capture_tps, "capture_tps", positive=True)

    def scaled(self, from_params: float, to_params: float) -> Throughput:
        """These figures moved from a model of ``from_params`` parameters to one of ``to_params``."""
        f = from_params / to_params
        return Throughput(self.generate_tps * f, self.capture_tps * f,
                          f"{self.source}, scaled by parameters x{f:.3g}", self.device)


def calibrate(requests: Sequence[Any], *, model: Any = None, engine: Any = None, n: int = 8,
              max_new_tokens: int = 32) -> tuple[Throughput, float]:
    """Measure throughput on ``n`` of ``requests`` (RolloutRequests, spread over the list): generation with
    ``engine`` (default: :class:`~persona_axes.engines.hf.HFEngine` on ``model``, default the embedded model),
    capture with ``model``. Returns the throughput and the mean prompt length (tokens, the model's template)."""
    from persona_axes.activations.batch import capture, render_all
    from persona_axes.engines.base import EngineRequest
    from persona_axes.engines.hf import HFEngine
    from persona_axes.model.load import load_model
    from persona_axes.steering.generation import SamplingConfig

    check_int(n, "n", minimum=1)
    model = load_model() if model is None else model
    engine = HFEngine(model, batch_size=n) if engine is None else engine
    step = max(1, len(requests) // n)
    sample = list(requests)[::step][:n]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    t0 = time.perf_counter()
    replies = engine.generate([EngineRequest(r.id, tuple(r.messages()), 0) for r in sample], sampling)
    gen_s = time.perf_counter() - t0
    tokens = sum(r.completion_tokens or 0 for r in replies)
    convs = [[*r.messages(), {"role": "assistant", "content": x.text or "."}] for r, x in zip(sample, replies)]
    rendered = render_all(model.tokenizer, convs, add_generation_prompt=False)
    t0 = time.perf_counter()
    capture(model, rendered, batch_size=n, progress=False)
    cap_s = time.perf_counter() - t0
    prompts = render_all(model.tokenizer, [r.messages() for r in sample], add_generation_prompt=True)
    device = str(next(model.model.parameters()).device.type)
    where = (f"measured on {device} with {getattr(engine, 'name', 'the engine')} ({n} replies, {max_new_tokens} new "
             "tokens)")
    return (Throughput(max(tokens, 1) / gen_s, sum(len(r) for r in rendered) / cap_s, where, device),
            sum(len(p) for p in prompts) / len(prompts))


@dataclass(frozen=True)
class JobPlan:
    """A job's size, throughput and layout, and the estimated wall time."""

    name: str
    model: str | None
    dtype: str | None
    engine: str
    size: JobSize
    throughput: Throughput
    gpus: int
    gpus_per_replica: int
    notes: tuple[str, ...] = field(default=())

    @property
    def replicas(self) -> int:
        return max(1, self.gpus // self.gpus_per_replica)

    @property
    def rollout_seconds(self) -> float:
        return self.size.generated_tokens / (self.throughput.generate_tps * self.replicas)

    @property
    def capture_seconds(self) -> float:
        return self.size.capture_tokens / (self.throughput.capture_tps * self.replicas)

    @property
    def total_seconds(self) -> float:
        return self.rollout_seconds + self.capture_seconds

    def format(self) -> str:
        s, t = self.size, self.throughput
        kinds = ", ".join(f"{k} {v:,}" for k, v in s.replies.items())
        lines = [
            f"plan: {self.name} ({self.model or 'embedded SmolLM2-135M-Instruct'}, {s.shape.n_layers} layers x "
            f"{s.shape.hidden_size}, {s.shape.n_params / 1e9:.3g}B parameters, {self.dtype or 'float32'})",
            f"engine: {self.engine}; {self.gpus} GPU(s), {self.gpus_per_replica} per replica -> {self.replicas} "
            f"replica(s)",
            f"replies: {s.total_replies:,} ({kinds})",
            f"generated tokens: at most {s.generated_tokens:,} ({s.max_new_tokens} per reply)",
            f"activation pass: {s.capture_tokens:,.0f} tokens (mean prompt {s.prompt_tokens:.0f} + reply)",
            f"activations: {_bytes(s.activation_bytes)} (float32, {s.shape.n_layers} layers x {s.shape.hidden_size} "
            "per reply)",
            f"throughput per replica: {_num(t.generate_tps)} generated tok/s, {_num(t.capture_tps)} capture tok/s "
            f"({t.source})",
            f"estimated wall time: {_duration(self.total_seconds)} (rollouts {_duration(self.rollout_seconds)}, "
            f"activation pass {_duration(self.capture_seconds)})",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1000
    raise AssertionError("unreachable")


def _num(x: float) -> str:
    return f"{x:,.1f}" if x >= 100 else f"{x:.3g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 72 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} days"


def load_job_config(path: str | os.PathLike) -> dict[str, Any]:
    """An experiment config (JSON object with at least ``name``; ``model``, ``dtype``, ``preset`` used here)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"no config file at {path}; see experiments/configs/ for examples")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("name"), str):
        raise InvalidInputError(f"{path}: a config is a JSON object with a 'name'")
    if cfg.get("dtype") not in DTYPE_BYTES:
        raise InvalidInputError(f"{path}: dtype {cfg.get('dtype')!r} is not one of {sorted(k for k in DTYPE_BYTES if k)}")
    return cfg


def plan_job(config: str | os.PathLike | Mapping[str, Any], *, gpus: int = 1, engine: str = "hf",
             generate_tps: float | None = None, capture_tps: float | None = None, gpu_memory_gib: float = 80.0,
             prompt_tokens: float | None = None, calibration: tuple[Throughput, float] | None = None,
             calibrated_params: float | None = None, **size_overrides: Any) -> JobPlan:
    """The plan of the run ``config`` describes (a path or the config's dict).

    ``generate_tps``, ``capture_tps``: tokens/s of one replica of the target model; a figure not given comes from
    ``calibration`` (:func:`calibrate`'s result, made on a model of ``calibrated_params`` parameters - default the
    embedded model's - and scaled by parameters). ``prompt_tokens``: the mean prompt length (else the
    calibration's). ``size_overrides``: ``roles``, ``questions``, ``samples``, ``max_new_tokens`` (see
    :func:`job_size`).
    """
    cfg = load_job_config(config) if not isinstance(config, Mapping) else dict(config)
    check_int(gpus, "gpus", minimum=1)
    check_float(gpu_memory_gib, "gpu_memory_gib", positive=True)
    if engine not in ("hf", "vllm", "openai"):
        raise InvalidInputError(f"engine must be 'hf', 'vllm' or 'openai', got {engine!r}")
    shape = model_shape(cfg.get("model"))
    notes = []
    if generate_tps is not None and capture_tps is not None:
        throughput = Throughput(generate_tps, capture_tps, "given")
    else:
        if calibration is None:
            raise InvalidInputError("give both throughput figures (tokens/s per replica) or a calibration run")
        cal_params = KNOWN_SHAPES[None].n_params if calibrated_params is None else calibrated_params
        cal = calibration[0]
        if not math.isclose(cal_params, shape.n_params):
            cal = cal.scaled(cal_params, shape.n_params)
            notes.append("throughput scaled from a small model by parameter count: a rough guide only; measure the "
                         "target (e.g. a short run) and pass --throughput for a real estimate")
        if cal.device == "cpu":
            notes.append("calibrated on a CPU: GPU throughput is far higher; run the planner on the GPU machine or "
                         "pass --throughput/--capture-throughput")
        if engine != "hf" and generate_tps is None:
            notes.append(f"generation calibrated with the HF engine here; a {engine} server batches far better")
        throughput = Throughput(cal.generate_tps if generate_tps is None else generate_tps,
                                cal.capture_tps if capture_tps is None else capture_tps,
                                cal.source if generate_tps is None and capture_tps is None
                                else f"given, the rest {cal.source}")
    if prompt_tokens is None:
        if calibration is None:
            raise InvalidInputError("give prompt_tokens (mean prompt length) or a calibration run")
        prompt_tokens = calibration[1]
    size = job_size(cfg.get("preset", "quick"), shape, prompt_tokens=prompt_tokens, **size_overrides)
    weights_gib = shape.n_params * DTYPE_BYTES[cfg.get("dtype")] / 2**30
    per_replica = max(1, math.ceil(weights_gib * (1 + HEADROOM) / gpu_memory_gib))
    if engine == "vllm":  # tensor parallelism splits attention heads: a power of two GPUs per replica
        per_replica = 2 ** math.ceil(math.log2(per_replica))
    if per_replica > gpus:
        raise InvalidInputError(f"{cfg['name']}: one replica needs {per_replica} GPUs of {gpu_memory_gib:g} GiB "
                                f"({weights_gib:.0f} GiB of weights), more than the {gpus} given")
    return JobPlan(cfg["name"], cfg.get("model"), cfg.get("dtype"), engine, size, throughput, gpus, per_replica,
                   tuple(notes))
