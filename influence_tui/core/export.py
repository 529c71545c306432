"""A chat as a Markdown document: its title, model, parameters and dates, then every message of the branch shown.

Used by ``/export PATH`` in the chats, the conversations pane and ``influence sessions export``. Messages are
written as they are (they are Markdown already); each gets a heading with who wrote it and when.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from influence_tui.core.errors import SessionError
from influence_tui.core.fsutil import atomic_write_text
from influence_tui.core.sessions import PARAM_NAMES, ChatSession, parse_time


def local_time(iso: str) -> str:
    """``2026-01-29 14:30`` in the local time zone (the text as it is when it is not a date)."""
    try:
        parsed = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone()
    return parsed.strftime("%Y-%m-%d %H:%M")


def _when(iso: str) -> str:
    parsed = parse_time(iso) if iso else None
    return parsed.strftime("%Y-%m-%d %H:%M UTC") if parsed else iso


def chat_markdown(session: ChatSession) -> str:
    """The Markdown text of ``session``."""
    lines = [f"# {session.display_title}", ""]
    lines.append(f"- **Model:** {session.model or 'not chosen'}")
    lines.append(f"- **Created:** {_when(session.created_at)}")
    lines.append(f"- **Updated:** {_when(session.updated_at)}")
    params = ", ".join(f"{name} {session.param_display(name)}" for name in PARAM_NAMES)
    lines.append(f"- **Parameters:** {params}")
    lines.append(f"- **Messages:** {len(session.messages)}")
    if session.system_prompt:
        lines += ["", "## System prompt", "", session.system_prompt]
    for message in session.messages:
        who = "You" if message.role == "user" else session.model or "Assistant"
        stamp = f" · {_when(message.timestamp)}" if message.timestamp else ""
        lines += ["", f"## {who}{stamp}", "", message.content.rstrip("\n")]
    return "\n".join(lines) + "\n"


def export_markdown(session: ChatSession, path: Path) -> Path:
    """Write ``session`` as Markdown to ``path`` (atomically); a folder or an unwritable place is an error."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise SessionError(f"{path} is a folder", hint="give a file name, e.g. chat.md")
    try:
        atomic_write_text(path, chat_markdown(session))
    except OSError as exc:
        raise SessionError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
