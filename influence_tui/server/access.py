"""Who may call the server, and one log line per request.

Both are plain ASGI middleware (never ``BaseHTTPMiddleware``), so streamed answers pass through untouched.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from influence_tui.server.errors import APIError, error_response

log = logging.getLogger("influence.server")

#: Paths anyone may call, even with an API key set (load balancers and `influence ps` poll it).
OPEN_PATHS = frozenset({"/health"})

#: Paths polled by machines (load balancers, `influence ps`, Prometheus): logged at debug level only.
QUIET_PATHS = OPEN_PATHS | {"/metrics"}

_USAGE = "influence_usage"


def record_usage(request: Request, prompt_tokens: int, completion_tokens: int = 0) -> None:
    """Token counts for the request's log line (added up over the prompts of one request)."""
    usage = request.scope.get("state", {}).get(_USAGE)
    if isinstance(usage, dict):
        usage["prompt"] = usage.get("prompt", 0) + prompt_tokens
        usage["completion"] = usage.get("completion", 0) + completion_tokens


class ApiKeyMiddleware:
    """With a key set, every route but :data:`OPEN_PATHS` needs ``Authorization: Bearer KEY`` (401 otherwise)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        given = _bearer(scope)
        if given is None:
            error = APIError(
                401,
                "an API key is required: send the header `Authorization: Bearer KEY`",
                code="missing_api_key",
            )
        elif not secrets.compare_digest(given.encode("utf-8"), self._key):
            error = APIError(401, "the API key is not valid", code="invalid_api_key")
        else:
            await self.app(scope, receive, send)
            return
        response = error_response(scope["path"], error, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text: str = bytes(value).decode("latin-1")
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return ""
    return None


class AccessLogMiddleware:
    """``POST /v1/chat/completions 200 1.234s 25+64 tokens`` (prompt + generated) once the answer, streamed or not,
    is complete; ``-`` for the status when the client left before an answer started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        usage: dict[str, Any] = {}
        scope.setdefault("state", {})[_USAGE] = usage
        status = 0

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            elapsed = time.perf_counter() - start
            tokens = f" {usage.get('prompt', 0)}+{usage.get('completion', 0)} tokens" if usage else ""
            path = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
            # Health checks and metrics are polled: only at debug level.
            level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
            log.log(level, "%s %s %s %.3fs%s", scope["method"], path, status or "-", elapsed, tokens)
