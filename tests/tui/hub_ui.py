"""Drive the real app's hub search and downloads screens against the loopback Hub (tests/hub/hubserver.py):
the real huggingface_hub client, the real download manager (with short timeouts), a scripted engine.

``run_hub_app(settings, scenario)`` starts the app and calls ``scenario(ui)``; :class:`HubUI` has the small
steps the tests are written in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from textual.message import Message
from textual.notifications import Notify
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Static

from influence_tui.core.config import Settings
from influence_tui.core.downloads import DownloadManager
from influence_tui.tui.app import InfluenceApp
from influence_tui.tui.download_service import DownloadEntry
from influence_tui.tui.screens.downloads import DownloadsScreen
from influence_tui.tui.screens.hub_search import HubSearchScreen
from influence_tui.tui.widgets.download_row import DownloadRow
from tests.fakes import ScriptedRunner

ScreenT = TypeVar("ScreenT", bound=Screen[Any])


@dataclass
class HubUI:
    app: InfluenceApp
    pilot: Pilot[None]
    runner: ScriptedRunner
    messages: list[Message] = field(default_factory=list)

    # -- what is on screen

    def screen_of(self, mode: str, kind: type[ScreenT]) -> ScreenT:
        screen = self.app.get_screen_stack(mode)[0]
        assert isinstance(screen, kind)
        return screen

    @property
    def hub(self) -> HubSearchScreen:
        return self.screen_of("hub", HubSearchScreen)

    @property
    def downloads(self) -> DownloadsScreen:
        return self.screen_of("downloads", DownloadsScreen)

    def result_ids(self) -> list[str]:
        table: DataTable[Any] = self.hub.query_one("#hub-results", DataTable)
        return [str(row.key.value) for row in table.ordered_rows]

    def static_text(self, screen: Screen[Any], selector: str) -> str:
        return str(screen.query_one(selector, Static).render())

    def screen_text(self) -> str:
        """Everything the terminal shows now, as plain text."""
        return "\n".join(strip.text for strip in self.app.screen._compositor.render_strips())

    def region_text(self, widget: Widget) -> str:
        """What the terminal shows where ``widget`` is (rendered: text that failed to render is not there)."""
        strips = self.app.screen._compositor.render_strips()
        r = widget.region
        return "\n".join(strips[y].text[r.x : r.right] for y in range(r.y, min(r.bottom, len(strips))))

    def details_text(self) -> str:
        return self.region_text(self.hub.query_one("#hub-details-pane"))

    def notes(self, severity: str | None = None) -> list[str]:
        """Every notification so far (of one severity)."""
        return [
            m.notification.message
            for m in self.messages
            if isinstance(m, Notify) and severity in (None, m.notification.severity)
        ]

    def entries(self) -> list[DownloadEntry]:
        return self.app.downloads.entries

    def row(self, entry: DownloadEntry) -> DownloadRow:
        row = self.downloads.row(entry.id)
        assert row is not None
        return row

    def row_text(self, entry: DownloadEntry) -> str:
        """A download row as the terminal shows it: its frame (name, state) and what is inside."""
        return self.region_text(self.row(entry))

    def footer_keys(self) -> set[str]:
        """The actions the footer offers now."""
        return {b.binding.action for b in self.app.screen.active_bindings.values() if b.binding.show and b.enabled}

    # -- doing things

    async def wait_for(self, predicate: Callable[[], object], what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: the screen shows\n{self.screen_text()}")
            await self.pilot.pause(0.02)

    async def open_hub(self) -> HubSearchScreen:
        await self.pilot.press("f2")
        await self.wait_for(lambda: self.app.current_mode == "hub" and not self.hub.searching, "the first search")
        return self.hub

    async def wait_for_screen(self, kind: type[ScreenT]) -> ScreenT:
        await self.wait_for(lambda: isinstance(self.app.screen, kind), kind.__name__)
        screen = self.app.screen
        assert isinstance(screen, kind)
        return screen

    async def wait_entry(self, entry_id: int, predicate: Callable[[DownloadEntry], object], what: str) -> DownloadEntry:
        def current() -> DownloadEntry:
            found = self.app.downloads.get(entry_id)
            assert found is not None
            return found

        await self.wait_for(lambda: predicate(current()), what)
        return current()


def run_hub_app(
    settings: Settings,
    scenario: Callable[[HubUI], Awaitable[None]],
    *,
    size: tuple[int, int] = (120, 36),
    manager: DownloadManager | None = None,
) -> None:
    async def main() -> None:
        runner = ScriptedRunner()
        app = InfluenceApp(settings, runner_factory=lambda: runner, load_model=False)
        if manager is not None:
            app.downloads.manager = manager
        messages: list[Message] = []
        async with app.run_test(size=size, message_hook=messages.append) as pilot:
            await pilot.pause()
            await scenario(HubUI(app, pilot, runner, messages))

    asyncio.run(main())
