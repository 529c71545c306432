"""The model library: every model on disk, its format, size and problems, and the remotes' models beside them
(``MODEL@REMOTE``, marked with the host a chat goes to); chat with one, remove, import."""

from __future__ import annotations

from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.worker import get_current_worker

from influence_tui.core.errors import InfluenceError
from influence_tui.core.library import Library
from influence_tui.core.remotes import RemoteListing, RemoteModel
from influence_tui.core.types import SOURCE_LABELS, LocalModel
from influence_tui.core.units import human_count, human_size
from influence_tui.tui.dialogs.confirm import ConfirmDialog
from influence_tui.tui.dialogs.text_input import ImportDialog, ImportRequest
from influence_tui.tui.messages import ChatWithModel
from influence_tui.tui.paths import stylesheet
from influence_tui.tui.services import services_of
from influence_tui.tui.widgets.mode_bar import ModeBar


class LibraryScreen(Screen[None]):
    """A table of the local models beside the details of the highlighted one."""

    CSS_PATH = stylesheet("library.tcss")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "chat", "Chat with it", id="library.chat"),
        Binding("d,delete", "remove", "Remove", id="library.remove"),
        Binding("i", "import_model", "Import", id="library.import"),
        Binding("r", "refresh", "Rescan", id="library.refresh"),
        Binding("q", "app.quit", "Quit", id="library.quit", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.models: list[LocalModel | RemoteModel] = []
        self.local: list[LocalModel] = []
        self.listings: list[RemoteListing] = []
        """What each remote answered (its models, or why it could not be reached)."""

    @property
    def library(self) -> Library:
        return services_of(self).library

    def compose(self) -> ComposeResult:
        yield ModeBar("library")
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
        table.focus()
        self.scan()

    # ------------------------------------------------------------------------------------------ actions

    @property
    def highlighted(self) -> LocalModel | RemoteModel | None:
        """The model under the table's cursor."""
        table = self.query_one("#model-table", DataTable)
        if not self.models or table.cursor_row < 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # the table is being refilled
            return None
        return next((m for m in self.models if m.name == key), None)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_chat()

    def action_chat(self) -> None:
        model = self.highlighted
        if model is None:
            self._explain_unreachable()
            return
        if isinstance(model, LocalModel) and not model.loadable:
            problem = "; ".join(model.problems) or f"{model.format_label} cannot be loaded"
            self.notify(f"{model.name} cannot be loaded: {problem}", severity="error", timeout=10, markup=False)
            return
        self.post_message(ChatWithModel(model))

    def action_remove(self) -> None:
        model = self.highlighted
        if model is None:
            return
        if isinstance(model, RemoteModel):
            self.notify(
                f"{model.name} lives on {model.host}. `influence remote rm {model.remote.name}` forgets the remote.",
                markup=False,
            )
            return
        if model.linked:
            what = f"The link {model.path} is removed; the files it points to stay."
        else:
            what = f"{human_size(model.size_bytes)} at {model.path} will be deleted."

        def answered(remove: bool | None) -> None:
            if remove:
                self.remove_model(model)

        self.app.push_screen(
            ConfirmDialog(f"Remove {model.name}?", what, confirm="Remove", cancel="Keep", danger=True), answered
        )

    @work(thread=True, exclusive=True, group="library-change", exit_on_error=False, name="remove model")
    def remove_model(self, model: LocalModel) -> None:
        try:
            self.library.remove(model)
        except InfluenceError as exc:
            self.app.call_from_thread(
                self.notify, str(exc), title="Not removed", severity="error", timeout=12, markup=False
            )
            return
        self.app.call_from_thread(self.notify, f"Removed {model.name}", markup=False)
        self.app.call_from_thread(self.scan)

    def action_import_model(self) -> None:
        def chosen(request: ImportRequest | None) -> None:
            if request is not None:
                self.import_model(request)

        self.app.push_screen(ImportDialog(), chosen)

    @work(thread=True, exclusive=True, group="library-change", exit_on_error=False, name="import model")
    def import_model(self, request: ImportRequest) -> None:
        from pathlib import Path

        self.app.call_from_thread(self.notify, f"Importing {request.path}…", markup=False)
        try:
            result = self.library.import_model(Path(request.path).expanduser(), link=request.link)
        except InfluenceError as exc:
            self.app.call_from_thread(
                self.notify, str(exc), title="Not imported", severity="error", timeout=12, markup=False
            )
            return
        how = "Linked" if result.linked else f"Copied {human_size(result.copied_bytes)}"
        problems = "".join(f"\n! {p}" for p in result.model.problems)
        self.app.call_from_thread(
            self.notify,
            f"{how}: {result.model.name} ({result.model.format_label}){problems}",
            severity="warning" if problems else "information",
            markup=False,
        )
        self.app.call_from_thread(self.scan)

    def action_refresh(self) -> None:
        self.scan(refresh=True)

    @work(thread=True, exclusive=True, group="library-scan", exit_on_error=False, name="scan library")
    def scan(self, refresh: bool = False) -> None:
        """The local models (shown at once), then the remotes' (asked in parallel, a few seconds at most)."""
        models = self.library.models()
        if get_current_worker().is_cancelled:
            return
        self.app.call_from_thread(self._show_models, models)
        catalog = services_of(self).remotes
        try:
            has_remotes = bool(catalog.remotes())
            listings = catalog.listings(refresh=refresh) if has_remotes else []
        except InfluenceError as exc:  # a broken [remotes.*] table: say so, keep the local list
            self.app.call_from_thread(self.notify, str(exc), title="Remotes", severity="error", markup=False)
            return
        if has_remotes and not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show_listings, listings)

    def _show_listings(self, listings: list[RemoteListing]) -> None:
        self.listings = listings
        self._show_models(self.local)

    def _explain_unreachable(self) -> None:
        table = self.query_one("#model-table", DataTable)
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:
            return
        listing = next((item for item in self.listings if f"@{item.remote.name}" == key), None)
        if listing is not None and listing.error:
            self.notify(listing.error, title=f"{key} unreachable", severity="error", timeout=10, markup=False)

    @property
    def problem_style(self) -> Style:
        """The marker of a model with a problem: the theme's error colour (no colour is named in Python)."""
        return Style(color=self.app.theme_variables.get("error"), bold=True)

    def _show_models(self, models: list[LocalModel]) -> None:
        self.local = models
        remote_models = [model for listing in self.listings for model in listing.models]
        self.models = [*models, *remote_models]
        table = self.query_one("#model-table", DataTable)
        row = table.cursor_row
        table.clear()
        for model in models:
            name = Text(model.name)
            if not model.loadable:
                name.append(" !", style=self.problem_style)
            table.add_row(
                name,
                Text(model.format_label),  # header text from disk: never markup
                human_count(model.parameters),
                human_size(model.size_bytes),
                SOURCE_LABELS[model.source],
                key=model.name,
            )
        for remote_model in remote_models:  # what a remote says: Text, never markup
            table.add_row(
                Text(remote_model.name),
                Text(remote_model.format_label),
                Text(remote_model.parameters or "-"),
                human_size(remote_model.size_bytes) if remote_model.size_bytes else "-",
                Text(f"↗ {remote_model.host}"),
                key=remote_model.name,
            )
        for listing in self.listings:
            if listing.error:
                name = Text(f"@{listing.remote.name}")
                name.append(" unreachable", style=self.problem_style)
                table.add_row(name, "", "", "", Text(f"↗ {listing.remote.host}"), key=f"@{listing.remote.name}")
        total = sum(m.size_bytes for m in models)
        count = f"{len(models)} model{'s' if len(models) != 1 else ''}"
        remotes = ""
        if self.listings:
            down = sum(1 for listing in self.listings if listing.error)
            remotes = f" · {len(remote_models)} remote" + (
                f" ({down} remote{'s' if down != 1 else ''} unreachable)" if down else ""
            )
        self.query_one("#library-status", Static).update(
            Text(f"{count} · {human_size(total)}{remotes} · models dir: {self.library.models_dir}")  # never markup
        )
        if row > 0 and table.row_count:
            table.move_cursor(row=min(row, table.row_count - 1))
        if self.models:
            self._show_details(self.models[min(max(row, 0), len(self.models) - 1)])
        else:
            self.query_one("#model-details", Static).update(
                "No models yet: press i to import a .gguf file or a folder."
            )

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        for model in self.models:
            if model.name == event.row_key.value:
                self._show_details(model)
                return
        for listing in self.listings:
            if f"@{listing.remote.name}" == event.row_key.value and listing.error:
                lines = Text(f"@{listing.remote.name} ({listing.remote.url})\n\n", style="bold")
                lines.append(listing.error + "\n\nr asks again; `influence remote test NAME` checks it.")
                self.query_one("#model-details", Static).update(lines)

    def _show_remote_details(self, model: RemoteModel) -> None:
        remote = model.remote
        lines = Text()
        rows = [
            ("Name", model.name),
            ("Remote", f"{remote.name} ({remote.kind} API)"),
            ("URL", remote.api_base),
            ("Model", model.model_id),
            ("Context", str(model.context_length or "asked when chosen")),
            ("Size", human_size(model.size_bytes) if model.size_bytes else "-"),
            ("API key", remote.key_status()),
        ]
        for key, value in rows:
            lines.append(f"{key:<14}", style="bold")
            lines.append(value + "\n")
        lines.append(f"\nChats with it leave this machine: they are sent to {remote.host}.\n", style="bold")
        self.query_one("#model-details", Static).update(lines)

    def _show_details(self, model: LocalModel | RemoteModel) -> None:
        if isinstance(model, RemoteModel):
            self._show_remote_details(model)
            return
        lines = Text()
        rows = [
            ("Name", model.name),
            ("Format", model.format_label),
            ("Architecture", model.architecture or "-"),
            ("Runtime", model.runtime or "-"),
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
            lines.append("Problem       ", style=self.problem_style)
            lines.append(problem + "\n")
        self.query_one("#model-details", Static).update(lines)
