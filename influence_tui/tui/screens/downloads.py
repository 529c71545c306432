"""Downloads: every download of this session (and the ones interrupted last time), newest first.

The rows show what the app's :class:`~influence_tui.tui.download_service.DownloadService` knows; the screen
subscribes to its ``changed`` signal and hands each row its new entry. Downloads run in the app, not here:
leaving this screen changes nothing. ``x`` cancels the focused download, ``r`` resumes a failed or cancelled
one from its bytes on disk, Enter chats with a finished one.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from influence_tui.core.units import human_size
from influence_tui.tui.download_service import DownloadEntry, DownloadService, downloads_of
from influence_tui.tui.messages import ChatWithModel
from influence_tui.tui.paths import stylesheet
from influence_tui.tui.widgets.download_row import DownloadRow
from influence_tui.tui.widgets.mode_bar import ModeBar

EMPTY = "No downloads yet. F2 searches the Hub; d there downloads the highlighted model."


class DownloadsScreen(Screen[None]):
    """A list of download rows; the bindings act on the focused row and show only when they apply."""

    CSS_PATH = stylesheet("downloads.tcss")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "chat", "Chat with it", id="downloads.chat"),
        Binding("x", "cancel", "Cancel", id="downloads.cancel"),
        Binding("r", "resume", "Resume", id="downloads.resume"),
        Binding("delete,backspace", "remove", "Clear", id="downloads.remove"),
        Binding("up,k", "move(-1)", "Previous", id="downloads.previous", show=False),
        Binding("down,j", "move(1)", "Next", id="downloads.next", show=False),
    ]

    @property
    def service(self) -> DownloadService:
        return downloads_of(self)

    def compose(self) -> ComposeResult:
        yield ModeBar("downloads")
        yield Static(id="downloads-summary")
        with VerticalScroll(id="download-list"):
            yield Static(EMPTY, id="downloads-empty")
        yield Footer()

    def on_mount(self) -> None:
        service = self.service
        service.changed.subscribe(self, self.on_download_changed)
        rows = [DownloadRow(entry) for entry in service.entries]
        if rows:
            self.query_one("#download-list").mount_all(rows)
            rows[0].focus()
        self._summary()

    # ------------------------------------------------------------------------------------------ rows

    def row(self, download_id: int) -> DownloadRow | None:
        found = self.query(f"#download-{download_id}").results(DownloadRow)
        return next(found, None)

    @property
    def rows(self) -> list[DownloadRow]:
        return list(self.query(DownloadRow))

    @property
    def current(self) -> DownloadEntry | None:
        """The entry of the focused row (or of the first row when focus is elsewhere)."""
        focused = self.focused
        if isinstance(focused, DownloadRow):
            return focused.entry
        rows = self.rows
        return rows[0].entry if rows else None

    def on_download_changed(self, download_id: int) -> None:
        entry = self.service.get(download_id)
        row = self.row(download_id)
        if entry is None:
            if row is not None:
                was_focused = row.has_focus
                row.remove()
                if was_focused:
                    self.call_after_refresh(self._focus_first)
        elif row is None:
            row = DownloadRow(entry)
            listing = self.query_one("#download-list")
            first = next(iter(self.query(DownloadRow)), None)
            if first is not None:
                listing.mount(row, before=first)
            else:
                listing.mount(row)
            if not isinstance(self.focused, DownloadRow):
                row.focus()
        else:
            row.entry = entry
        self._summary()
        self.refresh_bindings()

    def _focus_first(self) -> None:
        rows = self.rows
        if rows:
            rows[0].focus()
        self.refresh_bindings()

    def _summary(self) -> None:
        entries = self.service.entries
        self.query_one("#downloads-empty").display = not entries
        running = [e for e in entries if e.active]
        done = [e for e in entries if e.finished]
        problems = [e for e in entries if e.state == "failed"]
        parts = []
        if running:
            speed = sum(e.speed for e in running)
            parts.append(f"{len(running)} running" + (f" at {human_size(int(speed))}/s" if speed > 0 else ""))
        if done:
            parts.append(f"{len(done)} done")
        if problems:
            parts.append(f"{len(problems)} failed")
        head = " · ".join(parts) if parts else "Nothing running"
        where = self.service.settings.models_dir
        self.query_one("#downloads-summary", Static).update(Text(f"{head} · into {where}"))  # a path: never markup

    def on_descendant_focus(self) -> None:
        self.refresh_bindings()

    # ------------------------------------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Show an action only when it applies to the focused download."""
        entry = self.current
        if action == "chat":
            return entry is not None and entry.finished
        if action == "cancel":
            return entry is not None and entry.active
        if action == "resume":
            return entry is not None and entry.resumable
        if action == "remove":
            return entry is not None and not entry.active
        return True

    def action_move(self, step: int) -> None:
        rows = self.rows
        if not rows:
            return
        focused = self.focused
        index = rows.index(focused) if isinstance(focused, DownloadRow) and focused in rows else -step
        target = rows[max(0, min(len(rows) - 1, index + step))]
        target.focus()
        target.scroll_visible()

    def action_cancel(self) -> None:
        entry = self.current
        if entry is not None and self.service.cancel(entry.id):
            self.notify(f"Cancelling {entry.request.label}; r resumes it later.", markup=False)

    def action_resume(self) -> None:
        entry = self.current
        if entry is not None:
            self.service.resume(entry.id)

    def action_remove(self) -> None:
        entry = self.current
        if entry is not None:
            self.service.remove(entry.id)

    def action_chat(self) -> None:
        entry = self.current
        if entry is None or not entry.finished:
            return
        if entry.model is None:
            self.notify(
                f"{entry.request.label} is downloaded but the library does not list it; F4 opens the library.",
                severity="warning",
                markup=False,
            )
            return
        self.post_message(ChatWithModel(entry.model))
