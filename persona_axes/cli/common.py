"""Helpers shared by the ``persona-axes`` subcommands: model flags and loading, signed flag values, file-kind
dispatch, reading a vector from any of our files, and small printing helpers.

Every command module builds on these; nothing here knows about a particular command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any
from pathlib import Path

from persona_axes.core import LAYER_SPEC_FORMS, ModelInfo, format_layers, parse_layer_spec
from persona_axes.errors import InvalidInputError

LAYER_HELP = "layers: 12 | 12,14,16 | 8:12 (half-open, 8..11) | all"

#: flags whose value may start with '-' (e.g. ``--coef -4,0,4``); argparse would take it for an option.
SIGNED_VALUE_FLAGS = ("--coef", "--scale", "--threshold", "--layers", "--layer")

_MODEL_CACHE: dict[tuple, object] = {}

__all__ = [
    "LAYER_HELP", "LAYER_SPEC_FORMS", "SIGNED_VALUE_FLAGS", "add_command", "add_model_args", "conversation",
    "file_kind", "fix_signed_values", "format_layers", "load_model_from_args", "model_options", "norm_summary",
    "one_line", "parse_coefs", "parse_layer_spec", "preflight", "read_header", "read_vector", "require_file",
    "preset_help", "shipped_file",
]


def add_command(sub: Any, name: str, help: str, description: str, epilog: str,
                func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """A subcommand whose description and examples keep their line breaks, running ``func(args)``."""
    sp = sub.add_parser(name, help=help, description=description, epilog=epilog,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.set_defaults(func=func)
    return sp


def add_model_args(sp: argparse.ArgumentParser) -> None:
    """The flags of every command that loads a model (passed on to :func:`persona_axes.model.load.load_model`)."""
    g = sp.add_argument_group("model")
    g.add_argument("--model", default=None, help="HF id, local folder or .gguf file (default: embedded SmolLM2)")
    g.add_argument("--dtype", default=None, help="weights dtype: float32, bfloat16 (bf16), float16 (fp16) or auto "
                   "(default: as loaded, float32 on CPU)")
    g.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1, mps (default: cpu)")
    g.add_argument("--device-map", default=None, help="accelerate placement instead of --device, e.g. auto or "
                   "balanced (spreads a large model over GPUs / CPU / disk)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own code from its folder or hub repo (only for models you trust)")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """``load_model`` keyword arguments from the model flags (those a command has)."""
    if getattr(args, "device", None) and getattr(args, "device_map", None):
        raise InvalidInputError("give --device or --device-map, not both (--device-map places the model itself)")
    opts = {"device": getattr(args, "device", None), "dtype": getattr(args, "dtype", None),
            "device_map": getattr(args, "device_map", None),
            "trust_remote_code": bool(getattr(args, "trust_remote_code", False))}
    return {k: v for k, v in opts.items() if v not in (None, False)}


def shipped_file(name: str) -> str:
    """A file of the vectors shipped for the embedded SmolLM2 (the defaults of ``chat``), as a path string; ""
    when the package has no shipped vectors (the parser must still build; the command then asks for the file)."""
    from persona_axes.files import shipped_vectors_dir

    try:
        return str(shipped_vectors_dir() / name)
    except InvalidInputError:
        return ""


def preset_help(default: str = "quick") -> str:
    """The rollout presets' names, from the presets themselves (``--preset`` help)."""
    from persona_axes.runs.presets import PRESETS

    return "rollout preset: " + ", ".join(f"{n}{' (default)' if n == default else ''}" for n in PRESETS) + \
        " (see persona_axes.runs.presets.PRESETS)"


def one_line(e: BaseException | str) -> str:
    msg = " ".join(str(e).split())
    return msg or type(e).__name__


def fix_signed_values(argv: list[str]) -> list[str]:
    """``--coef -4,0,4`` -> ``--coef=-4,0,4`` so argparse does not read the value as an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in SIGNED_VALUE_FLAGS and i + 1 < len(argv) and argv[i + 1].startswith("-") and len(argv[i + 1]) > 1 \
                and (argv[i + 1][1].isdigit() or argv[i + 1][1] == "."):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    if p.is_dir():
        raise IsADirectoryError(f"{what} {str(path)!r} is a folder, not a file")
    return p


def read_header(path: str | os.PathLike) -> dict:
    """The ``__metadata__`` of a safetensors file without loading its tensors (FileFormatError if it is not one)."""
    from persona_axes.files import read_safetensors_metadata

    return read_safetensors_metadata(path)


def file_kind(path: str | os.PathLike) -> tuple[str, str]:
    """``(format, kind)``: format from :func:`guess_format`, kind (``vector``, ``vector_set``, ``capping``,
    ``activations`` ...) from our metadata for safetensors files."""
    from persona_axes.export import guess_format

    require_file(path)
    fmt = guess_format(path)
    if fmt == "safetensors":
        return fmt, read_header(path).get("kind", "?")
    return fmt, "vector"


def _peek_model_info(model: str | None) -> ModelInfo | None:
    """The ModelInfo a model *would* have, read from its config.json without loading weights (None if unknown)."""
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


def preflight(info: ModelInfo | None, model: str | None, what: str) -> None:
    """Refuse a file made for another model before spending seconds loading this one."""
    target = _peek_model_info(model)
    if target is not None and info is not None:
        info.check_compatible(target, what=what)


def load_model_from_args(args: argparse.Namespace):
    """The model named by the model flags (loaded once per process), with a one-line note on stderr."""
    from persona_axes.model.load import load_model

    opts = model_options(args)
    key = (args.model, tuple(sorted(opts.items())))
    if key not in _MODEL_CACHE:
        t0 = time.time()
        _MODEL_CACHE[key] = load_model(args.model, **opts)
        loaded = _MODEL_CACHE[key]
        print(f"model: {loaded.name} ({loaded.layers.n_layers} layers, d={loaded.layers.hidden_size}; "
              f"loaded in {time.time() - t0:.1f}s)", file=sys.stderr)
    return _MODEL_CACHE[key]


def read_vector(path: str, *, name: str | None = None, model=None, preflight_model: str | None | bool = False):
    """A PersonaVector from any of our files (vector in any export format, or one member of a vector set)."""
    from persona_axes.export import import_vector
    from persona_axes.vectors.containers import VectorSet

    fmt, kind = file_kind(path)
    if preflight_model is not False and fmt == "safetensors":
        md = read_header(path)
        try:
            info = ModelInfo.from_metadata(md)
        except (KeyError, ValueError):
            info = None
        preflight(info, preflight_model, f"the vectors in {path}")
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


def parse_coefs(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise InvalidInputError(f"invalid --coef {text!r}: give a number or a comma list like -4,0,4") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise InvalidInputError(f"invalid --coef {text!r}: coefficients must be finite numbers")
    return vals


def conversation(args: argparse.Namespace) -> list[dict[str, str]]:
    """``--system`` (optional) and ``--prompt`` as a chat."""
    conv = []
    if args.system:
        conv.append({"role": "system", "content": args.system})
    conv.append({"role": "user", "content": args.prompt})
    return conv


def norm_summary(norms, layers=None) -> str:
    """min / median / max of per-layer norms, naming the LAYER of the max (``layers[i]``, default ``i``)."""
    n = [float(x) for x in norms]
    if not n:
        return "-"
    layers = list(range(len(n))) if layers is None else [int(L) for L in layers]
    i_max = max(range(len(n)), key=lambda i: n[i])
    return (f"min {min(n):.3g}, median {sorted(n)[len(n) // 2]:.3g}, max {max(n):.3g} (layer {layers[i_max]}), "
            f"zero at {sum(1 for x in n if x == 0)} layer(s)")
