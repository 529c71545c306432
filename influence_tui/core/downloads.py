"""Download a model from the Hub: only the files running it needs, several at a time, resumable, verified.

Layout, for ``owner/name`` downloaded into the models dir::

    <models dir>/owner__name/                 the model, once complete (the library lists it)
        .influence-manifest.json              repo id, revision, commit, every file with size and sha256
    <models dir>/.owner__name.download/       staging (hidden: the library skips dot-names)
        model-00001-of-00002.safetensors      verified, waiting for the others
        model-00002-of-00002.safetensors.<hash>.part   still arriving
        .verified.json                        the files verified so far, with their sha256
    <models dir>/.owner__name.assembling/     the verified files and the manifest, just before one rename
    <models dir>/.owner__name.lock            held while a process downloads this repo

Every file is fetched into the staging folder, hashed while it arrives and verified against the Hub's
metadata (sha256 for LFS files, the git blob id for small ones). Only when every file is verified are the
files gathered with the manifest in the hidden assembling folder, which is renamed to the model folder: a
model is never listed half downloaded (the staging design was chosen over marking an in-progress folder:
nothing has to be cleaned up or recognised for the library to stay right after a crash). When the model
folder already exists (a second GGUF quantization, an update), the verified files are moved in one by one and
the manifest is rewritten last. Partial files of other downloads of the same repo stay in staging.

Resume needs no state besides the files: a partial file's name carries the hash it must reach, its size is
where the next request starts (HTTP Range), and its bytes are re-hashed before continuing. A process killed at
any moment leaves a valid prefix on disk. File bytes are fetched with ``httpx`` directly, not with
``hf_hub_download``, which neither resumes across processes from the bytes on disk nor checks sha256.
"""

from __future__ import annotations

import collections
import contextlib
import fnmatch
import hashlib
import json
import os
import queue
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from influence_tui.core.errors import DownloadCancelled, DownloadError, InfluenceError
from influence_tui.core.fsutil import atomic_write_text, remove_path
from influence_tui.core.hub import (
    HubClient,
    RepoInfo,
    gated_error,
    gguf_groups,
    http_error,
    unreachable,
)
from influence_tui.core.manifest import MANIFEST_NAME, Manifest, ManifestFile, read_manifest, write_manifest
from influence_tui.core.types import (
    DownloadFile,
    DownloadPlan,
    DownloadProgress,
    DownloadResult,
    DownloadState,
    FileCheck,
    FileProgress,
    RepoFile,
)
from influence_tui.core.units import human_size

if TYPE_CHECKING:
    import httpx

    from influence_tui.core.config import Settings

ProgressCallback = Callable[[DownloadProgress], None]

#: Small files a model needs beside its weights: config, generation config, tokenizer, chat template,
#: and the sentence-transformers files an embedding model reads.
RUNTIME_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
RUNTIME_GLOBS = ("*_Pooling/config.json", "additional_chat_templates/*.jinja")

DEFAULT_PARALLEL = 4
DEFAULT_STALL_TIMEOUT_S = 30.0
"""A transfer with no byte for this long is dropped and resumed."""
DEFAULT_RETRIES = 5
"""Failed attempts in a row (with no byte received) before a file gives up."""
DEFAULT_BACKOFF_S = 1.0
"""First retry delay; it doubles each time, up to :data:`MAX_BACKOFF_S`."""
MAX_BACKOFF_S = 30.0
PROGRESS_INTERVAL_S = 0.1
LOCK_WAIT_S = 5.0

STAGING_SUFFIX = ".download"
PARTIAL_SUFFIX = ".part"
VERIFIED_NAME = ".verified.json"


def folder_name(repo_id: str) -> str:
    """``owner/name`` -> ``owner__name``: one flat folder per repo."""
    return repo_id.replace("/", "__")


def staging_dir(folder: Path) -> Path:
    return folder.parent / f".{folder.name}{STAGING_SUFFIX}"


# ------------------------------------------------------------------------------------------ planning


def _download_file(f: RepoFile, local: str | None = None) -> DownloadFile:
    return DownloadFile(repo_path=f.path, local_path=local or f.path, size=f.size, sha256=f.sha256, blob_id=f.blob_id)


def select_files(
    client: HubClient, repo: RepoInfo, *, quant: str | None = None, include: Sequence[str] = ()
) -> list[DownloadFile]:
    """What running the repo's model needs: config, tokenizer and chat template files plus the safetensors
    weights (every shard of the index), or exactly one GGUF quantization (every part of a split one, saved
    flat in the model folder). Other weights (.bin, .onnx, .h5, .msgpack...) only when ``include`` names them."""
    repo_id = repo.model.id
    chosen: dict[str, DownloadFile] = {}
    groups = gguf_groups([f for f in repo.files if f.path.lower().endswith(".gguf")])
    has_safetensors = any(f.path.endswith(".safetensors") for f in repo.files)

    def runtime_files() -> None:
        for f in repo.files:
            if f.path in RUNTIME_FILES or any(fnmatch.fnmatch(f.path, g) for g in RUNTIME_GLOBS):
                chosen.setdefault(f.path, _download_file(f))

    available = ", ".join(f"{name} ({human_size(sum(p.size for p in parts))})" for name, parts in groups.items())
    if quant and quant.lower() != "safetensors":
        if not groups:
            raise DownloadError(
                f"{repo_id} has no GGUF files, so --quant {quant} does not apply",
                hint="drop --quant to download its safetensors weights" if has_safetensors else None,
            )
        match = [name for name in groups if name.lower() == quant.lower()]
        if not match:
            raise DownloadError(f"{repo_id} has no GGUF quantization {quant!r}", hint=f"available: {available}")
        for part in groups[match[0]]:
            chosen[part.path] = _download_file(part, local=part.path.rsplit("/", 1)[-1])
    elif has_safetensors:
        runtime_files()
        weights = client.safetensors_files(repo)
        if repo.file("model.safetensors.index.json"):
            index = repo.file("model.safetensors.index.json")
            assert index is not None
            chosen[index.path] = _download_file(index)
        for f in weights:
            chosen[f.path] = _download_file(f)
    elif quant:
        raise DownloadError(f"{repo_id} has no safetensors weights", hint=f"GGUF choices: {available or 'none'}")
    elif len(groups) == 1:
        (parts,) = groups.values()
        for part in parts:
            chosen[part.path] = _download_file(part, local=part.path.rsplit("/", 1)[-1])
    elif groups:
        raise DownloadError(
            f"{repo_id} offers {len(groups)} GGUF quantizations; choose one with --quant",
            hint=f"available: {available}",
        )
    elif not include:
        others = sorted({f.path.rsplit(".", 1)[-1] for f in repo.files if f.path.endswith((".bin", ".pt", ".pth"))})
        what = "only PyTorch pickle weights (.bin), which Influence does not load" if others else "no weights"
        raise DownloadError(
            f"{repo_id} has {what}; look for a safetensors or GGUF version",
            hint="`--include GLOB` downloads named files anyway",
        )
    else:
        runtime_files()
    for pattern in include:
        matched = [
            f
            for f in repo.files
            if fnmatch.fnmatch(f.path, pattern) or fnmatch.fnmatch(f.path.rsplit("/", 1)[-1], pattern)
        ]
        if not matched:
            raise DownloadError(f"--include {pattern!r} matches no file of {repo_id}")
        for f in matched:
            chosen.setdefault(f.path, _download_file(f))
    locals_seen: dict[str, str] = {}
    for planned in chosen.values():
        if planned.local_path in locals_seen:
            raise DownloadError(
                f"{repo_id}: {planned.repo_path} and {locals_seen[planned.local_path]} would both be saved as "
                f"{planned.local_path}"
            )
        locals_seen[planned.local_path] = planned.repo_path
    return sorted(chosen.values(), key=lambda f: f.local_path)


# ------------------------------------------------------------------------------------------ hashing


class _Hasher:
    """sha256 of the content, and for git files the blob id (sha1 of ``blob <size>\\0`` + content)."""

    def __init__(self, file: DownloadFile) -> None:
        self.file = file
        self.reset()

    def reset(self) -> None:
        file = self.file
        self.sha256 = hashlib.sha256()
        self.git: Any = None
        if file.sha256 is None and file.blob_id and len(file.blob_id) == 40:
            self.git = hashlib.sha1(f"blob {file.size}\0".encode(), usedforsecurity=False)
        self.count = 0

    def update(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)
        self.count += len(data)

    def check(self, file: DownloadFile) -> str | None:
        """None when the content is the expected one, else what differs."""
        if file.sha256 is not None:
            got = self.sha256.hexdigest()
            return None if got == file.sha256.lower() else f"sha256 {got[:16]}… instead of {file.sha256[:16]}…"
        if self.git is not None:
            got = self.git.hexdigest()
            return None if got == file.blob_id else f"git blob id {got[:12]} instead of {file.blob_id!s:.12}"
        return None


def _hash_prefix(path: Path, hasher: _Hasher, length: int, cancel: threading.Event | None = None) -> None:
    with open(path, "rb") as fh:
        remaining = length
        while remaining > 0:
            block = fh.read(min(4 * 2**20, remaining))
            if not block or (cancel is not None and cancel.is_set()):
                break
            hasher.update(block)
            remaining -= len(block)


def file_sha256(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(4 * 2**20):
            digest.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ progress


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


class _Transient(Exception):
    """A failure worth retrying (connection lost, stall, 5xx); internal, never escapes a job."""

    def __init__(self, message: str, received: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.received = received
        self.retry_after = retry_after


# ------------------------------------------------------------------------------------------ the job


class DownloadJob:
    """One download running in background threads: :meth:`wait` for its result, :meth:`cancel` to stop it
    (partial files stay and the next run resumes from them)."""

    def __init__(
        self,
        manager: DownloadManager,
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
        staging = staging_dir(folder)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DownloadError(f"cannot create {root}: {exc.strerror or exc}") from None
        lock_path = root / f".{folder.name}.lock"
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=manager.lock_wait_s)
        except Timeout:
            raise DownloadError(
                f"{plan.repo_id} is being downloaded by another process into {root}", hint="wait for it to finish"
            ) from None
        try:
            result = self._locked(folder, staging)
        finally:
            lock.release()
        lock_path.unlink(missing_ok=True)
        return result

    def _locked(self, folder: Path, staging: Path) -> DownloadResult:
        plan = self.plan
        if self.force:
            remove_path(staging)
        staging.mkdir(parents=True, exist_ok=True)
        old = read_manifest(folder)
        manifest = None if self.force else old
        assembly = assembly_dir(folder)
        if assembly.is_dir():  # killed while putting the files in place: they go back to staging
            for path in assembly.rglob("*"):
                if path.is_file() and path.name != MANIFEST_NAME:
                    back = staging / path.relative_to(assembly)
                    back.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, back)
            remove_path(assembly)
        verified = self._read_verified(staging)
        todo: list[DownloadFile] = []
        reused = 0
        remaining = 0
        for f in plan.files:
            entry = manifest.file(f.local_path) if manifest else None
            target = folder / f.local_path
            staged = staging / f.local_path
            record = verified.get(f.local_path)
            if (
                entry is not None
                and _same_content(entry.sha256, entry.blob_id, entry.size, f)
                and _size(target) == f.size
            ):
                self._update(f.local_path, state="cached", done=f.size, sha256=entry.sha256)
                reused += f.size
            elif record and record.get("key") == _content_key(f) and _size(staged) == f.size:
                self._update(f.local_path, state="done", done=f.size, sha256=record.get("sha256"))
                reused += f.size
            else:
                part = _partial_path(staging, f)
                for stale in _partials(staging, f.local_path):
                    if stale != part:
                        stale.unlink(missing_ok=True)  # from another revision of the file
                if staged.is_file() and not part.exists():
                    os.replace(staged, part)  # complete but not recorded (killed in between): hashed again
                have = min(_size(part), f.size)
                if have:
                    self._update(f.local_path, done=have)
                    reused += have
                remaining += f.size - have
                todo.append(f)
        free = shutil.disk_usage(staging).free
        if remaining > free:
            raise DownloadError(
                f"not enough disk space in {folder.parent}: {plan.repo_id} needs {human_size(remaining)} more, "
                f"{human_size(free)} is free",
                hint="free some space, or download elsewhere with --output DIR",
            )
        if todo:
            self._update(None, state="downloading")
            self._fetch_all(todo, staging)
        return self._finish(folder, staging, old, reused)

    def _fetch_all(self, todo: list[DownloadFile], staging: Path) -> None:
        import httpx

        manager = self.manager
        self._client = manager.client()
        self._http = httpx.Client(
            headers=self._client.headers(),
            follow_redirects=True,
            timeout=httpx.Timeout(manager.connect_timeout_s, read=manager.stall_timeout_s),
            limits=httpx.Limits(max_connections=manager.parallel * 2, max_keepalive_connections=manager.parallel),
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
                    self._fetch(f, staging)
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

    def _fetch(self, f: DownloadFile, staging: Path) -> None:
        """Fetch one file into the staging folder: resume, retry, verify, then move it to its name there."""
        manager = self.manager
        assert self._client is not None
        url = self._client.file_url(self.plan.repo_id, f.repo_path, self.plan.commit)
        part = _partial_path(staging, f)
        part.parent.mkdir(parents=True, exist_ok=True)
        hasher: _Hasher | None = None
        failures = 0
        mismatches = 0
        self._update(f.local_path, state="downloading")
        while not self._stop.is_set():
            have = _size(part)
            if have > f.size:
                part.unlink()
                have = 0
            if hasher is None or hasher.count != have:
                hasher = _Hasher(f)
                if have:
                    self._update(f.local_path, state="verifying", message="checking the bytes already on disk")
                    _hash_prefix(part, hasher, have, self._stop)
                    if hasher.count != have:
                        return  # stopped
                self._update(f.local_path, state="downloading", message=None, done=have)
            if have < f.size:
                try:
                    self._stream(url, part, f, hasher)
                    failures = 0
                except _Transient as exc:
                    failures = 1 if exc.received else failures + 1
                    if failures > manager.retries:
                        raise DownloadError(
                            f"{f.local_path} of {self.plan.repo_id} failed {failures} times in a row: {exc.message}",
                            hint="the partial file is kept; run the download again to resume",
                        ) from None
                    delay = exc.retry_after or min(manager.backoff_s * 2 ** (failures - 1), MAX_BACKOFF_S)
                    delay *= random.uniform(0.8, 1.2)
                    state = self._files[f.local_path]
                    self._update(f.local_path, state="retrying", attempt=state.attempt + 1, message=exc.message)
                    if self._stop.wait(delay):
                        return
                    self._update(f.local_path, state="downloading", message=None)
                continue
            self._update(f.local_path, state="verifying")
            problem = hasher.check(f)
            if problem is not None:
                part.unlink(missing_ok=True)
                hasher = None
                mismatches += 1
                self._set_done(f, 0)
                if mismatches >= 2:
                    raise DownloadError(
                        f"{f.local_path} of {self.plan.repo_id} failed verification twice: {problem}",
                        hint="the server or something on the way sends damaged bytes; nothing was added to the library",
                    )
                state = self._files[f.local_path]
                self._update(
                    f.local_path,
                    state="retrying",
                    attempt=state.attempt + 1,
                    message=f"damaged download ({problem}); fetching it again",
                )
                continue
            with open(part, "rb+") as fh:
                os.fsync(fh.fileno())
            target = staging / f.local_path
            os.replace(part, target)
            digest = hasher.sha256.hexdigest()
            self._record_verified(staging, f, digest)
            self._update(f.local_path, state="done", done=f.size, sha256=digest, message=None)
            return

    def _stream(self, url: str, part: Path, f: DownloadFile, hasher: _Hasher) -> None:
        """One HTTP request from the end of the partial file; appends and hashes what arrives."""
        import httpx

        assert self._http is not None
        offset = hasher.count
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        received = 0
        try:
            with self._http.stream("GET", url, headers=headers) as response:
                status = response.status_code
                if status == 416:
                    part.unlink(missing_ok=True)
                    hasher.reset()
                    raise _Transient("the server refused to resume this file; starting it over")
                if status in (408, 425, 429) or status >= 500:
                    raise _Transient(f"HTTP {status} from {response.url.host}", retry_after=_retry_after(response))
                if status >= 400:
                    raise http_error(
                        response,
                        repo_id=self.plan.repo_id,
                        revision=self.plan.revision,
                        path=f.repo_path,
                        endpoint=self.plan.endpoint,
                        token_given=bool(self._client and self._client.token_given),
                    )
                if offset and status == 206:
                    start = _content_range_start(response.headers.get("Content-Range"))
                    if start != offset:
                        raise _Transient(f"the server resumed at byte {start}, not {offset}")
                elif offset:  # 200: the server ignored the range and sends everything
                    offset = 0
                    hasher.reset()
                with open(part, "r+b" if part.exists() else "wb") as out:
                    out.seek(offset)
                    out.truncate()
                    if offset == 0:
                        self._set_done(f, 0)
                    for chunk in response.iter_raw():  # as received: every byte that arrived is kept
                        if self._stop.is_set():
                            return
                        if hasher.count + len(chunk) > f.size:
                            raise _Transient("the server sent more bytes than the file has", received)
                        out.write(chunk)
                        hasher.update(chunk)
                        received += len(chunk)
                        self._update(f.local_path, force=False, added=len(chunk))
        except httpx.TimeoutException:
            raise _Transient(f"no data for {self.manager.stall_timeout_s:g} s", received) from None
        except httpx.TransportError as exc:
            if received == 0 and isinstance(exc, httpx.ConnectError):
                raise _Transient(str(unreachable(self.plan.endpoint, exc).message)) from None
            raise _Transient(f"connection lost ({type(exc).__name__})", received) from None
        if hasher.count < f.size and received == 0 and not self._stop.is_set():
            raise _Transient("the connection closed before any data")

    def _set_done(self, f: DownloadFile, done: int) -> None:
        with self._state_lock:
            self._files[f.local_path].done = done

    # -- bookkeeping

    @staticmethod
    def _read_verified(staging: Path) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((staging / VERIFIED_NAME).read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _record_verified(self, staging: Path, f: DownloadFile, digest: str) -> None:
        with self._state_lock:
            data = self._read_verified(staging)
            data[f.local_path] = {"key": _content_key(f), "sha256": digest, "size": f.size}
            atomic_write_text(staging / VERIFIED_NAME, json.dumps(data, indent=1))

    def _finish(self, folder: Path, staging: Path, old: Manifest | None, reused: int) -> DownloadResult:
        """Every file is verified: write the manifest and put the files where the library sees them."""
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
        manifest = Manifest(
            repo_id=plan.repo_id,
            revision=plan.revision,
            commit=plan.commit,
            endpoint=plan.endpoint,
            completed=now,
            files=tuple(sorted(entries.values(), key=lambda e: e.path)),
        )
        if not folder.exists():
            # gather the files in a hidden folder and rename it: the model appears whole, in one rename (the
            # staging folder may hold partial files of other downloads of this repo, which stay for later)
            assembly = assembly_dir(folder)
            remove_path(assembly)
            self._move_staged(staging, assembly)
            write_manifest(assembly, manifest)
            os.replace(assembly, folder)
        else:  # a second quantization, an update: each file is complete and verified; the manifest goes last
            self._move_staged(staging, folder)
            write_manifest(folder, manifest)
        leftovers = [p for p in staging.rglob("*") if p.is_file() and p.name != VERIFIED_NAME]
        if not leftovers:
            remove_path(staging)
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

    def _move_staged(self, staging: Path, dest: Path) -> None:
        moved = []
        for f in self.plan.files:
            staged = staging / f.local_path
            if staged.is_file():
                target = dest / f.local_path
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
                moved.append(f.local_path)
        with self._state_lock:
            verified = self._read_verified(staging)
            if any(verified.pop(local, None) for local in moved):
                atomic_write_text(staging / VERIFIED_NAME, json.dumps(verified, indent=1))


def assembly_dir(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.assembling"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _content_key(f: DownloadFile) -> str:
    return f.sha256 or f.blob_id or f"size:{f.size}"


def _same_content(sha256: str | None, blob_id: str | None, size: int, f: DownloadFile) -> bool:
    if size != f.size:
        return False
    if f.sha256 is not None:
        return sha256 == f.sha256
    return f.blob_id is not None and blob_id == f.blob_id


def _partial_path(staging: Path, f: DownloadFile) -> Path:
    tag = _content_key(f).replace(":", "")[:16]
    return staging / f"{f.local_path}.{tag}{PARTIAL_SUFFIX}"


def _partials(staging: Path, local: str) -> Iterable[Path]:
    path = staging / local
    if not path.parent.is_dir():
        return []
    return path.parent.glob(f"{glob_escape(path.name)}.*{PARTIAL_SUFFIX}")


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200"
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return min(float(value), 60.0) if value else None
    except ValueError:
        return None


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


# ------------------------------------------------------------------------------------------ the manager


class DownloadManager:
    """Plans and runs downloads into the models dir (or ``output``) with the settings' endpoint and token."""

    def __init__(
        self,
        settings: Settings,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        parallel: int = DEFAULT_PARALLEL,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        connect_timeout_s: float = 10.0,
        lock_wait_s: float = LOCK_WAIT_S,
    ) -> None:
        if parallel < 1:
            raise DownloadError("parallel downloads must be at least 1")
        self.settings = settings
        self.endpoint = (endpoint or settings.hub_endpoint).rstrip("/")
        self.token = token
        self.parallel = parallel
        self.stall_timeout_s = stall_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.connect_timeout_s = connect_timeout_s
        self.lock_wait_s = lock_wait_s

    def client(self) -> HubClient:
        return HubClient(self.settings, endpoint=self.endpoint, token=self.token, timeout=self.connect_timeout_s)

    def plan(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        quant: str | None = None,
        include: Sequence[str] = (),
        output: Path | None = None,
    ) -> DownloadPlan:
        """Ask the Hub what ``repo_id`` holds and decide which files to fetch (see :func:`select_files`)."""
        with self.client() as client:
            repo = client.repo_info(repo_id, revision)
            if repo.model.gated and not client.token_given:
                raise gated_error(repo.model.id, client.endpoint, token_given=False)
            with client.errors(repo.model.id, revision):
                files = select_files(client, repo, quant=quant, include=include)
        root = (output or self.settings.models_dir).expanduser().absolute()
        return DownloadPlan(
            repo_id=repo.model.id,
            revision=repo.revision,
            commit=repo.commit,
            folder=root / folder_name(repo.model.id),
            files=tuple(files),
            endpoint=self.endpoint,
            quant=quant,
        )

    def start(
        self,
        plan: DownloadPlan,
        *,
        force: bool = False,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> DownloadJob:
        """Run ``plan`` in background threads; the job reports progress to ``on_progress`` (from its threads)."""
        return DownloadJob(self, plan, force=force, on_progress=on_progress, cancel=cancel).start()

    def download(
        self,
        plan: DownloadPlan,
        *,
        force: bool = False,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> DownloadResult:
        """Run ``plan`` and wait for it. Ctrl+C cancels it (the partial files stay for the next run)."""
        job = self.start(plan, force=force, on_progress=on_progress, cancel=cancel)
        try:
            return job.wait()
        except KeyboardInterrupt:
            job.cancel()
            with contextlib.suppress(InfluenceError, TimeoutError):
                job.wait(timeout=2.0)
            raise


# ------------------------------------------------------------------------------------------ verify


def verify_folder(folder: Path, on_bytes: Callable[[int], None] | None = None) -> list[FileCheck]:
    """Re-hash a downloaded model's files against its manifest; one :class:`FileCheck` per file."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise DownloadError(
            f"{folder} has no download manifest, so there is nothing to check it against",
            hint="`influence verify` checks models that `influence download` fetched",
        )
    checks: list[FileCheck] = []
    for entry in manifest.files:
        path = folder / entry.path
        if not path.is_file():
            checks.append(FileCheck(entry.path, False, "missing"))
            continue
        size = path.stat().st_size
        if size != entry.size:
            checks.append(FileCheck(entry.path, False, f"size is {size:,} bytes, expected {entry.size:,}"))
            continue
        try:
            digest = file_sha256(path, on_bytes)
        except OSError as exc:
            checks.append(FileCheck(entry.path, False, f"unreadable: {exc.strerror or exc}"))
            continue
        if digest != entry.sha256:
            checks.append(FileCheck(entry.path, False, f"sha256 is {digest[:16]}…, expected {entry.sha256[:16]}…"))
        else:
            checks.append(FileCheck(entry.path, True))
    return checks
