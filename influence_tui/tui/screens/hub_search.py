"""Hub search: find a model, see its files and which of its quantizations fit this machine, download one.

Typing searches after a short pause (Enter searches at once). The highlighted model's details load in the
background; a slow answer for a model the cursor has left is kept for later but never shown over the newer
one. ``d`` (or Enter on a row) downloads: when the repo offers several weights, a dialog asks which. The
download itself runs in the app's :class:`~influence_tui.tui.download_service.DownloadService`, so it goes on
while the user chats; F3 shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.console import Group, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Checkbox, DataTable, Footer, Input, Static

from influence_tui.core.errors import HubUnreachableError, InfluenceError
from influence_tui.core.types import HubModel, HubModelDetails, QuantChoice
from influence_tui.core.units import human_count, human_size
from influence_tui.tui.dialogs.quant import QuantDialog, machine_line
from influence_tui.tui.download_service import DownloadRequest, downloads_of
from influence_tui.tui.hub_text import (
    VERDICT_CLASSES,
    VERDICT_LABELS,
    count,
    day,
    quant_of,
    short_count,
    short_tags,
    suggested_choice,
)
from influence_tui.tui.paths import stylesheet
from influence_tui.tui.services import services_of
from influence_tui.tui.widgets.mode_bar import ModeBar

SEARCH_LIMIT = 40
FILES_SHOWN = 12


@dataclass(frozen=True)
class SearchQuery:
    text: str = ""
    author: str = ""
    gguf_only: bool = False
    sort: str = "downloads"
    """A key of :data:`influence_tui.core.hub.SORTS`."""


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    sort: Callable[[HubModel], Any] | None
    hub_sort: str | None = None
    """The Hub's own order for this column: sorting by it asks the Hub for the top models by it."""
    descending: bool = True
    """The first click sorts this way (numbers and dates: biggest and newest first)."""


COLUMNS: tuple[Column, ...] = (
    Column("id", "Model", lambda m: m.id.lower(), descending=False),
    Column("downloads", "Downloads", lambda m: m.downloads or 0, "downloads"),
    Column("likes", "Likes", lambda m: m.likes or 0, "likes"),
    Column("updated", "Updated", lambda m: m.updated or "", "updated"),
    Column("tags", "Tags", None),
)
SORTABLE = [c for c in COLUMNS if c.sort is not None]


class HubSearchScreen(Screen[None]):
    """A search box and filters over a results table, beside the details of the highlighted model."""

    CSS_PATH = stylesheet("hub_search.tcss")
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        *VERDICT_CLASSES.values(),
        "hub--title",
        "hub--label",
        "hub--muted",
        "hub--gated",
        "hub--heading",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "download", "Download", id="hub.download"),
        Binding("slash", "focus_search", "Search", id="hub.search", key_display="/"),
        Binding("s", "cycle_sort", "Sort", id="hub.sort"),
        Binding("g", "toggle_gguf", "GGUF only", id="hub.gguf"),
        Binding("ctrl+r", "refresh", "Search again", id="hub.refresh"),
        Binding("escape", "focus_results", "Results", id="hub.results", show=False),
    ]
    SEARCH_DELAY_S = 0.4
    """Typing pauses this long before a search starts."""
    DETAILS_DELAY_S = 0.15
    """The cursor rests this long on a row before its details are fetched (cached details show at once)."""
    SIDE_BY_SIDE_WIDTH = 150
    """From this many columns the details sit beside the results; below, under them."""
    TWO_COLUMN_DETAILS = 90
    """A details pane at least this wide shows the facts and the download choices side by side."""

    @dataclass
    class SearchDone(Message):
        seq: int
        query: SearchQuery
        models: list[HubModel]
        error: InfluenceError | None = None

    @dataclass
    class DetailsDone(Message):
        seq: int
        repo_id: str
        details: HubModelDetails | None
        error: InfluenceError | None = None

    def __init__(self) -> None:
        super().__init__()
        self.results: list[HubModel] = []
        self.sort_key = "downloads"
        self.sort_descending = True
        self.details_cache: dict[str, HubModelDetails] = {}
        self.searching = False
        self.failed = False
        """The last search failed (its error is shown in place of the results)."""
        self.last_query: SearchQuery | None = None
        """The query of the results shown."""
        self._search_seq = 0
        self._details_seq = 0
        self._wanted: str | None = None
        """The repo whose details the pane should show."""
        self._download_when_ready: str | None = None
        self._search_timer: Timer | None = None
        self._details_timer: Timer | None = None

    # ------------------------------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield ModeBar("hub")
        with Horizontal(id="hub-query"):
            yield Input(placeholder="Search the Hub: qwen, smollm, gguf…", id="hub-search")
            yield Input(placeholder="author", id="hub-author")
            yield Checkbox("GGUF only", id="hub-gguf")
        with Horizontal(id="hub-body"):
            with Vertical(id="hub-results-pane", classes="panel"):
                yield Static(id="hub-message")
                yield DataTable(id="hub-results", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="hub-details-pane", classes="panel"):
                yield Static("Highlight a model to see its files and quantizations.", id="hub-details")
        yield Static("", id="hub-status")
        yield Footer()

    def on_mount(self) -> None:
        self.set_class(self.app.size.width < self.SIDE_BY_SIDE_WIDTH, "-stacked")
        self.query_one("#hub-results-pane").border_title = "Models"
        self.query_one("#hub-details-pane").border_title = "Details"
        self.query_one("#hub-message").display = False
        self._fill_table()
        self.query_one("#hub-search", Input).focus()
        self.search_now()

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.width < self.SIDE_BY_SIDE_WIDTH, "-stacked")
        self.call_after_refresh(self._relayout)

    def _relayout(self) -> None:
        """Column widths and the details' shape follow the space the panes got."""
        self._fill_table()
        if self._wanted is not None and self._wanted in self.details_cache:
            self._show_details(self.details_cache[self._wanted])

    def style(self, component: str) -> Style:
        return self.get_component_rich_style(component, partial=True)

    # ------------------------------------------------------------------------------------------ searching

    @property
    def query_now(self) -> SearchQuery:
        column = next(c for c in COLUMNS if c.key == self.sort_key)
        return SearchQuery(
            text=self.query_one("#hub-search", Input).value.strip(),
            author=self.query_one("#hub-author", Input).value.strip(),
            gguf_only=self.query_one("#hub-gguf", Checkbox).value,
            sort=column.hub_sort or (self.last_query.sort if self.last_query else "downloads"),
        )

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_timer = self.set_timer(self.SEARCH_DELAY_S, self.search_now)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.search_now()
        self.action_focus_results()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        self.search_now()

    def search_now(self) -> None:
        """Search with what the inputs hold now (a pending debounced search is dropped)."""
        if self._search_timer is not None:
            self._search_timer.stop()
            self._search_timer = None
        self._search_seq += 1
        self.searching = True
        self._status()
        self.run_search(self._search_seq, self.query_now)

    @work(thread=True, exclusive=True, group="hub-search", exit_on_error=False, name="search the hub")
    def run_search(self, seq: int, query: SearchQuery) -> None:
        from influence_tui.core.hub import HubClient

        try:
            with HubClient(services_of(self).settings) as client:
                models = client.search(
                    query.text or None,
                    author=query.author or None,
                    limit=SEARCH_LIMIT,
                    sort=query.sort,
                    filters=("gguf",) if query.gguf_only else (),
                )
        except InfluenceError as exc:
            self.post_message(self.SearchDone(seq, query, [], exc))
            return
        self.post_message(self.SearchDone(seq, query, models))

    def on_hub_search_screen_search_done(self, message: SearchDone) -> None:
        if message.seq != self._search_seq:
            return  # an older search answered late
        self.searching = False
        self.last_query = message.query
        self.failed = message.error is not None
        if message.error is not None:
            self.results = []
            self._fill_table()
            self._show_error(message.error)
            self._status()
            return
        self.results = message.models
        if not message.models:
            what = f"“{message.query.text}”" if message.query.text else "these filters"
            self._show_message(f"No models match {what}. Try fewer words, another author, or turn GGUF only off.")
        else:
            self._show_message(None)
        self._fill_table()
        self._status()

    def _show_error(self, error: InfluenceError) -> None:
        if isinstance(error, HubUnreachableError):
            text = Text.assemble(("Cannot reach the Hub\n", self.style("hub--title")))
        else:
            text = Text.assemble(("The Hub did not answer the search\n", self.style("hub--title")))
        text.append(error.message + "\n")
        if error.hint:
            text.append(error.hint[:1].upper() + error.hint[1:] + ".\n")
        text.append("Ctrl+R searches again.", style=self.style("hub--muted"))
        self._show_message(text, error=True)

    def _show_message(self, text: str | Text | None, *, error: bool = False) -> None:
        message = self.query_one("#hub-message", Static)
        message.display = text is not None
        message.set_class(error, "-error")
        self.query_one("#hub-results", DataTable).display = not error
        if text is not None:
            message.update(text if isinstance(text, Text) else Text(text))

    def _status(self) -> None:
        self.refresh_bindings()  # Download is offered only with results
        status = self.query_one("#hub-status", Static)
        endpoint = services_of(self).settings.hub_endpoint
        if self.searching:
            status.update(Text(f"Searching {endpoint}…"))
            return
        if self.failed:
            status.update(Text(f"No answer from {endpoint}"))
            return
        column = next(c for c in COLUMNS if c.key == self.sort_key)
        arrow = "▼" if self.sort_descending else "▲"
        n = len(self.results)
        status.update(Text(f"{n} model{'s' if n != 1 else ''} · sorted by {column.label.lower()} {arrow} · {endpoint}"))

    # ------------------------------------------------------------------------------------------ the table

    def _sorted(self) -> list[HubModel]:
        column = next(c for c in COLUMNS if c.key == self.sort_key)
        assert column.sort is not None
        return sorted(self.results, key=column.sort, reverse=self.sort_descending)

    def _fill_table(self) -> None:
        """Refill the table in the current order, keeping the cursor on the same model."""
        table: DataTable[str | Text] = self.query_one("#hub-results", DataTable)
        keep = self.highlighted.id if self.highlighted else None
        table.clear(columns=True)
        widths = self._column_widths(table.size.width)
        for column in COLUMNS:
            label = column.label
            if column.key == self.sort_key:
                label += " ▼" if self.sort_descending else " ▲"
            table.add_column(label, key=column.key, width=widths.get(column.key))
        gated = self.style("hub--gated")
        muted = self.style("hub--muted")
        models = self._sorted()
        for model in models:
            name = Text(model.id, no_wrap=True, overflow="ellipsis")  # from the Hub: never markup
            if model.gated:
                name.append(" (gated)", style=gated)
            table.add_row(
                name,
                Text(short_count(model.downloads), justify="right"),
                Text(short_count(model.likes), justify="right"),
                Text(day(model.updated)),
                Text(short_tags(model), style=muted, no_wrap=True, overflow="ellipsis"),
                key=model.id,
            )
        if keep is not None:
            for row, model in enumerate(models):
                if model.id == keep:
                    table.move_cursor(row=row, animate=False)
        if not models:
            self._wanted = None
            self.query_one("#hub-details", Static).update(
                Text("Highlight a model to see its files and quantizations.", style=muted)
            )

    FIXED_WIDTHS: ClassVar[dict[str, int]] = {"downloads": 11, "likes": 7, "updated": 10}

    def _column_widths(self, width: int) -> dict[str, int]:
        """Fixed widths for the figures; the model ids get what they need of the rest (up to 60%), the tags the
        remainder. Before the table has a size, the figures' widths only."""
        widths = dict(self.FIXED_WIDTHS)
        if width <= 0:
            return widths
        room = width - 2 - 2 * len(COLUMNS) - sum(widths.values())  # scrollbar, cell padding
        longest = max((len(m.id) + (9 if m.gated else 0) for m in self.results), default=20)
        model = max(12, min(longest, int(room * 0.6)))
        widths["id"] = model
        widths["tags"] = max(4, room - model)
        return widths

    @property
    def highlighted(self) -> HubModel | None:
        table = self.query_one("#hub-results", DataTable)
        if not self.results or table.row_count == 0 or not 0 <= table.cursor_row < table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # the table is being refilled
            return None
        return next((m for m in self.results if m.id == key), None)

    def sort_by(self, key: str, descending: bool | None = None) -> None:
        """Order the results by a column (the same column again flips the order); a column the Hub can sort
        by also asks the Hub for its top models by it."""
        column = next(c for c in SORTABLE if c.key == key)
        if descending is None:
            descending = not self.sort_descending if key == self.sort_key else column.descending
        self.sort_key, self.sort_descending = key, descending
        self._fill_table()
        self._status()
        if column.hub_sort and self.last_query is not None and column.hub_sort != self.last_query.sort:
            self.search_now()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        key = str(event.column_key.value)
        if any(c.key == key for c in SORTABLE):
            self.sort_by(key)

    def action_cycle_sort(self) -> None:
        keys = [c.key for c in SORTABLE]
        self.sort_by(keys[(keys.index(self.sort_key) + 1) % len(keys)])

    def action_toggle_gguf(self) -> None:
        checkbox = self.query_one("#hub-gguf", Checkbox)
        checkbox.value = not checkbox.value  # its Changed message searches

    def action_focus_search(self) -> None:
        self.query_one("#hub-search", Input).focus()

    def action_focus_results(self) -> None:
        self.query_one("#hub-results", DataTable).focus()

    def action_refresh(self) -> None:
        self.details_cache.clear()
        self.search_now()

    # ------------------------------------------------------------------------------------------ details

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        repo_id = event.row_key.value
        if repo_id is None or repo_id == self._wanted:
            return
        self._wanted = repo_id
        if self._details_timer is not None:
            self._details_timer.stop()
            self._details_timer = None
        cached = self.details_cache.get(repo_id)
        if cached is not None:
            self._show_details(cached)
            return
        model = next((m for m in self.results if m.id == repo_id), None)
        self.query_one("#hub-details", Static).update(
            Group(*self._summary(model), Text("\nLoading files and quantizations…", style=self.style("hub--muted")))
            if model
            else Text("")
        )
        self._details_timer = self.set_timer(self.DETAILS_DELAY_S, lambda: self.load_details(repo_id))

    def load_details(self, repo_id: str) -> None:
        self._details_seq += 1
        self.fetch_details(self._details_seq, repo_id)

    @work(thread=True, exclusive=True, group="hub-details", exit_on_error=False, name="model details")
    def fetch_details(self, seq: int, repo_id: str) -> None:
        from influence_tui.core.hub import HubClient

        try:
            with HubClient(services_of(self).settings) as client:
                details = client.details(repo_id)
        except InfluenceError as exc:
            self.post_message(self.DetailsDone(seq, repo_id, None, exc))
            return
        self.post_message(self.DetailsDone(seq, repo_id, details))

    def on_hub_search_screen_details_done(self, message: DetailsDone) -> None:
        if message.details is not None:
            self.details_cache[message.repo_id] = message.details  # even a late answer is worth keeping
        if message.repo_id != self._wanted or message.seq != self._details_seq:
            return  # the cursor moved on: a newer request owns the pane
        if message.details is None:
            error = message.error
            assert error is not None
            text = Text.assemble((f"Could not load {message.repo_id}\n", self.style("hub--title")))
            text.append(error.message + "\n")
            if error.hint:
                text.append(error.hint + "\n", style=self.style("hub--muted"))
            text.append("Ctrl+R tries again.", style=self.style("hub--muted"))
            self.query_one("#hub-details", Static).update(text)
            if self._download_when_ready == message.repo_id:
                self._download_when_ready = None
            return
        self._show_details(message.details)
        if self._download_when_ready == message.repo_id:
            self._download_when_ready = None
            self.offer_download(message.details)

    def _summary(self, model: HubModel) -> list[RenderableType]:
        title = Text(model.id, style=self.style("hub--title"))
        facts = Text(style=self.style("hub--muted"))
        facts.append(
            f"by {model.author or '-'} · {count(model.downloads)} downloads · {count(model.likes)} likes · "
            f"updated {day(model.updated)}"
        )
        return [title, facts]

    def _show_details(self, details: HubModelDetails) -> None:
        self.query_one("#hub-details", Static).update(self.details_view(details))

    def details_view(self, details: HubModelDetails) -> RenderableType:
        """The pane: what the model is and what can be downloaded and whether it fits (side by side when the
        pane is wide), then its files."""
        pane = self.query_one("#hub-details-pane")
        facts, choices, files = self._facts(details), self._choices(details), self._files(details)
        if pane.size.width - 4 >= self.TWO_COLUMN_DETAILS:
            top = Table.grid(padding=(0, 3), expand=True)
            top.add_column(ratio=1)
            top.add_column(ratio=1)
            top.add_row(Group(*facts), Group(*choices))
            return Group(top, Text(""), *files)
        return Group(*facts, Text(""), *choices, Text(""), *files)

    def _facts(self, details: HubModelDetails) -> list[RenderableType]:
        label = self.style("hub--label")
        m = details.model
        parts: list[RenderableType] = self._summary(m)
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style=label, no_wrap=True)
        grid.add_column(overflow="fold")
        rows = [
            ("task", m.pipeline_tag or "-"),
            ("library", m.library_name or "-"),
            ("architecture", details.architecture or "-"),
            ("parameters", human_count(details.parameters)),
            ("context", f"{details.context_length:,} tokens" if details.context_length else "-"),
            ("formats", ", ".join(details.formats) or "none"),
        ]
        for key, value in rows:
            grid.add_row(key, Text(value))
        if m.gated:
            grid.add_row(
                Text("gated", style=self.style("hub--gated")),
                Text("accept its license on the Hub, then set HF_TOKEN to a token of that account"),
            )
        parts += [Text(""), grid]
        return parts

    def _choices(self, details: HubModelDetails) -> list[RenderableType]:
        label = self.style("hub--label")
        muted = self.style("hub--muted")
        heading = self.style("hub--heading")
        parts: list[RenderableType] = []
        if not details.choices:
            parts.append(
                Text("No safetensors or GGUF weights: Influence cannot run this repo.", style=self.style("hub--gated"))
            )
        else:
            parts.append(Text("Download choices", style=heading))
            parts.append(Text(machine_line(details), style=muted))
            suggested = suggested_choice(details)
            choices = Table(box=None, pad_edge=False, padding=(0, 1), show_header=True, header_style=label)
            choices.add_column("choice", no_wrap=True)
            choices.add_column("size", justify="right", no_wrap=True)
            choices.add_column("memory", justify="right", no_wrap=True)
            choices.add_column("verdict", no_wrap=True)
            for c in details.choices:
                choices.add_row(*self._choice_cells(c, c is suggested))
            parts.append(choices)
            several = len(details.choices) > 1
            parts.append(Text(f"d downloads{' (asks which)' if several else ''}", style=muted))
        return parts

    def _files(self, details: HubModelDetails) -> list[RenderableType]:
        muted = self.style("hub--muted")
        parts: list[RenderableType] = [Text(f"Files ({len(details.files)})", style=self.style("hub--heading"))]
        files = Table(box=None, pad_edge=False, padding=(0, 1), show_header=False)
        files.add_column(overflow="fold")
        files.add_column(justify="right", no_wrap=True, style=muted)
        for f in details.files[:FILES_SHOWN]:
            files.add_row(Text(f.path), human_size(f.size))
        parts.append(files)
        if len(details.files) > FILES_SHOWN:
            parts.append(Text(f"… and {len(details.files) - FILES_SHOWN} more", style=muted))
        return parts

    def _choice_cells(self, c: QuantChoice, suggested: bool) -> list[Text]:
        name = Text(c.name)
        if suggested:
            name.append(" ★", style=self.style("hub--heading"))
        mem = c.memory
        if mem is None:
            return [name, Text(human_size(c.size_bytes)), Text("-"), Text("-")]
        verdict = Text(VERDICT_LABELS[mem.verdict], style=self.style(VERDICT_CLASSES[mem.verdict]))
        memory = ("" if mem.kv_cache_exact else "~") + human_size(mem.total_bytes)
        return [name, Text(human_size(c.size_bytes)), Text(f"{memory} {mem.device}"), verdict]

    # ------------------------------------------------------------------------------------------ download

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_download()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "download":
            return bool(self.results)
        return True

    def action_download(self) -> None:
        model = self.highlighted
        if model is None:
            return
        details = self.details_cache.get(model.id)
        if details is None:  # not here yet: download once it is
            self._download_when_ready = model.id
            if self._wanted != model.id or self._details_timer is not None:
                self._wanted = model.id
                if self._details_timer is not None:
                    self._details_timer.stop()
                    self._details_timer = None
                self.load_details(model.id)
            self.notify(f"Reading {model.id}'s files…", timeout=3, markup=False)
            return
        self.offer_download(details)

    def offer_download(self, details: HubModelDetails) -> None:
        """Download the repo's only choice, or ask which when there are several."""
        repo_id = details.model.id
        if not details.choices:
            self.notify(
                f"{repo_id} has no safetensors or GGUF weights, so Influence cannot run it; look for a GGUF or "
                "safetensors version of it.",
                title="Nothing to download",
                severity="warning",
                timeout=10,
                markup=False,
            )
            return
        if details.model.gated and not self._token_given():
            from influence_tui.core.hub import gated_error

            error = gated_error(repo_id, services_of(self).settings.hub_endpoint, token_given=False)
            self.notify(str(error), title="Gated model", severity="error", timeout=15, markup=False)
            return
        if len(details.choices) == 1:
            self.start_download(details, details.choices[0])
            return

        def chosen(choice: QuantChoice | None) -> None:
            if choice is not None:
                self.start_download(details, choice)

        self.app.push_screen(QuantDialog(details), chosen)

    def _token_given(self) -> bool:
        from influence_tui.core.hub import HubClient

        return HubClient(services_of(self).settings).token_given

    def start_download(self, details: HubModelDetails, choice: QuantChoice) -> None:
        request = DownloadRequest(details.model.id, quant=quant_of(choice))
        service = downloads_of(self)
        existing = service.find(request)
        if existing is not None and existing.active:
            self.notify(f"{request.label} is already downloading: F3 shows it.", markup=False)
            return
        service.download(request)
        self.notify(
            f"{request.label}: {human_size(choice.size_bytes)} of weights. F3 shows the progress; it goes on "
            "while you chat.",
            title="Download started",
            markup=False,
        )
