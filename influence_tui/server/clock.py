"""Times as the server's APIs write them: RFC 3339 in UTC with a ``Z``, as Ollama writes them."""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["utc_iso"]


def utc_iso(timestamp: float | None = None) -> str:
    """RFC 3339 in UTC with a ``Z`` for a Unix time (now when None), as Ollama writes times."""
    moment = datetime.now(timezone.utc) if timestamp is None else datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")
