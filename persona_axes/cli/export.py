"""``persona-axes export``: write a vector in another format (optionally baking a steer in), and read it back to
check it."""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any

import torch

from persona_axes.cli.common import LAYER_HELP, add_command, format_layers, parse_layer_spec, read_vector, require_file
from persona_axes.cli.interventions import UNIT_HELP, check_unit_source
from persona_axes.core import Unit


def _cmd_export(args: argparse.Namespace) -> int:
    from persona_axes.errors import InvalidInputError
    from persona_axes.export import FORMATS, export_vector, exported_layers, import_vector
    from persona_axes.vectors.units import layer_units, unit_scales

    fmt = args.format
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if args.coef is not None and args.scale is not None:
        raise InvalidInputError("--scale is the old name of --coef; pass one of them")
    coef = args.coef if args.coef is not None else args.scale
    unit = Unit(args.coef_unit)
    if args.normalize:
        if unit != Unit.RAW:
            raise InvalidInputError("--normalize is --coef-unit unit; pass one of them")
        unit = Unit.UNIT
    vec = read_vector(args.path, name=args.name)
    if unit in (Unit.REL, Unit.SD, Unit.GAP) and fmt != "gguf":
        raise InvalidInputError(f"--coef-unit {unit.value} applies to --format gguf only")
    if args.reference:
        require_file(args.reference, "reference activations file")
    check_unit_source(unit, vec, args.reference, "export")
    reference = None
    if args.reference:
        from persona_axes.activations.container import Activations

        reference = Activations.load(args.reference, model=vec.model, strict_name=False)
    opts: dict = {}
    layers = None
    if args.layers is not None:
        layers = parse_layer_spec(args.layers, vec.n_layers)
        opts["layers"] = layers
    if coef is not None:
        opts["scale"] = coef
    if unit == Unit.UNIT:
        opts["normalize"] = True
    if unit in (Unit.REL, Unit.SD, Unit.GAP):
        opts.update(unit=unit.value, reference=reference)
    if fmt in ("numpy", "safetensors") and opts:
        raise InvalidInputError(f"--layers/--coef/--coef-unit/--normalize apply to gguf and repeng only; the {fmt} "
                                "format stores the vector itself, every layer exactly")
    if fmt == "gguf" and args.model_hint:
        opts["model_hint"] = args.model_hint
    if fmt == "repeng" and args.model_hint:
        opts["model_type"] = args.model_hint
    out = export_vector(vec, args.out, fmt, **opts)
    print(f"wrote {out} ({fmt}) from {vec.name!r} ({vec.model.name}, {vec.n_layers} layers, d={vec.model.hidden_size})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # already shown when writing
        check = exported_layers(vec, fmt, layers)
    if fmt == "gguf":
        print(f"llama.cpp: 'llama-cli --control-vector {out}' adds at layer(s) {format_layers(check)} what "
              f"'persona-axes steer' adds with --layers {format_layers(check).replace(' ', '')} --coef "
              f"{coef if coef is not None else 1.0:g} --coef-unit {unit.value}")
    if args.no_verify:
        return 0
    # read back and compare with what should be there: coef * unit scale[L] * v[L] at the exported layers
    back = import_vector(out, fmt, **({"model": vec.model} if fmt == "repeng" else {}))
    rows = {L: vec.vector[L] for L in check}
    scales = unit_scales(rows, unit, layer_units(unit, vec.model, rows, vec, reference), f"vector {vec.name!r}")
    want = torch.stack([vec.vector[L].double() * scales[L] for L in check]) * (coef if coef is not None else 1.0)
    if fmt in ("gguf", "repeng"):
        key = "gguf_layers" if fmt == "gguf" else "repeng_layers"
        present = json.loads(back.metadata.get(key, "[]"))
        if sorted(present) != sorted(check):
            raise InvalidInputError(f"read-back check failed for {out}: the file holds layers "
                                    f"{format_layers(present)}, expected {format_layers(check)}")
        absent = [L for L in range(vec.n_layers) if L not in check and bool(back.vector[L].any())]
        if absent:
            raise InvalidInputError(f"read-back check failed for {out}: layers {format_layers(absent)} are not zero")
    exact = coef in (None, 1.0) and unit == Unit.RAW
    got = back.vector[check]
    if exact:
        ok = torch.equal(got, vec.vector[check])
    else:
        ok = torch.allclose(got.double(), want.to(torch.float32).double(), rtol=1e-6, atol=1e-6)
    if not ok:
        err = float((got.double() - want).abs().max())
        raise InvalidInputError(f"read-back check failed for {out}: max abs difference {err:.3g}")
    print(f"verified: read back {len(check)} layer(s) ({format_layers(check)})"
          f"{' bit-exactly' if exact else ' (scaled, float32)'}")
    return 0


def register(sub: Any) -> None:
    exp = add_command(
        sub, "export", "convert a vector to gguf (llama.cpp), repeng, numpy or safetensors, and check the result",
        "Write a vector in another format and read it back to check it (prints 'verified').\n\n"
        "gguf (a llama.cpp control vector) can bake a steer in: --layers, --coef and --coef-unit mean what they "
        "mean for 'persona-axes steer', and the file holds, at each chosen layer L, exactly the vector steer adds "
        "there (coef x unit scale at L x the vector at L; rel, sd, gap: the unit's size at L, from the vector's "
        "stored unit statistics or measured on --reference activations, over the vector's norm) and nothing at "
        "the other layers. So "
        "'llama-cli --control-vector FILE' reproduces 'persona-axes steer VECTOR --layers ... --coef ... "
        "--coef-unit ... --reference ...' (pass the same --reference to both, or none when the vector stores its "
        "unit statistics). llama.cpp adds direction.L to the output of block L "
        "(0-based, as here) and cannot steer layer 0. 'llama-cli --control-vector-scaled FILE:S' multiplies the "
        "whole file by S once more.\n\n"
        "Without --layers, gguf and repeng hold layers 1..n-1 (every layer llama.cpp can steer), each the raw "
        "vector times --coef.",
        "examples:\n"
        "  persona-axes export vectors/smollm2-135m-instruct/assistant_axis.safetensors --format gguf "
        "--out axis_l20.gguf --layers 20 --coef-unit sd --coef 3 --reference runs/demo/activations/default.safetensors\n"
        "  llama-cli -m model.gguf --control-vector axis_l20.gguf -p 'Who are you?'\n"
        "  persona-axes export vectors/smollm2-135m-instruct/traits/evil.safetensors --format gguf "
        "--out evil.gguf --layers 10:20 --coef 2\n"
        "  persona-axes export vectors/smollm2-135m-instruct/assistant_axis.safetensors --format numpy --out axis.npz",
        _cmd_export)
    exp.add_argument("path", help="vector file (any supported format)")
    exp.add_argument("--format", required=True, help="gguf | repeng | numpy | safetensors")
    exp.add_argument("--out", required=True)
    exp.add_argument("--name", default=None, help="member to export when PATH is a vector set")
    exp.add_argument("--layers", default=None, help=f"{LAYER_HELP} (gguf/repeng only; default 1..n-1)")
    exp.add_argument("--coef", type=float, default=None, help="steering coefficient in --coef-unit units (gguf/repeng "
                     "only; default 1)")
    exp.add_argument("--coef-unit", choices=Unit.values(), default=Unit.RAW.value,
                     help=UNIT_HELP + " (rel, sd, gap: gguf only) — as for 'persona-axes steer'")
    exp.add_argument("--reference", default=None, help="default-assistant activations file (reduce mean) for "
                     "--coef-unit rel or sd (default: the vector's stored unit statistics)")
    exp.add_argument("--scale", type=float, default=None, help="old name of --coef")
    exp.add_argument("--normalize", action="store_true", help="same as --coef-unit unit")
    exp.add_argument("--model-hint", default=None, help="architecture hint for gguf/repeng (default: llama)")
    exp.add_argument("--no-verify", action="store_true", help="skip reading the file back")
