"""A request's token stream: what the engine thread puts in it and how a front end reads it, from any thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

from influence_tui.core.types import GenerationStats, TokenEvent


@dataclass(frozen=True)
class EngineFailure:
    """An error raised on the engine thread, to be raised again where the stream is read."""

    error: BaseException


class NoFinalEvent:
    """The generator finished without a final event (only a broken generate function does that)."""


NO_FINAL_EVENT = NoFinalEvent()

StreamItem = TokenEvent | EngineFailure | NoFinalEvent


class TokenStream:
    """The events of one request, in order, ending with the event that carries the stats.

    Iterate it from any one thread. An error raised on the engine thread is raised here. :meth:`cancel` (or
    leaving a ``with`` block early) sets the request's stop event: the stream then ends soon with a final
    event whose finish reason is ``"cancelled"``.
    """

    def __init__(self, stop_event: threading.Event) -> None:
        self.stop_event = stop_event
        self._items: queue.SimpleQueue[StreamItem] = queue.SimpleQueue()
        self._finished = False
        self.stats: GenerationStats | None = None
        """Set once the final event has been read."""

    # engine side
    def _put(self, item: StreamItem) -> None:
        self._items.put(item)

    # consumer side
    def __iter__(self) -> Iterator[TokenEvent]:
        return self

    def __next__(self) -> TokenEvent:
        if self._finished:
            raise StopIteration
        item = self._items.get()
        if isinstance(item, EngineFailure):
            self._finished = True
            raise item.error
        if isinstance(item, NoFinalEvent):
            self._finished = True
            raise StopIteration
        if item.stats is not None:
            self._finished = True
            self.stats = item.stats
        return item

    @property
    def finished(self) -> bool:
        return self._finished

    def cancel(self) -> None:
        """Ask the engine to stop this request (a request still waiting its turn never starts)."""
        self.stop_event.set()

    def text(self) -> str:
        """Read the rest of the stream and return its text (stats are in :attr:`stats` afterwards)."""
        return "".join(event.text for event in self)

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._finished:
            self.cancel()
