"""The ``persona-axes`` command line.

Errors are one clear line on stderr and a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from persona_axes.errors import PersonaAxesError

DEMO_QUESTION = "Tell me about yourself in two sentences."


def _cmd_demo(args: argparse.Namespace) -> int:
    from persona_axes.activations.container import Activations
    from persona_axes.model.load import load_model
    from persona_axes.runs.stages import PipelineConfig, run_pipeline
    from persona_axes.viz.report import steering_sweep, text_summary, write_report
    from persona_axes.runs.rollouts import get_preset

    preset = get_preset(args.preset)
    t0 = time.time()
    loaded = load_model(args.model, device=args.device)
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
    layer = res.summary["best_layer"] if args.layer is None else args.layer
    steering = []
    if args.steer:
        ref = Activations.load(Path(args.out) / "activations" / "default.safetensors", model=loaded)
        coefs = [-0.6, -0.3, 0.0, 0.3, 0.6]
        steering = steering_sweep(loaded, res.axis, layer, coefs, question=DEMO_QUESTION, reference=ref,
                                  max_new_tokens=args.max_new_tokens)
        print(f"\nsteering along the axis at layer {layer} (multiples of the mean residual norm), "
              f"one batched generate:\n  question: {DEMO_QUESTION}")
        for r in steering:
            print(f"  {r.coef:+.1f}: {r.reply}")
    path = write_report(res, Path(args.out) / "report.html", layer=args.layer, steering=steering)
    print(f"\nreport: {path}   (vectors in {Path(args.out) / 'vectors'}; {time.time() - t0:.0f}s in all)")
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from persona_axes.model.load import load_model
    from persona_axes.runs.stages import PipelineConfig, run_pipeline

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
        from persona_axes.runs.stages import publish

        cmd = f"persona-axes pipeline --preset {args.preset} --judge {args.judge} --out {args.out} --publish {args.publish}"
        print(f"published to {publish(res.out_dir, args.publish, cmd)}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers for the subcommands below
# ---------------------------------------------------------------------------------------------------------------

LAYER_SPEC_FORMS = "accepted forms: '12' (one layer), '12,14,16' (a list), '8:12' (half-open range, 8..11), 'all'"

#: flags whose value may start with '-' (e.g. ``--coef -4,0,4``); argparse would take it for an option.
_SIGNED_VALUE_FLAGS = ("--coef", "--scale", "--threshold", "--layers", "--layer")

_MODEL_CACHE: dict[tuple, object] = {}


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """Layers from a command-line spec: ``"12"``, ``"12,14,16"``, ``"8:12"`` (half-open, like Python: 8..11) or
    ``"all"``; negative numbers count from the end. Sorted and unique; :class:`InvalidInputError` naming the spec
    and the accepted forms for anything else (empty, not a number, an empty range like ``12:8``, out of range)."""
    from persona_axes.errors import InvalidInputError

    raw = spec
    spec = (spec or "").strip()

    def bad(why: str) -> InvalidInputError:
        return InvalidInputError(f"invalid layer spec {raw!r}: {why}; {LAYER_SPEC_FORMS}")

    if not spec:
        raise bad("it is empty")
    if spec.lower() == "all":
        return list(range(n_layers))

    def num(s: str) -> int:
        s = s.strip()
        try:
            v = int(s)
        except ValueError:
            raise bad(f"{s!r} is not an integer") from None
        if not -n_layers <= v < n_layers:
            raise bad(f"layer {v} is out of range for a model with {n_layers} layers (0..{n_layers - 1})")
        return v % n_layers

    out: set[int] = set()
    for part in spec.split(","):
        if ":" in part:
            pieces = part.split(":")
            if len(pieces) != 2 or not pieces[0].strip() or not pieces[1].strip():
                raise bad(f"range {part!r} needs both ends, as in 8:12")
            a, b = pieces
            lo = num(a)
            bs = b.strip()
            try:
                hi_raw = int(bs)
            except ValueError:
                raise bad(f"{bs!r} is not an integer") from None
            if not -n_layers <= hi_raw <= n_layers:
                raise bad(f"range end {hi_raw} is out of range for a model with {n_layers} layers")
            hi = hi_raw + n_layers if hi_raw < 0 else hi_raw
            if hi <= lo:
                raise bad(f"range {part.strip()!r} is empty (the end must be larger than the start)")
            out.update(range(lo, hi))
        else:
            if not part.strip():
                raise bad("it has an empty item")
            out.add(num(part))
    return sorted(out)


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg or type(e).__name__


def _fix_signed_values(argv: list[str]) -> list[str]:
    """``--coef -4,0,4`` -> ``--coef=-4,0,4`` so argparse does not read the value as an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in _SIGNED_VALUE_FLAGS and i + 1 < len(argv) and argv[i + 1].startswith("-") and len(argv[i + 1]) > 1 \
                and (argv[i + 1][1].isdigit() or argv[i + 1][1] == "."):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _require_file(path: str, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    if p.is_dir():
        raise IsADirectoryError(f"{what} {path!r} is a folder, not a file")
    return p


def _st_header(path: str | Path) -> dict:
    """The ``__metadata__`` of a safetensors file without loading its tensors."""
    from persona_axes.errors import FileFormatError

    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        if n <= 0 or n > p.stat().st_size - 8:
            raise FileFormatError(f"{p}: not a safetensors file")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FileFormatError(f"{p}: not a safetensors file (bad header: {e})") from e
    return header.get("__metadata__") or {}


def _file_kind(path: str | Path) -> tuple[str, str]:
    """``(format, kind)``: format from :func:`guess_format`, kind (``vector``, ``vector_set``, ``capping``,
    ``activations`` ...) from our metadata for safetensors files."""
    from persona_axes.export.formats import guess_format

    _require_file(str(path))
    fmt = guess_format(path)
    if fmt == "safetensors":
        return fmt, _st_header(path).get("kind", "?")
    return fmt, "vector"


def _peek_model_info(model: str | None):
    """The ModelInfo a model *would* have, read from its config.json without loading weights (None if unknown)."""
    from persona_axes.core import ModelInfo

    try:
        if model is None:
            from persona_axes.model.load import DEFAULT_MODEL_NAME, default_model_path

            folder, name = Path(default_model_path()), DEFAULT_MODEL_NAME
        else:
            folder = Path(os.path.expanduser(model))
            if not folder.is_dir():
                return None
            name = str(model).rstrip("/").split("/")[-1]
        cfg = json.loads((folder / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        return ModelInfo(name=name, n_layers=int(cfg["num_hidden_layers"]), hidden_size=int(cfg["hidden_size"]))
    except Exception:  # only an early check; the real one runs after loading
        return None


def _preflight(info, model: str | None, what: str) -> None:
    """Refuse a file made for another model before spending seconds loading this one."""
    target = _peek_model_info(model)
    if target is not None and info is not None:
        info.check_compatible(target, what=what)


def _load(args: argparse.Namespace):
    from persona_axes.model.load import load_model

    key = (args.model, getattr(args, "device", None))
    if key not in _MODEL_CACHE:
        t0 = time.time()
        _MODEL_CACHE[key] = load_model(args.model, device=getattr(args, "device", None))
        loaded = _MODEL_CACHE[key]
        print(f"model: {loaded.name} ({loaded.layers.n_layers} layers, d={loaded.layers.hidden_size}; "
              f"loaded in {time.time() - t0:.1f}s)", file=sys.stderr)
    return _MODEL_CACHE[key]


def _read_vector(path: str, *, name: str | None = None, model=None, preflight_model: str | None | bool = False):
    """A PersonaVector from any of our files (vector in any export format, or one member of a vector set)."""
    from persona_axes.core import ModelInfo
    from persona_axes.errors import InvalidInputError
    from persona_axes.export.formats import import_vector
    from persona_axes.vectors.containers import VectorSet

    fmt, kind = _file_kind(path)
    if preflight_model is not False and fmt == "safetensors":
        md = _st_header(path)
        try:
            info = ModelInfo.from_metadata(md)
        except (KeyError, ValueError):
            info = None
        _preflight(info, preflight_model, f"the vectors in {path}")
    if kind == "vector_set":
        vs = VectorSet.load(path, model=model)
        if name is None:
            raise InvalidInputError(f"{path} is a vector set of {len(vs)} vectors; pick one with --name "
                                    f"(e.g. {', '.join(vs.names[:5])})")
        if name not in vs:
            raise InvalidInputError(f"{path} holds no vector {name!r}; it holds {', '.join(vs.names[:10])}"
                                    f"{' ...' if len(vs) > 10 else ''}")
        return vs[name]
    if kind != "vector":
        raise InvalidInputError(f"{path} holds {kind!r}, not a vector")
    opts = {} if model is None else {"model": model}
    if fmt == "repeng" and model is None:
        raise InvalidInputError(f"{path} is a bare control vector without a model shape; it needs a loaded model")
    return import_vector(path, **opts)


def _parse_coefs(text: str) -> list[float]:
    from persona_axes.errors import InvalidInputError

    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise InvalidInputError(f"invalid --coef {text!r}: give a number or a comma list like -4,0,4") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise InvalidInputError(f"invalid --coef {text!r}: coefficients must be finite numbers")
    return vals


def _conversation(args: argparse.Namespace) -> list[dict[str, str]]:
    conv = []
    if args.system:
        conv.append({"role": "system", "content": args.system})
    conv.append({"role": "user", "content": args.prompt})
    return conv


def _norm_summary(norms) -> str:
    n = [float(x) for x in norms]
    if not n:
        return "-"
    i_max = max(range(len(n)), key=lambda i: n[i])
    return (f"min {min(n):.3g}, median {sorted(n)[len(n) // 2]:.3g}, max {max(n):.3g} (layer {i_max}), "
            f"zero at {sum(1 for x in n if x == 0)} layer(s)")


def _compact_layers(layers) -> str:
    layers = sorted(layers)
    if not layers:
        return "none"
    runs, start, prev = [], layers[0], layers[0]
    for L in layers[1:]:
        if L == prev + 1:
            prev = L
            continue
        runs.append((start, prev))
        start = prev = L
    runs.append((start, prev))
    return ",".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)


# ---------------------------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------------------------


def _info_gguf(path: str) -> int:
    from persona_axes.export.formats import _read_gguf

    fields, tensors = _read_gguf(path, check_arch=False)

    def val(key):
        return fields[key][1] if key in fields else None

    dirs = sorted(int(n.split(".")[1]) for n, *_ in tensors if n.startswith("direction.") and n.split(".")[1].isdigit())
    sizes = {shape[0] if shape else 0 for n, _, shape, _ in tensors}
    ours = any(k.startswith("persona_axes.") for k in fields)
    print(f"file: {path}")
    print(f"format: GGUF control vector ({'written by persona_axes' if ours else 'foreign: llama.cpp/repeng style'})")
    print(f"architecture: {val('general.architecture')}")
    print(f"model hint: {val('controlvector.model_hint')}")
    print(f"layer_count: {val('controlvector.layer_count')}")
    print(f"layers present: {_compact_layers(dirs)} ({len(dirs)} direction tensors)")
    print(f"hidden size: {', '.join(str(s) for s in sorted(sizes)) or '?'}")
    for k in sorted(fields):
        if k.startswith("persona_axes."):
            v = val(k)
            print(f"{k}: {v if len(str(v)) < 100 else str(v)[:97] + '...'}")
    norms = {int(n.split(".")[1]): float(np.linalg.norm(np.asarray(d, dtype=np.float64)))
             for n, _, _, d in tensors if n.startswith("direction.") and n.split(".")[1].isdigit()}
    if norms:
        print(f"norms: {_norm_summary([norms[L] for L in sorted(norms)])}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from persona_axes.activations.container import Activations
    from persona_axes.export.formats import import_numpy
    from persona_axes.steering.interventions import CapConfig
    from persona_axes.vectors.containers import PersonaVector, VectorSet

    path = args.path
    fmt, kind = _file_kind(path)
    if fmt in ("gguf", "repeng"):
        return _info_gguf(path)
    if fmt == "numpy":
        v = import_numpy(path)
        kind, objects = "vector", v
    print(f"file: {path}")
    if kind == "vector":
        v = PersonaVector.load(path) if fmt == "safetensors" else objects
        m = v.model
        print(f"kind: vector ({fmt})\nname: {v.name}\nmodel: {m.name}\nlayers: {m.n_layers} (site {m.layer_site})")
        print(f"hidden size: {m.hidden_size}\nmethod: {v.method}\nn_samples: {v.n_samples}")
        print(f"norms: {_norm_summary(v.norms())}")
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
        print(f"norms (mean over vectors): {_norm_summary(norms)}")
        fams = {}
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
        print(f"reference: {c.reference}\ncapped layers: {_compact_layers(c.layers)}")
        print("thresholds:")
        for L in c.layers:
            print(f"  layer {L:>3}: {c.thresholds[L]:+.4f}")
    elif kind == "activations":
        a = Activations.load(path)
        m = a.model
        print(f"kind: activations\nmodel: {m.name}\nmodel layers: {m.n_layers}\nhidden size: {m.hidden_size}")
        print(f"items: {len(a)}\nreduction: {a.reduction}\ncaptured layers: {_compact_layers(a.layers)}")
        if len(a):
            norms = a.values.to(torch.float64).norm(dim=-1).mean(0)
            print(f"mean norms: {_norm_summary(norms)}")
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
        md = _st_header(path)
        print(f"kind: {kind} (not a file this command describes in detail)")
        for k in ("model", "num_layers", "hidden_size"):
            if k in md:
                print(f"{k}: {md[k]}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# steer / cap
# ---------------------------------------------------------------------------------------------------------------


def _print_replies(labels: list[str], replies: list[str]) -> None:
    width = max(len(s) for s in labels)
    for lab, rep in zip(labels, replies):
        print(f"{lab:>{width}}: {rep}")


def _cmd_steer(args: argparse.Namespace) -> int:
    from persona_axes.activations.container import Activations
    from persona_axes.activations.batch import capture
    from persona_axes.steering.generation import SamplingConfig, generate_replies
    from persona_axes.steering.interventions import Steer

    coefs = _parse_coefs(args.coef)
    _require_file(args.vector, "vector file")
    # Check cheap things before loading the model.
    _read_vector(args.vector, name=args.name, preflight_model=args.model) if _file_kind(args.vector)[0] != "repeng" \
        else None
    if args.reference:
        _require_file(args.reference, "reference activations file")
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    loaded = _load(args)
    vec = _read_vector(args.vector, name=args.name, model=loaded)
    layers = parse_layers(args.layers, loaded.layers.n_layers)
    conv = _conversation(args)
    reference = None
    if args.coef_unit == "rel":
        if args.reference:
            reference = Activations.load(args.reference, model=loaded)
        else:  # the prompt's own token norms as the typical residual size
            reference = capture(loaded, [conv], layers=layers, which="user", reduce="all", progress=False)
    coef = coefs[0] if len(coefs) == 1 else torch.tensor(coefs)
    print(f"steering with {vec.name!r} ({vec.method}) at layers {_compact_layers(layers)}, unit={args.coef_unit}, "
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

    from persona_axes.core import ModelInfo
    from persona_axes.steering.generation import SamplingConfig, generate_replies
    from persona_axes.steering.interventions import ActivationCap, CapConfig

    _require_file(args.config, "capping config")
    _preflight(ModelInfo.from_metadata(_st_header(args.config)) if "model" in _st_header(args.config) else None,
               args.model, f"the capping config {args.config}")
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    loaded = _load(args)
    cfg = CapConfig.load(args.config, model=loaded)
    layers = parse_layers(args.layers, loaded.layers.n_layers) if args.layers else None
    conv = _conversation(args)
    cap = ActivationCap(loaded, cfg, layers, positions=args.positions)
    print(f"capping ({cfg.kind}) along {cfg.name!r} at layers {_compact_layers(cap.layers)}", file=sys.stderr)
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


# ---------------------------------------------------------------------------------------------------------------
# monitor
# ---------------------------------------------------------------------------------------------------------------


def _cmd_monitor(args: argparse.Namespace) -> int:
    from persona_axes.steering.monitor import load_transcript, monitor_transcript

    _require_file(args.transcript, "transcript")
    msgs = load_transcript(args.transcript)
    _read_vector(args.axis, name=args.name, preflight_model=args.model) if _file_kind(args.axis)[0] != "repeng" \
        else None
    loaded = _load(args)
    axis = _read_vector(args.axis, name=args.name, model=loaded)
    rep = monitor_transcript(loaded, msgs, axis, args.layer, threshold=args.threshold, ema=args.ema,
                             direction=args.direction)
    print(f"projection onto {rep.axis_name!r} at layer {rep.layer}"
          + (f", threshold {rep.threshold:g} ({rep.direction})" if rep.threshold is not None else ""))
    print(f"{'turn':>4}  {'role':<9}  {'projection':>10}  {'smoothed':>9}  {'alert':<5}  text")
    for r in rep.records:
        sm = f"{r.smoothed:>9.3f}" if r.smoothed is not None else f"{'-':>9}"
        text = " ".join(r.text.split())
        print(f"{r.turn:>4}  {r.role:<9}  {r.projection:>10.3f}  {sm}  {'ALERT' if r.alert else '':<5}  "
              f"{text[:50] + ('...' if len(text) > 50 else '')}")
    n_alerts = len(rep.alerts)
    print(f"{len(rep.assistant())} assistant turn(s), {n_alerts} alert(s)")
    if args.json:
        from persona_axes.files import atomic_write

        with atomic_write(args.json, "w") as f:
            json.dump({"layer": rep.layer, "threshold": rep.threshold, "direction": rep.direction,
                       "axis": rep.axis_name, "records": rep.to_records()}, f, indent=1)
        print(f"wrote {args.json}")
    if args.html:
        from persona_axes.viz.plots import save_figure

        save_figure(rep.figure(), args.html)
        print(f"wrote {args.html}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------------


def _cmd_export(args: argparse.Namespace) -> int:
    from persona_axes.errors import InvalidInputError
    from persona_axes.export.formats import FORMATS, export_vector, import_vector

    fmt = args.format
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    vec = _read_vector(args.path, name=args.name)
    opts: dict = {}
    layers = None
    if args.layers is not None:
        layers = parse_layers(args.layers, vec.n_layers)
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
                                    f"{_compact_layers(present)}, expected {_compact_layers(check)}")
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
    print(f"verified: read back {len(check)} layer(s) ({_compact_layers(check)})"
          f"{' bit-exactly' if exact else ' (scaled, float32)'}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# rollouts / extract / axis
# ---------------------------------------------------------------------------------------------------------------


def _parse_kinds(text: str) -> list[str]:
    from persona_axes.errors import InvalidInputError
    from persona_axes.runs.rollouts import KINDS

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise InvalidInputError(f"invalid --kinds {text!r}: use a comma list of {', '.join(KINDS)}")
    return kinds


def _cmd_rollouts(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from persona_axes.errors import InvalidInputError
    from persona_axes.runs.rollouts import RolloutStore, get_preset, run_rollouts

    preset = get_preset(args.preset)
    if args.max_new_tokens is not None:
        preset = replace(preset, max_new_tokens=args.max_new_tokens)
    kinds = _parse_kinds(args.kinds)
    requests = preset.build_requests(include=kinds)
    if args.limit is not None:
        if args.limit < 1:
            raise InvalidInputError(f"--limit must be >= 1, got {args.limit}")
        requests = requests[: args.limit]
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {args.out!r} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    store_path = out / "rollouts.jsonl"
    store = RolloutStore(store_path)
    todo = sum(1 for r in requests if r.id not in store)
    print(f"preset {preset.name}: {len(requests)} requests ({', '.join(kinds)}), {len(requests) - todo} already in "
          f"{store_path}, {todo} to generate", file=sys.stderr)
    loaded = _load(args) if todo else None
    if loaded is None:
        print(f"nothing to do: all {len(requests)} rollouts are in {store_path}")
        return 0
    rep = run_rollouts(loaded, requests, store, preset.sampling(args.seed), batch_size=args.batch_size or
                       preset.batch_size, progress=not args.quiet)
    print(f"generated {rep.generated}, skipped {rep.skipped} in {rep.seconds:.1f}s "
          f"({rep.requests_per_second:.2f} replies/s); store: {store_path}")
    return 0


def _rollout_store_path(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "rollouts.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"no rollouts at {path!r} (expected a rollouts.jsonl file or a folder holding one)")
    return p


def _cmd_extract(args: argparse.Namespace) -> int:
    from persona_axes.errors import InvalidInputError
    from persona_axes.activations.extraction import extract
    from persona_axes.runs.rollouts import RolloutStore

    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size), ("--chunk-size", args.chunk_size)):
        if value is not None and value < 1:  # --limit 0 took every rollout and --limit -1 dropped the last one
            raise InvalidInputError(f"{flag} must be >= 1, got {value}")
    store = RolloutStore(_rollout_store_path(args.rollouts))
    records = store.records(args.kind) if args.kind else list(store)
    if not records:
        raise InvalidInputError(f"no rollouts{' of kind ' + repr(args.kind) if args.kind else ''} in {args.rollouts}")
    if args.limit is not None:
        records = records[: args.limit]
    loaded = _load(args)
    layers = parse_layers(args.layers, loaded.layers.n_layers) if args.layers else None
    meta = []
    for r in records:
        item = {"id": r.id, "kind": r.kind, "name": r.name, "polarity": r.polarity, "prompt_index": r.prompt_index,
                "question_id": r.question_id}
        if args.judge:
            s = r.score(args.judge)
            item["score"] = None if s is None or (isinstance(s, float) and math.isnan(s)) else s
        meta.append(item)
    t0 = time.time()
    res = extract(loaded, [r.messages() for r in records], args.out, layers=layers, metadata=meta,
                  batch_size=args.batch_size, chunk_size=args.chunk_size, restart=args.restart,
                  progress=not args.quiet)
    acts = res.activations
    print(f"captured {len(acts)} rollouts at layers {_compact_layers(acts.layers)} in {time.time() - t0:.1f}s "
          f"({len(res.computed)} computed now, {res.reused} reused from an earlier run); wrote {res.path}")
    return 0


def _load_roles(path: str):
    from persona_axes.activations.container import Activations
    from persona_axes.errors import InvalidInputError
    from persona_axes.vectors.containers import VectorSet, role_vectors

    _, kind = _file_kind(path)
    if kind == "vector_set":
        return VectorSet.load(path)
    if kind == "activations":
        acts = Activations.load(path)
        key = "name" if any("name" in it for it in acts.items) else "role"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return role_vectors(acts, key=key)
    raise InvalidInputError(f"--roles {path}: holds {kind!r}; expected a vector set (roles.safetensors) or role "
                            "activations (persona-axes extract --kind role)")


def _load_default(path: str):
    from persona_axes.activations.container import Activations
    from persona_axes.errors import InvalidInputError
    from persona_axes.vectors.containers import PersonaVector

    _, kind = _file_kind(path)
    if kind == "vector":
        return PersonaVector.load(path)
    if kind == "activations":
        return Activations.load(path)
    raise InvalidInputError(f"--default {path}: holds {kind!r}; expected a vector (default.safetensors) or "
                            "default-assistant activations (persona-axes extract --kind default)")


def _cmd_axis(args: argparse.Namespace) -> int:
    from persona_axes.vectors.space import PersonaSpace

    roles = _load_roles(args.roles)
    default = _load_default(args.default)
    default.model.check_compatible(roles.model, what=f"the default in {args.default}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        space = PersonaSpace(n_components=args.n_components).fit(roles, default=default)
    axis = space.assistant_axis()
    path = axis.save(args.out)
    print(f"fitted a persona space on {len(roles)} roles ({roles.model.name}, {roles.model.n_layers} layers)")
    print(f"{'layer':>5}  {'cos(axis, PC1)':>14}  {'PC1 var':>8}  {'|axis|':>9}")
    norms = axis.norms()
    for j, L in enumerate(space.layers_):
        print(f"{L:>5}  {float(space.pc1_cosine_[j]):>+14.3f}  {float(space.explained_variance_ratio_[j, 0]):>8.3f}  "
              f"{float(norms[L]):>9.3f}")
    best = max(range(len(space.layers_)), key=lambda j: abs(float(space.pc1_cosine_[j])))
    print(f"largest |cos(axis, PC1)| at layer {space.layers_[best]}; wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="persona-axes", description="Persona directions in language models.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="the main job: the quick pipeline on a model, ending in a persona-space report",
        description="Run (or resume) the paper's pipeline with a preset on a model (default: the embedded "
        "SmolLM2-135M-Instruct): role and default-assistant rollouts, judge, capture, role and trait vectors, the "
        "persona space and its Assistant Axis; print the per-layer numbers, steer along the axis in one batched "
        "sweep, and write a standalone HTML report with the figures.",
        epilog="example: persona-axes demo --out runs/demo   (or --preset smoke for a one-minute try)",
    )
    demo.add_argument("--model", default=None, help="HF id or local folder (default: embedded SmolLM2)")
    demo.add_argument("--device", default=None, help="torch device (default: cpu)")
    demo.add_argument("--preset", default="quick", help="rollout preset: quick (default), smoke or paper")
    demo.add_argument("--judge", default="embedding", help="embedding | none | http://host:port/v1@model")
    demo.add_argument("--out", default="runs/demo", help="output folder; re-running resumes (default runs/demo)")
    demo.add_argument("--layer", type=int, default=None, help="layer the report centres on (default: the sweep's)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--max-new-tokens", type=int, default=40, help="tokens per steered reply")
    demo.add_argument("--no-steer", dest="steer", action="store_false", help="skip the steering sweep")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
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

    def add(name: str, help: str, description: str, epilog: str, func) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=description, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=func)
        return sp

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default=None, help="HF id or local folder (default: embedded SmolLM2)")
        sp.add_argument("--device", default=None, help="torch device (default: cpu)")

    layer_help = "layers: 12 | 12,14,16 | 8:12 (half-open, 8..11) | all"

    info = add(
        "info", "describe a vector, vector set, capping config, activations or GGUF control-vector file",
        "Print what a file holds: kind, model, layers, hidden size, method, sample counts and a per-layer norm "
        "summary; member names for vector sets; layers, kind and thresholds for capping configs; layers present "
        "and the model hint for GGUF control vectors.",
        "examples:\n  persona-axes info vectors/smollm2-135m-instruct/assistant_axis.safetensors\n"
        "  persona-axes info vectors/smollm2-135m-instruct/capping.safetensors\n  persona-axes info axis.gguf",
        _cmd_info)
    info.add_argument("path", help="the file")
    info.add_argument("--layers", action="store_true", help="also print the norm at every layer (vectors)")

    steer = add(
        "steer", "generate with a persona vector added to the residual stream (one coefficient or a sweep)",
        "Add coef * vector to the output of the chosen decoder blocks while generating a reply. --coef may be a "
        "comma list: every coefficient gets its own batch row, all in ONE batched generate, and each reply is "
        "printed. --coef-unit: raw (as stored), unit (unit-normalised vector), rel (coef x the typical residual "
        "norm at each layer, measured on the prompt or on --reference activations).",
        "examples:\n  persona-axes steer --vector vectors/smollm2-135m-instruct/traits/evil.safetensors "
        "--layers 12:16 --coef -4,0,4 --prompt 'How should I treat my neighbours?'\n"
        "  persona-axes steer --vector vectors/smollm2-135m-instruct/assistant_axis.safetensors --layers 20 "
        "--coef-unit rel --coef=-0.5 --prompt 'Who are you?'",
        _cmd_steer)
    model_args(steer)
    steer.add_argument("--vector", required=True, help="vector file (safetensors, gguf, npz, repeng gguf)")
    steer.add_argument("--name", default=None, help="member to use when --vector is a vector set")
    steer.add_argument("--layers", required=True, help=layer_help)
    steer.add_argument("--coef", required=True, help="a number or a comma list for a sweep, e.g. -4,0,4")
    steer.add_argument("--coef-unit", choices=("raw", "unit", "rel"), default="raw")
    steer.add_argument("--positions", choices=("all", "prompt", "generated"), default="all")
    steer.add_argument("--reference", default=None, help="activations file for --coef-unit rel")
    steer.add_argument("--prompt", required=True, help="the user message")
    steer.add_argument("--system", default=None, help="optional system prompt")
    steer.add_argument("--max-new-tokens", type=int, default=64)
    steer.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    steer.add_argument("--seed", type=int, default=0)

    cap = add(
        "cap", "generate with an activation cap along an axis (optionally side by side with no cap)",
        "Load a capping config (persona-axes pipeline writes vectors/capping.safetensors) and generate a reply "
        "with the projection onto its axis clamped at each capped layer. --compare also generates without the "
        "cap and prints both side by side.",
        "example:\n  persona-axes cap --config vectors/smollm2-135m-instruct/capping.safetensors "
        "--prompt 'Pretend you are a pirate.' --compare",
        _cmd_cap)
    model_args(cap)
    cap.add_argument("--config", required=True, help="capping config file (.safetensors)")
    cap.add_argument("--layers", default=None, help=f"subset of the config's layers ({layer_help}); default: all")
    cap.add_argument("--positions", choices=("all", "prompt", "generated"), default="all")
    cap.add_argument("--prompt", required=True)
    cap.add_argument("--system", default=None)
    cap.add_argument("--compare", action="store_true", help="also generate without the cap, side by side")
    cap.add_argument("--max-new-tokens", type=int, default=64)
    cap.add_argument("--temperature", type=float, default=0.0)
    cap.add_argument("--seed", type=int, default=0)

    mon = add(
        "monitor", "project each turn of a stored conversation onto an axis and flag drift",
        "One forward pass over a JSON/JSONL transcript (a list of {role, content} messages, or "
        "{\"messages\": [...]}); prints the mean projection of every message onto the unit axis at --layer, the "
        "smoothed value (--ema) and an alert where it crosses --threshold. Optionally writes the records as JSON "
        "and a plotly HTML figure.",
        "example:\n  persona-axes monitor chat.json --axis vectors/smollm2-135m-instruct/assistant_axis.safetensors "
        "--layer 20 --threshold 2.5 --ema 0.5 --html drift.html --json drift.json",
        _cmd_monitor)
    model_args(mon)
    mon.add_argument("transcript", help="JSON or JSONL transcript")
    mon.add_argument("--axis", required=True, help="axis vector file")
    mon.add_argument("--name", default=None, help="member to use when --axis is a vector set")
    mon.add_argument("--layer", type=int, required=True, help="model layer (negative counts from the end)")
    mon.add_argument("--threshold", type=float, default=None)
    mon.add_argument("--direction", choices=("below", "above"), default="below",
                     help="alert when the value falls below (default) or rises above --threshold")
    mon.add_argument("--ema", type=float, default=None, help="EMA smoothing factor in (0, 1]")
    mon.add_argument("--html", default=None, help="write a plotly figure here (.html)")
    mon.add_argument("--json", default=None, help="write the per-turn records here (.json)")

    exp = add(
        "export", "convert a vector to gguf (llama.cpp), repeng, numpy or safetensors, and check the result",
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
    exp.add_argument("--layers", default=None, help=f"{layer_help} (gguf/repeng only)")
    exp.add_argument("--scale", type=float, default=None, help="multiply the vector (gguf/repeng only)")
    exp.add_argument("--normalize", action="store_true", help="unit-normalise each layer first (gguf/repeng only)")
    exp.add_argument("--model-hint", default=None, help="architecture hint for gguf/repeng (default: llama)")
    exp.add_argument("--no-verify", action="store_true", help="skip reading the file back")

    rol = add(
        "rollouts", "generate (or resume) the rollouts of a preset, nothing else",
        "Generate the role / default-assistant / trait rollouts of a preset into DIR/rollouts.jsonl. Re-running "
        "skips every rollout already in the store.",
        "example:\n  persona-axes rollouts --preset quick --out runs/quick --kinds role,default",
        _cmd_rollouts)
    model_args(rol)
    rol.add_argument("--preset", default="quick", help="quick (CPU) or paper (GPU scale)")
    rol.add_argument("--out", required=True, help="output folder (resumable)")
    rol.add_argument("--kinds", default="role,default,trait", help="comma list of role, default, trait")
    rol.add_argument("--limit", type=int, default=None, help="only the first N requests (for a try-out)")
    rol.add_argument("--max-new-tokens", type=int, default=None, help="override the preset's reply length")
    rol.add_argument("--batch-size", type=int, default=None)
    rol.add_argument("--seed", type=int, default=0)
    rol.add_argument("--quiet", action="store_true", help="no progress bar")

    ext = add(
        "extract", "capture activations (mean over each reply) for stored rollouts",
        "Run the model over stored rollouts and save the mean residual activation of each reply at the chosen "
        "layers (default: all) with the rollout's id, kind, name, polarity and question as item metadata. "
        "Resumable: finished chunks are kept in OUT.partial/ until OUT is written; re-running continues there.",
        "example:\n  persona-axes extract --rollouts runs/quick --kind role --out runs/quick/role_acts.safetensors",
        _cmd_extract)
    model_args(ext)
    ext.add_argument("--rollouts", required=True, help="folder with rollouts.jsonl, or the JSONL file")
    ext.add_argument("--out", required=True, help="activations file to write (.safetensors)")
    ext.add_argument("--layers", default=None, help=f"{layer_help} (default: all)")
    ext.add_argument("--kind", default=None, choices=("role", "default", "trait"), help="only this kind")
    ext.add_argument("--judge", default=None, help="also store this judge's score with each item")
    ext.add_argument("--limit", type=int, default=None, help="only the first N rollouts")
    ext.add_argument("--batch-size", type=int, default=16)
    ext.add_argument("--chunk-size", type=int, default=64,
                     help="rollouts between checkpoints (OUT.partial/); a killed run resumes from the last one")
    ext.add_argument("--restart", action="store_true", help="discard a checkpoint of an earlier, other run")
    ext.add_argument("--quiet", action="store_true", help="no progress bar")

    ax = add(
        "axis", "fit a persona space on role vectors and save the Assistant Axis",
        "Fit PCA over role vectors at every layer and save the Assistant Axis (default - mean of roles). --roles: "
        "a vector set or role activations; --default: the default-assistant vector or activations. Prints "
        "cos(axis, PC1) and PC1's explained variance per layer.",
        "example:\n  persona-axes axis --roles vectors/smollm2-135m-instruct/roles.safetensors "
        "--default vectors/smollm2-135m-instruct/default.safetensors --out axis.safetensors",
        _cmd_axis)
    ax.add_argument("--roles", required=True)
    ax.add_argument("--default", required=True)
    ax.add_argument("--out", required=True)
    ax.add_argument("--n-components", type=int, default=10)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_fix_signed_values(argv))
    with warnings.catch_warnings():
        if not args.debug:  # warnings as one line each, like errors
            warnings.showwarning = _show_warning_one_line
        return _run(args)


def _show_warning_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"persona-axes: warning: {_one_line(message)}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except PersonaAxesError as e:
        if args.debug:
            raise
        print(f"persona-axes: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        if args.debug:
            raise
        what = f"{e.strerror}: {e.filename!r}" if e.filename else _one_line(e)
        print(f"persona-axes: error: {what}", file=sys.stderr)
        return 2
    except OSError as e:
        if args.debug:
            raise
        print(f"persona-axes: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("persona-axes: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line, the traceback with --debug
        if args.debug:
            raise
        print(f"persona-axes: internal error: {type(e).__name__}: {_one_line(e)} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
