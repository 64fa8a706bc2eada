"""``persona-axes rollouts``, ``extract`` and ``axis``: the pipeline's stages one at a time."""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from persona_axes.cli.common import (
    LAYER_HELP, add_command, add_model_args, file_kind, format_layers, load_model_from_args, parse_layer_spec,
    preset_help,
)
from persona_axes.core import RolloutKind
from persona_axes.errors import InvalidInputError


def _parse_kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in RolloutKind.values()]
    if not kinds or bad:
        raise InvalidInputError(f"invalid --kinds {text!r}: use a comma list of {', '.join(RolloutKind.values())}")
    return kinds


def _cmd_rollouts(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from persona_axes.runs.presets import get_preset
    from persona_axes.runs.requests import limit_per_kind
    from persona_axes.runs.rollouts import run_preset_rollouts
    from persona_axes.runs.store import RolloutStore

    preset = get_preset(args.preset)
    if args.max_new_tokens is not None:
        preset = replace(preset, max_new_tokens=args.max_new_tokens)
    kinds = _parse_kinds(args.kinds)
    if args.limit is not None and args.limit < 1:
        raise InvalidInputError(f"--limit must be >= 1, got {args.limit}")
    requests = limit_per_kind(preset.build_requests(include=kinds), args.limit)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {args.out!r} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    store_path = out / "rollouts.jsonl"
    store = RolloutStore(store_path)
    todo = sum(1 for r in requests if r.id not in store)
    per_kind = ", ".join(f"{sum(1 for r in requests if r.kind == k)} {k}" for k in kinds)
    print(f"preset {preset.name}: {len(requests)} requests ({per_kind}), {len(requests) - todo} already in "
          f"{store_path}, {todo} to generate", file=sys.stderr)
    loaded = load_model_from_args(args) if todo else None
    if loaded is None:
        print(f"nothing to do: all {len(requests)} rollouts are in {store_path}")
        return 0
    rep = run_preset_rollouts(loaded, preset, requests, store, args.seed, batch_size=args.batch_size,
                              progress=not args.quiet)
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
    from persona_axes.activations.extraction import extract
    from persona_axes.runs.store import RolloutStore

    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size), ("--chunk-size", args.chunk_size)):
        if value is not None and value < 1:  # --limit 0 took every rollout and --limit -1 dropped the last one
            raise InvalidInputError(f"{flag} must be >= 1, got {value}")
    store = RolloutStore(_rollout_store_path(args.rollouts))
    records = store.records(args.kind) if args.kind else list(store)
    if not records:
        raise InvalidInputError(f"no rollouts{' of kind ' + repr(args.kind) if args.kind else ''} in {args.rollouts}")
    if args.limit is not None:
        records = records[: args.limit]
    loaded = load_model_from_args(args)
    layers = parse_layer_spec(args.layers, loaded.layers.n_layers) if args.layers else None
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
    print(f"captured {len(acts)} rollouts at layers {format_layers(acts.layers)} in {time.time() - t0:.1f}s "
          f"({len(res.computed)} computed now, {res.reused} reused from an earlier run); wrote {res.path}")
    return 0


def _load_roles(path: str):
    from persona_axes.activations.container import Activations
    from persona_axes.vectors.containers import VectorSet
    from persona_axes.vectors.methods import role_vectors

    _, kind = file_kind(path)
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
    from persona_axes.vectors.containers import PersonaVector

    _, kind = file_kind(path)
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


def register(sub: Any) -> None:
    rol = add_command(
        sub, "rollouts", "generate (or resume) the rollouts of a preset, nothing else",
        "Generate the role / default-assistant / trait rollouts of a preset into DIR/rollouts.jsonl. Re-running "
        "skips every rollout already in the store.",
        "example:\n  persona-axes rollouts --preset quick --out runs/quick --kinds role,default",
        _cmd_rollouts)
    add_model_args(rol)
    rol.add_argument("--preset", default="quick", help=preset_help())
    rol.add_argument("--out", required=True, help="output folder (resumable)")
    rol.add_argument("--kinds", default=",".join(RolloutKind.values()),
                     help=f"comma list of {', '.join(RolloutKind.values())}")
    rol.add_argument("--limit", type=int, default=None,
                     help="only the first N requests OF EACH KIND (for a try-out: --kinds role,default --limit 6 "
                     "gives 6 of each)")
    rol.add_argument("--max-new-tokens", type=int, default=None, help="override the preset's reply length")
    rol.add_argument("--batch-size", type=int, default=None)
    rol.add_argument("--seed", type=int, default=0)
    rol.add_argument("--quiet", action="store_true", help="no progress bar")

    ext = add_command(
        sub, "extract", "capture activations (mean over each reply) for stored rollouts",
        "Run the model over stored rollouts and save the mean residual activation of each reply at the chosen "
        "layers (default: all) with the rollout's id, kind, name, polarity and question as item metadata. "
        "Resumable: finished chunks are kept in OUT.partial/ until OUT is written; re-running continues there.",
        "example:\n  persona-axes extract --rollouts runs/quick --kind role --out runs/quick/role_acts.safetensors",
        _cmd_extract)
    add_model_args(ext)
    ext.add_argument("--rollouts", required=True, help="folder with rollouts.jsonl, or the JSONL file")
    ext.add_argument("--out", required=True, help="activations file to write (.safetensors)")
    ext.add_argument("--layers", default=None, help=f"{LAYER_HELP} (default: all)")
    ext.add_argument("--kind", default=None, choices=RolloutKind.values(), help="only this kind")
    ext.add_argument("--judge", default=None, help="also store this judge's score with each item")
    ext.add_argument("--limit", type=int, default=None, help="only the first N rollouts")
    ext.add_argument("--batch-size", type=int, default=16)
    ext.add_argument("--chunk-size", type=int, default=64,
                     help="rollouts between checkpoints (OUT.partial/); a killed run resumes from the last one")
    ext.add_argument("--restart", action="store_true", help="discard a checkpoint of an earlier, other run")
    ext.add_argument("--quiet", action="store_true", help="no progress bar")

    ax = add_command(
        sub, "axis", "fit a persona space on role vectors and save the Assistant Axis",
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
