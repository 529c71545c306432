"""The multi-line prompt: Enter sends, Shift+Enter or Ctrl+J starts a new line, slash commands complete."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual.actions import SkipAction
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import TextArea

from influence_tui.core.slash import COMMANDS

COMMAND_NAMES: tuple[str, ...] = tuple(sorted(spec.name for spec in COMMANDS))
"""The slash commands, as completion offers them (aliases are accepted but not offered)."""


def command_matches(text: str) -> list[str]:
    """The command names ``text`` could be the start of (``"/s"`` -> ``["save", "sessions", ...]``).

    Empty unless ``text`` is a ``/`` and a partial command name with nothing after it.
    """
    if not text.startswith("/") or any(c.isspace() for c in text):
        return []
    prefix = text[1:].lower()
    return [name for name in COMMAND_NAMES if name.startswith(prefix)]


def complete_command(text: str) -> str | None:
    """``text`` with its command name completed as far as it is unambiguous; None when there is nothing to add.

    A unique match is completed with a trailing space, ready for the argument.
    """
    matches = command_matches(text)
    if not matches:
        return None
    completed = f"/{matches[0]} " if len(matches) == 1 else "/" + _common_prefix(matches)
    return completed if len(completed) > len(text) else None


def _common_prefix(words: list[str]) -> str:
    first, last = min(words), max(words)
    size = 0
    while size < len(first) and first[size] == last[size]:
        size += 1
    return first[:size]


class PromptInput(TextArea):
    """A TextArea that sends on Enter. Posts :class:`PromptInput.Submitted`; the screen decides what it means."""

    BINDINGS: ClassVar[list[BindingType]] = [
        # Priority: TextArea would insert a newline for Enter before a normal binding is looked at.
        Binding("enter", "submit", "Send", id="prompt.send", priority=True, show=False),
        Binding("shift+enter,ctrl+j", "newline", "New line", id="prompt.newline", priority=True, show=False),
        Binding("tab", "complete", "Complete", id="prompt.complete", show=False),
    ]

    @dataclass
    class Submitted(Message):
        prompt: PromptInput
        text: str

        @property
        def control(self) -> PromptInput:
            return self.prompt

    def __init__(self, *, placeholder: str = "", id: str | None = None) -> None:
        super().__init__(
            id=id,
            soft_wrap=True,
            show_line_numbers=False,
            tab_behavior="focus",
            highlight_cursor_line=False,
            placeholder=placeholder,
        )

    def action_submit(self) -> None:
        if self.text.strip():
            self.post_message(self.Submitted(self, self.text))

    def action_newline(self) -> None:
        self.insert("\n")

    def action_complete(self) -> None:
        completed = complete_command(self.text)
        if completed is None:
            raise SkipAction()  # Tab moves the focus on, as everywhere else
        self.load_text(completed)
        self.move_cursor(self.document.end)

    def update_suggestion(self) -> None:
        """Grey ghost text completing a command name (Right or Tab takes it)."""
        matches = command_matches(self.text)
        self.suggestion = matches[0][len(self.text) - 1 :] if matches else ""

    def set_text(self, text: str) -> None:
        """Replace the text and put the cursor at its end."""
        self.load_text(text)
        self.move_cursor(self.document.end)
