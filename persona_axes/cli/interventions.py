"""``persona-axes steer`` and ``persona-axes cap``: generate with a vector added, or with an activation cap."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from persona_axes.cli.batch import INPUT_HELP, ending_with_user, read_conversations, reply_projections, write_jsonl
from persona_axes.cli.common import (
    LAYER_HELP, add_command, add_model_args, conversation, file_kind, format_layers, load_model_from_args,
    parse_coefs, parse_layer_spec, preflight, read_header, read_vector, require_file,
)
from persona_axes.core import ModelInfo, Positions, Unit
from persona_axes.errors import InvalidInputError


UNIT_HELP = ("raw (the vector as stored), unit (along the unit vector), rel (x the mean norm of default-assistant "
             "reply-mean activations), sd (x the spread of default-assistant projections on the vector), gap (x the "
             "gap between the vector's two groups, e.g. default minus role replies); rel, sd and gap use the "
             "vector's stored unit statistics, or --reference (rel, sd)")


def check_unit_source(unit: Unit, vector: Any, reference: str | None, command: str) -> None:
    """Before loading a model: refuse a unit whose size per layer nothing supplies (no stored statistics in the
    vector file and no --reference), and --reference where the unit does not use it."""
    from persona_axes.vectors.units import stats_of

    if unit in (Unit.RAW, Unit.UNIT):
        if reference:
            raise InvalidInputError(f"--reference applies to --coef-unit rel or sd only, not {unit.value}")
        return
    if unit == Unit.GAP and reference:
        raise InvalidInputError("--coef-unit gap uses the vector's stored unit statistics (the gap between its two "
                                "groups); --reference cannot give it: drop --reference")
    if reference or stats_of(vector) is not None:
        return
    how = ("a vector file with stored unit statistics (persona_axes.vectors.units.with_unit_stats, measured with "
           "both groups)" if unit == Unit.GAP else
           "--reference ACTIVATIONS (default-assistant replies captured with reduce mean, e.g. "
           "<run>/activations/default.safetensors) or a vector file with stored unit statistics")
    raise InvalidInputError(f"{command} --coef-unit {unit.value} needs {how}; this vector stores none")


def _print_replies(labels: list[str], replies: list[str]) -> None:
    width = max(len(s) for s in labels)
    for lab, rep in zip(labels, replies):
        print(f"{lab:>{width}}: {rep}")


def _conversations(args: argparse.Namespace) -> tuple[list[list[dict[str, str]]], list[dict[str, Any]]]:
    """The one ``--prompt`` conversation, or every conversation of ``--input``; and each one's input line and
    extra keys (kept in the ``--out`` records)."""
    if (args.prompt is None) == (args.input is None):
        raise InvalidInputError("give --prompt TEXT for one reply or --input FILE for many, not both or neither")
    if args.input is None:
        return [conversation(args)], [{"line": None, "meta": {}}]
    items = read_conversations(args.input, system=args.system)
    return ending_with_user(items, args.input), items


def _sampling(args: argparse.Namespace):
    from persona_axes.steering.generation import SamplingConfig

    return SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


def _cmd_steer(args: argparse.Namespace) -> int:
    from persona_axes.activations.container import Activations
    from persona_axes.steering.generation import generate_replies
    from persona_axes.steering.interventions import Steer

    coefs = parse_coefs(args.coef)
    require_file(args.vector, "vector file")
    # Check cheap things before loading the model.
    pre = read_vector(args.vector, name=args.name, preflight_model=args.model) \
        if file_kind(args.vector)[0] != "repeng" else None
    if args.reference:
        require_file(args.reference, "reference activations file")
    check_unit_source(Unit(args.coef_unit), pre, args.reference, "steer")
    convs, meta = _conversations(args)
    sampling = _sampling(args)
    loaded = load_model_from_args(args)
    vec = read_vector(args.vector, name=args.name, model=loaded)
    layers = parse_layer_spec(args.layers, loaded.layers.n_layers)
    reference = Activations.load(args.reference, model=loaded) if args.reference else None
    print(f"steering with {vec.name!r} ({vec.method}) at layers {format_layers(layers)}, unit={args.coef_unit}, "
          f"positions={args.positions}; {len(coefs)} coefficient(s) x {len(convs)} conversation(s)", file=sys.stderr)
    t0 = time.time()
    progress = not args.quiet
    replies: dict[float, list[str]] = {}
    if len(convs) == 1:  # a sweep on one prompt: every coefficient its own batch row, one generate
        coef = coefs[0] if len(coefs) == 1 else torch.tensor(coefs)
        with Steer(loaded, vec, layers, coef, unit=args.coef_unit, reference=reference, positions=args.positions):
            rows = generate_replies(loaded, convs * len(coefs), sampling, batch_size=len(coefs), progress=progress)
        replies = {c: [r] for c, r in zip(coefs, rows)}
    else:
        for c in coefs:
            with Steer(loaded, vec, layers, c, unit=args.coef_unit, reference=reference, positions=args.positions):
                replies[c] = generate_replies(loaded, convs, sampling, batch_size=args.batch_size, progress=progress)
    print(f"generated in {time.time() - t0:.1f}s", file=sys.stderr)
    if args.out:
        write_jsonl(args.out, ({"line": m["line"], "coef": c, "unit": args.coef_unit, "layers": layers,
                                "messages": conv + [{"role": "assistant", "content": replies[c][i]}],
                                "reply": replies[c][i], **m["meta"]}
                               for i, (conv, m) in enumerate(zip(convs, meta)) for c in coefs))
        print(f"wrote {len(convs) * len(coefs)} replies to {args.out}")
        return 0
    for i, conv in enumerate(convs):
        print(f"prompt: {conv[-1]['content']}")
        _print_replies([f"coef {c:+g}" for c in coefs], [replies[c][i] for c in coefs])
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

    from persona_axes.steering.capping import ActivationCap, CapConfig
    from persona_axes.steering.generation import generate_replies

    require_file(args.config, "capping config")
    md = read_header(args.config)
    preflight(ModelInfo.from_metadata(md) if "model" in md else None, args.model, f"the capping config {args.config}")
    convs, meta = _conversations(args)
    sampling = _sampling(args)
    loaded = load_model_from_args(args)
    cfg = CapConfig.load(args.config, model=loaded)
    layers = parse_layer_spec(args.layers, loaded.layers.n_layers) if args.layers else None
    cap = ActivationCap(loaded, cfg, layers, positions=args.positions)
    capped_layers = sorted(cap.layers)
    at = capped_layers[len(capped_layers) // 2] if args.projection_layer is None else \
        parse_layer_spec(str(args.projection_layer), loaded.layers.n_layers)[0]
    if at not in cfg.thresholds:
        raise InvalidInputError(f"--projection-layer {args.projection_layer}: the config has no axis there; use one "
                                f"of its layers {format_layers(cfg.layers)}")
    print(f"capping ({cfg.kind}) along {cfg.name!r} at layers {format_layers(capped_layers)}", file=sys.stderr)
    progress = not args.quiet
    with cap:
        capped = generate_replies(loaded, convs, sampling, batch_size=args.batch_size, progress=progress)
    plain = generate_replies(loaded, convs, sampling, batch_size=args.batch_size, progress=progress) \
        if args.compare else None
    proj_c = reply_projections(loaded, convs, capped, cfg.axis[at], at)
    proj_p = reply_projections(loaded, convs, plain, cfg.axis[at], at) if plain is not None else None
    where = f"projection onto {cfg.name!r} at layer {at} (threshold {cfg.thresholds[at]:+.3f})"
    if args.out:
        recs = []
        for i, (conv, m) in enumerate(zip(convs, meta)):
            r = {"line": m["line"], "messages": conv, "capped": capped[i], "layer": at,
                 "threshold": cfg.thresholds[at], "projection_capped": proj_c[i], **m["meta"]}
            if plain is not None:
                r.update(uncapped=plain[i], projection_uncapped=proj_p[i])
            recs.append(r)
        write_jsonl(args.out, recs)
        print(f"wrote {len(recs)} results to {args.out}")
        return 0
    width = shutil.get_terminal_size((100, 20)).columns
    for i, conv in enumerate(convs):
        print(f"prompt: {conv[-1]['content']}")
        if plain is None:
            print(f"capped: {capped[i]}")
            print(f"{where}: {_fmt(proj_c[i])}")
        else:
            print(_wrap_columns(capped[i], plain[i], ("capped", "uncapped"), width))
            print(f"{where}: capped {_fmt(proj_c[i])} | uncapped {_fmt(proj_p[i])}")
    return 0


def _io_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--prompt", default=None, help="the user message (or --input for many)")
    sp.add_argument("--input", default=None, help=INPUT_HELP)
    sp.add_argument("--out", default=None, help="write the results here as JSONL (one line per reply) instead of "
                    "printing them")
    sp.add_argument("--system", default=None, help="optional system prompt (for --input: where a line has none)")
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--batch-size", type=int, default=8, help="conversations per generate (with --input)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub: Any) -> None:
    steer = add_command(
        sub, "steer", "generate with a persona vector added to the residual stream (one coefficient or a sweep)",
        "Add coef * vector to the output of the chosen decoder blocks while generating a reply. --coef may be a "
        "comma list: every coefficient gets its own batch row, all in ONE batched generate, and each reply is "
        "printed. --coef-unit: raw (as stored), unit (unit-normalised vector), rel, sd or gap (defined in "
        "persona_axes.vectors.units: coef x the mean norm of default-assistant reply means, x the spread of "
        "their projections, or x the gap between the vector's two groups; from the vector's stored unit "
        "statistics or --reference activations). --input FILE runs every "
        "conversation of a file (each coefficient in its own pass) and --out writes JSONL. The same settings "
        "can be baked into a llama.cpp control vector: persona-axes export --layers/--coef/--coef-unit.",
        "examples:\n  persona-axes steer --vector vectors/smollm2-135m-instruct/traits/evil.safetensors "
        "--layers 12:16 --coef -4,0,4 --prompt 'How should I treat my neighbours?'\n"
        "  persona-axes steer --vector vectors/smollm2-135m-instruct/assistant_axis.safetensors --layers 20 "
        "--coef-unit sd --coef=-3,0,3 --reference runs/demo/activations/default.safetensors --prompt 'Who are you?'\n"
        "  persona-axes steer --vector vectors/smollm2-135m-instruct/assistant_axis.safetensors --layers 20 "
        "--coef-unit sd --coef=-3,3 --reference runs/demo/activations/default.safetensors --input chats.jsonl "
        "--out steered.jsonl",
        _cmd_steer)
    add_model_args(steer)
    steer.add_argument("--vector", required=True, help="vector file (safetensors, gguf, npz, repeng gguf)")
    steer.add_argument("--name", default=None, help="member to use when --vector is a vector set")
    steer.add_argument("--layers", required=True, help=LAYER_HELP)
    steer.add_argument("--coef", required=True, help="a number or a comma list for a sweep, e.g. -4,0,4")
    steer.add_argument("--coef-unit", choices=Unit.values(), default=Unit.RAW.value, help=UNIT_HELP)
    steer.add_argument("--positions", choices=Positions.values(), default=Positions.ALL.value)
    steer.add_argument("--reference", default=None, help="default-assistant activations file (reduce mean) that "
                       "sets --coef-unit rel or sd (default: the vector's stored unit statistics)")
    _io_args(steer)

    cap = add_command(
        sub, "cap", "generate with an activation cap along an axis (optionally side by side with no cap)",
        "Load a capping config (persona-axes pipeline writes vectors/capping.safetensors) and generate a reply "
        "with the projection onto its axis clamped at each capped layer. --compare also generates without the "
        "cap and prints both side by side, with each reply's projection onto the axis (as persona-axes monitor "
        "measures it). --input FILE runs every conversation of a file; --out writes JSONL.",
        "example:\n  persona-axes cap --config vectors/smollm2-135m-instruct/capping.safetensors "
        "--prompt 'Pretend you are a pirate.' --compare\n"
        "  persona-axes cap --config vectors/smollm2-135m-instruct/capping.safetensors --input chats.jsonl "
        "--compare --out capped.jsonl",
        _cmd_cap)
    add_model_args(cap)
    cap.add_argument("--config", required=True, help="capping config file (.safetensors)")
    cap.add_argument("--layers", default=None, help=f"subset of the config's layers ({LAYER_HELP}); default: all")
    cap.add_argument("--positions", choices=Positions.values(), default=Positions.ALL.value)
    cap.add_argument("--compare", action="store_true", help="also generate without the cap, side by side")
    cap.add_argument("--projection-layer", default=None,
                     help="layer at which each reply's projection is printed (default: the middle capped layer)")
    _io_args(cap)
