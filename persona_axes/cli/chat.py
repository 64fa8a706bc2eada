"""``persona-axes chat``: talk to a model in the terminal and watch each reply's projection on an axis.

Every assistant reply is projected onto the unit axis at ``--layer`` as :func:`monitor_transcript` would project it
(the model re-reading the conversation, with no intervention), so ``persona-axes monitor`` on a saved transcript
prints the same numbers. The cap and a steer act on generation only, and can be switched per turn.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from persona_axes.cli.common import (
    LAYER_HELP, add_command, add_model_args, load_model_from_args, parse_layer_spec, read_vector, require_file,
    shipped_file,
)
from persona_axes.core import CapKind
from persona_axes.errors import InvalidInputError, PersonaAxesError

HELP = """commands:
  /cap on | /cap off     clamp the projection at the capping config's layers while generating (needs --cap-config)
  /steer COEF            steer by COEF spreads (sd) of default-assistant replies along the vector (e.g. /steer -2)
  /steer off             stop steering
  /save FILE.json        write the conversation ({"messages": [...], "turns": [...]}); `persona-axes monitor` reads it
  /status                show the cap, steer, layer and floor
  /help                  this list
  /quit                  leave (Ctrl-D works too)
anything else is your next message."""


class ChatSession:
    """The state of one chat: the conversation, its per-turn projections, and whether the cap / a steer is on."""

    def __init__(self, loaded: Any, args: argparse.Namespace):
        from persona_axes.steering.capping import CapConfig
        from persona_axes.steering.generation import SamplingConfig
        from persona_axes.steering.monitor import LiveMonitor

        self.loaded = loaded
        self.cap_config = CapConfig.load(args.cap_config, model=loaded) if args.cap_config else None
        self.axis = read_vector(args.axis, name=args.name, model=loaded)
        n = loaded.layers.n_layers
        if args.layer is not None:
            self.layer = parse_layer_spec(str(args.layer), n)[0]
        elif self.cap_config is not None:
            capped = sorted(self.cap_config.layers)
            self.layer = capped[len(capped) // 2]
        else:
            raise InvalidInputError("give --layer (the layer to project replies at), or --cap-config to take the "
                                    "middle of its capped layers")
        self.floor, self.direction = args.threshold, "below"
        if self.floor is None and self.cap_config is not None and self.layer in self.cap_config.thresholds:
            self.floor = self.cap_config.thresholds[self.layer]
            self.direction = "below" if self.cap_config.kind == CapKind.FLOOR else "above"
        self.steer_vector = read_vector(args.steer_vector, name=args.steer_name, model=loaded) \
            if args.steer_vector else self.axis
        self.steer_layers = parse_layer_spec(args.steer_layers, n) if args.steer_layers else [self.layer]
        self.sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                       seed=args.seed)
        self.monitor = LiveMonitor(loaded, self.axis, self.layer, system=args.system, threshold=self.floor,
                                   direction=self.direction)
        self.cap_on = bool(args.cap)
        if self.cap_on and self.cap_config is None:
            raise InvalidInputError("--cap needs --cap-config (a capping config file)")
        self.steer_coef: float | None = args.steer
        self.turns: list[dict[str, Any]] = []

    # -- commands ------------------------------------------------------------------------------------------------

    def status(self) -> str:
        cap = "on" if self.cap_on else "off"
        if self.cap_config is not None:
            cap += f" ({self.cap_config.kind} at layers {', '.join(map(str, sorted(self.cap_config.layers)))})"
        steer = "off" if self.steer_coef is None else \
            f"{self.steer_coef:+g} sd along {self.steer_vector.name!r} at layers {self.steer_layers}"
        floor = "none" if self.floor is None else f"{self.floor:+.3f} ({'alert below' if self.direction == 'below' else 'alert above'})"
        return f"projection onto {self.axis.name!r} at layer {self.layer}; threshold {floor}; cap {cap}; steer {steer}"

    def command(self, line: str) -> str | None:
        """Run a ``/command``; returns the text to print, or None to quit."""
        words = line.split()
        cmd, rest = words[0].lower(), words[1:]
        if cmd in ("/quit", "/exit", "/q"):
            return None
        if cmd == "/help":
            return HELP
        if cmd == "/status":
            return self.status()
        if cmd == "/cap":
            if rest not in (["on"], ["off"]):
                raise InvalidInputError("use /cap on or /cap off")
            if rest == ["on"] and self.cap_config is None:
                raise InvalidInputError("no capping config: start the chat with --cap-config FILE")
            self.cap_on = rest == ["on"]
            return f"cap {'on' if self.cap_on else 'off'}"
        if cmd == "/steer":
            if rest == ["off"]:
                self.steer_coef = None
                return "steer off"
            try:
                coef = float(rest[0]) if len(rest) == 1 else float("nan")
            except ValueError:
                coef = float("nan")
            if coef != coef or coef in (float("inf"), float("-inf")):
                raise InvalidInputError("use /steer COEF (a number, e.g. /steer 0.2) or /steer off")
            self.steer_coef = coef
            return f"steer {coef:+g} (sd of default-assistant replies along the vector) at layers {self.steer_layers}"
        if cmd == "/save":
            if len(rest) != 1:
                raise InvalidInputError("use /save FILE.json")
            return f"saved {self.save(rest[0])}"
        raise InvalidInputError(f"unknown command {cmd!r}; /help lists them")

    def save(self, path: str) -> str:
        from persona_axes.files import atomic_write

        data = {"messages": self.monitor.messages, "layer": self.layer, "axis": self.axis.name,
                "threshold": self.floor, "direction": self.direction, "turns": self.turns}
        with atomic_write(path, "w") as f:
            json.dump(data, f, indent=1)
        return path

    # -- a turn --------------------------------------------------------------------------------------------------

    def reply(self, text: str) -> tuple[str, Any]:
        """Generate the reply to ``text`` under the current cap / steer, record it, and project it."""
        from persona_axes.steering.capping import ActivationCap
        from persona_axes.steering.generation import generate_replies
        from persona_axes.steering.interventions import Steer

        conv = self.monitor.messages + [{"role": "user", "content": text}]
        with contextlib.ExitStack() as stack:
            if self.cap_on:
                stack.enter_context(ActivationCap(self.loaded, self.cap_config))
            if self.steer_coef is not None:  # unit "sd" from the vector's stored unit statistics
                stack.enter_context(Steer(self.loaded, self.steer_vector, self.steer_layers, self.steer_coef,
                                          unit="sd"))
            answer = generate_replies(self.loaded, [conv], self.sampling, progress=False)[0]
        rec = self.monitor.add_turn(text, answer)
        self.turns.append({"turn": rec.turn, "projection": rec.projection, "alert": rec.alert, "cap": self.cap_on,
                           "steer": self.steer_coef})
        return answer, rec

    def describe(self, rec: Any) -> str:
        line = f"[turn {rec.turn}] projection {rec.projection:+.3f} at layer {self.layer}"
        if self.floor is not None:
            line += f" (threshold {self.floor:+.3f})"
        line += f"; cap {'on' if self.cap_on else 'off'}, steer {'off' if self.steer_coef is None else f'{self.steer_coef:+g}'}"
        if rec.alert:
            side = "below" if self.direction == "below" else "above"
            line += f"\n!! drift warning: the reply is {side} the threshold on {self.axis.name!r}"
            if self.cap_on:
                line += (" (as the model re-reads the text without the cap; while generating, the cap held the "
                         "capped layers at their threshold)")
            elif self.cap_config is not None:
                line += "; /cap on clamps the next replies"
        return line


def _cmd_chat(args: argparse.Namespace) -> int:
    if not args.axis:
        raise InvalidInputError("give --axis FILE (no shipped vectors were found to default to)")
    for flag in ("axis", "cap_config", "steer_vector"):
        if getattr(args, flag):
            require_file(getattr(args, flag), f"--{flag.replace('_', '-')} file")
    loaded = load_model_from_args(args)
    session = ChatSession(loaded, args)
    print(session.status())
    print("type /help for commands, /quit to leave")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:  # like Python's own prompt: Ctrl-C clears the line, Ctrl-D or /quit leaves
            print("\n(Ctrl-D or /quit to leave)")
            continue
        line = line.strip()
        if not line:
            continue
        try:
            if line.startswith("/"):
                out = session.command(line)
                if out is None:
                    return 0
                print(out)
                continue
            answer, rec = session.reply(line)
        except PersonaAxesError as e:  # a bad command or file: say so and keep the conversation
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # a reply taking too long: drop this turn, keep the conversation
            print("\n(interrupted: that turn was not recorded)")
            continue
        print(f"assistant> {answer}")
        print(session.describe(rec), flush=True)


def register(sub: Any) -> None:
    chat = add_command(
        sub, "chat", "talk to a model in the terminal; see each reply's projection, switch a cap or a steer",
        "A terminal chat. After every reply it prints the reply's projection onto the unit axis at --layer (as "
        "`persona-axes monitor` computes it: the model re-reading the conversation) and warns when it crosses the "
        "threshold (by default the capping config's threshold at that layer). /cap on|off and /steer COEF|off "
        "change how the NEXT reply is generated; /save writes a transcript `persona-axes monitor` reads.\n\n" + HELP,
        "example:\n  persona-axes chat   (the embedded SmolLM2 with its shipped axis and cap; layer 21)\n"
        "  persona-axes chat --model ./my-model --axis axis.safetensors --cap-config capping.safetensors --layer 16",
        _cmd_chat)
    add_model_args(chat)
    chat.add_argument("--axis", default=shipped_file("assistant_axis.safetensors"),
                      help="axis vector file (default: the shipped SmolLM2 Assistant Axis)")
    chat.add_argument("--name", default=None, help="member to use when --axis is a vector set")
    chat.add_argument("--cap-config", default=shipped_file("capping.safetensors"),
                      help="capping config for /cap (default: the shipped SmolLM2 one; '' for none)")
    chat.add_argument("--layer", default=None, help="layer to project at (default: the middle capped layer)")
    chat.add_argument("--threshold", type=float, default=None,
                      help="warn below this projection (default: the cap's threshold at --layer)")
    chat.add_argument("--cap", action="store_true", help="start with the cap on")
    chat.add_argument("--steer", type=float, default=None, help="start steering with this coefficient (in sd of "
                      "default-assistant replies along the vector; needs a vector with unit statistics)")
    chat.add_argument("--steer-vector", default=None, help="vector for /steer (default: the axis)")
    chat.add_argument("--steer-name", default=None, help="member to use when --steer-vector is a vector set")
    chat.add_argument("--steer-layers", default=None, help=f"layers for /steer ({LAYER_HELP}); default: --layer")
    chat.add_argument("--system", default=None, help="optional system prompt")
    chat.add_argument("--max-new-tokens", type=int, default=96)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    chat.add_argument("--seed", type=int, default=0)
