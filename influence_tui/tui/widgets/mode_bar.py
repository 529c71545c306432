"""The top line of every screen: the app's name, a tab per top-level screen with its key, and the screen's
subtitle (the chat's title). The tabs come from the app's ``NAVIGATION``: a screen added there shows here."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.widgets import Static

Navigation = tuple[tuple[str, str, str], ...]
"""(mode, key, label) for each top-level screen, in order."""


class ModeTab(Static):
    def __init__(self, mode: str, key: str, label: str, *, current: bool) -> None:
        super().__init__(Content(f"{key.upper()} {label}"), classes="mode-tab" + (" -current" if current else ""))
        self.mode = mode

    async def on_click(self, event: events.Click) -> None:
        event.stop()
        await self.run_action(f"app.switch_mode('{self.mode}')")


class ModeBar(Horizontal):
    """Shows where you are and how to go elsewhere; mirrors the screen's ``sub_title`` on the right."""

    def __init__(self, current: str) -> None:
        super().__init__(id="mode-bar")
        self.current = current

    def compose(self) -> ComposeResult:
        yield Static(Content(self.app.title), classes="mode-brand")
        navigation: Navigation = getattr(self.app, "NAVIGATION", ())
        for mode, key, label in navigation:
            yield ModeTab(mode, key, label, current=mode == self.current)
        yield Static(classes="mode-title")

    def on_mount(self) -> None:
        self.watch(self.screen, "sub_title", self._show_title)

    def _show_title(self, title: str) -> None:
        self.query_one(".mode-title", Static).update(Content(title or ""))
