"""Which weights to download, when a repo offers several: its safetensors, or one of its GGUF quantizations.

Each choice shows its size, the memory it needs to run here (weights + KV cache + overhead) and the verdict:
fits, tight, or won't fit. The suggested choice (:func:`~influence_tui.tui.hub_text.suggested_choice`) is
highlighted first.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Button, DataTable, Static

from influence_tui.core.memory import describe_machine
from influence_tui.core.types import HubModelDetails, QuantChoice
from influence_tui.core.units import human_size
from influence_tui.tui.dialogs.base import Dialog
from influence_tui.tui.hub_text import VERDICT_CLASSES, VERDICT_LABELS, suggested_choice
from influence_tui.tui.paths import stylesheet


def machine_line(details: HubModelDetails) -> str:
    """``Memory for a 4,096-token context · this machine: 12 GiB RAM free, no CUDA GPU``."""
    where = describe_machine(details.machine)
    context = next((c.memory.context for c in details.choices if c.memory), None)
    head = f"Memory for a {context:,}-token context" if context else "Memory"
    return f"{head} · this machine: {where}"


class QuantDialog(Dialog[QuantChoice]):
    """Dismissed with the chosen :class:`QuantChoice`, or None."""

    CSS_PATH = [stylesheet("dialogs.tcss"), stylesheet("quant_dialog.tcss")]  # type: ignore[assignment]
    COMPONENT_CLASSES: ClassVar[set[str]] = {*VERDICT_CLASSES.values(), "quant--suggested"}

    def __init__(self, details: HubModelDetails) -> None:
        super().__init__()
        self.details = details
        self.suggested = suggested_choice(details)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -list -quant"):
            yield Static(Content(f"Download {self.details.model.id}: which weights?"), classes="dialog-title")
            yield Static(Content(machine_line(self.details)), classes="dialog-body")
            yield DataTable(id="quant-table", cursor_type="row", zebra_stripes=True)
            yield Static("★ suggested · Enter downloads the highlighted choice · Esc cancels", classes="dialog-hint")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Download", id="download", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        table: DataTable[str | Text] = self.query_one("#quant-table", DataTable)
        table.add_column("Choice", key="name")
        table.add_column("Files", key="files")
        table.add_column("Download", key="size")
        table.add_column("Memory", key="memory")
        table.add_column("Runs on", key="device")
        table.add_column("Verdict", key="verdict")
        suggested = self.get_component_rich_style("quant--suggested", partial=True)
        for row, choice in enumerate(self.details.choices):
            mem = choice.memory
            name = Text(choice.name)  # from the Hub: never markup
            if choice is self.suggested:
                name.append(" ★", style=suggested)
            verdict: str | Text = "-"
            if mem is not None:
                style = self.get_component_rich_style(VERDICT_CLASSES[mem.verdict], partial=True)
                verdict = Text(VERDICT_LABELS[mem.verdict], style=style)
            table.add_row(
                name,
                Text(str(len(choice.files)), justify="right"),
                Text(human_size(choice.size_bytes), justify="right"),
                Text(
                    ("" if mem is None or mem.kv_cache_exact else "~") + human_size(mem.total_bytes if mem else None),
                    justify="right",
                ),
                mem.device if mem else "-",
                verdict,
                key=str(row),
            )
            if choice is self.suggested:
                table.move_cursor(row=row)
        table.focus()

    @property
    def highlighted(self) -> QuantChoice | None:
        table = self.query_one("#quant-table", DataTable)
        choices = self.details.choices
        return choices[table.cursor_row] if 0 <= table.cursor_row < len(choices) else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.dismiss(self.highlighted)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(self.highlighted if event.button.id == "download" else None)
