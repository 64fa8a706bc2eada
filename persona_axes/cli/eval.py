"""``persona-axes eval``: the evaluation harness (:mod:`persona_axes.evals`) from the command line.

Each evaluation writes ``<out>/<name>.jsonl`` (the resumable store: rerun the same command to continue),
``<out>/<name>.json`` (results) and ``<out>/<name>.html`` (figure).
"""

from __future__ import annotations

import argparse
import sys
import time

from persona_axes.cli.common import add_command, add_model_args, load_model_from_args

_EXAMPLES = """examples:
  persona-axes eval drift --out runs/evals --per-domain 2 --turns 3          # smoke size
  persona-axes eval drift --out runs/evals                                    # full: 4 domains x 6 x 5 turns
  persona-axes eval jailbreak --out runs/evals --conditions baseline,cap,steer:-30
  persona-axes eval capability --out runs/evals --conditions baseline,cap --limit 10
  persona-axes eval capability --tasks mmlu,gsm8k --conditions baseline,cap --device cuda --model <hf-id> \\
      --vectors <folder with assistant_axis + capping for that model>        # the paper's tasks, on a GPU
  persona-axes eval personas --out runs/evals --personas villain,saint,showman
  persona-axes eval judges                                                    # judge vs hand labels
"""


def register(sub) -> None:
    sp = add_command(sub, "eval", "run an evaluation: drift, jailbreak, capability, personas, judges",
                     "Behavioural evaluations of persona directions: persona drift by conversation type, capping\n"
                     "against persona-based jailbreaks, capability cost through lm-evaluation-harness, and prompted\n"
                     "vs activation-steered personas. Results are resumable (rerun to continue).", _EXAMPLES, _run)
    sp.add_argument("name", choices=["drift", "jailbreak", "capability", "personas", "judges"])
    sp.add_argument("--out", default="runs/evals", help="output folder (default runs/evals)")
    sp.add_argument("--vectors", default=None, help="folder with assistant_axis.safetensors, capping.safetensors "
                    "(and traits/); default: the vectors shipped for the embedded model")
    sp.add_argument("--layer", type=int, default=None, help="axis layer for projections (default: the folder's "
                    "best layer); for personas, the steering layer (default: the middle block)")
    sp.add_argument("--conditions", default=None, help="comma list of baseline, cap, steer:<coef> (default: "
                    "baseline,cap,steer:-30 for jailbreak, baseline,cap for capability, baseline for drift)")
    sp.add_argument("--judge", default="lexical", help="refusal judge: lexical | lexical-only | http://host:port/v1@model")
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples, seeded")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--batch-size", type=int, default=16)
    g = sp.add_argument_group("drift")
    g.add_argument("--domains", default=None, help="comma list (default: all: coding,writing,emotional,meta)")
    g.add_argument("--per-domain", type=int, default=None, help="conversations per domain (default: all, 6)")
    g.add_argument("--turns", type=int, default=None, help="user turns per conversation (default: all, 5)")
    g.add_argument("--simulator", default="scripted", help="scripted | self (the model plays the user) | "
                   "http://host:port/v1@model (an OpenAI-compatible endpoint plays the user)")
    g = sp.add_argument_group("jailbreak")
    g.add_argument("--framings", default=None, help="comma list of framing ids (default: all 7)")
    g.add_argument("--requests", default=None, help="comma list of request ids (default: all 6)")
    g = sp.add_argument_group("capability")
    g.add_argument("--tasks", default="persona_axes_mc", help="lm-eval task names (default: the local task)")
    g.add_argument("--limit", type=int, default=None, help="items per task (default: all)")
    g = sp.add_argument_group("personas")
    g.add_argument("--personas", default=None, help="comma list of persona ids (default: all 8)")
    g.add_argument("--coefs", default=None, help="steering grid for matching, e.g. 0,8,16,32,64")
    g.add_argument("--samples", type=int, default=1, help="replies per harmful request (use with --temperature)")
    add_model_args(sp)


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


def _run(args: argparse.Namespace) -> int:
    from persona_axes.evals.conditions import load_axis_setup, parse_conditions
    from persona_axes.evals.results import save_result
    from persona_axes.judges.refusal import refusal_judge_from_spec
    from persona_axes.steering.generation import SamplingConfig

    judge = refusal_judge_from_spec(args.judge)
    if args.name == "judges":
        import json

        from persona_axes.evals.jailbreak import judge_agreement

        print(json.dumps(judge_agreement(judge), indent=1))
        return 0
    model = load_model_from_args(args)
    setup = load_axis_setup(model, args.vectors, layer=args.layer if args.name != "personas" else None)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    store = f"{args.out}/{args.name}.jsonl"
    t0 = time.perf_counter()
    if args.name == "drift":
        from persona_axes.evals.drift import run_drift
        from persona_axes.evals.simulators import HttpUserSimulator, ModelUserSimulator

        sim = None
        if args.simulator == "self":
            sim = ModelUserSimulator(model, sampling)
        elif args.simulator.startswith(("http://", "https://")):
            base, _, name = args.simulator.rpartition("@")
            sim = HttpUserSimulator(base, name)
        cond = parse_conditions(args.conditions or "baseline")
        if len(cond) != 1:
            print("persona-axes: error: drift runs under one condition at a time", file=sys.stderr)
            return 2
        result = run_drift(model, setup, domains=_split(args.domains), per_domain=args.per_domain, turns=args.turns,
                           simulator=sim, condition=cond[0], sampling=sampling, batch_size=args.batch_size, out=store,
                           seed=args.seed)
    elif args.name == "jailbreak":
        from persona_axes.evals.jailbreak import run_jailbreak

        result = run_jailbreak(model, setup, parse_conditions(args.conditions or "baseline,cap,steer:-30"),
                               judge=judge, framings=_split(args.framings), requests=_split(args.requests),
                               sampling=sampling, batch_size=args.batch_size, out=store, seed=args.seed)
    elif args.name == "capability":
        from persona_axes.evals.capability import run_capability

        result = run_capability(model, setup, parse_conditions(args.conditions or "baseline,cap"),
                                tasks=_split(args.tasks), limit=args.limit, batch_size=args.batch_size, out=store,
                                seed=args.seed)
    else:
        from persona_axes.evals.data import load_personas
        from persona_axes.evals.personas import DEFAULT_COEFS, run_personas

        personas, _ = load_personas()
        wanted = _split(args.personas)
        if wanted is not None:
            unknown = sorted(set(wanted) - {p.id for p in personas})
            if unknown:
                print(f"persona-axes: error: unknown persona(s) {unknown}; known: {[p.id for p in personas]}",
                      file=sys.stderr)
                return 2
            personas = [p for p in personas if p.id in wanted]
        coefs = [float(c) for c in _split(args.coefs)] if args.coefs else DEFAULT_COEFS
        result = run_personas(model, setup, personas=personas, coefs=coefs, layer=args.layer, judge=judge,
                              sampling=sampling, samples=args.samples, out=store, seed=args.seed)
    paths = save_result(result, args.out, wall_time_s=time.perf_counter() - t0)
    for row in result.table():
        print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                        if not isinstance(v, (dict, list))))
    print(f"wrote {paths['json']} and {paths['html']} (store: {store})")
    return 0
