"""The Influence app: a thin shell that owns the settings and the screens."""

from __future__ import annotations

from typing import ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from influence_tui import __version__
from influence_tui.core.config import Settings
from influence_tui.tui.paths import stylesheet
from influence_tui.tui.screens.library import LibraryScreen


class InfluenceApp(App[None]):
    """Influence: local models in a full-screen terminal app."""

    TITLE = "Influence"
    SUB_TITLE = f"local LLMs · v{__version__}"
    CSS_PATH = [stylesheet("base.tcss"), stylesheet("library.tcss")]
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True),
    ]

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def on_mount(self) -> None:
        self.push_screen(LibraryScreen(self.settings))
