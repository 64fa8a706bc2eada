"""The ``persona-axes`` command line: the parser assembled from one module per command group, and ``main()``.

Errors are one clear line on stderr and a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from persona_axes.cli import chat, demo, export, info, interventions, monitor, plan, runs, verify
from persona_axes.cli import eval as eval_command
from persona_axes.cli.common import fix_signed_values, one_line
from persona_axes.core import __version__
from persona_axes.errors import PersonaAxesError

#: The command groups, in the order ``--help`` lists them; each module exposes ``register(subparsers)``.
COMMANDS = [demo, info, interventions, chat, monitor, export, runs, plan, verify, eval_command]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="persona-axes", description="Persona directions in language models.",
                                epilog="Run 'persona-axes COMMAND --help' for a command's options and examples.")
    p.add_argument("--version", action="version", version=f"persona-axes {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)
    for group in COMMANDS:
        group.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not argv:  # a first try: show what there is, not an error
        parser.print_help()
        return 0
    args = parser.parse_args(fix_signed_values(argv))
    with warnings.catch_warnings():
        if not args.debug:  # warnings as one line each, like errors
            warnings.showwarning = _show_warning_one_line
        return _run(args)


def _show_warning_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"persona-axes: warning: {one_line(message)}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except PersonaAxesError as e:
        if args.debug:
            raise
        print(f"persona-axes: error: {one_line(e)}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        if args.debug:
            raise
        what = f"{e.strerror}: {e.filename!r}" if e.filename else one_line(e)
        print(f"persona-axes: error: {what}", file=sys.stderr)
        return 2
    except OSError as e:
        if args.debug:
            raise
        print(f"persona-axes: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("persona-axes: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line, the traceback with --debug
        if args.debug:
            raise
        print(f"persona-axes: internal error: {type(e).__name__}: {one_line(e)} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
