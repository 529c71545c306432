"""Where the TUI's stylesheets are: inside the wheel (influence_tui/styles) or the repo's top-level styles/."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent


def styles_dir() -> Path:
    shipped = _PACKAGE / "styles"
    return shipped if shipped.is_dir() else _PACKAGE.parent / "styles"


def stylesheet(name: str) -> Path:
    return styles_dir() / name
