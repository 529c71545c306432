"""One line of text: a session name to save under, a path to import."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Input, Static

from influence_tui.tui.dialogs.base import Dialog

T = TypeVar("T")


class _LineDialog(Dialog[T]):
    """A title, a message, one input line and OK/Cancel; dismissed with :meth:`result` of the text, or None."""

    empty_hint = "Type something first, or press Esc to cancel"

    def __init__(
        self, title: str, message: str = "", *, value: str = "", placeholder: str = "", confirm: str = "OK"
    ) -> None:
        super().__init__()
        self.title_text = title
        self.message = message
        self.value = value
        self.placeholder = placeholder
        self.confirm_label = confirm

    def extra(self) -> Iterable[Widget]:
        """Widgets between the input and the buttons."""
        return ()

    def result(self, text: str) -> T:
        raise NotImplementedError

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -input"):
            yield Static(Content(self.title_text), classes="dialog-title")
            if self.message:
                yield Static(Content(self.message), classes="dialog-body")
            yield Input(self.value, placeholder=self.placeholder, id="dialog-input")
            yield from self.extra()
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
            self.notify(self.empty_hint, severity="warning")
            return
        self.dismiss(self.result(text))


class TextInputDialog(_LineDialog[str]):
    """Dismissed with the text entered (stripped, never empty), or None."""

    def result(self, text: str) -> str:
        return text


@dataclass(frozen=True)
class ImportRequest:
    path: str
    link: bool


class ImportDialog(_LineDialog[ImportRequest]):
    """A path to a .gguf file or a model folder, and whether to link to it instead of copying."""

    empty_hint = "Type the path of a .gguf file or a model folder"

    def __init__(self) -> None:
        super().__init__(
            "Import a model",
            "A .gguf file, or a folder with config.json, a tokenizer and .safetensors weights.",
            placeholder="~/Downloads/model.gguf",
            confirm="Import",
        )

    def extra(self) -> Iterable[Widget]:
        yield Checkbox("Link to the files instead of copying them", id="import-link")

    def result(self, text: str) -> ImportRequest:
        return ImportRequest(text, self.query_one("#import-link", Checkbox).value)
