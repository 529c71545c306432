"""The multi-line prompt: Enter sends, Shift+Enter or Ctrl+J starts a new line, slash commands complete."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
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
    """A TextArea that sends on Enter. Posts :class:`PromptInput.Submitted`; the screen decides what it means.

    Enter, Shift+Enter, Ctrl+J and Tab are handled in the key handler rather than by bindings: keys reach a
    widget in the order they were typed, but a binding would act when the key arrives at the app, before the
    characters typed just ahead of it (a fast typist, a paste, tmux send-keys) are in the text.
    """

    KEYS = {"enter": "submit", "shift+enter": "newline", "ctrl+j": "newline", "tab": "complete"}

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

    async def _on_key(self, event: events.Key) -> None:
        action = self.KEYS.get(event.key)
        if action == "submit":
            self.action_submit()
        elif action == "newline":
            self.action_newline()
        elif action == "complete" and self.complete():
            pass
        else:
            await super()._on_key(event)  # Tab with nothing to complete goes on: it moves the focus
            return
        event.stop()
        event.prevent_default()

    def action_submit(self) -> None:
        """Post the text, even empty (Enter on an empty prompt can mean something to the screen)."""
        self.post_message(self.Submitted(self, self.text))

    def action_newline(self) -> None:
        self.insert("\n")

    def complete(self) -> bool:
        """Complete the command name being typed; False when there is nothing to complete."""
        completed = complete_command(self.text)
        if completed is None:
            return False
        self.set_text(completed)
        return True

    def update_suggestion(self) -> None:
        """Grey ghost text completing a command name (Right or Tab takes it)."""
        matches = command_matches(self.text)
        self.suggestion = matches[0][len(self.text) - 1 :] if matches else ""

    def set_text(self, text: str) -> None:
        """Replace the text and put the cursor at its end."""
        self.load_text(text)
        self.move_cursor(self.document.end)
