"""Every model in the library; Enter chats with the highlighted one."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static
from textual.worker import get_current_worker

from influence_tui.core.library import Library
from influence_tui.core.types import LocalModel
from influence_tui.core.units import human_count, human_size
from influence_tui.tui.dialogs.base import Dialog


class ModelPickerDialog(Dialog[LocalModel]):
    """Dismissed with the chosen model, or None. A model that cannot be loaded says why instead."""

    def __init__(self, library: Library, current: str | None = None) -> None:
        super().__init__()
        self.library = library
        self.current = current
        self.models: list[LocalModel] = []

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

    @work(thread=True, exclusive=True, group="picker-scan", exit_on_error=False, name="scan library for the picker")
    def scan(self) -> None:
        models = self.library.models()
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show, models)

    def _show(self, models: list[LocalModel]) -> None:
        self.models = models
        table = self.query_one("#model-table", DataTable)
        table.clear()
        for model in models:
            name = Text(("● " if model.name == self.current else "  ") + model.name)
            if not model.loadable:
                name.append(" !")
            table.add_row(
                name, model.format_label, human_count(model.parameters), human_size(model.size_bytes), key=model.name
            )
        for row, model in enumerate(models):
            if model.name == self.current:
                table.move_cursor(row=row)
        hint = self.query_one("#model-hint", Static)
        if models:
            hint.update("Enter loads the model · Esc cancels · F4 opens the library")
        else:
            hint.update("No models yet: F4 opens the library, where i imports one.")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        model = next((m for m in self.models if m.name == event.row_key.value), None)
        if model is None:
            return
        if not model.loadable:
            problem = "; ".join(model.problems) or f"{model.format_label} cannot be loaded"
            self.notify(f"{model.name} cannot be loaded: {problem}", severity="error", timeout=8, markup=False)
            return
        self.dismiss(model)
