"""``persona-axes plan --config CONFIG``: the size of a run and its estimated wall time, before starting it."""

from __future__ import annotations

import argparse

from persona_axes.cli.common import add_command

EXAMPLES = """examples:
  persona-axes plan --config experiments/configs/qwen3-32b.json --gpus 8 --engine vllm --throughput 2500 \\
      --capture-throughput 20000
  persona-axes plan --config experiments/configs/smollm2-quick.json            # calibrates here on SmolLM2
  persona-axes plan --config experiments/configs/llama-3.3-70b.json --gpus 8 --roles 275 --questions 240 --samples 1
  persona-axes plan --config ... --server http://127.0.0.1:8000/v1 --served-model NAME   # calibrate a server
"""


def _cmd_plan(args: argparse.Namespace) -> int:
    from persona_axes.runs.plan import calibrate, load_job_config, plan_job

    cfg = load_job_config(args.config)
    calibration = None
    if args.throughput is None or args.capture_throughput is None or args.prompt_tokens is None:
        from persona_axes.model.load import load_model
        from persona_axes.runs.presets import get_preset

        requests = get_preset(cfg.get("preset", "quick")).build_requests()
        engine = None
        if args.server:
            from persona_axes.engines.openai_http import OpenAIEngine

            engine = OpenAIEngine(args.server, args.served_model or "default", concurrency=args.concurrency)
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        calibration = calibrate(requests, model=load_model(device=device), engine=engine, n=args.calibration_replies,
                                max_new_tokens=args.calibration_tokens)
    overrides = {k: getattr(args, k) for k in ("roles", "questions", "samples", "max_new_tokens")
                 if getattr(args, k) is not None}
    plan = plan_job(cfg, gpus=args.gpus, engine=args.engine, generate_tps=args.throughput,
                    capture_tps=args.capture_throughput, gpu_memory_gib=args.gpu_memory,
                    prompt_tokens=args.prompt_tokens, calibration=calibration, **overrides)
    print(plan.format())
    return 0


def register(sub) -> None:
    sp = add_command(sub, "plan", help="job size and estimated wall time of an experiment config",
                     description="Print how many replies, generated tokens and activation bytes a config's run "
                     "makes, and its estimated wall time on N GPUs. Throughput figures are per model replica; "
                     "those not given are measured by a short calibration run here (on the embedded SmolLM2, or on "
                     "--server) and scaled to the target model by parameter count.",
                     epilog=EXAMPLES, func=_cmd_plan)
    sp.add_argument("--config", required=True, help="an experiment config, e.g. experiments/configs/qwen3-32b.json")
    sp.add_argument("--gpus", type=int, default=1, help="GPUs available (default 1)")
    sp.add_argument("--engine", default="hf", choices=["hf", "vllm", "openai"], help="rollout engine (default hf)")
    sp.add_argument("--throughput", type=float, default=None, help="generated tokens/s of one replica")
    sp.add_argument("--capture-throughput", type=float, default=None,
                    help="tokens/s one replica reads in the activation pass")
    sp.add_argument("--prompt-tokens", type=float, default=None, help="mean prompt length in tokens")
    sp.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80)")
    g = sp.add_argument_group("job size overrides (default: the config's preset over the packaged data)")
    g.add_argument("--roles", type=int, default=None, help="number of roles (the paper: 275)")
    g.add_argument("--questions", type=int, default=None, help="role/default questions (the paper: 240)")
    g.add_argument("--samples", type=int, default=None, help="samples per prompt and question")
    g.add_argument("--max-new-tokens", type=int, default=None, help="reply budget in tokens")
    c = sp.add_argument_group("calibration")
    c.add_argument("--server", default=None, help="calibrate generation on this OpenAI-compatible server")
    c.add_argument("--served-model", default=None, help="the model name the server serves")
    c.add_argument("--concurrency", type=int, default=8, help="requests in flight when calibrating a server")
    c.add_argument("--device", default=None, help="where to calibrate (default: cuda if available, else cpu)")
    c.add_argument("--calibration-replies", type=int, default=8)
    c.add_argument("--calibration-tokens", type=int, default=32)
