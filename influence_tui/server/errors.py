"""Errors in the two shapes clients expect, decided before any stream starts.

OpenAI clients read ``{"error": {"message", "type", "param", "code"}}``; Ollama clients read
``{"error": "..."}``. Routes raise :class:`APIError`; the app's handlers turn it (and unknown paths, and bugs)
into the shape of the API the path belongs to: ``/api/...`` and ``/`` are Ollama's, everything else OpenAI's.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from influence_tui.core.errors import InfluenceError, ModelNotFoundError, RemoteError

log = logging.getLogger("influence.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "unavailable_error",
    504: "upstream_error",
}


class APIError(Exception):
    """An error to answer with: an HTTP status, a message a user can act on, and the OpenAI ``param``/``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")

    def openai_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def ollama_body(self) -> dict[str, Any]:
        return {"error": self.message}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


#: A remote engine's failure as the gateway's answer: the remote's own 404/429/503 and refusals pass on; a remote
#: that cannot be reached, refuses our key or breaks is a 502 (the client did nothing wrong), a silent one a 504.
_REMOTE_STATUS = {"not_found": 404, "refused": 400, "timeout": 504}


def from_remote_error(exc: RemoteError) -> APIError:
    if exc.reason == "busy" and exc.status in (429, 503):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after is not None else None
        return APIError(exc.status, str(exc), code="upstream_busy", headers=headers)
    status = _REMOTE_STATUS.get(exc.reason, 502)
    code = "model_not_found" if status == 404 else f"upstream_{exc.reason}"
    return APIError(status, str(exc), param="model" if status == 404 else None, code=code)


def from_influence_error(exc: InfluenceError) -> APIError:
    """A core error as an answer: an unknown model is a 404, a remote engine's failure what it says, anything
    else the client caused a 400."""
    if isinstance(exc, RemoteError):
        return from_remote_error(exc)
    if isinstance(exc, ModelNotFoundError):
        return APIError(404, str(exc), param="model", code="model_not_found")
    return APIError(400, str(exc))


def from_validation_error(exc: ValidationError) -> APIError:
    """The first problem pydantic found, named by its field (``messages.0.role: Field required``)."""
    errors = exc.errors(include_url=False)
    if not errors:
        return bad_request("the request body is not valid")
    first = errors[0]
    if first["type"] == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return bad_request(f"the request body is not valid JSON{': ' + str(detail) if detail else ''}")
    # Union members add their type name to the location (``stop.str``); the field is what a user can fix.
    loc = [str(part) for part in first["loc"] if not _is_union_tag(part)]
    param = ".".join(loc) or None
    if first["type"] == "model_type" and not loc:
        return bad_request("the request body must be a JSON object")
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return bad_request(message, param=param)


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool", "list", "dict") or part.startswith(("list[", "dict[")) or "[" in part
    )


def is_ollama_path(path: str) -> bool:
    return path in ("/", "/api") or path.startswith("/api/")


def error_response(path: str, error: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    body = error.ollama_body() if is_ollama_path(path) else error.openai_body()
    return JSONResponse(body, status_code=error.status, headers={**(error.headers or {}), **(headers or {})} or None)


# ------------------------------------------------------------------------------------------ handlers


async def handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(request.url.path, exc)


async def handle_influence_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InfluenceError)
    return error_response(request.url.path, from_influence_error(exc))


async def handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    path = request.url.path
    if exc.status_code == 404:
        message = f"no route {request.method} {path}"
        code: str | None = "not_found"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {path}"
        code = "method_not_allowed"
    else:
        message, code = str(exc.detail), None
    headers = dict(exc.headers) if exc.headers else None
    return error_response(path, APIError(exc.status_code, message, code=code), headers)


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("error answering %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request.url.path, APIError(500, f"internal error: {exc.__class__.__name__}: {exc}"))
