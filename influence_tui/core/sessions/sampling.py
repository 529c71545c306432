"""The sampling parameters of a session as ``/set``, the parameter panel and session files give them: parsing each
(in the one range of :data:`~influence_tui.core.params.PARAM_RANGES`, as the settings parse them), its name and
aliases, its one-line doc and how it is shown."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from influence_tui.core.config import parse_value, setting_doc
from influence_tui.core.errors import ConfigError
from influence_tui.core.params import PARAM_RANGES
from influence_tui.core.types import SamplingParams

__all__ = ["PARAM_NAMES", "PARAM_PARSERS", "canonical_param", "format_param", "param_doc", "parse_stop"]


def _unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` in a typed stop string become a newline, a tab and a backslash."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}.get(m.group(1), m.group(0)), text)


def parse_stop(raw: object) -> tuple[str, ...]:
    """Stop strings from a typed value: ``off``/``none``/empty clears them, a JSON list gives several, anything
    else is one stop string (``\\n`` typed as backslash-n means a newline)."""
    if isinstance(raw, (list, tuple)):
        items: Sequence[object] = raw
    else:
        text = str(raw).strip()
        if text.lower() in ("", "off", "none"):
            return ()
        if text.startswith("["):
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError:
                raise ConfigError(
                    f"stop: {text!r} is not a JSON list of strings", hint='e.g. /set stop ["\\n\\n", "User:"]'
                ) from None
            if not isinstance(loaded, list):
                raise ConfigError(f"stop: {text!r} is not a JSON list of strings")
            items = loaded
        else:
            items = [_unescape(text)]
    if not all(isinstance(item, str) and item for item in items):
        raise ConfigError(f"stop: {raw!r} must be non-empty strings")
    return tuple(str(item) for item in items)


def _repeat_last_n(raw: object) -> int:
    text = str(raw).strip()
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"repeat_last_n: {text!r} is not a whole number") from None
    bounds = PARAM_RANGES["repeat_last_n"]
    if not bounds.contains(value):
        raise ConfigError(f"repeat_last_n: {text!r} is out of range ({bounds.describe()})")
    return value


def _setting(name: str) -> Callable[[object], Any]:
    return lambda raw: parse_value(name, raw, name)


PARAM_PARSERS: dict[str, Callable[[object], Any]] = {
    "temperature": _setting("temperature"),
    "top_p": _setting("top_p"),
    "top_k": _setting("top_k"),
    "min_p": _setting("min_p"),
    "repeat_penalty": _setting("repeat_penalty"),
    "repeat_last_n": _repeat_last_n,
    "max_tokens": _setting("max_tokens"),
    "seed": _setting("seed"),
    "stop": parse_stop,
}

PARAM_NAMES: tuple[str, ...] = tuple(PARAM_PARSERS)
"""The sampling parameters ``/set`` can change, in the order they are listed."""

_PARAM_ALIASES = {"temp": "temperature", "repetition_penalty": "repeat_penalty", "max_new_tokens": "max_tokens"}

_PARAM_DOCS = {
    "repeat_last_n": "How many recent tokens the repetition penalty looks at (0: the whole context).",
    "stop": 'Stop strings: the reply ends before the first one (off, one string, or a JSON list like ["\\n\\n"]).',
}


def param_doc(name: str) -> str:
    """One line describing a sampling parameter."""
    return _PARAM_DOCS.get(name) or setting_doc(name)


def canonical_param(name: str) -> str:
    """The parameter a typed name means (``top-p`` → ``top_p``, ``temp`` → ``temperature``)."""
    key = name.strip().lower().replace("-", "_")
    key = _PARAM_ALIASES.get(key, key)
    if key not in PARAM_PARSERS:
        close = difflib.get_close_matches(key, [*PARAM_NAMES, *_PARAM_ALIASES], n=1, cutoff=0.6)
        guess = f"did you mean {_PARAM_ALIASES.get(close[0], close[0])}? " if close else ""
        raise ConfigError(f"unknown parameter {name!r}", hint=f"{guess}parameters: {', '.join(PARAM_NAMES)}")
    return key


def format_param(params: SamplingParams, name: str) -> str:
    """A parameter's value as shown to a user (``off`` for a filter that is switched off)."""
    value = getattr(params, canonical_param(name))
    if value is None or value == ():
        return "off"
    if isinstance(value, tuple):
        return json.dumps(list(value), ensure_ascii=False)
    return str(value)
