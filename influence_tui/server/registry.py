"""Which servers run on this machine: one small JSON record per ``influence serve`` process in the data dir.

A server writes its record once it listens and removes it when it stops; ``influence ps`` and
``influence serve --stop`` read them and drop the records of processes that are gone (or whose pid now
belongs to another process). Nothing here imports the web stack: the CLI uses it without starting a server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from influence_tui.core import paths
from influence_tui.core.fsutil import atomic_write_text

LOG_ENV = "INFLUENCE_SERVER_LOG"
"""Set by ``serve --detach`` for its child: the log file the child's output goes to (shown by ``ps``)."""


def servers_dir() -> Path:
    return paths.data_dir() / "servers"


@dataclass(frozen=True)
class ServerRecord:
    pid: int
    url: str
    host: str
    port: int
    model: str
    started_at: float
    """When the server started listening (epoch seconds)."""
    process_started: float
    """The process's creation time, to tell a reused pid from the server's."""
    log: str | None = None
    detached: bool = False
    api_key: bool = False
    shutdown_grace: float = 10.0
    """Seconds it lets running requests finish when stopped (``serve --stop`` waits that long and more)."""

    @property
    def path(self) -> Path:
        return record_path(self.pid)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_path(pid: int) -> Path:
    return servers_dir() / f"{pid}.json"


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started, or None when there is no such (living) process."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(process.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def is_running(record: ServerRecord) -> bool:
    started = process_start_time(record.pid)
    return started is not None and abs(started - record.process_started) < 2.0


def write_record(
    *,
    url: str,
    host: str,
    port: int,
    model: str,
    log: str | None,
    detached: bool,
    api_key: bool,
    shutdown_grace: float = 10.0,
) -> ServerRecord:
    pid = os.getpid()
    record = ServerRecord(
        pid=pid,
        url=url,
        host=host,
        port=port,
        model=model,
        started_at=time.time(),
        process_started=process_start_time(pid) or time.time(),
        log=log,
        detached=detached,
        api_key=api_key,
        shutdown_grace=shutdown_grace,
    )
    path = record.path
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record.to_dict(), indent=2) + "\n")
    return record


def remove_record(pid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(pid).unlink()


def read_record(path: Path) -> ServerRecord | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ServerRecord(**data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return None


def running_servers() -> list[ServerRecord]:
    """The records of servers still running, oldest first; stale and unreadable records are removed."""
    folder = servers_dir()
    if not folder.is_dir():
        return []
    records: list[ServerRecord] = []
    for path in sorted(folder.glob("*.json")):
        record = read_record(path)
        if record is None or not is_running(record):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        records.append(record)
    return sorted(records, key=lambda r: r.started_at)


# ------------------------------------------------------------------------------------------ addresses


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def client_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to ``host``: a wildcard address becomes the
    loopback one, an IPv6 address goes in brackets."""
    name = host.strip("[]")
    if name in ("0.0.0.0", ""):
        name = "127.0.0.1"
    elif name == "::":
        name = "::1"
    if ":" in name:
        name = f"[{name}]"
    return f"http://{name}:{port}"


def bind_warning(host: str, api_key: str | None) -> str | None:
    """The warning for a server open to the network without a key (None when there is nothing to warn of)."""
    if api_key or is_loopback(host):
        return None
    return (
        f"binding {host} without --api-key: anyone who can reach this machine can use the model; "
        "set --api-key KEY (or INFLUENCE_API_KEY), or bind 127.0.0.1"
    )
