"""The app's downloads: a queue of Hub downloads that keeps running whichever screen is shown.

The core's :class:`~influence_tui.core.downloads.DownloadManager` does the work (plan, fetch, verify, resume);
this service only runs it. Each download runs in a thread worker owned by the *app*, so leaving the downloads
screen never stops one. The manager calls back on its own threads; the callback only posts a
:class:`DownloadUpdated` message to the app (replaceable, so a busy UI skips stale progress). The app hands
each message to :meth:`DownloadService.apply`, on the app's thread, which updates the state the screens show
and publishes :attr:`DownloadService.changed` with the download's id. Nothing here touches a widget.

Downloads not finished when the app closes are remembered in ``<models dir>/.influence-downloads.json``: the
next start lists them as interrupted, and resuming one continues from its partial files.
"""

from __future__ import annotations

import contextlib
import json
import threading
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.message import Message
from textual.signal import Signal
from textual.worker import Worker, get_current_worker

from influence_tui.core.errors import DownloadCancelled, InfluenceError
from influence_tui.core.fsutil import atomic_write_text
from influence_tui.core.types import DownloadProgress, DownloadResult, DownloadState, LocalModel

if TYPE_CHECKING:
    from textual.app import App
    from textual.dom import DOMNode

    from influence_tui.core.config import Settings
    from influence_tui.core.downloads import DownloadManager
    from influence_tui.core.library import Library

ACTIVE_STATES: frozenset[DownloadState] = frozenset({"queued", "downloading", "verifying", "retrying"})
FINAL_STATES: frozenset[DownloadState] = frozenset({"done", "cached", "failed", "cancelled"})
MAX_ACTIVE = 2
"""Downloads fetching at once (each fetches several files in parallel); the others wait, queued."""
SPEED_SAMPLE_S = 0.5
"""Seconds of a download's own clock between two points of its speed sparkline."""
SPEED_POINTS = 60
STATE_FILE = ".influence-downloads.json"
INTERRUPTED = "interrupted when Influence closed; r resumes from the bytes on disk"
CANCELLED = "cancelled; r resumes from the bytes on disk"
FINISHING = "every file is verified; putting the model in the library"


@dataclass(frozen=True)
class DownloadRequest:
    """What the user asked for: a repo and, for a GGUF repo, one quantization."""

    repo_id: str
    quant: str | None = None
    revision: str | None = None

    @property
    def label(self) -> str:
        return f"{self.repo_id} · {self.quant}" if self.quant else self.repo_id

    def to_dict(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "quant": self.quant, "revision": self.revision}


@dataclass(frozen=True)
class DownloadEntry:
    """One download as the screens show it. The service replaces it on every change (never mutated)."""

    id: int
    request: DownloadRequest
    state: DownloadState = "queued"
    done_bytes: int = 0
    total_bytes: int = 0
    speed: float = 0.0
    """Bytes per second over the last few seconds."""
    eta_s: float | None = None
    files_done: int = 0
    files_total: int = 0
    message: str | None = None
    """Why it failed or is retrying, what it is waiting for, or what to do next."""
    speeds: tuple[float, ...] = ()
    """Recent speeds, one every :data:`SPEED_SAMPLE_S` of the download, for the sparkline."""
    result: DownloadResult | None = None
    model: LocalModel | None = None
    """The downloaded model as the library lists it (set once done)."""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def finished(self) -> bool:
        return self.state in ("done", "cached")

    @property
    def resumable(self) -> bool:
        return self.state in ("failed", "cancelled")

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else (1.0 if self.finished else 0.0)


@dataclass
class DownloadUpdated(Message):
    """A download changed: progress from the manager's callback (``state`` None: taken from the progress), or
    the worker's word on a phase (queued, planning) or the end (done, failed, cancelled)."""

    download_id: int
    run: int
    """Which run of the download (a retry is a new run); news of an earlier run is dropped."""
    state: DownloadState | None = None
    progress: DownloadProgress | None = None
    message: str | None = None
    result: DownloadResult | None = None
    model: LocalModel | None = None

    def can_replace(self, message: Message) -> bool:
        """Plain progress gives way to any newer news of the same run: each carries the whole picture."""
        return (
            self.state is None
            and isinstance(message, DownloadUpdated)
            and message.download_id == self.download_id
            and message.run == self.run
        )


@dataclass
class _Download:
    entry: DownloadEntry
    run: int = 0
    worker: Worker[None] | None = None
    last_sample: float = field(default=-1.0)
    speeds: deque[float] = field(default_factory=lambda: deque(maxlen=SPEED_POINTS))


def entry_state(progress: DownloadProgress) -> DownloadState:
    """What a running download is doing, from its files: fetching beats checking beats waiting to retry."""
    if progress.state in FINAL_STATES:  # the job has ended; the worker's own message says how, next
        return "verifying"
    states = {f.state for f in progress.files}
    for state in ("downloading", "verifying", "retrying"):
        if state in states:
            return state
    return progress.state


class DownloadService:
    """Created once by the app. Screens call :meth:`download`, :meth:`cancel`, :meth:`resume`, :meth:`remove`
    and read :attr:`entries`; they subscribe to :attr:`changed` to hear of changes."""

    def __init__(
        self,
        app: App[Any],
        settings: Settings,
        *,
        library: Library | None = None,
        manager: DownloadManager | None = None,
        max_active: int = MAX_ACTIVE,
        remember: bool = True,
    ) -> None:
        self.app = app
        self.settings = settings
        self._library = library
        self._manager = manager
        self._downloads: dict[int, _Download] = {}
        self._next_id = 1
        self._slots = threading.Semaphore(max_active)
        self._repo_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self.remember = remember
        """Keep unfinished downloads in the state file for the next start."""
        self.changed: Signal[int] = Signal(app, "downloads-changed")
        """Published (on the app's thread) with a download's id when it was added, changed or removed."""
        if remember:
            self._restore()

    # ------------------------------------------------------------------------------------------ services

    @property
    def manager(self) -> DownloadManager:
        if self._manager is None:
            from influence_tui.core.downloads import DownloadManager

            self._manager = DownloadManager(self.settings)
        return self._manager

    @manager.setter
    def manager(self, manager: DownloadManager) -> None:
        self._manager = manager

    @property
    def library(self) -> Library:
        if self._library is None:
            from influence_tui.core.library import Library

            self._library = Library(self.settings)
        return self._library

    # ------------------------------------------------------------------------------------------ reading

    @property
    def entries(self) -> list[DownloadEntry]:
        """Every download, newest first."""
        return [d.entry for d in sorted(self._downloads.values(), key=lambda d: -d.entry.id)]

    def get(self, download_id: int) -> DownloadEntry | None:
        found = self._downloads.get(download_id)
        return found.entry if found else None

    @property
    def running(self) -> list[DownloadEntry]:
        """Downloads queued or under way."""
        return [e for e in self.entries if e.active]

    def find(self, request: DownloadRequest) -> DownloadEntry | None:
        """The newest download of this repo and quantization."""
        same = (e for e in self.entries if e.request.repo_id == request.repo_id and e.request.quant == request.quant)
        return next(same, None)

    # ------------------------------------------------------------------------------------------ actions

    def download(self, request: DownloadRequest) -> DownloadEntry:
        """Start ``request`` now (or queue it); an identical download already under way is returned instead."""
        existing = self.find(request)
        if existing is not None and existing.active:
            return existing
        entry = self.track(request)
        self._start(entry.id)
        return self._downloads[entry.id].entry

    def track(
        self, request: DownloadRequest, *, state: DownloadState = "queued", message: str | None = None
    ) -> DownloadEntry:
        """List a download without starting it (a remembered one; fixed pictures)."""
        download_id = self._next_id
        self._next_id += 1
        entry = DownloadEntry(download_id, request, state=state, message=message)
        self._downloads[download_id] = _Download(entry)
        self._changed(download_id)
        return entry

    def cancel(self, download_id: int) -> bool:
        """Stop a download; its partial files stay, and :meth:`resume` continues from them."""
        found = self._downloads.get(download_id)
        if found is None or not found.entry.active:
            return False
        if found.worker is not None:
            found.worker.cancel()  # sets the event the manager watches
        return True

    def resume(self, download_id: int) -> bool:
        """Run a failed or cancelled download again: what is on disk is checked and kept."""
        found = self._downloads.get(download_id)
        if found is None or not found.entry.resumable:
            return False
        self._start(download_id)
        return True

    def remove(self, download_id: int) -> bool:
        """Drop a download that is not running from the list (its files, whole or partial, stay on disk)."""
        found = self._downloads.get(download_id)
        if found is None or found.entry.active:
            return False
        del self._downloads[download_id]
        self._changed(download_id)
        self._save()
        return True

    def shutdown(self) -> None:
        """The app is closing: stop every download (each resumes next time) and remember the unfinished."""
        for found in self._downloads.values():
            if found.entry.active and found.worker is not None:
                found.worker.cancel()
        self._save(closing=True)

    # ------------------------------------------------------------------------------------------ running

    def _start(self, download_id: int) -> None:
        found = self._downloads[download_id]
        found.run += 1
        found.last_sample = -1.0
        found.speeds.clear()
        found.entry = replace(
            found.entry, state="queued", message="waiting for another download to finish", speed=0.0, eta_s=None
        )
        request, run = found.entry.request, found.run
        found.worker = self.app.run_worker(
            lambda: self._run(download_id, run, request),
            name=f"download {request.label}",
            group=f"download-{download_id}",
            description=f"Download {request.label}",
            thread=True,
            exclusive=True,
            exit_on_error=False,
        )
        self._changed(download_id)
        self._save()

    def _post(self, message: DownloadUpdated) -> None:
        with contextlib.suppress(RuntimeError):  # the app's loop has closed: nobody is left to tell
            self.app.post_message(message)

    def _repo_lock(self, repo_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._repo_locks.setdefault(repo_id, threading.Lock())

    def _run(self, download_id: int, run: int, request: DownloadRequest) -> None:
        """The worker: wait for a free slot and the repo, plan, fetch, and say how it ended. Runs on a thread."""
        cancel = get_current_worker().cancelled_event

        def post(state: DownloadState | None = None, **kw: Any) -> None:
            self._post(DownloadUpdated(download_id, run, state, **kw))

        def wait_for(lock: threading.Semaphore | threading.Lock) -> bool:
            while not lock.acquire(timeout=0.1):
                if cancel.is_set():
                    return False
            return True

        if not wait_for(self._slots):
            post("cancelled", message=CANCELLED)
            return
        try:
            repo_lock = self._repo_lock(request.repo_id)
            if not repo_lock.acquire(blocking=False):
                post("queued", message=f"waiting for the other download of {request.repo_id} to finish")
                if not wait_for(repo_lock):
                    post("cancelled", message=CANCELLED)
                    return
            try:
                self._fetch(request, cancel, post)
            finally:
                repo_lock.release()
        finally:
            self._slots.release()

    def _fetch(self, request: DownloadRequest, cancel: threading.Event, post: Any) -> None:
        post("queued", message="asking the Hub which files to fetch")
        job = None
        try:
            plan = self.manager.plan(request.repo_id, quant=request.quant, revision=request.revision)
            if cancel.is_set():
                raise DownloadCancelled(f"download of {request.repo_id} cancelled")
            job = self.manager.start(plan, on_progress=lambda p: post(progress=p), cancel=cancel)
            result = job.wait()
            model = self._find_model(result)
            post("done", progress=job.progress(), result=result, model=model)
        except DownloadCancelled:
            post("cancelled", progress=job.progress() if job else None, message=CANCELLED)
        except InfluenceError as exc:
            post("failed", progress=job.progress() if job else None, message=str(exc))
        except Exception as exc:  # a bug: keep the app alive, keep the traceback in the log
            self.app.log.error(traceback.format_exc())
            post("failed", message=f"{type(exc).__name__}: {exc}")

    def _find_model(self, result: DownloadResult) -> LocalModel | None:
        """The library's view of what was downloaded (what "chat with it" loads)."""
        try:
            models = self.library.models()
        except InfluenceError:
            return None
        if result.model_name:
            named = [m for m in models if m.name == result.model_name]
            if named:
                return named[0]
        inside = [m for m in models if m.path == result.folder or result.folder in m.path.parents]
        return inside[0] if len(inside) == 1 else None

    # ------------------------------------------------------------------------------------------ the app's thread

    def apply(self, message: DownloadUpdated) -> None:
        """Take in a worker's news (called by the app, on its thread) and tell the subscribers."""
        found = self._downloads.get(message.download_id)
        if found is None or message.run != found.run:
            return  # removed, or news of a run that has since been replaced
        entry = found.entry
        if message.state is None and entry.state in FINAL_STATES:
            return
        changes: dict[str, Any] = {}
        progress = message.progress
        if progress is not None:
            changes.update(
                done_bytes=progress.done_bytes,
                total_bytes=progress.total_bytes,
                speed=progress.speed,
                eta_s=progress.eta_s,
                files_done=sum(f.state in ("done", "cached") for f in progress.files),
                files_total=len(progress.files),
            )
            if found.last_sample < 0 or progress.elapsed_s - found.last_sample >= SPEED_SAMPLE_S:
                found.last_sample = progress.elapsed_s
                found.speeds.append(progress.speed)
                changes["speeds"] = tuple(found.speeds)
        state = message.state or (entry_state(progress) if progress else entry.state)
        changes["state"] = state
        if message.state is not None or progress is None:
            changes["message"] = message.message
        elif progress.state in FINAL_STATES:  # every file is verified; the worker is finishing
            changes["message"] = FINISHING
        else:  # progress: the reason a file is retrying, while it is
            changes["message"] = next((f.message for f in progress.files if f.state == "retrying"), None)
        if state != "downloading":
            changes.update(speed=0.0, eta_s=None)
        if message.result is not None:
            changes["result"] = message.result
        if message.model is not None:
            changes["model"] = message.model
        found.entry = replace(entry, **changes)
        self._changed(message.download_id)
        if state in FINAL_STATES:
            self._save()

    def _changed(self, download_id: int) -> None:
        self.changed.publish(download_id)

    # ------------------------------------------------------------------------------------------ remembering

    @property
    def state_file(self) -> Path:
        return self.settings.models_dir / STATE_FILE

    def _save(self, *, closing: bool = False) -> None:
        if not self.remember:
            return
        unfinished = []
        for d in sorted(self._downloads.values(), key=lambda d: d.entry.id):
            entry = d.entry
            if entry.finished:
                continue
            message = INTERRUPTED if entry.active else entry.message
            unfinished.append({**entry.request.to_dict(), "state": entry.state, "message": message})
        try:
            if unfinished:
                atomic_write_text(self.state_file, json.dumps(unfinished, indent=1))
            else:
                self.state_file.unlink(missing_ok=True)
        except OSError as exc:
            if not closing:
                self.app.notify(f"Could not remember the downloads: {exc}", severity="warning", markup=False)

    def _restore(self) -> None:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(data, list):
            return
        for item in data:
            if not isinstance(item, dict) or not isinstance(item.get("repo_id"), str):
                continue
            request = DownloadRequest(
                item["repo_id"],
                quant=item.get("quant") if isinstance(item.get("quant"), str) else None,
                revision=item.get("revision") if isinstance(item.get("revision"), str) else None,
            )
            was = item.get("state")
            state: DownloadState = "failed" if was == "failed" else "cancelled"
            message = item.get("message") if isinstance(item.get("message"), str) else INTERRUPTED
            download_id = self._next_id
            self._next_id += 1
            self._downloads[download_id] = _Download(DownloadEntry(download_id, request, state=state, message=message))


def downloads_of(node: DOMNode) -> DownloadService:
    """The download service of the app ``node`` runs in."""
    service = getattr(node.app, "downloads", None)
    if not isinstance(service, DownloadService):
        raise RuntimeError(f"{type(node.app).__name__} has no download service; run this screen inside InfluenceApp")
    return service
