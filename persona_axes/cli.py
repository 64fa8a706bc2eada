"""The ``persona-axes`` command line.

Errors are one clear line on stderr and a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from .errors import PersonaAxesError

DEMO_SYSTEM = "You are a helpful assistant."
DEMO_QUESTION = "In two sentences, what makes a good friend?"


def _cmd_demo(args: argparse.Namespace) -> int:
    from .capture import capture
    from .generation import SamplingConfig, generate_replies
    from .models import load_model

    t0 = time.time()
    loaded = load_model(args.model, device=args.device)
    print(f"model: {loaded.name}  ({loaded.layers.n_layers} layers, d={loaded.layers.hidden_size}, "
          f"blocks at {loaded.layers.path!r}; loaded in {time.time() - t0:.1f}s)")
    conv = [{"role": "system", "content": args.system}, {"role": "user", "content": args.question}]
    reply = generate_replies(loaded, [conv], SamplingConfig(max_new_tokens=args.max_new_tokens))[0]
    print(f"\nuser: {args.question}\nassistant: {reply}\n")
    conv.append({"role": "assistant", "content": reply})
    t1 = time.time()
    mean = capture(loaded, [conv], reduce="mean", progress=False)
    tokens = capture(loaded, [conv], reduce="all", progress=False)
    print(f"captured {len(mean.layers)} layers over {len(tokens)} reply tokens in {time.time() - t1:.2f}s "
          "(layer L = output of decoder block L)\n")
    print(f"{'layer':>5}  {'|mean|':>9}  {'mean |h_t|':>10}  {'cos(prev)':>9}")
    prev = None
    for j, L in enumerate(mean.layers):
        v = mean.values[0, j]
        tok_norm = tokens.values[:, j].norm(dim=-1).mean().item()
        cos = torch.nn.functional.cosine_similarity(v, prev, dim=0).item() if prev is not None else float("nan")
        print(f"{L:>5}  {v.norm().item():>9.2f}  {tok_norm:>10.2f}  {cos:>9.3f}")
        prev = v
    if args.out:
        path = mean.save(args.out)
        print(f"\nsaved mean activations to {path}")
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from .models import load_model
    from .pipeline import PipelineConfig, run_pipeline

    loaded = load_model(args.model, device=args.device)
    cfg = PipelineConfig(preset=args.preset, judge=args.judge, seed=args.seed)
    res = run_pipeline(loaded, args.out, cfg, progress=not args.quiet)
    s = res.summary
    print(f"\n{s['model']}: {sum(s['n_rollouts'].values())} rollouts, judge {s['judge']}, "
          f"role acceptance {s['role_acceptance_rate']:.0%}, {len(s['roles_kept'])} roles kept")
    print(f"chosen layer {s['best_layer']}; cos(axis, PC1) and PC1 explained variance by layer:")
    for L, (c, ev) in enumerate(zip(s["pc1_cosine_by_layer"], s["pc1_explained_variance_by_layer"])):
        print(f"  layer {L:>2}: cos {c:+.3f}   PC1 var {ev:.3f}")
    print(f"\nwrote {res.out_dir}/vectors/ and {res.out_dir}/summary.json")
    if args.publish:
        from .pipeline import publish

        cmd = f"persona-axes pipeline --preset {args.preset} --judge {args.judge} --out {args.out} --publish {args.publish}"
        print(f"published to {publish(res.out_dir, args.publish, cmd)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="persona-axes", description="Persona directions in language models.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="run one chat turn on a model and print per-layer residual statistics over the reply",
        description="Load a model (default: the embedded SmolLM2-135M-Instruct), generate one reply, capture "
        "every layer's residual stream over the reply's content tokens and print a per-layer table.",
        epilog="example: persona-axes demo --question 'Who are you?' --out reply.safetensors",
    )
    demo.add_argument("--model", default=None, help="HF id or local folder (default: embedded SmolLM2)")
    demo.add_argument("--device", default=None, help="torch device (default: cpu)")
    demo.add_argument("--system", default=DEMO_SYSTEM)
    demo.add_argument("--question", default=DEMO_QUESTION)
    demo.add_argument("--max-new-tokens", type=int, default=48)
    demo.add_argument("--out", default=None, help="save the mean activations to this .safetensors file")
    demo.set_defaults(func=_cmd_demo)

    pipe = sub.add_parser(
        "pipeline",
        help="rollouts -> judge -> capture -> role/trait vectors -> persona space and the Assistant Axis",
        description="Run (or resume) the paper's pipeline on a model and write vectors, a capping config and a "
        "summary under --out. Re-running skips every finished stage.",
        epilog="example: persona-axes pipeline --preset quick --out runs/smollm2-quick",
    )
    pipe.add_argument("--model", default=None, help="HF id or local folder (default: embedded SmolLM2)")
    pipe.add_argument("--device", default=None)
    pipe.add_argument("--preset", default="quick", help="rollout preset: quick (CPU) or paper (GPU scale)")
    pipe.add_argument("--judge", default="embedding", help="embedding | none | http://host:port/v1@model")
    pipe.add_argument("--out", required=True, help="output folder (resumable)")
    pipe.add_argument("--seed", type=int, default=0)
    pipe.add_argument("--publish", default=None, help="also copy the vectors and a README with the numbers here")
    pipe.add_argument("--quiet", action="store_true", help="no progress bars")
    pipe.set_defaults(func=_cmd_pipeline)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except PersonaAxesError as e:
        if args.debug:
            raise
        print(f"persona-axes: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("persona-axes: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
