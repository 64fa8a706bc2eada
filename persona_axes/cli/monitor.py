"""``persona-axes monitor``: project each turn of a stored conversation onto an axis and flag drift."""

from __future__ import annotations

import argparse
import json
from typing import Any

from persona_axes.cli.batch import INPUT_HELP, read_conversations, write_jsonl
from persona_axes.cli.common import add_command, add_model_args, file_kind, load_model_from_args, read_vector, \
    require_file, shipped_file
from persona_axes.errors import InvalidInputError
from persona_axes.viz.figures import PLOTLYJS_MODES


def _cmd_monitor_many(args: argparse.Namespace) -> int:
    """``--input FILE``: every conversation of a file, one summary line each, JSONL records with ``--out``."""
    from persona_axes.progress import progress_bar
    from persona_axes.steering.monitor import monitor_transcript

    items = read_conversations(args.input)
    if args.layer is None:
        raise InvalidInputError("give --layer (the layer to project at)")
    args.direction = args.direction or "below"
    if file_kind(args.axis)[0] != "repeng":
        read_vector(args.axis, name=args.name, preflight_model=args.model)
    loaded = load_model_from_args(args)
    axis = read_vector(args.axis, name=args.name, model=loaded)
    records = []
    for it in progress_bar(items, desc="monitoring", unit="conversation", disable=args.quiet):
        rep = monitor_transcript(loaded, it["messages"], axis, args.layer, threshold=args.threshold, ema=args.ema,
                                 direction=args.direction)
        proj = [r.projection for r in rep.assistant()]
        records.append({"line": it["line"], "layer": rep.layer, "threshold": rep.threshold,
                        "direction": rep.direction, "axis": rep.axis_name, "n_alerts": len(rep.alerts),
                        "min_projection": min(proj), "mean_projection": sum(proj) / len(proj),
                        "records": rep.to_records(), **it["meta"]})
    print(f"projection onto {records[0]['axis']!r} at layer {records[0]['layer']}"
          + (f", threshold {args.threshold:g} ({args.direction})" if args.threshold is not None else ""))
    print(f"{'line':>5}  {'replies':>7}  {'min':>9}  {'mean':>9}  alerts")
    for r in records:
        n = sum(1 for t in r["records"] if t["role"] == "assistant")
        print(f"{r['line']:>5}  {n:>7}  {r['min_projection']:>9.3f}  {r['mean_projection']:>9.3f}  {r['n_alerts']}")
    print(f"{len(records)} conversation(s), {sum(1 for r in records if r['n_alerts'])} with alerts")
    if args.out:
        write_jsonl(args.out, records)
        print(f"wrote {args.out}")
    return 0


def _settings_from_chat(args: argparse.Namespace) -> None:
    """``--layer``, ``--threshold`` and ``--direction`` not given: take them from a transcript ``persona-axes chat``
    saved (a JSON object with ``layer`` / ``threshold`` / ``direction`` beside its ``messages``)."""
    saved: dict = {}
    if not str(args.transcript).endswith(".jsonl"):
        try:
            data = json.loads(open(args.transcript, encoding="utf-8").read())
        except (OSError, ValueError):
            data = None
        saved = data if isinstance(data, dict) else {}
    if args.layer is None:
        if not isinstance(saved.get("layer"), int) or isinstance(saved.get("layer"), bool):
            raise InvalidInputError("give --layer (the transcript does not record the layer a chat projected at)")
        args.layer = saved["layer"]
    if args.threshold is None and isinstance(saved.get("threshold"), (int, float)) \
            and not isinstance(saved.get("threshold"), bool):
        args.threshold = float(saved["threshold"])
        if args.direction is None and saved.get("direction") in ("below", "above"):
            args.direction = saved["direction"]
    if args.direction is None:
        args.direction = "below"


def _cmd_monitor(args: argparse.Namespace) -> int:
    from persona_axes.steering.monitor import load_transcript, monitor_transcript

    if (args.transcript is None) == (args.input is None):
        raise InvalidInputError("give one TRANSCRIPT file, or --input FILE with many conversations (not both)")
    if args.input is not None:
        return _cmd_monitor_many(args)
    require_file(args.transcript, "transcript")
    msgs = load_transcript(args.transcript)
    _settings_from_chat(args)
    if file_kind(args.axis)[0] != "repeng":
        read_vector(args.axis, name=args.name, preflight_model=args.model)
    loaded = load_model_from_args(args)
    axis = read_vector(args.axis, name=args.name, model=loaded)
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
        from persona_axes.viz.plots import drift_curves, save_figure

        save_figure(drift_curves({rep.axis_name: rep}), args.html, plotlyjs=args.plotlyjs)
        print(f"wrote {args.html}")
    return 0


def register(sub: Any) -> None:
    mon = add_command(
        sub, "monitor", "project each turn of a stored conversation onto an axis and flag drift",
        "One forward pass over a JSON/JSONL transcript (a list of {role, content} messages, or "
        "{\"messages\": [...]}); prints the mean projection of every message onto the unit axis at --layer, the "
        "smoothed value (--ema) and an alert where it crosses --threshold. Optionally writes the records as JSON "
        "and a plotly HTML figure. A threshold to start from: the capping config's value at the layer (persona-axes "
        "info vectors/smollm2-135m-instruct/capping.safetensors lists them; -19.89 at layer 21).",
        "example:\n  persona-axes monitor chat.json --axis vectors/smollm2-135m-instruct/assistant_axis.safetensors "
        "--layer 21 --threshold -19.9 --ema 0.5 --html drift.html --json drift.json\n"
        "  persona-axes monitor --input chats.jsonl --axis vectors/smollm2-135m-instruct/assistant_axis.safetensors "
        "--layer 21 --threshold -19.9 --out drift.jsonl",
        _cmd_monitor)
    add_model_args(mon)
    mon.add_argument("transcript", nargs="?", default=None, help="JSON or JSONL transcript (or use --input)")
    mon.add_argument("--input", default=None, help=INPUT_HELP + "; one summary line per conversation")
    mon.add_argument("--out", default=None, help="with --input: write each conversation's records here (JSONL)")
    mon.add_argument("--quiet", action="store_true", help="no progress bar")
    mon.add_argument("--axis", default=shipped_file("assistant_axis.safetensors"),
                     help="axis vector file (default: the shipped SmolLM2 Assistant Axis)")
    mon.add_argument("--name", default=None, help="member to use when --axis is a vector set")
    mon.add_argument("--layer", type=int, default=None, help="model layer (negative counts from the end); "
                     "default: the one a `persona-axes chat` transcript records")
    mon.add_argument("--threshold", type=float, default=None,
                     help="alert threshold (default: none, or the one a chat transcript records)")
    mon.add_argument("--direction", choices=("below", "above"), default=None,
                     help="alert when the value falls below (default) or rises above --threshold")
    mon.add_argument("--ema", type=float, default=None, help="EMA smoothing factor in (0, 1]")
    mon.add_argument("--html", default=None, help="write a plotly figure here (.html)")
    mon.add_argument("--plotlyjs", choices=PLOTLYJS_MODES, default="inline",
                     help="plotly.js inside the page (default), once beside it in the folder (directory: for many "
                     "pages), or from the cdn")
    mon.add_argument("--json", default=None, help="write the per-turn records here (.json)")
