"""The conversations pane: every saved chat by recency (title, model, date), and a search box that filters them
by full text with the matches highlighted.

A view only: the chat screen gives it the chats (:meth:`ConversationsPane.show_chats`) and the search results
(:meth:`ConversationsPane.show_hits`), and it posts what the user asks for as messages (open, new, delete,
rename, export, search). Titles and snippets are the user's and the model's text: they go into
:class:`~textual.content.Content` as plain text, never markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from influence_tui.core.export import local_time
from influence_tui.core.store import ChatSummary, SearchHit, Snippet

MATCH_STYLE = "bold underline $text-accent"
"""How a match shows in a snippet (a text style and the theme's accent text colour)."""
DIM_STYLE = "$text-muted"


def chat_label(chat: ChatSummary, *, current: bool = False, width: int | None = None) -> Content:
    """Two lines: the title (● for the chat shown), then the date and the model (cut to ``width``)."""
    title = Content(("● " if current else "") + chat.title).stylize("bold")
    details = Content(" · ".join(part for part in (local_time(chat.updated_at), chat.model or "") if part))
    if width is not None:
        details = details.truncate(width, ellipsis=True)
    return Content.assemble(title, "\n", details.stylize(DIM_STYLE))


def snippet_content(snippet: Snippet) -> Content:
    content = Content(snippet.text)
    for start, end in snippet.spans:
        content = content.stylize(MATCH_STYLE, start, end)
    return content


def hit_label(hit: SearchHit, *, current: bool = False, width: int | None = None) -> Content:
    """The chat's two lines, then the matching text with the matches highlighted."""
    return Content.assemble(chat_label(hit.chat, current=current, width=width), "\n", snippet_content(hit.snippet))


class ChatList(OptionList):
    """The chats; the keys act on the highlighted one."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "new", "New", id="chats.new"),
        Binding("d,delete", "delete", "Delete", id="chats.delete"),
        Binding("r", "rename", "Rename", id="chats.rename"),
        Binding("x", "export", "Export", id="chats.export"),
        Binding("slash,s", "search", "Search", id="chats.search"),
    ]

    @property
    def highlighted_id(self) -> str | None:
        if self.highlighted is None or not self.option_count:
            return None
        return self.get_option_at_index(self.highlighted).id

    def _post(self, kind: type[ConversationsPane.ChatAction]) -> None:
        chat_id = self.highlighted_id
        if chat_id is not None:
            self.post_message(kind(chat_id))

    def action_new(self) -> None:
        self.post_message(ConversationsPane.NewChat())

    def action_delete(self) -> None:
        self._post(ConversationsPane.DeleteChat)

    def action_rename(self) -> None:
        self._post(ConversationsPane.RenameChat)

    def action_export(self) -> None:
        self._post(ConversationsPane.ExportChat)

    def action_search(self) -> None:
        self.screen.query_one("#chat-search", Input).focus()


class ConversationsPane(Vertical):
    """The search box, the chats (or the chats found), and a line of hints."""

    @dataclass
    class ChatAction(Message):
        chat_id: str

    class OpenChat(ChatAction):
        """Show this chat."""

    class DeleteChat(ChatAction):
        """Delete this chat (the screen asks first)."""

    class RenameChat(ChatAction):
        """Ask for a new title for this chat."""

    class ExportChat(ChatAction):
        """Ask where to write this chat as Markdown."""

    @dataclass
    class NewChat(Message):
        """Start a new chat."""

    @dataclass
    class SearchChanged(Message):
        """The search text changed (empty: show every chat)."""

        text: str

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.chats: tuple[ChatSummary, ...] = ()
        self.hits: tuple[SearchHit, ...] | None = None
        """The chats found (None: no search)."""
        self.current: str | None = None
        """The id of the chat shown."""

    def compose(self) -> ComposeResult:
        yield Input(id="chat-search", placeholder="Search all chats")
        yield ChatList(id="chat-list")
        yield Static(id="chats-hint", classes="chats-hint")

    @property
    def search_text(self) -> str:
        return self.query_one("#chat-search", Input).value

    @property
    def chat_list(self) -> ChatList:
        return self.query_one(ChatList)

    # -------------------------------------------------------------- attributes down

    def show_chats(self, chats: Sequence[ChatSummary], current: str | None = None) -> None:
        self.chats = tuple(chats)
        self.current = current
        if self.hits is None:
            width = self._label_width()
            self._fill([(chat.id, chat_label(chat, current=chat.id == current, width=width)) for chat in self.chats])
            self._hint(f"{len(self.chats)} chat{'s' if len(self.chats) != 1 else ''}" if self.chats else "No chats yet")

    def show_hits(self, text: str, hits: Sequence[SearchHit] | None) -> None:
        """The chats found for ``text`` (None: the search was cleared; show every chat)."""
        if text != self.search_text.strip():
            return  # an answer to an older search
        self.hits = tuple(hits) if hits is not None else None
        if self.hits is None:
            self.show_chats(self.chats, self.current)
            return
        width = self._label_width()
        self._fill(
            [(hit.chat.id, hit_label(hit, current=hit.chat.id == self.current, width=width)) for hit in self.hits]
        )
        found = len(self.hits)
        self._hint(f"{found} chat{'s' if found != 1 else ''} found" if found else "Nothing found")

    def mark_current(self, chat_id: str | None) -> None:
        if chat_id != self.current:
            self.current = chat_id
            if self.hits is None:
                self.show_chats(self.chats, chat_id)
            else:
                self.show_hits(self.search_text.strip(), self.hits)

    def _label_width(self) -> int:
        """Columns a line of an option has (the list's width less its scrollbar and padding)."""
        width = self.chat_list.content_region.width or self.content_region.width
        return max(12, width - 2)

    def _fill(self, items: list[tuple[str, Content]]) -> None:
        chat_list = self.chat_list
        keep = chat_list.highlighted_id
        chat_list.clear_options()
        options: list[Option | None] = []
        for chat_id, label in items:
            if options:
                options.append(None)  # a separator line
            options.append(Option(label, id=chat_id))
        chat_list.add_options(options)
        ids = [chat_id for chat_id, _ in items]
        if ids:
            chat_list.highlighted = ids.index(keep) if keep in ids else 0

    def _hint(self, text: str) -> None:
        keys = "Enter opens · n new · d delete · r rename · x export · / search"
        self.query_one("#chats-hint", Static).update(Content(f"{text}\n{keys}"))

    # -------------------------------------------------------------- messages up

    @on(Input.Changed, "#chat-search")
    def _search_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.SearchChanged(event.value.strip()))

    @on(Input.Submitted, "#chat-search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.chat_list.focus()

    @on(OptionList.OptionSelected, "#chat-list")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.OpenChat(event.option.id))

    def on_key(self, event: events.Key) -> None:
        search = self.query_one("#chat-search", Input)
        if not search.has_focus:
            return
        if event.key == "down":
            event.stop()
            self.chat_list.focus()
        elif event.key == "escape" and search.value:
            event.stop()
            search.value = ""
