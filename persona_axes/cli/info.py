"""``persona-axes info FILE``: what a vector, vector set, capping config, activations or GGUF file holds."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from persona_axes.cli.common import add_command, file_kind, format_layers, norm_summary, read_header


def _info_gguf(path: str, per_layer: bool) -> int:
    from persona_axes.export import read_gguf_directions, read_gguf_metadata

    fields = read_gguf_metadata(path)
    dirs = read_gguf_directions(path)  # {layer N: [d]}, keyed by the N of direction.N
    ours = any(k.startswith("persona_axes.") for k in fields)
    print(f"file: {path}")
    print(f"format: GGUF control vector ({'written by persona_axes' if ours else 'foreign: llama.cpp/repeng style'})")
    print(f"architecture: {fields.get('general.architecture')}")
    print(f"model hint: {fields.get('controlvector.model_hint')}")
    print(f"layer_count: {fields.get('controlvector.layer_count')}")
    print(f"layers present: {format_layers(dirs)} ({len(dirs)} direction tensors)")
    print(f"hidden size: {', '.join(str(s) for s in sorted({d.shape[0] for d in dirs.values()})) or '?'}")
    for k in sorted(fields):
        if k.startswith("persona_axes."):
            v = fields[k]
            print(f"{k}: {v if len(str(v)) < 100 else str(v)[:97] + '...'}")
    norms = {L: float(np.linalg.norm(d.astype(np.float64))) for L, d in dirs.items()}
    if norms:
        print(f"norms: {norm_summary(list(norms.values()), list(norms))}")
        if per_layer:
            for L, n in norms.items():
                print(f"  layer {L:>3}: |v| {n:.4g}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from persona_axes.activations.container import Activations
    from persona_axes.export import import_numpy
    from persona_axes.steering.capping import CapConfig
    from persona_axes.vectors.containers import PersonaVector, VectorSet

    path = args.path
    fmt, kind = file_kind(path)
    if fmt in ("gguf", "repeng"):
        return _info_gguf(path, args.layers)
    if fmt == "numpy":
        v = import_numpy(path)
        kind, objects = "vector", v
    print(f"file: {path}")
    if kind == "vector":
        v = PersonaVector.load(path) if fmt == "safetensors" else objects
        m = v.model
        print(f"kind: vector ({fmt})\nname: {v.name}\nmodel: {m.name}\nlayers: {m.n_layers} (site {m.layer_site})")
        print(f"hidden size: {m.hidden_size}\nmethod: {v.method}\nn_samples: {v.n_samples}")
        print(f"norms: {norm_summary(v.norms())}")
        for k, val in sorted(v.metadata.items()):
            print(f"{k}: {val if len(val) < 100 else val[:97] + '...'}")
        if args.layers:
            for L, n in enumerate(v.norms().tolist()):
                print(f"  layer {L:>3}: |v| {n:.4g}")
    elif kind == "vector_set":
        s = VectorSet.load(path)
        m = s.model
        print(f"kind: vector set\nname: {s.name}\nmodel: {m.name}\nlayers: {m.n_layers} (site {m.layer_site})")
        print(f"hidden size: {m.hidden_size}\nmethod: {s.method}\nvectors: {len(s)}")
        print(f"n_samples: total {sum(s.n_samples.values())}, per vector min {min(s.n_samples.values())}, "
              f"max {max(s.n_samples.values())}")
        norms = s.stack().to(torch.float64).norm(dim=-1).mean(0)
        print(f"norms (mean over vectors): {norm_summary(norms)}")
        fams: dict[str, list[str]] = {}
        for n in s.names:
            fams.setdefault(s.families.get(n, "-"), []).append(n)
        print("names:")
        for fam, names in fams.items():
            label = f"  [{fam}] " if s.families else "  "
            print(f"{label}{', '.join(names)}")
    elif kind == "capping":
        c = CapConfig.load(path)
        m = c.model
        print(f"kind: capping config\nname: {c.name}\nmodel: {m.name}\nmodel layers: {m.n_layers}")
        print(f"hidden size: {m.hidden_size}\ncap kind: {c.kind}\npercentile: {c.percentile}")
        print(f"reference: {c.reference}\ncapped layers: {format_layers(c.layers)}")
        print("thresholds:")
        for L in c.layers:
            print(f"  layer {L:>3}: {c.thresholds[L]:+.4f}")
    elif kind == "activations":
        a = Activations.load(path)
        m = a.model
        print(f"kind: activations\nmodel: {m.name}\nmodel layers: {m.n_layers}\nhidden size: {m.hidden_size}")
        print(f"items: {len(a)}\nreduction: {a.reduction}\ncaptured layers: {format_layers(a.layers)}")
        if len(a):
            norms = a.values.to(torch.float64).norm(dim=-1).mean(0)
            print(f"mean norms: {norm_summary(norms, a.layers)}")
            keys = sorted({k for it in a.items for k in it})
            print(f"item fields: {', '.join(keys)}")
            for field in ("kind", "name"):
                if field in keys:
                    counts: dict = {}
                    for it in a.items:
                        counts[it.get(field)] = counts.get(it.get(field), 0) + 1
                    shown = ", ".join(f"{k}: {v}" for k, v in list(counts.items())[:12])
                    print(f"by {field}: {shown}{' ...' if len(counts) > 12 else ''}")
    else:
        md = read_header(path)
        print(f"kind: {kind} (not a file this command describes in detail)")
        for k in ("model", "num_layers", "hidden_size"):
            if k in md:
                print(f"{k}: {md[k]}")
    return 0


def register(sub: Any) -> None:
    info = add_command(
        sub, "info", "describe a vector, vector set, capping config, activations or GGUF control-vector file",
        "Print what a file holds: kind, model, layers, hidden size, method, sample counts and a per-layer norm "
        "summary; member names for vector sets; layers, kind and thresholds for capping configs; layers present "
        "and the model hint for GGUF control vectors.",
        "examples:\n  persona-axes info vectors/smollm2-135m-instruct/assistant_axis.safetensors\n"
        "  persona-axes info vectors/smollm2-135m-instruct/capping.safetensors\n  persona-axes info axis.gguf",
        _cmd_info)
    info.add_argument("path", help="the file")
    info.add_argument("--layers", action="store_true", help="also print the norm at every layer (vectors, GGUF control vectors)")
