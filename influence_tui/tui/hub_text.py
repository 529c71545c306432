"""Small words and numbers the hub search, the quantization dialog and the downloads screen share (the plain
formatters are :mod:`influence_tui.core.hub.text`'s, the CLI's too; the verdict marks and classes are the TUI's).

Plain strings only: the widgets style them (component classes from their stylesheets), and text that came from
the Hub is put into ``rich.text.Text`` by the caller, never parsed as markup.
"""

from __future__ import annotations

from influence_tui.core.hub.text import (
    SUGGESTED_QUANT,
    count,
    day,
    duration,
    quant_of,
    short_count,
    short_tags,
    suggested_choice,
)
from influence_tui.core.types import Verdict

__all__ = [  # the formatters are core.hub.text's (the CLI shows the same), re-exported for the screens
    "SUGGESTED_QUANT",
    "VERDICT_CLASSES",
    "VERDICT_LABELS",
    "count",
    "day",
    "duration",
    "quant_of",
    "short_count",
    "short_tags",
    "suggested_choice",
]

VERDICT_LABELS: dict[Verdict, str] = {"fits": "✓ fits", "tight": "~ tight", "won't fit": "✗ won't fit"}
"""A mark beside each verdict, so it reads without colour."""

VERDICT_CLASSES: dict[Verdict, str] = {
    "fits": "verdict--fits",
    "tight": "verdict--tight",
    "won't fit": "verdict--wont-fit",
}
"""The component class that styles each verdict (colours live in the stylesheets)."""
