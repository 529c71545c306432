"""The scrolling conversation: message views and notes, kept at the bottom only while the user is there."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from textual.containers import VerticalScroll
from textual.widget import Widget

from influence_tui.core.types import ChatMessage
from influence_tui.tui.widgets.message_view import MessageView, NoteView


class ChatLog(VerticalScroll):
    """Message views in order. Anchored: new text keeps the view at the bottom until the user scrolls up, and
    following resumes when they scroll back down."""

    def on_mount(self) -> None:
        self.anchor()

    @property
    def message_views(self) -> list[MessageView]:
        return list(self.query_children(MessageView))

    @property
    def last_reply(self) -> MessageView | None:
        replies = [view for view in self.message_views if view.role == "assistant"]
        return replies[-1] if replies else None

    async def add(self, *widgets: Widget) -> None:
        await self.mount_all(widgets)

    async def add_note(self, text: str, *, kind: str = "info") -> NoteView:
        note = NoteView(text, kind=kind)
        await self.mount(note)
        return note

    async def show_messages(self, messages: Sequence[ChatMessage], *, assistant_name: str) -> None:
        """Replace everything shown with ``messages`` (after a load, /clear, /undo or /retry)."""
        await self.remove_children()
        views = [
            MessageView(m.role, m.content, author=_author(m.role, assistant_name), index=i)
            for i, m in enumerate(messages)
            if m.role in ("user", "assistant")
        ]
        await self.mount_all(views)
        self.anchor()

    def mark_left_out(self, indexes: Iterable[int]) -> None:
        """Dim the messages the last prompt had to leave out to fit the model's context."""
        left_out = set(indexes)
        for view in self.message_views:
            view.set_class(view.index is not None and view.index in left_out, "-left-out")


def _author(role: str, assistant_name: str) -> str:
    return "You" if role == "user" else assistant_name
