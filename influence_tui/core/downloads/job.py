"""The job: one download in background threads, from the lock and the disk check to the manifest; its progress."""

from __future__ import annotations

import collections
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from influence_tui.core.downloads.staging import Staging, content_key, file_size, lock_path, same_content
from influence_tui.core.downloads.transfer import FileTransfer, RetryPolicy
from influence_tui.core.errors import DownloadCancelled, DownloadError, InfluenceError
from influence_tui.core.fsutil import remove_path
from influence_tui.core.manifest import Manifest, ManifestFile, read_manifest
from influence_tui.core.types import (
    DownloadFile,
    DownloadPlan,
    DownloadProgress,
    DownloadResult,
    DownloadState,
    FileProgress,
)
from influence_tui.core.units import human_size

if TYPE_CHECKING:
    import httpx

    from influence_tui.core.hub import HubClient

ProgressCallback = Callable[[DownloadProgress], None]
PROGRESS_INTERVAL_S = 0.1


class JobSettings(Protocol):
    """What a job needs of the manager that starts it."""

    parallel: int
    stall_timeout_s: float
    retries: int
    backoff_s: float
    connect_timeout_s: float
    lock_wait_s: float

    def client(self) -> HubClient: ...


class _Rate:
    """Bytes per second over the last few seconds."""

    def __init__(self, window_s: float = 3.0) -> None:
        self.window_s = window_s
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, now: float, total: int) -> None:
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[1][0] > self.window_s:
            self.samples.popleft()

    def rate(self, now: float) -> float:
        if len(self.samples) < 2:
            return 0.0
        t0, b0 = self.samples[0]
        t1, b1 = self.samples[-1]
        if now - t1 > self.window_s:  # nothing arrived lately
            return 0.0
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


@dataclass
class _FileState:
    file: DownloadFile
    done: int = 0
    fetched: int = 0
    state: DownloadState = "queued"
    attempt: int = 0
    message: str | None = None
    started: float | None = None
    finished: float | None = None
    rate: _Rate = field(default_factory=_Rate)
    last_emit: float = 0.0
    sha256: str | None = None


class _Events:
    """A transfer's :class:`~influence_tui.core.downloads.transfer.FileEvents`, applied to its file in the job."""

    def __init__(self, job: DownloadJob, local: str) -> None:
        self.job = job
        self.local = local

    def update(self, *, force: bool = True, **changes: Any) -> None:
        self.job._update(self.local, force=force, **changes)

    def retrying(self, message: str) -> None:
        attempt = self.job._files[self.local].attempt
        self.job._update(self.local, state="retrying", attempt=attempt + 1, message=message)

    def set_done(self, done: int) -> None:
        with self.job._state_lock:
            self.job._files[self.local].done = done


class DownloadJob:
    """One download running in background threads: :meth:`wait` for its result, :meth:`cancel` to stop it
    (partial files stay and the next run resumes from them)."""

    def __init__(
        self,
        manager: JobSettings,
        plan: DownloadPlan,
        *,
        force: bool = False,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.manager = manager
        self.plan = plan
        self.force = force
        self.on_progress = on_progress
        self.cancel_event = cancel or threading.Event()
        self._stop = threading.Event()  # cancel, or another file failed
        self._done = threading.Event()
        self._state_lock = threading.Lock()
        self._emit_lock = threading.Lock()
        self._files = {f.local_path: _FileState(f) for f in plan.files}
        self._started = time.monotonic()
        self._rate = _Rate()
        self._fetched = 0
        self._state: DownloadState = "queued"
        self._result: DownloadResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"download {plan.repo_id}", daemon=True)
        self._http: httpx.Client | None = None
        self._client: HubClient | None = None

    # -- control

    def start(self) -> DownloadJob:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self.cancel_event.set()
        self._stop.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> DownloadResult:
        """The result; raises the download's error (:class:`DownloadCancelled` when cancelled), or
        ``TimeoutError`` when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done.wait(0.1):
            if self.cancel_event.is_set():
                self._stop.set()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"download of {self.plan.repo_id} still running")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def progress(self) -> DownloadProgress:
        with self._state_lock:
            return self._snapshot(None, time.monotonic())

    # -- progress

    def _snapshot(self, changed: str | None, now: float) -> DownloadProgress:
        files = tuple(
            FileProgress(
                path=s.file.local_path,
                size=s.file.size,
                done=s.done,
                state=s.state,
                speed=s.rate.rate(now) if s.state == "downloading" else 0.0,
                attempt=s.attempt,
                message=s.message,
                elapsed_s=((s.finished or now) - s.started) if s.started is not None else 0.0,
            )
            for s in self._files.values()
        )
        done = sum(f.done for f in files)
        total = self.plan.total_bytes
        speed = self._rate.rate(now)
        eta = (total - done) / speed if speed > 0 else None
        return DownloadProgress(
            repo_id=self.plan.repo_id,
            files=files,
            state=self._state,
            done_bytes=done,
            total_bytes=total,
            fetched_bytes=self._fetched,
            speed=speed,
            eta_s=eta,
            elapsed_s=now - self._started,
            changed=changed,
        )

    def _update(self, local: str | None, *, force: bool = True, **changes: Any) -> None:
        """Change one file's state (or, with ``local=None``, the job's) and tell the callback."""
        now = time.monotonic()
        with self._state_lock:
            if local is None:
                self._state = changes["state"]
            else:
                s = self._files[local]
                added = changes.pop("added", 0)
                if added:
                    s.done += added
                    s.fetched += added
                    self._fetched += added
                    s.rate.add(now, s.fetched)
                    self._rate.add(now, self._fetched)
                for key, value in changes.items():
                    setattr(s, key, value)
                if changes.get("state") == "downloading" and s.started is None:
                    s.started = now
                if changes.get("state") in ("done", "cached", "failed", "cancelled"):
                    s.finished = now
                if not force and now - s.last_emit < PROGRESS_INTERVAL_S:
                    return
                s.last_emit = now
        if self.on_progress is None:
            return
        with self._emit_lock:  # snapshots are taken and delivered in one order: the callback never goes back
            with self._state_lock:
                snapshot = self._snapshot(local, time.monotonic())
            self.on_progress(snapshot)

    # -- running

    def _run(self) -> None:
        try:
            self._result = self._execute()
            self._update(None, state="done")
        except BaseException as exc:
            self._error = exc
            self._update(None, state="cancelled" if isinstance(exc, DownloadCancelled) else "failed")
        finally:
            if self._http is not None:
                self._http.close()
            if self._client is not None:
                self._client.close()
            self._done.set()

    def _execute(self) -> DownloadResult:
        from filelock import FileLock, Timeout

        plan, manager = self.plan, self.manager
        folder = plan.folder
        root = folder.parent
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DownloadError(f"cannot create {root}: {exc.strerror or exc}") from None
        lock_file = lock_path(folder)
        lock = FileLock(str(lock_file))
        try:
            lock.acquire(timeout=manager.lock_wait_s)
        except Timeout:
            raise DownloadError(
                f"{plan.repo_id} is being downloaded by another process into {root}", hint="wait for it to finish"
            ) from None
        try:
            result = self._locked(Staging(folder))
        finally:
            lock.release()
        lock_file.unlink(missing_ok=True)
        return result

    def _locked(self, staging: Staging) -> DownloadResult:
        plan = self.plan
        folder = plan.folder
        if self.force:
            remove_path(staging.path)
        staging.path.mkdir(parents=True, exist_ok=True)
        old = read_manifest(folder)
        manifest = None if self.force else old
        staging.recover_assembly()
        verified = staging.verified()
        todo: list[DownloadFile] = []
        reused = 0
        remaining = 0
        for f in plan.files:
            entry = manifest.file(f.local_path) if manifest else None
            target = folder / f.local_path
            staged = staging.staged(f)
            record = verified.get(f.local_path)
            if (
                entry is not None
                and same_content(entry.sha256, entry.blob_id, entry.size, f)
                and file_size(target) == f.size
            ):
                self._update(f.local_path, state="cached", done=f.size, sha256=entry.sha256)
                reused += f.size
            elif (
                record
                and record.get("key") == content_key(f)
                and isinstance(record.get("sha256"), str)
                and file_size(staged) == f.size
            ):
                self._update(f.local_path, state="done", done=f.size, sha256=record.get("sha256"))
                reused += f.size
            else:
                part = staging.partial(f)
                for stale in staging.partials(f.local_path):
                    if stale != part:
                        stale.unlink(missing_ok=True)  # from another revision of the file
                if staged.is_file() and not part.exists():
                    staged.replace(part)  # complete but not recorded (killed in between): hashed again
                have = min(file_size(part), f.size)
                if have:
                    self._update(f.local_path, done=have)
                    reused += have
                remaining += f.size - have
                todo.append(f)
        free = shutil.disk_usage(staging.path).free
        if remaining > free:
            raise DownloadError(
                f"not enough disk space in {folder.parent}: {plan.repo_id} needs {human_size(remaining)} more, "
                f"{human_size(free)} is free",
                hint="free some space, or download elsewhere with --output DIR",
            )
        if todo:
            self._update(None, state="downloading")
            self._fetch_all(todo, staging)
        staging.install(plan.files, self._manifest(old))
        return DownloadResult(
            repo_id=plan.repo_id,
            revision=plan.revision,
            commit=plan.commit,
            folder=folder,
            files=tuple(f.local_path for f in plan.files),
            fetched_bytes=self._fetched,
            reused_bytes=reused,
            elapsed_s=time.monotonic() - self._started,
            model_name=library_name(folder, plan),
        )

    def _fetch_all(self, todo: list[DownloadFile], staging: Staging) -> None:
        import httpx

        manager = self.manager
        self._client = client = manager.client()
        self._http = http = httpx.Client(
            headers=client.headers(),
            follow_redirects=True,
            timeout=httpx.Timeout(manager.connect_timeout_s, read=manager.stall_timeout_s),
            limits=httpx.Limits(max_connections=manager.parallel * 2, max_keepalive_connections=manager.parallel),
        )
        policy = RetryPolicy(
            retries=manager.retries, backoff_s=manager.backoff_s, stall_timeout_s=manager.stall_timeout_s
        )
        work: queue.Queue[DownloadFile] = queue.Queue()
        for f in sorted(todo, key=lambda f: -f.size):  # largest first: the last file to finish is a small one
            work.put(f)
        errors: list[BaseException] = []

        def worker() -> None:
            while not self._stop.is_set():
                try:
                    f = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    FileTransfer(
                        f, self.plan, client, http, staging, policy, self._stop, _Events(self, f.local_path)
                    ).run()
                except BaseException as exc:
                    self._update(f.local_path, state="failed", message=str(exc))
                    errors.append(exc)
                    self._stop.set()

        threads = [
            threading.Thread(target=worker, name=f"download {self.plan.repo_id} #{i}", daemon=True)
            for i in range(min(manager.parallel, len(todo)))
        ]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.1)
                if self.cancel_event.is_set():
                    self._stop.set()
        for s in list(self._files.values()):
            if s.state not in ("done", "cached", "failed"):
                self._update(s.file.local_path, state="cancelled")
        if errors:
            raise errors[0]
        if self.cancel_event.is_set():
            raise DownloadCancelled(
                f"download of {self.plan.repo_id} cancelled", hint="run the same download again to resume it"
            )

    def _manifest(self, old: Manifest | None) -> Manifest:
        """The manifest of the folder once this download is in place: the old entries, this download's files."""
        plan = self.plan
        now = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        entries: dict[str, ManifestFile] = {e.path: e for e in old.files} if old else {}
        for f in plan.files:
            state = self._files[f.local_path]
            previous = entries.get(f.local_path)
            if state.state == "cached" and previous is not None:
                continue
            assert state.sha256 is not None
            entries[f.local_path] = ManifestFile(
                path=f.local_path,
                size=f.size,
                sha256=state.sha256,
                repo_path=f.repo_path,
                commit=plan.commit,
                blob_id=f.blob_id,
            )
        return Manifest(
            repo_id=plan.repo_id,
            revision=plan.revision,
            commit=plan.commit,
            endpoint=plan.endpoint,
            completed=now,
            files=tuple(sorted(entries.values(), key=lambda e: e.path)),
        )


def library_name(folder: Path, plan: DownloadPlan) -> str | None:
    """The name the library gives the downloaded weights (``owner/name`` or ``owner/name:QUANT``)."""
    from influence_tui.core.library import inspect_path

    weights = {f.local_path for f in plan.files if f.local_path.endswith((".safetensors", ".gguf"))}
    try:
        models = inspect_path(folder, name=plan.repo_id, source="models-dir")
    except InfluenceError:
        return None
    for model in models:
        names = set()
        for w in model.weight_files:
            try:
                names.add(w.relative_to(folder).as_posix())
            except ValueError:
                continue
        if names & weights:
            return model.name
    return models[0].name if len(models) == 1 else None
