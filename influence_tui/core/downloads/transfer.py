"""One file's HTTP transfer: resume from the bytes on disk (HTTP Range), retry with backoff, verify, keep in staging."""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from influence_tui.core.downloads.staging import Staging, file_size
from influence_tui.core.downloads.verify import ContentHasher, hash_prefix
from influence_tui.core.errors import DownloadError
from influence_tui.core.hub import http_error, unreachable
from influence_tui.core.types import DownloadFile, DownloadPlan

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from influence_tui.core.hub import HubClient

DEFAULT_STALL_TIMEOUT_S = 30.0
"""A transfer with no byte for this long is dropped and resumed."""
DEFAULT_RETRIES = 5
"""Failed attempts in a row (with no byte received) before a file gives up."""
DEFAULT_BACKOFF_S = 1.0
"""First retry delay; it doubles each time, up to :data:`MAX_BACKOFF_S`."""
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    """How a transfer retries; a :class:`~influence_tui.core.downloads.DownloadManager`'s settings."""

    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S


class FileEvents(Protocol):
    """What a transfer tells the job about its file; the job turns it into progress."""

    def update(self, *, force: bool = True, **changes: Any) -> None:
        """Change the file's state fields (``state``, ``message``, ``done``, ``sha256``; ``added`` bytes)."""

    def retrying(self, message: str) -> None:
        """One more attempt, for ``message``'s reason."""

    def set_done(self, done: int) -> None:
        """The bytes on disk are now ``done`` (no progress report)."""


class Transient(Exception):
    """A failure worth retrying (connection lost, stall, 5xx); internal, never escapes a job."""

    def __init__(self, message: str, received: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.received = received
        self.retry_after = retry_after


@dataclass
class FileTransfer:
    """Fetch one file into the staging folder: resume, retry, verify, then move it to its name there."""

    file: DownloadFile
    plan: DownloadPlan
    client: HubClient
    http: httpx.Client
    staging: Staging
    policy: RetryPolicy
    stop: threading.Event
    events: FileEvents

    def run(self) -> None:
        f, events, policy = self.file, self.events, self.policy
        url = self.client.file_url(self.plan.repo_id, f.repo_path, self.plan.commit)
        part = self.staging.partial(f)
        part.parent.mkdir(parents=True, exist_ok=True)
        hasher: ContentHasher | None = None
        failures = 0
        mismatches = 0
        events.update(state="downloading")
        while not self.stop.is_set():
            have = file_size(part)
            if have > f.size:
                part.unlink()
                have = 0
            if hasher is None or hasher.count != have:
                hasher = ContentHasher(f)
                if have:
                    events.update(state="verifying", message="checking the bytes already on disk")
                    hash_prefix(part, hasher, have, self.stop)
                    if hasher.count != have:
                        return  # stopped
                events.update(state="downloading", message=None, done=have)
            if have < f.size:
                try:
                    self._stream(url, part, hasher)
                    failures = 0
                except Transient as exc:
                    failures = 1 if exc.received else failures + 1
                    if failures > policy.retries:
                        raise DownloadError(
                            f"{f.local_path} of {self.plan.repo_id} failed {failures} times in a row: {exc.message}",
                            hint="the partial file is kept; run the download again to resume",
                        ) from None
                    delay = exc.retry_after or min(policy.backoff_s * 2 ** (failures - 1), MAX_BACKOFF_S)
                    delay *= random.uniform(0.8, 1.2)
                    events.retrying(exc.message)
                    if self.stop.wait(delay):
                        return
                    events.update(state="downloading", message=None)
                continue
            events.update(state="verifying")
            problem = hasher.check(f)
            if problem is not None:
                part.unlink(missing_ok=True)
                hasher = None
                mismatches += 1
                events.set_done(0)
                if mismatches >= 2:
                    raise DownloadError(
                        f"{f.local_path} of {self.plan.repo_id} failed verification twice: {problem}",
                        hint="the server or something on the way sends damaged bytes; nothing was added to the library",
                    )
                events.retrying(f"damaged download ({problem}); fetching it again")
                continue
            with open(part, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(part, self.staging.staged(f))
            digest = hasher.sha256.hexdigest()
            self.staging.record_verified(f, digest)
            events.update(state="done", done=f.size, sha256=digest, message=None)
            return

    def _stream(self, url: str, part: Path, hasher: ContentHasher) -> None:
        """One HTTP request from the end of the partial file; appends and hashes what arrives."""
        import httpx

        f, plan = self.file, self.plan
        offset = hasher.count
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        received = 0
        try:
            with self.http.stream("GET", url, headers=headers) as response:
                status = response.status_code
                if status == 416:
                    part.unlink(missing_ok=True)
                    hasher.reset()
                    raise Transient("the server refused to resume this file; starting it over")
                if status in (408, 425, 429) or status >= 500:
                    raise Transient(f"HTTP {status} from {response.url.host}", retry_after=retry_after(response))
                if status >= 400:
                    raise http_error(
                        response,
                        repo_id=plan.repo_id,
                        revision=plan.revision,
                        path=f.repo_path,
                        endpoint=plan.endpoint,
                        token_given=self.client.token_given,
                    )
                if offset and status == 206:
                    start = content_range_start(response.headers.get("Content-Range"))
                    if start != offset:
                        raise Transient(f"the server resumed at byte {start}, not {offset}")
                elif offset:  # 200: the server ignored the range and sends everything
                    offset = 0
                    hasher.reset()
                with open(part, "r+b" if part.exists() else "wb") as out:
                    out.seek(offset)
                    out.truncate()
                    if offset == 0:
                        self.events.set_done(0)
                    for chunk in response.iter_raw():  # as received: every byte that arrived is kept
                        if self.stop.is_set():
                            return
                        if hasher.count + len(chunk) > f.size:
                            raise Transient("the server sent more bytes than the file has", received)
                        out.write(chunk)
                        hasher.update(chunk)
                        received += len(chunk)
                        self.events.update(force=False, added=len(chunk))
        except httpx.TimeoutException:
            raise Transient(f"no data for {self.policy.stall_timeout_s:g} s", received) from None
        except httpx.TransportError as exc:
            if received == 0 and isinstance(exc, httpx.ConnectError):
                raise Transient(str(unreachable(plan.endpoint, exc).message)) from None
            raise Transient(f"connection lost ({type(exc).__name__})", received) from None
        if hasher.count < f.size and received == 0 and not self.stop.is_set():
            raise Transient("the connection closed before any data")


def content_range_start(value: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes 100-199/200`` answer."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return min(float(value), 60.0) if value else None
    except ValueError:
        return None
