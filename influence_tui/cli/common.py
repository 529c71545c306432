"""Helpers every command module shares: consoles, JSON output, building the core services from flags."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from influence_tui.core.config import Settings
    from influence_tui.core.library import Library

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Command-line flags that map onto settings of the same name (argparse dest -> setting).
SETTING_FLAGS = (
    "models_dir",
    "model",
    "device",
    "dtype",
    "quantize",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "max_tokens",
    "seed",
    "host",
    "port",
    "hub_endpoint",
    "hf_token",
)


def console(stderr: bool = False) -> Console:
    """A rich console; piped output gets a wide one so names and paths are never cut or wrapped."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(file=stream, width=None if tty else 240, highlight=False, soft_wrap=not tty)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings with this command's flags as the top layer (flags a command does not have are skipped)."""
    from influence_tui.core.config import load_settings

    return load_settings({name: getattr(args, name, None) for name in SETTING_FLAGS})


def library_from(args: argparse.Namespace) -> Library:
    from influence_tui.core.library import Library

    return Library(settings_from(args))
