"""The ``influence`` command line and the ``influence-tui`` entry point.

Each command group lives in its own module with a ``register(add)`` function; this module builds the parser
from them and turns :class:`InfluenceError` into a one-line message. Importing the CLI stays cheap: no torch,
no transformers, no textual until a command needs them, so ``influence --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from influence_tui import __version__
from influence_tui.cli import engine_cmds, hub_cmds, library_cmds, remote_cmds, server_cmds, session_cmds
from influence_tui.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from influence_tui.core.errors import InfluenceError

Command = Callable[[argparse.Namespace], int]


class AddCommand(Protocol):
    def __call__(self, name: str, func: Command, help_text: str, **kw: Any) -> argparse.ArgumentParser: ...


#: Command modules, in the order their commands appear in ``--help``.
COMMAND_MODULES = (hub_cmds, engine_cmds, server_cmds, library_cmds, remote_cmds, session_cmds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="influence",
        description="Privacy-first local LLM inference: find, download and run models on your own machine.",
        epilog="Run `influence COMMAND --help` for a command's options. `influence-tui` starts the full-screen app.",
    )
    parser.add_argument("--version", action="version", version=f"influence {__version__}")
    parser.add_argument(
        "--models-dir", metavar="DIR", help="models folder for this run (default: the models_dir setting)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def add(name: str, func: Command, help_text: str, **kw: Any) -> argparse.ArgumentParser:
        description = help_text[:1].upper() + help_text[1:] + "."
        p = sub.add_parser(name, help=help_text, description=description, **kw)
        p.set_defaults(func=func)
        return p

    for module in COMMAND_MODULES:
        module.register(add)
    return parser


def run_command(func: Command, args: argparse.Namespace, prog: str = "influence") -> int:
    try:
        return int(func(args))
    except InfluenceError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return run_command(args.func, args)


def tui_main(argv: Sequence[str] | None = None) -> int:
    """``influence-tui``: the full-screen app."""
    parser = argparse.ArgumentParser(
        prog="influence-tui", description="Influence: chat with local models in a full-screen app."
    )
    parser.add_argument("--version", action="version", version=f"influence {__version__}")
    parser.add_argument(
        "--model", metavar="NAME|PATH", help="model to chat with (default: the configured or demo model)"
    )
    parser.add_argument("--models-dir", metavar="DIR", help="models folder for this run")
    args = parser.parse_args(argv)
    return run_command(library_cmds.cmd_tui, args, prog="influence-tui")
