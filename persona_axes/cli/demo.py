"""``persona-axes demo`` and ``persona-axes pipeline``: the paper's pipeline end to end on a model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from persona_axes.cli.common import add_model_args, model_options, preset_help
from persona_axes.viz.figures import PLOTLYJS_MODES

DEMO_QUESTION = "Tell me about yourself in two sentences."
DEMO_UNIT = "sd"
DEMO_COEFS = (-3.0, -1.5, 0.0, 1.5, 3.0)
"""The demo's sweep, in standard deviations of the default-assistant replies' projections on the axis at the layer
(:mod:`persona_axes.vectors.units`): inside the range where steering SmolLM2-135M changes replies monotonically
without loops, as measured by experiments/steering_range.py (experiments/results/steering_units_smollm2.md)."""


def _cmd_demo(args: argparse.Namespace) -> int:
    from persona_axes.activations.container import Activations
    from persona_axes.model.load import load_model
    from persona_axes.runs.rollouts import get_preset
    from persona_axes.runs.stages import PipelineConfig, run_pipeline
    from persona_axes.viz.report import steering_sweep, text_summary, write_report

    preset = get_preset(args.preset)
    t0 = time.time()
    loaded = load_model(args.model, **model_options(args))
    n = len(preset.build_requests())
    print(f"model: {loaded.name} ({loaded.layers.n_layers} layers, d={loaded.layers.hidden_size}); preset "
          f"{preset.name}: {n} rollouts of up to {preset.max_new_tokens} tokens, judge {args.judge}; "
          f"writing to {args.out} (re-run the same command to resume)")
    if preset.name == "quick":
        print("  the quick preset takes about 4 minutes on 2 idle CPU cores (far longer when they are shared); "
              "--preset smoke tries the whole "
              "pipeline in about a minute")
    cfg = PipelineConfig(preset=preset, judge=args.judge, seed=args.seed)
    res = run_pipeline(loaded, args.out, cfg, progress=not args.quiet)
    print()
    print(text_summary(res, layer=args.layer))
    layer = res.summary.best_layer if args.layer is None else args.layer
    steering = []
    if args.steer:
        ref = res.activations.get("default") or Activations.load(
            Path(args.out) / "activations" / "default.safetensors", model=loaded)
        steering = steering_sweep(loaded, res.axis, layer, DEMO_COEFS, question=DEMO_QUESTION, reference=ref,
                                  max_new_tokens=args.max_new_tokens, unit=DEMO_UNIT)
        print(f"\nsteering along the axis at layer {layer} in sd (standard deviations of the default replies' "
              f"projections on the axis there), one batched generate:\n  question: {DEMO_QUESTION}")
        for r in steering:
            print(f"  {r.coef:+.1f}: {r.reply}")
    path = write_report(res, Path(args.out) / "report.html", layer=args.layer, steering=steering,
                        plotlyjs=args.plotlyjs)
    print(f"\nreport: {path}   (vectors in {Path(args.out) / 'vectors'}; {time.time() - t0:.0f}s in all)")
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from persona_axes.model.load import load_model
    from persona_axes.runs.stages import PipelineConfig, run_pipeline

    loaded = load_model(args.model, **model_options(args))
    cfg = PipelineConfig(preset=args.preset, judge=args.judge, seed=args.seed)
    res = run_pipeline(loaded, args.out, cfg, progress=not args.quiet)
    s = res.summary
    print(f"\n{s.model}: {sum(s.n_rollouts.values())} rollouts, judge {s.judge}, "
          f"role acceptance {s.role_acceptance_rate:.0%}, {len(s.roles_kept)} roles kept")
    print(f"chosen layer {s.best_layer}; cos(axis, PC1) and PC1 explained variance by layer:")
    for L, (c, ev) in enumerate(zip(s.pc1_cosine_by_layer, s.pc1_explained_variance_by_layer)):
        print(f"  layer {L:>2}: cos {c:+.3f}   PC1 var {ev:.3f}")
    print(f"\nwrote {res.out_dir}/vectors/ and {res.out_dir}/summary.json")
    if args.publish:
        from persona_axes.runs.publish import publish

        cmd = f"persona-axes pipeline --preset {args.preset} --judge {args.judge} --out {args.out} --publish {args.publish}"
        print(f"published to {publish(res.out_dir, args.publish, cmd)}")
    return 0


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="the main job: the quick pipeline on a model, ending in a persona-space report",
        description="Run (or resume) the paper's pipeline with a preset on a model (default: the embedded "
        "SmolLM2-135M-Instruct): role and default-assistant rollouts, judge, capture, role and trait vectors, the "
        "persona space and its Assistant Axis; print the per-layer numbers, steer along the axis in one batched "
        "sweep, and write a standalone HTML report with the figures.",
        epilog="example: persona-axes demo --out runs/demo   (or --preset smoke for a one-minute try)",
    )
    add_model_args(demo)
    demo.add_argument("--preset", default="quick", help=preset_help())
    demo.add_argument("--judge", default="embedding", help="embedding | none | http://host:port/v1@model")
    demo.add_argument("--out", default="runs/demo", help="output folder; re-running resumes (default runs/demo)")
    demo.add_argument("--layer", type=int, default=None, help="layer the report centres on (default: the sweep's)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--max-new-tokens", type=int, default=40, help="tokens per steered reply")
    demo.add_argument("--no-steer", dest="steer", action="store_false", help="skip the steering sweep")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--plotlyjs", choices=PLOTLYJS_MODES, default="inline",
                      help="plotly.js inside the report (default), or once beside it (directory), or from the cdn")
    demo.set_defaults(func=_cmd_demo)

    pipe = sub.add_parser(
        "pipeline",
        help="rollouts -> judge -> capture -> role/trait vectors -> persona space and the Assistant Axis",
        description="Run (or resume) the paper's pipeline on a model and write vectors, a capping config and a "
        "summary under --out. Re-running skips every finished stage.",
        epilog="example: persona-axes pipeline --preset quick --out runs/smollm2-quick",
    )
    add_model_args(pipe)
    pipe.add_argument("--preset", default="quick", help=preset_help())
    pipe.add_argument("--judge", default="embedding", help="embedding | none | http://host:port/v1@model")
    pipe.add_argument("--out", required=True, help="output folder (resumable)")
    pipe.add_argument("--seed", type=int, default=0)
    pipe.add_argument("--publish", default=None, help="also copy the vectors and a README with the numbers here")
    pipe.add_argument("--quiet", action="store_true", help="no progress bars")
    pipe.set_defaults(func=_cmd_pipeline)
