"""Human-readable sizes and counts, shared by the CLI, the TUI and the server's logs."""

from __future__ import annotations


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
