"""Which code block of the last reply to copy, when it has several."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from influence_tui.tui.dialogs.base import Dialog
from influence_tui.tui.widgets.message_view import CodeBlock


class CodePickerDialog(Dialog[CodeBlock]):
    """Dismissed with the chosen block, or None."""

    def __init__(self, blocks: Sequence[CodeBlock]) -> None:
        super().__init__()
        self.blocks = list(blocks)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -list -short"):
            yield Static("Copy a code block", classes="dialog-title")
            options = []
            for number, block in enumerate(self.blocks, start=1):
                lines = len(block.code.splitlines())
                label = f"{number}. {block.language or 'text'} · {lines} line{'s' if lines != 1 else ''} · {block.first_line}"
                options.append(Option(Content(label), id=str(number - 1)))
            yield OptionList(*options, id="code-blocks")
            yield Static("Enter copies · Esc cancels", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.dismiss(self.blocks[int(event.option.id)])
