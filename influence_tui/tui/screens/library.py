"""The model library: every model on disk, its format, size and problems."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import get_current_worker

from influence_tui.core.config import Settings
from influence_tui.core.library import Library
from influence_tui.core.types import SOURCE_LABELS, LocalModel
from influence_tui.core.units import human_count, human_size


class LibraryScreen(Screen[None]):
    """A table of the local models beside the details of the highlighted one."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "refresh", "Rescan", id="library.refresh"),
        Binding("q", "app.quit", "Quit", id="library.quit"),
    ]

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.library = Library(settings)
        self.models: list[LocalModel] = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="library-body"):
            table: DataTable[str | Text] = DataTable(
                id="model-table", classes="panel", cursor_type="row", zebra_stripes=True
            )
            table.border_title = "Models"
            yield table
            details = Static(id="model-details", classes="panel")
            details.border_title = "Details"
            yield details
        yield Static("Scanning…", id="library-status")
        yield Footer()

    NARROW_WIDTH = 100

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.width < self.NARROW_WIDTH, "-narrow")

    def on_mount(self) -> None:
        self.set_class(self.app.size.width < self.NARROW_WIDTH, "-narrow")
        table = self.query_one("#model-table", DataTable)
        table.add_columns("Name", "Format", "Params", "Size", "Source")
        self.scan()

    def action_refresh(self) -> None:
        self.scan()

    @work(thread=True, exclusive=True, group="library-scan", exit_on_error=False, name="scan library")
    def scan(self) -> None:
        models = self.library.models()
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show_models, models)

    def _show_models(self, models: list[LocalModel]) -> None:
        self.models = models
        table = self.query_one("#model-table", DataTable)
        table.clear()
        for model in models:
            name = Text(model.name)
            if not model.loadable:
                name.append(" !", style="bold red")
            table.add_row(
                name,
                Text(model.format_label),  # header text from disk: never markup
                human_count(model.parameters),
                human_size(model.size_bytes),
                SOURCE_LABELS[model.source],
                key=model.name,
            )
        total = sum(m.size_bytes for m in models)
        count = f"{len(models)} model{'s' if len(models) != 1 else ''}"
        self.query_one("#library-status", Static).update(
            Text(f"{count} · {human_size(total)} · models dir: {self.library.models_dir}")  # a path: never markup
        )
        if models:
            self._show_details(models[0])
        else:
            self.query_one("#model-details", Static).update("No models yet: `influence import PATH` adds one.")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        for model in self.models:
            if model.name == event.row_key.value:
                self._show_details(model)
                break

    def _show_details(self, model: LocalModel) -> None:
        lines = Text()
        rows = [
            ("Name", model.name),
            ("Format", model.format_label),
            ("Architecture", model.architecture or "-"),
            ("Parameters", human_count(model.parameters)),
            ("Context", str(model.context_length or "-")),
            ("Size", human_size(model.size_bytes)),
            ("Chat template", "yes" if model.has_chat_template else "no"),
            ("Source", SOURCE_LABELS[model.source] + (" (link)" if model.linked else "")),
            ("Path", str(model.path)),
        ]
        for key, value in rows:
            lines.append(f"{key:<14}", style="bold")
            lines.append(value + "\n")
        for problem in model.problems:
            lines.append("Problem       ", style="bold red")
            lines.append(problem + "\n")
        self.query_one("#model-details", Static).update(lines)
