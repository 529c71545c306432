"""One message in the chat log: who wrote it, its text as Markdown, and for replies a line of figures.

Model text only ever reaches a :class:`~textual.widgets.Markdown` widget or a :class:`~textual.content.Content`
built from plain text, never Rich or Textual markup: a reply containing ``[bold]`` shows ``[bold]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from markdown_it import MarkdownIt
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Markdown, Static

from influence_tui.core.types import GenerationStats, Role


@dataclass(frozen=True)
class CodeBlock:
    language: str
    code: str

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.code.splitlines() if line.strip()), "")


def code_blocks(markdown: str) -> list[CodeBlock]:
    """The fenced and indented code blocks of a Markdown text, in order."""
    blocks: list[CodeBlock] = []
    for token in MarkdownIt("commonmark").parse(markdown):
        if token.type in ("fence", "code_block"):
            info = token.info.strip().split()
            blocks.append(CodeBlock(info[0] if info else "", token.content))
    return blocks


def stats_line(stats: GenerationStats | None, *, stopped: bool = False) -> str:
    """``42 tokens · 0.12 s to first token · 31.5 tok/s`` (and ``stopped`` or why it ended early)."""
    parts: list[str] = []
    if stats is not None and stats.generated_tokens:
        parts.append(f"{stats.generated_tokens} token{'s' if stats.generated_tokens != 1 else ''}")
        parts.append(f"{stats.time_to_first_token_s:.2f} s to first token")
        if stats.generated_tokens > 1:
            parts.append(f"{stats.decode_tokens_per_s:.1f} tok/s")
    if stopped or (stats is not None and stats.finish_reason == "cancelled"):
        parts.append("stopped")
    elif stats is not None and stats.finish_reason == "length":
        parts.append("cut at max_tokens")
    return " · ".join(parts)


class MessageView(Vertical):
    """A user message or a reply. A reply is streamed into :attr:`body` and marked with CSS classes:
    ``-streaming`` while it comes, ``-stopped`` when the user stopped it, ``-failed`` when it broke off."""

    def __init__(self, role: Role, text: str = "", *, author: str, index: int | None = None) -> None:
        super().__init__(classes=f"message -{role}")
        self.role = role
        self.author = author
        self.index = index
        """Where the message is in the session's messages (None until a reply is recorded)."""
        self._initial_text = text

    def compose(self) -> ComposeResult:
        yield Static(Content(self.author), classes="message-author")
        yield Markdown(self._initial_text or None, classes="message-body")
        yield Static("", classes="message-meta")

    @property
    def body(self) -> Markdown:
        return self.query_one(".message-body", Markdown)

    @property
    def source(self) -> str:
        """The Markdown shown now."""
        return self.body.source

    def show_meta(self, text: str) -> None:
        """The line under a reply (its figures, ``stopped``...); empty hides it."""
        self.query_one(".message-meta", Static).update(Content(text))
        self.set_class(bool(text), "-has-meta")


class NoteView(Static):
    """What a slash command or the app has to say in the log (plain text, kept as written)."""

    def __init__(self, text: str, *, kind: str = "info") -> None:
        super().__init__(Content(text), classes=f"note -{kind}")
        self.text = text
