"""The remote engines' wire formats: stream parsers, request bodies, and every failure worded as a RemoteError.

Pure functions over data (no connections): :mod:`influence_tui.core.engine.remote_http` does the requests.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from influence_tui.core.errors import RemoteError
from influence_tui.core.remotes import Remote
from influence_tui.core.types import SamplingParams

Redact = Callable[[str], str]
"""Blanks the remote's key in text the remote sent back."""


@dataclass(frozen=True)
class Chunk:
    """One piece of a streamed reply: text, and on the last pieces the finish reason and the remote's figures."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    decode_tokens_per_s: float | None = None
    """When the remote measured it (Ollama's eval timings, llama.cpp's ``timings``)."""


@dataclass(frozen=True)
class ModelDetails:
    """What a remote says about one model when it is chosen."""

    context_length: int | None = None
    owned_by: str | None = None
    quantization: str | None = None
    num_ctx: int | None = None
    """Ollama: the ``num_ctx`` its Modelfile sets."""


# ------------------------------------------------------------------------------------------ stream parsers


def sse_events(lines: Iterable[str]) -> Iterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined with newlines; comments, ``event:``,
    ``id:`` and ``retry:`` skipped). An event not ended by a blank line when the stream stops is dropped, as
    the format says: the stream was cut in the middle of it."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)


def json_objects(data: str, what: str) -> list[dict[str, Any]]:
    """The JSON object(s) of one event or line; several when a server put one per ``data:`` line without the
    blank line between events. A :class:`ValueError` naming ``what`` for anything else."""
    try:
        parsed = [json.loads(data)]
    except json.JSONDecodeError:
        try:
            parsed = [json.loads(part) for part in data.split("\n") if part.strip()]
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what} is not JSON ({exc.msg} at {exc.pos}): {data[:80]!r}") from None
    for item in parsed:
        if not isinstance(item, dict):
            raise ValueError(f"{what} is not a JSON object: {data[:80]!r}")
    return parsed


def error_text(value: object) -> str:
    if isinstance(value, dict):
        for key in ("message", "error", "detail", "msg"):
            if key in value:
                return error_text(value[key])
        return json.dumps(value)[:300]
    if isinstance(value, list) and value:
        return error_text(value[0])
    return str(value)[:300]


def retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import datetime, timezone

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


def is_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError) or "SSL" in str(seen) or "CERTIFICATE" in str(seen).upper():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def as_int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ------------------------------------------------------------------------------------------ errors
def transport_error(
    remote: Remote, exc: httpx.HTTPError, *, connect_s: float, read_s: float, redact: Redact, streaming: bool = False
) -> RemoteError:
    """A failure below HTTP (connect, TLS, timeout, a cut connection) as words a user can act on."""
    where = f"{remote.name} ({remote.host})"
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return RemoteError(
            f"{where} did not accept a connection within {connect_s:g} s",
            hint=f"check that the server runs and the host and port are right (`influence remote test {remote.name}`)",
            reason="timeout",
        )
    if isinstance(exc, httpx.TimeoutException):
        return RemoteError(
            f"{where} sent nothing for {read_s:g} s",
            hint=f"the server may be overloaded; read_timeout in [remotes.{remote.name}] allows longer waits",
            reason="timeout",
        )
    if is_tls(exc):
        return RemoteError(
            f"the TLS connection to {where} failed: {redact(str(exc)) or type(exc).__name__}",
            hint="for a private CA set SSL_CERT_FILE to its certificate; a server without TLS needs an http:// URL",
            reason="tls",
        )
    if isinstance(exc, httpx.ConnectError):
        return RemoteError(
            f"cannot reach {remote.name} at {remote.url}: {redact(str(exc)) or 'connection failed'}",
            hint=f"is the server running and reachable from here? `influence remote test {remote.name}` checks",
            reason="unreachable",
        )
    if streaming and isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.NetworkError):
        return RemoteError(
            f"the connection to {where} broke in the middle of the reply ({redact(str(exc)) or type(exc).__name__})",
            hint="the text so far is kept; /retry asks again",
            reason="interrupted",
        )
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return RemoteError(f"{remote.url} is not a URL Influence can use: {exc}", reason="config")
    return RemoteError(
        f"talking to {where} failed: {redact(str(exc)) or type(exc).__name__}",
        hint=f"`influence remote test {remote.name}` checks the connection",
        reason="unreachable",
    )


def status_error(
    remote: Remote, response: httpx.Response, *, redact: Redact, model_id: str | None = None, listing: bool = False
) -> RemoteError:
    """An HTTP error answer as a :class:`RemoteError` with the remote's own message (key blanked)."""
    status = response.status_code
    try:
        body: object = response.json()
    except ValueError:
        body = response.text
    detail: str = redact(error_text(body).strip()) or str(response.reason_phrase)
    said = f"HTTP {status}: {detail}"
    if 300 <= status < 400:
        target = response.headers.get("location", "elsewhere")
        return RemoteError(
            f"{remote.name} answered with a redirect to {target} ({status}); it is not followed, so the key stays with {remote.host}",
            hint=f"use the URL it redirects to: influence remote add {remote.name} URL --replace",
            reason="refused",
            status=status,
        )
    if status in (401, 403):
        hint = (
            f"check the key in ${remote.api_key_env}"
            if remote.api_key_env
            else f"this remote wants a key: influence remote add {remote.name} {remote.url} --api-key-env VAR --replace"
        )
        return RemoteError(f"{remote.name} refused the API key ({said})", hint=hint, reason="auth", status=status)
    if status == 404:
        if listing or model_id is None:
            path = "/api/tags" if remote.kind == "ollama" else "/v1/models"
            return RemoteError(
                f"{remote.url} has no {remote.kind} API ({said})",
                hint=f"the URL must be where {path} is: vLLM, SGLang and llama.cpp use http://HOST:PORT/v1, Ollama http://HOST:11434",
                reason="not_found",
                status=status,
            )
        return RemoteError(
            f"{remote.name} has no model {model_id!r} ({said})",
            hint="`influence list --remote` shows the models it serves now",
            reason="not_found",
            status=status,
        )
    retry = retry_after(response.headers)
    again = f"try again in {retry:.0f} s" if retry is not None else "try again in a moment"
    if status == 429:
        return RemoteError(
            f"{remote.name} is limiting requests ({said})",
            hint=again,
            reason="busy",
            status=status,
            retry_after=retry,
        )
    if status == 503:
        return RemoteError(
            f"{remote.name} is busy or still loading ({said})",
            hint=again,
            reason="busy",
            status=status,
            retry_after=retry,
        )
    if status >= 500:
        return RemoteError(
            f"{remote.name} failed to answer ({said})",
            hint="its log says why; /retry tries again",
            reason="server",
            status=status,
        )
    fit = "/clear or a shorter message fits a smaller context" if "context" in detail.lower() else None
    return RemoteError(f"{remote.name} refused the request ({said})", hint=fit, reason="refused", status=status)


def protocol_error(remote: Remote, problem: str, redact: Redact) -> RemoteError:
    return RemoteError(
        f"{remote.name} sent a malformed answer: {redact(problem)}",
        hint=f"is {remote.url} an {remote.kind} API? (`influence remote add … --kind openai|ollama`)",
        reason="protocol",
    )


def stream_failure(remote: Remote, error: object, redact: Redact) -> RemoteError:
    return RemoteError(
        f"{remote.name} stopped the reply with an error: {redact(error_text(error))}",
        hint="the text so far is kept; /retry asks again",
        reason="interrupted",
    )


def unfinished(remote: Remote) -> RemoteError:
    return RemoteError(
        f"the reply from {remote.name} ended without a finish reason: the stream was cut",
        hint="the text so far is kept; /retry asks again",
        reason="interrupted",
    )


# ------------------------------------------------------------------------------------------ request bodies


def context_of(item: Mapping[str, Any]) -> int | None:
    """A context length from a ``/v1/models`` entry: vLLM/SGLang ``max_model_len``, others' names for it."""
    for key in ("max_model_len", "context_length", "context_window", "max_context_length"):
        if as_int(item.get(key)):
            return as_int(item.get(key))
    meta = item.get("meta")
    if isinstance(meta, dict):
        return as_int(meta.get("n_ctx")) or as_int(meta.get("n_ctx_train"))
    return None


#: Servers known to take top_k, min_p and a repetition penalty as extra fields (``owned_by`` in /v1/models).
EXTRAS_SERVERS = frozenset({"vllm", "sglang", "llamacpp", "me", "influence", "tgi"})


def takes_extras(remote: Remote, owned_by: str | None) -> bool:
    if remote.kind == "ollama":
        return True
    if remote.extras is not None:
        return remote.extras
    return (owned_by or "").lower() in EXTRAS_SERVERS


def openai_body(model_id: str, params: SamplingParams, extras: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model_id,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    if extras:
        if params.top_k is not None:
            body["top_k"] = params.top_k
        if params.min_p is not None:
            body["min_p"] = params.min_p
        body["repeat_penalty"] = params.repeat_penalty  # llama.cpp's name
        body["repetition_penalty"] = params.repeat_penalty  # vLLM's and SGLang's
    return body


def ollama_body(remote: Remote, model_id: str, params: SamplingParams, num_ctx: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "repeat_penalty": params.repeat_penalty,
        "repeat_last_n": params.repeat_last_n if params.repeat_last_n else -1,
        "num_predict": params.max_tokens,
    }
    for key, value in (("top_k", params.top_k), ("min_p", params.min_p), ("seed", params.seed), ("num_ctx", num_ctx)):
        if value is not None:
            options[key] = value
    if params.stop:
        options["stop"] = list(params.stop)
    body: dict[str, Any] = {"model": model_id, "stream": True, "options": options}
    if remote.keep_alive is not None:
        body["keep_alive"] = remote.keep_alive
    return body
