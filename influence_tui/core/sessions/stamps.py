"""Timestamps, ids and titles of chat sessions: ISO 8601 UTC times to the second, random ids, titles cut from
the first user message."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone

__all__ = ["SESSION_ID", "TITLE_LENGTH", "make_title", "new_session_id", "normalize_timestamp", "parse_time", "utc_now"]

TITLE_LENGTH = 60
"""Longest title made from the first user message (a longer one is cut at a word and ends with …)."""

SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a session id may be (letters, digits, - and _; 1 to 64 of them)."""


def utc_now() -> str:
    """The current time as ISO 8601 UTC, to the second (``2026-01-29T14:30:15+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_time(text: str) -> datetime | None:
    """An ISO-like date or time as an aware UTC datetime (a naive one read as local time), None for other text."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"  # Python 3.10's fromisoformat does not read "Z"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # naive: local time, as the original tool wrote it
    return parsed.astimezone(timezone.utc)


def normalize_timestamp(text: str) -> str:
    """ISO 8601 UTC for any ISO-like date or time; a naive one (the original tool wrote local time as
    ``2026-01-29 14:30:15``) is read as local time. Text that is not a date is kept as written."""
    parsed = parse_time(text)
    return parsed.isoformat(timespec="seconds") if parsed else text


def new_session_id() -> str:
    """A short random id, safe in a file name (12 hex digits)."""
    return secrets.token_hex(6)


def make_title(text: str, limit: int = TITLE_LENGTH) -> str:
    """One line from a message: whitespace collapsed, cut at a word near ``limit`` characters with an ellipsis."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    cut = line[: limit - 1].rstrip()
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space].rstrip()
    return cut + "…"
