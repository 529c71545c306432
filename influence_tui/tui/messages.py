"""Messages that cross widget or screen boundaries. Small dataclasses: a thread worker builds one and posts it.

Attributes go down, messages come up: a screen asks the app for something by posting one of these; the app's
engine worker answers with :class:`ModelLoaded` or :class:`ModelLoadFailed`, and a chat worker reports a reply's
progress with the ``Reply*`` messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from influence_tui.core.remotes import RemoteModel
from influence_tui.core.sessions import PromptPlan
from influence_tui.core.types import GenerationStats, LoadedModelInfo, LocalModel


@dataclass
class ChatWithModel(Message):
    """Load this model and switch to the chat screen (from the library, the model picker, a download)."""

    model: LocalModel | RemoteModel


@dataclass
class ModelLoading(Message):
    """The engine started loading a model (the first load also starts the engine and imports torch), or
    connecting to a remote model's server."""

    model: LocalModel | RemoteModel


@dataclass
class ModelLoaded(Message):
    model: LocalModel | RemoteModel
    info: LoadedModelInfo


@dataclass
class ModelLoadFailed(Message):
    model: LocalModel | RemoteModel | None
    """None when no model could even be chosen (nothing configured and no demo model)."""
    error: str
    """What went wrong and what to do next, one line."""


# ------------------------------------------------------------------------------------------ a reply in progress


@dataclass
class ReplyStarted(Message):
    """The prompt is built and queued; ``plan`` says what was left out to fit the context."""

    reply_id: int
    plan: PromptPlan


@dataclass
class ReplyChunk(Message):
    """More text of the reply (several tokens when they come faster than the screen refreshes)."""

    reply_id: int
    text: str


@dataclass
class ReplyFinished(Message):
    """The stream ended: ``stats`` has the figures (finish reason ``cancelled`` when stopped)."""

    reply_id: int
    stats: GenerationStats | None


@dataclass
class ReplyFailed(Message):
    reply_id: int
    error: str
    expected: bool = True
    """False for a bug (the traceback went to the log)."""
    interrupted: bool = False
    """The reply had started when the stream broke (a remote cut off): its text is kept, marked interrupted."""
