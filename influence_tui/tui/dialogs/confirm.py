"""Yes or no, for actions that cannot be undone (removing a model) and offers (continue the last chat)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Button, Static

from influence_tui.tui.dialogs.base import Dialog


class ConfirmDialog(Dialog[bool]):
    """Dismissed with True (the confirm button, or Y) or False (the other button, N or Esc)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes", show=False),
        Binding("n", "answer(False)", "No", id="confirm.no", show=False),
    ]

    def __init__(self, title: str, message: str, *, confirm: str = "Yes", cancel: str = "No", danger: bool = False):
        super().__init__()
        self.title_text = title
        self.message = message
        self.confirm_label = confirm
        self.cancel_label = cancel
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -confirm" + (" -danger" if self.danger else "")):
            yield Static(Content(self.title_text), classes="dialog-title")
            yield Static(Content(self.message), classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.confirm_label, id="confirm", variant="error" if self.danger else "primary")
                yield Button(self.cancel_label, id="cancel")

    def on_mount(self) -> None:
        # A destructive action waits for a deliberate choice; an offer takes Enter.
        self.query_one("#cancel" if self.danger else "#confirm", Button).focus()

    def cancel_result(self) -> bool:
        return False

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "confirm")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
