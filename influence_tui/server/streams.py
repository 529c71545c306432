"""Token streams into the event loop, and back out to clients that may leave at any moment.

A :class:`~influence_tui.core.engine.runner.TokenStream` blocks its reader, so each request reads its stream
on a small thread of its own (:class:`EventPump`) that hands the events to the event loop; the loop only ever
awaits. When the client goes away the request's stop event is set: a running generation ends within a token,
and a request still waiting its turn is skipped, so the next one starts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from influence_tui.core.engine.runner import TokenStream
from influence_tui.core.types import GenerationStats, TokenEvent


@dataclass(frozen=True)
class _PumpFailure:
    """Reading the token stream raised: raised again on the event loop."""

    error: BaseException


class _PumpEnd:
    """The token stream ended without a final event."""


_PUMP_END = _PumpEnd()


class EventPump:
    """Reads one token stream on a thread and queues its events for the event loop.

    Create it on the event loop's thread. Iterate :meth:`events` once; leaving the iteration before the final
    event (an error, a cancelled task) cancels the generation.
    """

    def __init__(self, stream: TokenStream) -> None:
        self.stream = stream
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[TokenEvent | _PumpFailure | _PumpEnd] = asyncio.Queue()
        self._finished = False
        self._thread = threading.Thread(target=self._read, name="influence-stream-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                self._deliver(event)
        except BaseException as exc:
            self._deliver(_PumpFailure(exc))
        else:
            self._deliver(_PUMP_END)

    def _deliver(self, item: TokenEvent | _PumpFailure | _PumpEnd) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is left to read, so stop generating
            self.stream.cancel()

    @property
    def finished(self) -> bool:
        """Whether the final event has been read."""
        return self._finished

    def cancel(self) -> None:
        """Stop the generation unless it already ended (safe to call any number of times)."""
        if not self._finished:
            self.stream.cancel()

    async def events(self) -> AsyncIterator[TokenEvent]:
        """The stream's events, the final one (with the stats) last."""
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, _PumpEnd):
                    return
                if isinstance(item, _PumpFailure):
                    self._finished = True
                    raise item.error
                if item.stats is not None:
                    self._finished = True
                yield item
                if item.stats is not None:
                    return
        finally:
            self.cancel()


@dataclass
class Collected:
    text: str = ""
    stats: GenerationStats | None = None
    token_ids: list[int] = field(default_factory=list)


@contextlib.asynccontextmanager
async def cancel_on_disconnect(request: Request, pumps: Iterable[EventPump]) -> AsyncIterator[None]:
    """While the body runs, a client that disconnects cancels ``pumps`` (for answers that are not streamed)."""
    pumps = list(pumps)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                for pump in pumps:
                    pump.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher


async def collect(pump: EventPump) -> Collected:
    """Read a whole stream: its text, stats and token ids."""
    result = Collected()
    parts: list[str] = []
    async for event in pump.events():
        parts.append(event.text)
        if event.token_id is not None:
            result.token_ids.append(event.token_id)
        if event.stats is not None:
            result.stats = event.stats
    result.text = "".join(parts)
    return result


class EngineStreamingResponse(StreamingResponse):
    """A streaming response that cancels its generations however it ends: finished, client gone (Starlette
    cancels the sending task on ``http.disconnect``), or the server shutting down."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        on_close: Callable[[], None],
        media_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sse(data: Any) -> bytes:
    """One server-sent event: ``data: {json}`` and a blank line."""
    return b"data: " + _dumps(data) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def ndjson(data: Any) -> bytes:
    """One line of newline-delimited JSON."""
    return _dumps(data) + b"\n"
