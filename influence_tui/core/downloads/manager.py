"""The manager: plans downloads with the Hub client and starts their jobs, with the settings' endpoint and token."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from influence_tui.core.downloads.job import DownloadJob, ProgressCallback
from influence_tui.core.downloads.plan import select_files
from influence_tui.core.downloads.staging import folder_name
from influence_tui.core.downloads.transfer import DEFAULT_BACKOFF_S, DEFAULT_RETRIES, DEFAULT_STALL_TIMEOUT_S
from influence_tui.core.errors import DownloadError, InfluenceError
from influence_tui.core.hub import HubClient, gated_error
from influence_tui.core.types import DownloadPlan, DownloadResult

if TYPE_CHECKING:
    from influence_tui.core.config import Settings

DEFAULT_PARALLEL = 4
LOCK_WAIT_S = 5.0


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
