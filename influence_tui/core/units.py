"""Human-readable sizes and counts, shared by the CLI, the TUI and the server's logs."""

from __future__ import annotations

import math
import re


def human_size(n: int | None) -> str:
    """Bytes in binary units: ``94 MiB``, ``1.2 GiB``."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit in ("B", "KiB", "MiB") else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def human_count(n: int | None) -> str:
    """Parameter counts: ``135M``, ``1.1B``, ``7.2B``."""
    if not n:
        return "-"
    for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= limit:
            value = n / limit
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return str(n)


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """``8GiB``, ``512 MiB``, ``2.5GB``, ``1000000`` (bytes) -> bytes; a ValueError for anything else."""
    match = _SIZE.match(text)
    unit = match[2].lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError("is not a size (e.g. 8GiB, 512MiB, 2.5GB)")
    return int(float(match[1]) * _SIZE_UNITS[unit])


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: object) -> float | None:
    """Ollama's ``keep_alive``: seconds as a number (``300``, ``"300"``), a Go duration (``"5m"``, ``"1h30m"``,
    ``"1.5s"``), a negative value for forever (None), 0 to unload as soon as idle. A ValueError otherwise."""
    if isinstance(value, bool) or value is None:
        raise ValueError("is not a duration (e.g. 5m, 1h, 30s, 300, -1 for forever, 0 to unload)")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        negative = text.startswith("-")
        body = text.lstrip("+-")
        try:
            seconds = float(body)
        except ValueError:
            parts = _DURATION_PART.findall(body)
            if not body or "".join(number + unit for number, unit in parts) != body:
                raise ValueError("is not a duration (e.g. 5m, 1h, 30s, 300, -1 for forever, 0 to unload)") from None
            seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
        if negative:
            seconds = -seconds
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError("is not a finite duration")
    return None if seconds < 0 else seconds


def human_duration(seconds: float | None) -> str:
    """``forever``, ``0s``, ``45s``, ``5m``, ``1h30m`` (for keep_alive in listings and logs)."""
    if seconds is None:
        return "forever"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"
