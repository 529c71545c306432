"""One message in the chat log: who wrote it, its text as Markdown, and for replies a line of figures.

A long text is shown as several Markdown widgets ("parts") of a few thousand characters each, cut at blank
lines outside code fences (:class:`MarkdownSplitter`). Streaming writes into the last part through its
``Markdown.get_stream()``; a part that is full gets its one final ``update()`` and the next part starts. So
appending, and the full render that ends each part, cost the same for every token however long the reply
gets, and the end of a long reply does not freeze the screen.

Model text only ever reaches a :class:`~textual.widgets.Markdown` widget or a :class:`~textual.content.Content`
built from plain text, never Rich or Textual markup: a reply containing ``[bold]`` shows ``[bold]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from markdown_it import MarkdownIt
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from influence_tui.core.branches import Alternatives
from influence_tui.core.types import GenerationStats, Role

PART_CHARS = 3000
"""A part ends at the first blank line (outside a code fence) after this many characters."""


class MarkdownSplitter:
    """Cuts Markdown into parts of about ``size`` characters, at the same places whether the text comes at once
    or piece by piece. A cut goes after a blank line outside a code fence, before a line that starts at the
    margin (so an indented continuation of a list item stays with its item)."""

    def __init__(self, size: int = PART_CHARS) -> None:
        self.size = size
        self.part = 0
        self._length = 0
        self._line = ""
        self._fence: str | None = None
        self._cut_here = False
        """The last line was blank and the part is full: cut if the next line starts at the margin."""

    def feed(self, text: str) -> list[tuple[int, str]]:
        """``text`` as (part number, piece) pairs, in order."""
        pieces: list[tuple[int, str]] = []
        start = 0
        for i, char in enumerate(text):
            if self._cut_here and char != "\n":
                self._cut_here = False
                if char not in " \t":
                    if i > start:
                        pieces.append((self.part, text[start:i]))
                    start = i
                    self.part += 1
                    self._length = 0
            self._length += 1
            if char != "\n":
                self._line += char
                continue
            line, self._line = self._line.strip(), ""
            if self._fence is None:
                if line.startswith(("```", "~~~")):
                    self._fence = line[:3]
            elif line.startswith(self._fence):
                self._fence = None
            if not line and self._fence is None and self._length >= self.size:
                self._cut_here = True
        if start < len(text):
            pieces.append((self.part, text[start:]))
        return pieces


def split_markdown(text: str, size: int = PART_CHARS) -> list[str]:
    """``text`` in parts, as :class:`MarkdownSplitter` cuts it."""
    parts: list[str] = []
    for number, piece in MarkdownSplitter(size).feed(text):
        if number == len(parts):
            parts.append("")
        parts[number] += piece
    return parts or [""]


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


ReplyState = Literal["", "streaming", "stopped", "failed"]
MessageRequest = Literal["previous", "next", "edit", "regenerate", "up", "down", "leave"]


class MessageView(Vertical):
    """A user message or a reply. A reply is streamed in with :meth:`write` and :meth:`finish`.

    Its :attr:`state` shows as a CSS class (``-streaming``, ``-stopped``, ``-failed``) on the author and
    figures lines only: a class on the message itself would restyle every widget of a long reply. The message
    gets ``-left-out`` when the last prompt had to leave it out.

    A message takes the focus (Ctrl+Up from the prompt, then Up and Down): Left and Right switch between its
    alternatives (``‹ 2/3 ›`` beside the author), ``e`` edits a message of the user's, ``r`` regenerates a
    reply. The view only posts :class:`MessageView.Requested`; the screen changes the conversation.
    """

    can_focus = True

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "request('previous')", "‹ Alternative", id="message.previous"),
        Binding("right", "request('next')", "Alternative ›", id="message.next"),
        Binding("e", "request('edit')", "Edit", id="message.edit"),
        Binding("r", "request('regenerate')", "Regenerate", id="message.regenerate"),
        Binding("up", "request('up')", "Previous message", id="message.up", show=False),
        Binding("down", "request('down')", "Next message", id="message.down", show=False),
        Binding("escape,i", "request('leave')", "Back to the prompt", id="message.leave", show=False),
    ]

    @dataclass
    class Requested(Message):
        """The user asked for something on this message."""

        view: MessageView
        request: MessageRequest

    def __init__(self, role: Role, text: str = "", *, author: str, index: int | None = None) -> None:
        super().__init__(classes=f"message -{role}")
        self.role = role
        self.author = author
        self.alternatives: Alternatives | None = None
        """Where this message stands among its alternatives (None when it has none)."""
        self.index = index
        """Where the message is in the session's messages (None until a reply is recorded)."""
        self._texts = split_markdown(text) if text else [""]
        self._parts = [Markdown(part or None, classes="message-part") for part in self._texts]
        self._splitter: MarkdownSplitter | None = None
        self._stream: MarkdownStream | None = None
        self.state: ReplyState = ""

    def compose(self) -> ComposeResult:
        yield Static(self._author_line(), classes="message-author")
        with Vertical(classes="message-body"):
            yield from self._parts
        yield Static("", classes="message-meta")

    def _author_line(self) -> Content:
        if self.alternatives is None:
            return Content(self.author)
        return Content.assemble(self.author, "  ", Content(self.alternatives.label).stylize("not bold"))

    def set_alternatives(self, alternatives: Alternatives | None) -> None:
        """Show ``‹ 2/3 ›`` beside the author (None or a count of one hides it)."""
        self.alternatives = alternatives if alternatives is not None and alternatives.count > 1 else None
        if self.is_mounted:
            self.query_one(".message-author", Static).update(self._author_line())
        self.set_class(self.alternatives is not None, "-branched")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "request" and parameters:
            request = parameters[0]
            if request in ("previous", "next"):
                return self.alternatives is not None
            if request == "edit":
                return self.role == "user"
            if request == "regenerate":
                return self.role == "assistant"
        return True

    def action_request(self, request: MessageRequest) -> None:
        self.post_message(self.Requested(self, request))

    @property
    def parts(self) -> list[Markdown]:
        return list(self._parts)

    @property
    def source(self) -> str:
        """The Markdown shown now."""
        return "".join(part.source for part in self.parts)

    # -- streaming (a reply)

    async def write(self, text: str) -> None:
        """Add ``text`` to the reply: into the last part's stream, or a new part once that one is full."""
        if self._splitter is None:
            self._splitter = MarkdownSplitter()
        for number, piece in self._splitter.feed(text):
            while number >= len(self._texts):
                await self._next_part()
            self._texts[number] += piece
            if self._stream is None:
                self._stream = Markdown.get_stream(self._parts[-1])
            await self._stream.write(piece)

    async def _next_part(self) -> None:
        await self._end_part()
        part = Markdown(classes="message-part")
        self._texts.append("")
        self._parts.append(part)
        await self.query_one(".message-body", Vertical).mount(part)

    async def _end_part(self) -> None:
        """Stop the last part's stream and give it its one full render."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
            await self._parts[-1].update(self._texts[-1])

    async def finish(self) -> None:
        """The reply is complete (or stopped): the last part gets its final render."""
        await self._end_part()

    def set_state(self, state: ReplyState) -> None:
        self.state = state
        for line in self.query(".message-author, .message-meta"):
            for name in ("streaming", "stopped", "failed"):
                line.set_class(state == name, f"-{name}")

    def show_meta(self, text: str) -> None:
        """The line under a reply (its figures, ``stopped``...); empty hides it."""
        meta = self.query_one(".message-meta", Static)
        meta.update(Content(text))
        meta.set_class(bool(text), "-shown")

    @property
    def meta(self) -> str:
        return str(self.query_one(".message-meta", Static).render()) if self.query(".message-meta.-shown") else ""


class NoteView(Static):
    """What a slash command or the app has to say in the log (plain text, kept as written)."""

    def __init__(self, text: str, *, kind: str = "info") -> None:
        super().__init__(Content(text), classes=f"note -{kind}")
        self.text = text
