"""``persona-axes steer`` and ``persona-axes cap``: generate with a vector added, or with an activation cap."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from persona_axes.cli.common import (
    LAYER_HELP, add_command, add_model_args, conversation, file_kind, format_layers, load_model_from_args,
    parse_coefs, parse_layer_spec, preflight, read_header, read_vector, require_file,
)
from persona_axes.core import ModelInfo, Positions, Unit


def _print_replies(labels: list[str], replies: list[str]) -> None:
    width = max(len(s) for s in labels)
    for lab, rep in zip(labels, replies):
        print(f"{lab:>{width}}: {rep}")


def _cmd_steer(args: argparse.Namespace) -> int:
    from persona_axes.activations.batch import capture
    from persona_axes.activations.container import Activations
    from persona_axes.steering.generation import SamplingConfig, generate_replies
    from persona_axes.steering.interventions import Steer

    coefs = parse_coefs(args.coef)
    require_file(args.vector, "vector file")
    # Check cheap things before loading the model.
    if file_kind(args.vector)[0] != "repeng":
        read_vector(args.vector, name=args.name, preflight_model=args.model)
    if args.reference:
        require_file(args.reference, "reference activations file")
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    loaded = load_model_from_args(args)
    vec = read_vector(args.vector, name=args.name, model=loaded)
    layers = parse_layer_spec(args.layers, loaded.layers.n_layers)
    conv = conversation(args)
    reference = None
    if args.coef_unit == "rel":
        if args.reference:
            reference = Activations.load(args.reference, model=loaded)
        else:  # the prompt's own token norms as the typical residual size
            reference = capture(loaded, [conv], layers=layers, which="user", reduce="all", progress=False)
    coef = coefs[0] if len(coefs) == 1 else torch.tensor(coefs)
    print(f"steering with {vec.name!r} ({vec.method}) at layers {format_layers(layers)}, unit={args.coef_unit}, "
          f"positions={args.positions}; {len(coefs)} coefficient(s) in one batch", file=sys.stderr)
    t0 = time.time()
    with Steer(loaded, vec, layers, coef, unit=args.coef_unit, reference=reference, positions=args.positions):
        replies = generate_replies(loaded, [conv] * len(coefs), sampling, batch_size=len(coefs))
    print(f"generated in {time.time() - t0:.1f}s", file=sys.stderr)
    print(f"prompt: {args.prompt}")
    _print_replies([f"coef {c:+g}" for c in coefs], replies)
    return 0


def _wrap_columns(left: str, right: str, titles: tuple[str, str], width: int) -> str:
    import textwrap

    col = max(20, (width - 3) // 2)
    a = [titles[0], "-" * len(titles[0])] + (textwrap.wrap(left, col) or [""])
    b = [titles[1], "-" * len(titles[1])] + (textwrap.wrap(right, col) or [""])
    n = max(len(a), len(b))
    a += [""] * (n - len(a))
    b += [""] * (n - len(b))
    return "\n".join(f"{x:<{col}} | {y}".rstrip() for x, y in zip(a, b))


def _cmd_cap(args: argparse.Namespace) -> int:
    import shutil

    from persona_axes.steering.generation import SamplingConfig, generate_replies
    from persona_axes.steering.interventions import ActivationCap, CapConfig

    require_file(args.config, "capping config")
    md = read_header(args.config)
    preflight(ModelInfo.from_metadata(md) if "model" in md else None, args.model, f"the capping config {args.config}")
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    loaded = load_model_from_args(args)
    cfg = CapConfig.load(args.config, model=loaded)
    layers = parse_layer_spec(args.layers, loaded.layers.n_layers) if args.layers else None
    conv = conversation(args)
    cap = ActivationCap(loaded, cfg, layers, positions=args.positions)
    print(f"capping ({cfg.kind}) along {cfg.name!r} at layers {format_layers(cap.layers)}", file=sys.stderr)
    with cap:
        capped = generate_replies(loaded, [conv], sampling)[0]
    print(f"prompt: {args.prompt}")
    if not args.compare:
        print(f"capped: {capped}")
        return 0
    plain = generate_replies(loaded, [conv], sampling)[0]
    width = shutil.get_terminal_size((100, 20)).columns
    print(_wrap_columns(capped, plain, ("capped", "uncapped"), width))
    return 0


def register(sub: Any) -> None:
    steer = add_command(
        sub, "steer", "generate with a persona vector added to the residual stream (one coefficient or a sweep)",
        "Add coef * vector to the output of the chosen decoder blocks while generating a reply. --coef may be a "
        "comma list: every coefficient gets its own batch row, all in ONE batched generate, and each reply is "
        "printed. --coef-unit: raw (as stored), unit (unit-normalised vector), rel (coef x the typical residual "
        "norm at each layer, measured on the prompt or on --reference activations).",
        "examples:\n  persona-axes steer --vector vectors/smollm2-135m-instruct/traits/evil.safetensors "
        "--layers 12:16 --coef -4,0,4 --prompt 'How should I treat my neighbours?'\n"
        "  persona-axes steer --vector vectors/smollm2-135m-instruct/assistant_axis.safetensors --layers 20 "
        "--coef-unit rel --coef=-0.5 --prompt 'Who are you?'",
        _cmd_steer)
    add_model_args(steer)
    steer.add_argument("--vector", required=True, help="vector file (safetensors, gguf, npz, repeng gguf)")
    steer.add_argument("--name", default=None, help="member to use when --vector is a vector set")
    steer.add_argument("--layers", required=True, help=LAYER_HELP)
    steer.add_argument("--coef", required=True, help="a number or a comma list for a sweep, e.g. -4,0,4")
    steer.add_argument("--coef-unit", choices=Unit.values(), default=Unit.RAW.value)
    steer.add_argument("--positions", choices=Positions.values(), default=Positions.ALL.value)
    steer.add_argument("--reference", default=None, help="activations file for --coef-unit rel")
    steer.add_argument("--prompt", required=True, help="the user message")
    steer.add_argument("--system", default=None, help="optional system prompt")
    steer.add_argument("--max-new-tokens", type=int, default=64)
    steer.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    steer.add_argument("--seed", type=int, default=0)

    cap = add_command(
        sub, "cap", "generate with an activation cap along an axis (optionally side by side with no cap)",
        "Load a capping config (persona-axes pipeline writes vectors/capping.safetensors) and generate a reply "
        "with the projection onto its axis clamped at each capped layer. --compare also generates without the "
        "cap and prints both side by side.",
        "example:\n  persona-axes cap --config vectors/smollm2-135m-instruct/capping.safetensors "
        "--prompt 'Pretend you are a pirate.' --compare",
        _cmd_cap)
    add_model_args(cap)
    cap.add_argument("--config", required=True, help="capping config file (.safetensors)")
    cap.add_argument("--layers", default=None, help=f"subset of the config's layers ({LAYER_HELP}); default: all")
    cap.add_argument("--positions", choices=Positions.values(), default=Positions.ALL.value)
    cap.add_argument("--prompt", required=True)
    cap.add_argument("--system", default=None)
    cap.add_argument("--compare", action="store_true", help="also generate without the cap, side by side")
    cap.add_argument("--max-new-tokens", type=int, default=64)
    cap.add_argument("--temperature", type=float, default=0.0)
    cap.add_argument("--seed", type=int, default=0)
