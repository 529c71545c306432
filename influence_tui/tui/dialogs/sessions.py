"""The saved conversations, newest first, with their date and first line: pick one to continue it."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static
from textual.worker import get_current_worker

from influence_tui.core.errors import InfluenceError
from influence_tui.core.export import local_time
from influence_tui.core.store import ChatStore, ChatSummary
from influence_tui.tui.dialogs.base import Dialog

__all__ = ["LoadSessionDialog", "local_time"]


class LoadSessionDialog(Dialog[ChatSummary]):
    """Dismissed with the chosen chat's summary (its ``id`` opens it), or None."""

    def __init__(self, store: ChatStore) -> None:
        super().__init__()
        self.store = store
        self.sessions: tuple[ChatSummary, ...] = ()

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -list"):
            yield Static("Open a saved chat", classes="dialog-title")
            table: DataTable[str | Text] = DataTable(id="session-table", cursor_type="row", zebra_stripes=True)
            yield table
            yield Static("Reading saved chats…", id="session-hint", classes="dialog-hint")

    def on_mount(self) -> None:
        table = self.query_one("#session-table", DataTable)
        table.add_column("Updated", width=16)
        table.add_column("Msgs", width=4)
        table.add_column("First line", width=44)
        table.add_column("Model")
        table.focus()
        self.scan()

    @work(thread=True, exclusive=True, group="session-scan", exit_on_error=False, name="list saved chats")
    def scan(self) -> None:
        try:
            sessions = self.store.list(limit=1000)
        except InfluenceError as exc:
            self.app.call_from_thread(self.query_one("#session-hint", Static).update, str(exc))
            return
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show, sessions)

    def _show(self, sessions: tuple[ChatSummary, ...]) -> None:
        self.sessions = sessions
        table = self.query_one("#session-table", DataTable)
        table.clear()
        for summary in sessions:
            table.add_row(
                local_time(summary.updated_at),
                str(summary.message_count),
                Text(summary.title),
                Text(summary.model or "-"),
                key=summary.id,
            )
        hint = self.query_one("#session-hint", Static)
        if sessions:
            hint.update("Enter opens · Esc cancels")
        else:
            hint.update(f"No saved chats yet in {self.store.path}: each chat is saved as you go.")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        for summary in self.sessions:
            if summary.id == event.row_key.value:
                self.dismiss(summary)
                return
