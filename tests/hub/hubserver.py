"""A small HuggingFace Hub on 127.0.0.1 for the tests: the parts of the Hub HTTP API that ``huggingface_hub``
(and our downloader) use, serving repos from folders on disk, with fault injection and byte counters.

Implemented, as the Hub answers them:

- ``GET /api/models`` (``search``, ``author``, ``filter`` (repeatable), ``sort`` (descending), ``limit``);
- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (``blobs=true``: siblings with size,
  blobId and LFS sha256), with ``sha``, ``gated``, ``safetensors`` and ``gguf`` summaries;
- ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``recursive``);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: git files answer directly with ETag, X-Repo-Commit and
  Content-Length; LFS files answer 302 to ``/__cdn__/...`` with X-Linked-Size, X-Linked-Etag and X-Repo-Commit,
  and the CDN serves the bytes; both honour ``Range`` (206, 416);
- errors with ``X-Error-Code``: RepoNotFound, RevisionNotFound, EntryNotFound (404), GatedRepo (401 without a
  token, 403 with a token that has no access).

Faults (:class:`Fault`): cut the connection at a byte offset, corrupt the byte at an offset, stall at an
offset, answer an HTTP error; each a given number of times. ``throttle_bps`` slows every transfer.
``bytes_served`` counts the file bytes sent per ``(repo, path)``; ``requests`` logs every file request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".onnx", ".h5", ".msgpack", ".pt", ".pth", ".model")
CHUNK = 16 * 1024


@dataclass
class ServedFile:
    path: str
    disk: Path
    size: int
    sha256: str
    git_oid: str
    lfs: bool

    def sibling(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"rfilename": self.path, "size": self.size, "blobId": self.oid}
        if self.lfs:
            entry["lfs"] = {"size": self.size, "sha256": self.sha256, "pointerSize": 134}
        return entry

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.oid, "size": self.size, "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return entry

    @property
    def oid(self) -> str:
        if not self.lfs:
            return self.git_oid
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()
        return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()


@dataclass
class Revision:
    commit: str
    files: dict[str, ServedFile]


@dataclass
class Repo:
    repo_id: str
    revisions: dict[str, Revision]
    """Branch or tag name -> revision; ``main`` always."""
    gated: str | None = None
    downloads: int = 0
    likes: int = 0
    last_modified: str = "2024-01-01T00:00:00.000Z"
    created_at: str = "2023-01-01T00:00:00.000Z"
    trending_score: int = 0
    tags: list[str] = field(default_factory=list)
    pipeline_tag: str | None = None
    library_name: str | None = None
    safetensors: dict[str, Any] | None = None
    gguf: dict[str, Any] | None = None

    def revision(self, rev: str) -> Revision | None:
        if rev in self.revisions:
            return self.revisions[rev]
        return next((r for r in self.revisions.values() if r.commit == rev), None)

    def card(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "_id": hashlib.md5(self.repo_id.encode()).hexdigest()[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": self.repo_id.split("/")[0],
            "downloads": self.downloads,
            "likes": self.likes,
            "lastModified": self.last_modified,
            "createdAt": self.created_at,
            "trendingScore": self.trending_score,
            "tags": self.tags,
            "private": False,
            "gated": self.gated or False,
        }
        if self.pipeline_tag:
            data["pipeline_tag"] = self.pipeline_tag
        if self.library_name:
            data["library_name"] = self.library_name
        return data


@dataclass
class Fault:
    """One injected failure on the bytes of ``path`` (of ``repo``, or of any repo)."""

    path: str
    kind: str
    """``cut`` (close the connection at byte ``at``), ``corrupt`` (flip the byte at ``at``), ``stall`` (send
    nothing for ``seconds`` at byte ``at``), ``status`` (answer HTTP ``status`` instead of the bytes)."""
    at: int = 0
    times: int = 1
    status: int = 503
    seconds: float = 0.0
    repo: str | None = None
    used: int = 0

    def matches(self, repo: str, path: str) -> bool:
        return self.used < self.times and self.path == path and self.repo in (None, repo)


@dataclass
class FileRequest:
    method: str
    repo: str
    path: str
    range: str | None
    status: int
    authorization: bool


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _serve_file(disk: Path, path: str) -> ServedFile:
    data = disk.read_bytes()
    return ServedFile(
        path=path,
        disk=disk,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        git_oid=_git_oid(data),
        lfs=path.endswith(LFS_SUFFIXES) or len(data) > 10 * 2**20,
    )


def _scan(folder: Path) -> dict[str, ServedFile]:
    files = {}
    for disk in sorted(folder.rglob("*")):
        if disk.is_file():
            rel = disk.relative_to(folder).as_posix()
            files[rel] = _serve_file(disk, rel)
    return files


def _commit(repo_id: str, files: dict[str, ServedFile], salt: str = "") -> str:
    listing = "\n".join(f"{f.path} {f.sha256}" for f in files.values())
    return hashlib.sha1(f"{repo_id}\n{salt}\n{listing}".encode()).hexdigest()


class HubServer:
    """Start with :meth:`start` (or use as a context manager); ``url`` is the endpoint to give clients."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.tokens: set[str] = set()
        """Tokens that have accepted every gated repo's license."""
        self.faults: list[Fault] = []
        self.throttle_bps: float | None = None
        self.bytes_served: Counter[tuple[str, str]] = Counter()
        self.requests: list[FileRequest] = []
        self.api_calls: list[str] = []
        self.active = 0
        """Transfers sending bytes right now."""
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- content

    def add_repo(self, repo_id: str, folder: Path, *, revisions: dict[str, Path] | None = None, **card: Any) -> Repo:
        """Serve ``folder`` as ``repo_id`` at ``main`` (and each of ``revisions`` under its name)."""
        files = _scan(folder)
        revs = {"main": Revision(_commit(repo_id, files), files)}
        for name, path in (revisions or {}).items():
            other = _scan(path)
            revs[name] = Revision(_commit(repo_id, other, name), other)
        repo = Repo(repo_id, revs, **card)
        if repo.safetensors is None:
            repo.safetensors = _safetensors_summary(files)
        self.repos[repo_id] = repo
        return repo

    def fault(self, path: str, kind: str, **kw: Any) -> Fault:
        fault = Fault(path, kind, **kw)
        self.faults.append(fault)
        return fault

    def served(self, repo: str, path: str | None = None) -> int:
        if path is not None:
            return self.bytes_served[(repo, path)]
        return sum(n for (r, _), n in self.bytes_served.items() if r == repo)

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no transfer is running (a transfer the client dropped ends at its next write)."""
        deadline = time.monotonic() + timeout
        while self.active and time.monotonic() < deadline:
            time.sleep(0.01)

    def reset_counters(self) -> None:
        """Zero the counters once the transfers still running have ended."""
        self.wait_idle()
        with self._lock:
            self.bytes_served.clear()
            self.requests.clear()
            self.api_calls.clear()

    # -- lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> HubServer:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _safetensors_summary(files: dict[str, ServedFile]) -> dict[str, Any] | None:
    """``{"parameters": {dtype: n}, "total": n}`` from the safetensors headers, as the Hub computes it."""
    import math
    import struct

    counts: Counter[str] = Counter()
    for f in files.values():
        if not f.path.endswith(".safetensors"):
            continue
        with open(f.disk, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, tensor in header.items():
            if name != "__metadata__":
                counts[tensor["dtype"]] += math.prod(tensor["shape"])
    return {"parameters": dict(counts), "total": sum(counts.values())} if counts else None


_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: HubServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    # -- plumbing

    def _json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json({"error": message}, status, headers)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        parts = [unquote(p) for p in url.path.split("/") if p]
        hub = self.server_hub
        try:
            if parts[:2] == ["api", "models"]:
                hub.api_calls.append(self.path)
                if len(parts) == 2:
                    return self._search(query)
                repo = self._repo("/".join(parts[2:4]))
                if repo is None:
                    return
                rest = parts[4:]
                if not rest:
                    return self._info(repo, "main", query)
                if rest[0] == "revision" and len(rest) == 2:
                    return self._info(repo, rest[1], query)
                if rest[0] == "tree" and len(rest) >= 2:
                    return self._tree(repo, rest[1], "/".join(rest[2:]), query)
                return self._error(404, None, "Not Found")
            if parts and parts[0] == "__cdn__":
                return self._cdn(parts[1], query)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            return self._error(404, None, "Not Found")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- API

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.server_hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return repo

    def _search(self, query: dict[str, list[str]]) -> None:
        repos = list(self.server_hub.repos.values())
        if "search" in query:
            text = query["search"][0].lower()
            repos = [r for r in repos if text in r.repo_id.lower()]
        if "author" in query:
            repos = [r for r in repos if r.repo_id.split("/")[0] == query["author"][0]]
        for tag in query.get("filter", []):
            repos = [r for r in repos if tag in r.tags or tag in (r.library_name, r.pipeline_tag)]
        sort = query.get("sort", [None])[0]
        keys = {
            "downloads": lambda r: r.downloads,
            "likes": lambda r: r.likes,
            "lastModified": lambda r: r.last_modified,
            "createdAt": lambda r: r.created_at,
            "trendingScore": lambda r: r.trending_score,
        }
        if sort in keys:
            repos.sort(key=keys[sort], reverse=True)
        limit = int(query.get("limit", ["1000"])[0])
        self._json([r.card() for r in repos[:limit]])

    def _info(self, repo: Repo, rev: str, query: dict[str, list[str]]) -> None:
        revision = repo.revision(rev)
        if revision is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        data = repo.card()
        data["sha"] = revision.commit
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        data["siblings"] = [
            f.sibling() if blobs else {"rfilename": f.path}
            for f in sorted(revision.files.values(), key=lambda f: f.path)
        ]
        if repo.safetensors:
            data["safetensors"] = repo.safetensors
        if repo.gguf:
            data["gguf"] = repo.gguf
        self._json(data)

    def _tree(self, repo: Repo, rev: str, path: str, query: dict[str, list[str]]) -> None:
        revision = repo.revision(rev)
        if revision is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{path}/" if path else ""
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for f in sorted(revision.files.values(), key=lambda f: f.path):
            if not f.path.startswith(prefix):
                continue
            rest = f.path[len(prefix) :]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            entries.append(f.tree_entry())
            if recursive:
                parts = rest.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    folders.add(prefix + "/".join(parts[:i]))
        entries[:0] = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": p} for p in sorted(folders)]
        self._json(entries)

    # -- files

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        hub = self.server_hub
        repo = self._repo(repo_id)
        if repo is None:
            return self._log(repo_id, path, 404)
        revision = repo.revision(rev)
        if revision is None:
            self._log(repo_id, path, 404)
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        token = self._token()
        if repo.gated and token not in hub.tokens:
            status = 403 if token else 401
            self._log(repo_id, path, status)
            return self._error(
                status,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.",
            )
        f = revision.files.get(path)
        if f is None:
            self._log(repo_id, path, 404)
            return self._error(404, "EntryNotFound", "Entry not found")
        common = {"X-Repo-Commit": revision.commit, "ETag": f'"{f.oid}"', "Accept-Ranges": "bytes"}
        if f.lfs:
            location = f"/__cdn__/{f.sha256}?repo={quote(repo_id, safe='')}&path={quote(path, safe='')}"
            self.send_response(302)
            for key, value in common.items():
                self.send_header(key, value)
            self.send_header("X-Linked-Size", str(f.size))
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_bytes(repo_id, f, common)

    def _cdn(self, sha256: str, query: dict[str, list[str]]) -> None:
        repo_id, path = query["repo"][0], query["path"][0]
        repo = self.server_hub.repos[repo_id]
        f = next(r.files[path] for r in repo.revisions.values() if path in r.files and r.files[path].sha256 == sha256)
        self._send_bytes(repo_id, f, {"ETag": f'"{f.sha256}"', "Accept-Ranges": "bytes"})

    def _log(self, repo: str, path: str, status: int) -> None:
        with self.server_hub._lock:
            self.server_hub.requests.append(
                FileRequest(
                    self.command, repo, path, self.headers.get("Range"), status, "Authorization" in self.headers
                )
            )

    def _take_fault(self, repo: str, path: str, kinds: tuple[str, ...], start: int, end: int) -> Fault | None:
        hub = self.server_hub
        with hub._lock:
            for fault in hub.faults:
                if (
                    fault.kind in kinds
                    and fault.matches(repo, path)
                    and (fault.kind == "status" or start <= fault.at < end)
                ):
                    fault.used += 1
                    return fault
        return None

    def _send_bytes(self, repo_id: str, f: ServedFile, headers: dict[str, str]) -> None:
        hub = self.server_hub
        start, end, status = 0, f.size, 200
        wanted = self.headers.get("Range")
        if wanted:
            match = _RANGE.match(wanted.strip())
            if not match or int(match[1]) >= f.size:
                self._log(repo_id, f.path, 416)
                return self._json({"error": "Range Not Satisfiable"}, 416, {"Content-Range": f"bytes */{f.size}"})
            start = int(match[1])
            end = min(int(match[2]) + 1, f.size) if match[2] else f.size
            status = 206
        if self.command == "GET":
            fault = self._take_fault(repo_id, f.path, ("status",), start, end)
            if fault is not None:
                self._log(repo_id, f.path, fault.status)
                return self._error(fault.status, None, "injected failure")
        self._log(repo_id, f.path, status)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Content-Type", "application/octet-stream")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{f.size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with hub._lock:
            hub.active += 1
        try:
            self._send_body(repo_id, f, start, end)
        finally:
            with hub._lock:
                hub.active -= 1

    def _send_body(self, repo_id: str, f: ServedFile, start: int, end: int) -> None:
        hub = self.server_hub
        cut = self._take_fault(repo_id, f.path, ("cut",), start, end)
        corrupt = self._take_fault(repo_id, f.path, ("corrupt",), start, end)
        stall = self._take_fault(repo_id, f.path, ("stall",), start, end)
        stop = cut.at if cut else end
        began = time.monotonic()
        sent = 0
        with open(f.disk, "rb") as fh:
            fh.seek(start)
            pos = start
            while pos < stop:
                n = min(CHUNK, stop - pos)
                if stall is not None:
                    if pos == stall.at:
                        time.sleep(stall.seconds)
                        stall = None
                    elif pos < stall.at < pos + n:
                        n = stall.at - pos
                chunk = bytearray(fh.read(n))
                if corrupt is not None and pos <= corrupt.at < pos + len(chunk):
                    chunk[corrupt.at - pos] ^= 0xFF
                with hub._lock:  # counted before the client can see them, so a reset never misses them
                    hub.bytes_served[(repo_id, f.path)] += len(chunk)
                try:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    with hub._lock:
                        hub.bytes_served[(repo_id, f.path)] -= len(chunk)
                    self.close_connection = True
                    return
                pos += len(chunk)
                sent += len(chunk)
                if hub.throttle_bps:
                    ahead = sent / hub.throttle_bps - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        if cut is not None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
