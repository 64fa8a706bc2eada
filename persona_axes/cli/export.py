"""``persona-axes export``: write a vector in another format and read it back to check it."""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any

import torch

from persona_axes.cli.common import LAYER_HELP, add_command, format_layers, parse_layer_spec, read_vector


def _cmd_export(args: argparse.Namespace) -> int:
    from persona_axes.errors import InvalidInputError
    from persona_axes.export.formats import FORMATS, export_vector, import_vector

    fmt = args.format
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    vec = read_vector(args.path, name=args.name)
    opts: dict = {}
    layers = None
    if args.layers is not None:
        layers = parse_layer_spec(args.layers, vec.n_layers)
        opts["layers"] = layers
    if args.scale is not None:
        opts["scale"] = args.scale
    if args.normalize:
        opts["normalize"] = True
    if fmt in ("numpy", "safetensors") and opts:
        raise InvalidInputError(f"--layers/--scale/--normalize apply to gguf and repeng only; the {fmt} format "
                                "stores every layer exactly")
    if fmt == "gguf" and args.model_hint:
        opts["model_hint"] = args.model_hint
    if fmt == "repeng" and args.model_hint:
        opts["model_type"] = args.model_hint
    out = export_vector(vec, args.out, fmt, **opts)
    print(f"wrote {out} ({fmt}) from {vec.name!r} ({vec.model.name}, {vec.n_layers} layers, d={vec.model.hidden_size})")
    if args.no_verify:
        return 0
    # read back and compare with what should be there
    back = import_vector(out, fmt, **({"model": vec.model} if fmt == "repeng" else {}))
    want = vec.vector.to(torch.float64)
    if args.normalize:
        want = want / want.norm(dim=-1, keepdim=True)
    want = want * (args.scale if args.scale is not None else 1.0)
    if fmt in ("gguf", "repeng"):
        from persona_axes.export import formats as _export

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # already shown when writing
            check = (_export._gguf_layers if fmt == "gguf" else _export._repeng_layers)(vec, layers)
        key = "gguf_layers" if fmt == "gguf" else "repeng_layers"
        present = json.loads(back.metadata.get(key, "[]"))
        if sorted(present) != sorted(check):
            raise InvalidInputError(f"read-back check failed for {out}: the file holds layers "
                                    f"{format_layers(present)}, expected {format_layers(check)}")
        exact = args.scale in (None, 1.0) and not args.normalize
    else:
        check, present, exact = list(range(vec.n_layers)), list(range(vec.n_layers)), True
    got = back.vector.to(torch.float64)[check]
    ref = want[check]
    if exact:
        ok = torch.equal(back.vector[check], vec.vector[check])
    else:
        ok = torch.allclose(got, ref.to(torch.float32).to(torch.float64), rtol=1e-6, atol=1e-6)
    if not ok:
        err = float((got - ref).abs().max())
        raise InvalidInputError(f"read-back check failed for {out}: max abs difference {err:.3g}")
    print(f"verified: read back {len(check)} layer(s) ({format_layers(check)})"
          f"{' bit-exactly' if exact else ' (scaled, float32)'}")
    return 0


def register(sub: Any) -> None:
    exp = add_command(
        sub, "export", "convert a vector to gguf (llama.cpp), repeng, numpy or safetensors, and check the result",
        "Write a vector in another format and read it back to check it (prints 'verified'). gguf and repeng take "
        "--layers and --scale (llama.cpp cannot hold layer 0; by default every other layer is written).",
        "examples:\n  persona-axes export vectors/smollm2-135m-instruct/traits/evil.safetensors --format gguf "
        "--out evil.gguf --layers 10:20 --scale 2\n"
        "  persona-axes export vectors/smollm2-135m-instruct/assistant_axis.safetensors --format numpy --out axis.npz",
        _cmd_export)
    exp.add_argument("path", help="vector file (any supported format)")
    exp.add_argument("--format", required=True, help="gguf | repeng | numpy | safetensors")
    exp.add_argument("--out", required=True)
    exp.add_argument("--name", default=None, help="member to export when PATH is a vector set")
    exp.add_argument("--layers", default=None, help=f"{LAYER_HELP} (gguf/repeng only)")
    exp.add_argument("--scale", type=float, default=None, help="multiply the vector (gguf/repeng only)")
    exp.add_argument("--normalize", action="store_true", help="unit-normalise each layer first (gguf/repeng only)")
    exp.add_argument("--model-hint", default=None, help="architecture hint for gguf/repeng (default: llama)")
    exp.add_argument("--no-verify", action="store_true", help="skip reading the file back")
