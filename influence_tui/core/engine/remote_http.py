"""HTTP to remote engines: OpenAI's server-sent events and Ollama's NDJSON, each failure an actionable RemoteError.

:class:`RemoteClient` talks to one :class:`~influence_tui.core.remotes.Remote` with explicit connect and read
timeouts (the read timeout bounds the wait for the first token and between two chunks: a silent server is a
timeout, never a hang). Redirects are not followed, so the key goes to the remote's own URL only, and any
echo of the key in an error the remote sends back is blanked. The stream parsers are small and strict: a
malformed event, an ``error`` event, a cut connection or a stream that ends without a finish reason each
raise a :class:`~influence_tui.core.errors.RemoteError`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from influence_tui import __version__
from influence_tui.core.engine.remote_wire import (
    Chunk,
    ModelDetails,
    as_int,
    context_of,
    json_objects,
    ollama_body,
    openai_body,
    protocol_error,
    sse_events,
    status_error,
    stream_failure,
    transport_error,
    unfinished,
)
from influence_tui.core.errors import RemoteError
from influence_tui.core.remotes import Remote, RemoteKind, RemoteModel
from influence_tui.core.types import SamplingParams

_NS = 1_000_000_000


@dataclass(frozen=True)
class OpenReply:
    """A reply the remote has started to send: its chunks, and a way to cut the connection from another thread
    (a reader blocked waiting for the next chunk then wakes at once)."""

    chunks: Iterator[Chunk]
    response: httpx.Response

    def abort(self) -> None:
        stream = self.response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# ------------------------------------------------------------------------------------------ the client


class RemoteClient:
    """Requests to one remote. Thread-safe: one client serves every request to its remote."""

    def __init__(
        self,
        remote: Remote,
        *,
        connect_timeout_s: float | None = None,
        read_timeout_s: float | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.remote = remote
        self.connect_timeout_s = connect_timeout_s if connect_timeout_s is not None else remote.connect_timeout_s
        self.read_timeout_s = read_timeout_s if read_timeout_s is not None else remote.read_timeout_s
        self._environ = environ
        self._client: httpx.Client | None = None
        self._secret: str | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                headers = {"User-Agent": f"influence/{__version__}", "Accept": "application/json"}
                key = self.remote.api_key(self._environ)
                if key:
                    headers["Authorization"] = f"Bearer {key}"
                    self._secret = key
                timeout = httpx.Timeout(
                    connect=self.connect_timeout_s,
                    read=self.read_timeout_s,
                    write=self.read_timeout_s,
                    pool=self.connect_timeout_s,
                )
                self._client = httpx.Client(timeout=timeout, headers=headers, follow_redirects=False)
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def transport_error(self, exc: httpx.HTTPError, *, streaming: bool = False) -> RemoteError:
        """A failure below HTTP (connect, TLS, timeout, a cut connection), worded for the user."""
        return transport_error(
            self.remote,
            exc,
            connect_s=self.connect_timeout_s,
            read_s=self.read_timeout_s,
            redact=self._redact,
            streaming=streaming,
        )

    def status_error(
        self, response: httpx.Response, *, model_id: str | None = None, listing: bool = False
    ) -> RemoteError:
        """An HTTP error answer, worded with the remote's own message (the key blanked)."""
        return status_error(self.remote, response, redact=self._redact, model_id=model_id, listing=listing)

    def _protocol(self, problem: str) -> RemoteError:
        return protocol_error(self.remote, problem, self._redact)

    # -- plain requests

    def get_json(
        self, url: str, *, body: Mapping[str, Any] | None = None, model_id: str | None = None, listing: bool = False
    ) -> Any:
        """GET ``url`` (POST when a ``body`` is given) and return its JSON."""
        try:
            response = self._http().get(url) if body is None else self._http().post(url, json=dict(body))
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None
        if response.status_code >= 300:
            raise self.status_error(response, model_id=model_id, listing=listing)
        try:
            return response.json()
        except ValueError:
            raise self._protocol(f"{url} did not answer JSON: {response.text[:80]!r}") from None

    def list_models(self) -> list[RemoteModel]:
        remote = self.remote
        if remote.kind == "ollama":
            data = self.get_json(f"{remote.root}/api/tags", listing=True)
            items = data.get("models") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise self._protocol('/api/tags has no "models" list')
            models = []
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("name") or item.get("model"), str):
                    details: dict[str, Any] = item["details"] if isinstance(item.get("details"), dict) else {}
                    models.append(
                        RemoteModel(
                            remote,
                            str(item.get("name") or item.get("model")),
                            size_bytes=as_int(item.get("size")) or 0,
                            family=details.get("family") or None,
                            parameters=details.get("parameter_size") or None,
                            quantization=details.get("quantization_level") or None,
                        )
                    )
            return models
        data = self.get_json(f"{remote.api_base}/models", listing=True)
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise self._protocol('/models has no "data" list')
        return [
            RemoteModel(remote, item["id"], context_length=context_of(item), owned_by=item.get("owned_by") or None)
            for item in items
            if isinstance(item, dict) and isinstance(item.get("id"), str)
        ]

    def model_details(self, model_id: str) -> ModelDetails:
        """What the remote says of ``model_id``; a ``not_found`` :class:`RemoteError` when it does not serve it."""
        remote = self.remote
        if remote.kind == "ollama":
            data = self.get_json(f"{remote.root}/api/show", body={"model": model_id}, model_id=model_id)
            info = data.get("model_info") if isinstance(data, dict) else None
            context = None
            if isinstance(info, dict):
                context = next(
                    (as_int(v) for k, v in info.items() if k.endswith(".context_length") and as_int(v)), None
                )
            num_ctx = None
            for line in str(data.get("parameters") or "").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == "num_ctx" and parts[1].isdigit():
                    num_ctx = int(parts[1])
            details: dict[str, Any] = data["details"] if isinstance(data.get("details"), dict) else {}
            return ModelDetails(context, quantization=details.get("quantization_level") or None, num_ctx=num_ctx)
        models = self.list_models()
        found = next((m for m in models if m.model_id == model_id), None)
        if found is None:
            names = ", ".join(m.model_id for m in models[:8]) or "none"
            raise RemoteError(
                f"{remote.name} has no model {model_id!r}; it serves: {names}",
                hint="`influence list --remote` shows every remote model",
                reason="not_found",
                status=404,
            )
        context = found.context_length
        if context is None and found.owned_by == "llamacpp":  # llama.cpp's own server: /props has n_ctx
            try:
                props = self.get_json(f"{remote.root}/props")
                settings = props.get("default_generation_settings", {}) if isinstance(props, dict) else {}
                context = as_int(settings.get("n_ctx")) or as_int(props.get("n_ctx"))
            except RemoteError:
                context = None
        return ModelDetails(context, owned_by=found.owned_by)

    # -- streams

    @contextmanager
    def _open(self, url: str, body: Mapping[str, Any], model_id: str) -> Iterator[httpx.Response]:
        try:
            with self._http().stream("POST", url, json=dict(body)) as response:
                if response.status_code >= 300:
                    response.read()
                    raise self.status_error(response, model_id=model_id)
                yield response
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None

    @contextmanager
    def stream_chat(
        self,
        model_id: str,
        messages: Sequence[Mapping[str, str]],
        params: SamplingParams,
        *,
        extras: bool,
        num_ctx: int | None,
    ) -> Iterator[OpenReply]:
        """Open a streamed chat reply: entering waits for the remote's answer (HTTP errors are raised here),
        then the chunks are read one by one. Leaving the block closes the connection (the remote stops)."""
        if self.remote.kind == "ollama":
            body = ollama_body(self.remote, model_id, params, num_ctx) | {"messages": list(messages)}
            with self._open(f"{self.remote.root}/api/chat", body, model_id) as response:
                yield OpenReply(self._ollama_chunks(response, "message"), response)
        else:
            body = openai_body(model_id, params, extras) | {"messages": list(messages)}
            with self._open(f"{self.remote.api_base}/chat/completions", body, model_id) as response:
                yield OpenReply(self._openai_chunks(response, "delta"), response)

    @contextmanager
    def stream_completion(
        self, model_id: str, prompt: str, params: SamplingParams, *, extras: bool, num_ctx: int | None
    ) -> Iterator[OpenReply]:
        """As :meth:`stream_chat` for a raw prompt continued as is (no chat template)."""
        if self.remote.kind == "ollama":
            body = ollama_body(self.remote, model_id, params, num_ctx) | {"prompt": prompt, "raw": True}
            with self._open(f"{self.remote.root}/api/generate", body, model_id) as response:
                yield OpenReply(self._ollama_chunks(response, "response"), response)
        else:
            body = openai_body(model_id, params, extras) | {"prompt": prompt}
            with self._open(f"{self.remote.api_base}/completions", body, model_id) as response:
                yield OpenReply(self._openai_chunks(response, "text"), response)

    def _openai_chunks(self, response: httpx.Response, field: str) -> Iterator[Chunk]:
        finish: str | None = None
        try:
            for data in sse_events(response.iter_lines()):
                if data.strip() == "[DONE]":
                    break
                try:
                    objects = json_objects(data, "an event")
                except ValueError as exc:
                    raise self._protocol(str(exc)) from None
                for obj in objects:
                    if obj.get("error"):
                        raise stream_failure(self.remote, obj["error"], self._redact)
                    chunk = self._openai_chunk(obj, field)
                    finish = chunk.finish_reason or finish
                    yield chunk
        except httpx.HTTPError as exc:
            raise self.transport_error(exc, streaming=True) from None
        if finish is None:
            raise unfinished(self.remote)

    def _openai_chunk(self, obj: dict[str, Any], field: str) -> Chunk:
        choices = obj.get("choices")
        if not isinstance(choices, list):
            raise self._protocol(f'an event has no "choices" list: {json.dumps(obj)[:80]}')
        text, finish = "", None
        for choice in choices:
            if not isinstance(choice, dict):
                raise self._protocol("a choice is not an object")
            piece = choice.get("delta", {}).get("content") if field == "delta" else choice.get("text")
            if isinstance(piece, str):
                text += piece
            elif piece is not None:
                raise self._protocol(f"{field} content is not text")
            finish = choice.get("finish_reason") or finish
        usage: dict[str, Any] = obj["usage"] if isinstance(obj.get("usage"), dict) else {}
        timings: dict[str, Any] = obj["timings"] if isinstance(obj.get("timings"), dict) else {}
        rate = timings.get("predicted_per_second")
        return Chunk(
            text,
            finish,
            prompt_tokens=as_int(usage.get("prompt_tokens")),
            completion_tokens=as_int(usage.get("completion_tokens")),
            decode_tokens_per_s=float(rate) if isinstance(rate, (int, float)) and rate > 0 else None,
        )

    def _ollama_chunks(self, response: httpx.Response, field: str) -> Iterator[Chunk]:
        done = False
        try:
            for line in response.iter_lines():
                if not line.strip():
                    continue
                try:
                    objects = json_objects(line, "a line")
                except ValueError as exc:
                    raise self._protocol(str(exc)) from None
                for obj in objects:
                    if obj.get("error"):
                        raise stream_failure(self.remote, obj["error"], self._redact)
                    raw = obj.get("message", {}).get("content", "") if field == "message" else obj.get("response", "")
                    if not isinstance(raw, str):
                        raise self._protocol(f"{field} is not text")
                    if not obj.get("done"):
                        yield Chunk(raw)
                        continue
                    done = True
                    evals, duration = as_int(obj.get("eval_count")), as_int(obj.get("eval_duration"))
                    yield Chunk(
                        raw,
                        str(obj.get("done_reason") or "stop"),
                        prompt_tokens=as_int(obj.get("prompt_eval_count")),
                        completion_tokens=evals,
                        decode_tokens_per_s=evals * _NS / duration if evals and duration else None,
                    )
                if done:
                    return
        except httpx.HTTPError as exc:
            raise self.transport_error(exc, streaming=True) from None
        if not done:
            raise unfinished(self.remote)


# ------------------------------------------------------------------------------------------ kind detection


def detect_kind(remote: Remote) -> RemoteKind:
    """``ollama`` when ``/api/tags`` answers, ``openai`` when ``/v1/models`` does; a :class:`RemoteError`
    saying what was tried otherwise (a refused key is said as such)."""
    from dataclasses import replace

    failures: list[RemoteError] = []
    kinds: tuple[RemoteKind, ...] = ("ollama", "openai")
    for kind in kinds:
        client = RemoteClient(replace(remote, kind=kind))
        try:
            client.list_models()
            return kind
        except RemoteError as exc:
            if exc.reason in ("unreachable", "tls", "timeout", "auth", "config"):
                raise
            failures.append(exc)
        finally:
            client.close()
    raise RemoteError(
        f"{remote.url} answers neither /api/tags (Ollama) nor /v1/models (OpenAI): {failures[-1].message}",
        hint="give the URL of the API (vLLM: http://HOST:8000/v1) or --kind openai|ollama",
        reason="not_found",
    )
