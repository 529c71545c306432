"""A raw HTTP server on 127.0.0.1 that answers each request with a script: bytes, pauses, a cut connection.

For the failures a real engine will not produce on demand (a 429 with Retry-After, a stream cut in the middle,
malformed events, a silent server, a redirect). It records every request (method, path, headers, JSON body),
so tests can check what was sent and to whom.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


Step = bytes | float | None
"""Bytes to send, seconds to wait, or None to cut the connection (no chunked terminator)."""

Script = Callable[[Seen], Iterable[Step]]


def response(status: int, body: Any = None, *, headers: dict[str, str] | None = None) -> list[Step]:
    """A whole JSON (or text) answer with a Content-Length."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    lines = [
        f"HTTP/1.1 {status} X",
        f"Content-Length: {len(data)}",
        "Content-Type: application/json",
        "Connection: close",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return [("\r\n".join(lines) + "\r\n\r\n").encode() + data]


def chunked_head(content_type: str = "text/event-stream") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


END = b"0\r\n\r\n"


def sse(obj: Any) -> bytes:
    return chunk(b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n")


def delta(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


MODELS = {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "vllm", "max_model_len": 4096}]}


@dataclass
class ScriptedServer:
    script: Script
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                reader = sock.makefile("rb")
                line = reader.readline().decode()
                if not line:
                    return
                method, path, _ = line.split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    header = reader.readline().decode().strip()
                    if not header:
                        break
                    key, _, value = header.partition(":")
                    headers[key.strip().lower()] = value.strip()
                raw = reader.read(int(headers.get("content-length", "0") or 0))
                seen = Seen(method, path, headers, json.loads(raw) if raw else None)
                outer.seen.append(seen)
                try:
                    for step in outer.script(seen):
                        if step is None:
                            sock.shutdown(socket.SHUT_RDWR)
                            return
                        if isinstance(step, float):
                            time.sleep(step)
                            continue
                        sock.sendall(step)
                except OSError:
                    return

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
