"""Every model in the library and every remote's; Enter chats with the highlighted one."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static
from textual.worker import get_current_worker

from influence_tui.core.library import Library
from influence_tui.core.remote_catalog import RemoteCatalog
from influence_tui.core.remotes import RemoteListing, RemoteModel
from influence_tui.core.types import LocalModel
from influence_tui.core.units import human_count, human_size
from influence_tui.tui.dialogs.base import Dialog


class ModelPickerDialog(Dialog[LocalModel | RemoteModel]):
    """Dismissed with the chosen model, or None. A model that cannot be loaded says why instead.

    The local models show at once; the remotes' follow when they have answered (in parallel, a few seconds
    at most), each marked with the host a chat with it goes to. An unreachable remote is one row saying so.
    """

    def __init__(self, library: Library, current: str | None = None, *, remotes: RemoteCatalog | None = None) -> None:
        super().__init__()
        self.library = library
        self.remotes = remotes
        self.current = current
        self.models: list[LocalModel | RemoteModel] = []
        self._local: list[LocalModel] = []
        self._listings: list[RemoteListing] | None = None
        self._placed = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -list"):
            yield Static("Chat with a model", classes="dialog-title")
            table: DataTable[str | Text] = DataTable(id="model-table", cursor_type="row", zebra_stripes=True)
            yield table
            yield Static("Scanning the library…", id="model-hint", classes="dialog-hint")

    def on_mount(self) -> None:
        table = self.query_one("#model-table", DataTable)
        table.add_column("Name", width=36)
        table.add_column("Format", width=16)
        table.add_column("Params", width=6)
        table.add_column("Size", width=9)
        table.focus()
        self.scan()
        if self.remotes is not None and self.remotes.remotes():
            self.scan_remotes()

    @work(thread=True, exclusive=True, group="picker-scan", exit_on_error=False, name="scan library for the picker")
    def scan(self) -> None:
        models = self.library.models()
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show_local, models)

    @work(thread=True, exclusive=True, group="picker-remotes", exit_on_error=False, name="list remote models")
    def scan_remotes(self) -> None:
        assert self.remotes is not None
        listings = self.remotes.listings()
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show_remotes, listings)

    def _show_local(self, models: list[LocalModel]) -> None:
        self._local = models
        self._show()

    def _show_remotes(self, listings: list[RemoteListing]) -> None:
        self._listings = listings
        self._show()

    def _show(self) -> None:
        listings = self._listings or []
        remote_models = [model for listing in listings for model in listing.models]
        self.models = [*self._local, *remote_models]
        table = self.query_one("#model-table", DataTable)
        keep = table.cursor_row
        table.clear()
        for model in self._local:
            name = Text(("● " if model.name == self.current else "  ") + model.name)
            if not model.loadable:
                name.append(" !")
            table.add_row(
                name, model.format_label, human_count(model.parameters), human_size(model.size_bytes), key=model.name
            )
        for remote_model in remote_models:  # names from the remote: Text, never markup
            mark = "● " if remote_model.name == self.current else "  "
            table.add_row(
                Text(mark + remote_model.name),
                Text(f"↗ {remote_model.host}"),
                Text(remote_model.parameters or "-"),
                human_size(remote_model.size_bytes) if remote_model.size_bytes else "remote",
                key=remote_model.name,
            )
        for listing in listings:
            if listing.error:
                table.add_row(
                    Text(f"  @{listing.remote.name} unreachable"),
                    Text(f"↗ {listing.remote.host}"),
                    "",
                    "",
                    key=f"@{listing.remote.name}",
                )
        current = next((row for row, model in enumerate(self.models) if model.name == self.current), None)
        if current is not None and (not self._placed or keep <= 0):
            table.move_cursor(row=current)
        elif self._placed:  # the remotes answered after the user moved: stay on that row
            table.move_cursor(row=min(keep, table.row_count - 1))
        self._placed = True
        hint = self.query_one("#model-hint", Static)
        waiting = self.remotes is not None and self._listings is None and bool(self.remotes.remotes())
        if self.models:
            more = " · asking the remotes…" if waiting else ""
            hint.update(f"Enter loads the model · Esc cancels · F4 opens the library{more}")
        elif waiting:
            hint.update("Asking the remotes for their models…")
        else:
            hint.update("No models yet: F4 opens the library, where i imports one.")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        key = event.row_key.value
        if key is not None and key.startswith("@"):
            listing = next((item for item in self._listings or [] if f"@{item.remote.name}" == key), None)
            if listing is not None:
                self.notify(f"{listing.error}", title=f"{key} unreachable", severity="error", timeout=10, markup=False)
            return
        model = next((m for m in self.models if m.name == key), None)
        if model is None:
            return
        if isinstance(model, LocalModel) and not model.loadable:
            problem = "; ".join(model.problems) or f"{model.format_label} cannot be loaded"
            self.notify(f"{model.name} cannot be loaded: {problem}", severity="error", timeout=8, markup=False)
            return
        self.dismiss(model)
