"""Listing the remotes' models: each remote asked through :mod:`influence_tui.core.engine.remote_http` (imported
when first needed), all of them in parallel, and :class:`RemoteCatalog`, the cached listing one process shares."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from influence_tui.core.errors import RemoteError
from influence_tui.core.remotes import (
    LIST_CACHE_S,
    LIST_TIMEOUT_S,
    Remote,
    RemoteListing,
    RemoteModel,
    load_remotes,
    split_model_ref,
)

__all__ = ["RemoteCatalog", "list_remote", "list_remotes"]


def list_remote(remote: Remote, timeout_s: float = LIST_TIMEOUT_S) -> RemoteListing:
    """Ask one remote for its models (at most ``timeout_s`` for the connection and for the answer)."""
    from influence_tui.core.engine.remote_http import RemoteClient

    started = time.monotonic()
    client = RemoteClient(remote, connect_timeout_s=min(timeout_s, remote.connect_timeout_s), read_timeout_s=timeout_s)
    try:
        models = client.list_models()
    except RemoteError as exc:
        return RemoteListing(remote, error=str(exc), elapsed_s=time.monotonic() - started)
    finally:
        client.close()
    return RemoteListing(remote, tuple(models), elapsed_s=time.monotonic() - started)


def list_remotes(remotes: Iterable[Remote], timeout_s: float = LIST_TIMEOUT_S) -> list[RemoteListing]:
    """Every remote's models, asked in parallel; an unreachable remote is a listing with an error, never an
    exception. In the order given."""
    remotes = list(remotes)
    if not remotes:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(remotes)), thread_name_prefix="influence-remote-list") as pool:
        return list(pool.map(lambda r: list_remote(r, timeout_s), remotes))


@dataclass
class RemoteCatalog:
    """The configured remotes and a cached listing of their models, shared by the screens of one process."""

    config_path: Path | None = None
    ttl_s: float = LIST_CACHE_S
    timeout_s: float = LIST_TIMEOUT_S
    _cached: tuple[float, tuple[RemoteListing, ...]] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def remotes(self) -> dict[str, Remote]:
        """Read from the config file each time (a remote added in another terminal shows at the next listing)."""
        return load_remotes(self.config_path)

    def listings(self, *, refresh: bool = False) -> list[RemoteListing]:
        """Every remote's models; a listing younger than :attr:`ttl_s` is reused unless ``refresh``."""
        remotes = self.remotes()
        with self._lock:
            cached = self._cached
        if (
            cached is not None
            and not refresh
            and time.monotonic() - cached[0] < self.ttl_s
            and [listing.remote for listing in cached[1]] == list(remotes.values())
        ):
            return list(cached[1])
        listings = list_remotes(remotes.values(), self.timeout_s)
        with self._lock:
            self._cached = (time.monotonic(), tuple(listings))
        return listings

    def model(self, ref: str) -> RemoteModel | None:
        """The remote model ``MODEL@REMOTE`` names (known from the cached listing, else bare), or None when
        ``ref`` does not name a configured remote."""
        found = split_model_ref(ref, self.remotes())
        if found is None:
            return None
        remote, model_id = found
        with self._lock:
            cached = self._cached
        for listing in cached[1] if cached else ():
            for model in listing.models:
                if model.remote == remote and model.model_id == model_id:
                    return model
        return RemoteModel(remote, model_id)
