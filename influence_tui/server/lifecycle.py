"""Shutting the server down gracefully: no new requests (503), a grace period for those running, then "abort".

The first SIGTERM or Ctrl+C (or ``influence serve --stop``, which sends SIGTERM) sets the app's
:attr:`~influence_tui.server.state.ServerState.stopping`: /health answers ``stopping`` (503) and every new
request but /health and /metrics gets a 503 while the listening socket stays open (a client sees why, not a
refused connection). The requests already running or waiting go on for ``grace_s`` seconds; whatever is left
then is cancelled on the engine, and its answer ends with ``finish_reason`` ``"abort"`` (OpenAI, the last
chunk of a stream too) or ``done_reason`` ``"abort"`` (Ollama). Only then is uvicorn told to exit: it closes
the socket, waits for the last answers to be written (``timeout_graceful_shutdown``) and runs the app's
lifespan shutdown. A second signal skips what is left of the grace period.

uvicorn only listens to signals when it runs on the main thread; elsewhere (the tests) call
:meth:`GracefulServer.handle_exit` as the signal would.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from influence_tui.server.errors import APIError, error_response
from influence_tui.server.state import SHUTTING_DOWN

if TYPE_CHECKING:
    from influence_tui.core.engine.runner import EngineRunner
    from influence_tui.server.state import ServerState

log = logging.getLogger("influence.server")

#: What a stopping server still answers: its state, for load balancers and `influence ps`.
STILL_OPEN = frozenset({"/health", "/metrics"})

ABORT_WAIT_S = 30.0
"""How long cancelled requests may take to leave the engine (each leaves at its next step)."""


def serving_runners(state: ServerState) -> list[EngineRunner]:
    """The runners of every model the app serves: its pool's, or its one runner where there is no pool."""
    pool: Any = getattr(state, "pool", None)
    if pool is not None and hasattr(pool, "entries"):
        return [entry.runner for entry in pool.entries()]
    return [state.runner]


def busy(runners: Sequence[EngineRunner]) -> int:
    """Requests running or waiting on ``runners``."""
    total = 0
    for runner in runners:
        report = runner.load_report()
        total += report["running"] + report["waiting"]
    return total


def drain(
    runners: Callable[[], Sequence[EngineRunner]],
    grace_s: float,
    *,
    skip: threading.Event | None = None,
    poll_s: float = 0.05,
) -> int:
    """Wait up to ``grace_s`` seconds (less if ``skip`` is set) for the requests on ``runners()`` to finish,
    then cancel the rest and wait for them to leave. Returns how many were cancelled."""
    deadline = time.monotonic() + max(0.0, grace_s)
    while busy(runners()) and time.monotonic() < deadline and not (skip is not None and skip.is_set()):
        time.sleep(poll_s)
    cancelled = sum(runner.cancel_all() for runner in runners())
    if cancelled:
        log.info("grace period over: %d request(s) aborted", cancelled)
    deadline = time.monotonic() + ABORT_WAIT_S
    while busy(runners()) and time.monotonic() < deadline:
        time.sleep(poll_s)
    return cancelled


class StoppingMiddleware:
    """While the server stops, a new request (but /health and /metrics) is a 503 in its API's error shape."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._state.stopping or scope["path"] in STILL_OPEN:
            await self.app(scope, receive, send)
            return
        error = APIError(503, SHUTTING_DOWN, code="server_shutting_down")
        response = error_response(scope["path"], error, headers={"Connection": "close"})
        await response(scope, receive, send)


class GracefulServer(uvicorn.Server):
    """uvicorn's server whose first exit signal drains the engine (see the module docstring) before uvicorn's
    own shutdown begins. ``runners`` gives the runners to drain (default: :func:`serving_runners`)."""

    def __init__(
        self,
        config: uvicorn.Config,
        state: ServerState,
        *,
        grace_s: float,
        runners: Callable[[], Sequence[EngineRunner]] | None = None,
    ) -> None:
        super().__init__(config)
        self.state = state
        self.grace_s = grace_s
        self._runners = runners or (lambda: serving_runners(state))
        self._draining: threading.Thread | None = None
        self._skip = threading.Event()
        self.aborted = 0
        """Requests the grace period did not see finish (set once the drain is over)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """A signal (or a caller acting as one): the first starts the drain, the next one ends its grace now."""
        if self._draining is None:
            self.begin_shutdown(sig)
        elif self.should_exit:  # drained already: uvicorn's own handling (a second Ctrl+C forces the exit)
            super().handle_exit(sig, frame)
        else:
            self._skip.set()

    def begin_shutdown(self, sig: int) -> threading.Thread:
        """Stop taking requests and drain on a thread of its own (a signal handler must not block); uvicorn
        exits once it is done."""
        self.state.stopping = True
        log.info("shutting down: no new requests; %.0f s for the running ones to finish", self.grace_s)

        def run() -> None:
            try:
                self.aborted = drain(self._runners, self.grace_s, skip=self._skip)
            finally:
                super(GracefulServer, self).handle_exit(sig, None)

        self._draining = threading.Thread(target=run, name="influence-server-drain", daemon=True)
        self._draining.start()
        return self._draining
