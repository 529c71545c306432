"""The words and numbers a Hub listing shows, shared by the CLI's ``search``/``info`` and the TUI's hub screens:
counts, dates, durations, the tags worth a glance and the download choice to suggest first. Plain strings only."""

from __future__ import annotations

from influence_tui.core.types import HubModel, HubModelDetails, QuantChoice, Verdict

__all__ = ["SUGGESTED_QUANT", "count", "day", "duration", "quant_of", "short_count", "short_tags", "suggested_choice"]

SUGGESTED_QUANT = "Q4_K_M"
"""The usual balance of size and quality; suggested when it fits."""


def count(n: int | None) -> str:
    """``12,345``, or ``-`` when the Hub did not say."""
    return f"{n:,}" if n is not None else "-"


def short_count(n: int | None) -> str:
    """``1.2M``, ``34k``, ``999``: downloads and likes in a narrow column."""
    if n is None:
        return "-"
    for limit, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if n >= limit:
            value = n / limit
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return str(n)


def day(iso: str | None) -> str:
    """The date part of an ISO 8601 timestamp."""
    return iso[:10] if iso else "-"


def duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    whole = max(0, int(seconds + 0.5))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def short_tags(model: HubModel, limit: int = 4) -> str:
    """The tags worth a glance: no ``key:value`` tags (licence, region, base model), none repeating the task or
    library columns of the details."""
    shown = {model.pipeline_tag, model.library_name}
    tags = [t for t in model.tags if ":" not in t and t not in shown]
    return ", ".join(tags[:limit])


def suggested_choice(details: HubModelDetails) -> QuantChoice | None:
    """The choice to highlight first: Q4_K_M when it fits, else the largest choice that fits, else the smallest."""
    choices = details.choices
    if not choices:
        return None

    def verdict(c: QuantChoice) -> Verdict | None:
        return c.memory.verdict if c.memory else None

    for c in choices:
        if c.name.upper() == SUGGESTED_QUANT and verdict(c) != "won't fit":
            return c
    fitting = [c for c in choices if verdict(c) == "fits"]
    if fitting:
        return max(fitting, key=lambda c: c.size_bytes)
    return min(choices, key=lambda c: c.size_bytes)


def quant_of(choice: QuantChoice) -> str | None:
    """What to give the download planner: None for safetensors weights, the quantization name for a GGUF."""
    return None if choice.kind == "safetensors" else choice.name
