"""One line of text: a session name to save under, a path to import."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Button, Checkbox, Input, Static

from influence_tui.tui.dialogs.base import Dialog


class TextInputDialog(Dialog[str]):
    """Dismissed with the text entered (stripped, never empty), or None."""

    def __init__(
        self, title: str, message: str = "", *, value: str = "", placeholder: str = "", confirm: str = "OK"
    ) -> None:
        super().__init__()
        self.title_text = title
        self.message = message
        self.value = value
        self.placeholder = placeholder
        self.confirm_label = confirm

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -input"):
            yield Static(Content(self.title_text), classes="dialog-title")
            if self.message:
                yield Static(Content(self.message), classes="dialog-body")
            yield Input(self.value, placeholder=self.placeholder, id="dialog-input")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.confirm_label, id="confirm", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#dialog-input", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "confirm":
            self._submit()
        else:
            self.dismiss(None)

    def _submit(self) -> None:
        text = self.query_one("#dialog-input", Input).value.strip()
        if not text:
            self.notify("Type something first, or press Esc to cancel", severity="warning")
            return
        self.dismiss(text)


@dataclass(frozen=True)
class ImportRequest:
    path: str
    link: bool


class ImportDialog(Dialog[ImportRequest]):
    """A path to a .gguf file or a model folder, and whether to link to it instead of copying."""

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -input"):
            yield Static("Import a model", classes="dialog-title")
            yield Static(
                "A .gguf file, or a folder with config.json, a tokenizer and .safetensors weights.",
                classes="dialog-body",
            )
            yield Input(placeholder="~/Downloads/model.gguf", id="dialog-input")
            yield Checkbox("Link to the files instead of copying them", id="import-link")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Import", id="confirm", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#dialog-input", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "confirm":
            self._submit()
        else:
            self.dismiss(None)

    def _submit(self) -> None:
        path = self.query_one("#dialog-input", Input).value.strip()
        if not path:
            self.notify("Type the path of a .gguf file or a model folder", severity="warning")
            return
        self.dismiss(ImportRequest(path, self.query_one("#import-link", Checkbox).value))
