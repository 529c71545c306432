"""One download in the downloads list: its name and state on the frame, a progress bar, bytes, speed, ETA, a
sparkline of the speed and a line saying what is happening or what to do.

Attributes down: the screen sets :attr:`DownloadRow.entry` (a frozen
:class:`~influence_tui.tui.download_service.DownloadEntry`) and the row redraws its parts from it.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Label, ProgressBar, Sparkline, Static

from influence_tui.core.units import human_size
from influence_tui.tui.download_service import SPEED_POINTS, DownloadEntry
from influence_tui.tui.hub_text import duration

STATE_LABELS: dict[str, str] = {
    "queued": "queued",
    "downloading": "downloading",
    "verifying": "verifying",
    "retrying": "retrying",
    "done": "done",
    "cached": "done",
    "failed": "failed",
    "cancelled": "cancelled",
}


def bytes_line(entry: DownloadEntry) -> str:
    """``12 MiB / 1.2 GiB`` (nothing while the size is not known yet)."""
    if not entry.total_bytes:
        return ""
    return f"{human_size(entry.done_bytes)} / {human_size(entry.total_bytes)}"


def speed_line(entry: DownloadEntry) -> str:
    if entry.state == "downloading" and entry.speed > 0:
        return f"{human_size(int(entry.speed))}/s"
    return ""


def eta_line(entry: DownloadEntry) -> str:
    if entry.state == "downloading" and entry.eta_s is not None:
        return f"ETA {duration(entry.eta_s)}"
    return ""


def note_line(entry: DownloadEntry) -> str:
    """What the row says under its bar: the reason, the next step."""
    if entry.finished:
        result = entry.result
        name = entry.model.name if entry.model else (result.model_name if result else None)
        where = f" as {name}" if name else ""
        took = ""
        if result is not None and result.fetched_bytes:
            took = f" in {duration(result.elapsed_s)}"
        elif result is not None:
            took = " (already on disk)"
        chat = " · Enter chats with it" if entry.model is not None else ""
        return f"In the library{where}{took}{chat}"
    if entry.message:
        return entry.message
    if entry.state == "verifying":
        return "checking the sha256 of every file before it goes into the library"
    if entry.state == "downloading" and entry.files_total > 1:
        return f"{entry.files_done} of {entry.files_total} files verified"
    return ""


class DownloadRow(Widget, can_focus=True):
    """A focusable row; the screen's bindings act on the focused one."""

    DEFAULT_CSS = """
    DownloadRow {
        height: auto;
    }
    DownloadRow > Horizontal {
        height: auto;
    }
    DownloadRow ProgressBar, DownloadRow ProgressBar > Horizontal, DownloadRow ProgressBar Bar {
        width: 1fr;
    }
    DownloadRow Sparkline {
        width: 30;
        height: 1;
        margin: 0 2 0 0;
    }
    DownloadRow .download-note {
        width: 1fr;
        height: auto;
    }
    """

    entry: reactive[DownloadEntry | None] = reactive(None, init=False)

    STATE_CLASSES: ClassVar[tuple[str, ...]] = tuple(f"-{state}" for state in set(STATE_LABELS.values()))

    def __init__(self, entry: DownloadEntry) -> None:
        super().__init__(id=f"download-{entry.id}")
        self.set_reactive(DownloadRow.entry, entry)

    def compose(self) -> ComposeResult:
        with Horizontal(classes="download-top"):
            yield ProgressBar(total=None, show_eta=False, id="download-bar")
            yield Label("", id="download-bytes", classes="download-figure")
            yield Label("", id="download-speed", classes="download-figure")
            yield Label("", id="download-eta", classes="download-figure")
        with Horizontal(classes="download-bottom"):
            yield Sparkline([], id="download-spark", summary_function=max)
            yield Static("", classes="download-note", id="download-note")

    def on_mount(self) -> None:
        self._draw()

    def watch_entry(self) -> None:
        if self.is_mounted:
            self._draw()

    def _draw(self) -> None:
        entry = self.entry
        if entry is None:
            return
        self.border_title = Text(entry.request.label)  # from the Hub: never markup
        state = STATE_LABELS[entry.state]
        if entry.active and entry.total_bytes:
            self.border_subtitle = f"{state} {entry.fraction:.0%}"
        else:
            self.border_subtitle = state
        for cls in self.STATE_CLASSES:
            self.set_class(cls == f"-{state}", cls)
        bar = self.query_one("#download-bar", ProgressBar)
        if entry.total_bytes:
            bar.update(total=entry.total_bytes, progress=entry.done_bytes)
        else:  # size not known yet (or never: it failed before): an empty bar, not a busy animation
            bar.update(total=1, progress=1 if entry.finished else 0)
        self.query_one("#download-bytes", Label).update(Text(bytes_line(entry)))
        self.query_one("#download-speed", Label).update(Text(speed_line(entry)))
        self.query_one("#download-eta", Label).update(Text(eta_line(entry)))
        speeds = list(entry.speeds[-SPEED_POINTS:])
        spark = self.query_one("#download-spark", Sparkline)
        spark.display = any(speeds)
        # a fixed time axis: the newest speed on the right, silence before the download started
        spark.data = [0.0] * (SPEED_POINTS - len(speeds)) + speeds
        self.query_one("#download-note", Static).update(Text(note_line(entry)))  # may quote the Hub: never markup
