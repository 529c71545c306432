"""The sessions dir as JSON files (:class:`SessionStore`): autosaved after every reply, listed, loaded, deleted.
The chat store (:mod:`influence_tui.core.store`) imports them once and writes the same format on ``/save``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from influence_tui.core.errors import SessionError
from influence_tui.core.sessions.session import ChatSession, load_session
from influence_tui.core.sessions.stamps import parse_time
from influence_tui.core.types import SamplingParams

__all__ = ["SessionListing", "SessionProblem", "SessionStore", "SessionSummary"]


@dataclass(frozen=True)
class SessionSummary:
    """What a list of saved sessions shows, read from one file."""

    id: str
    title: str
    model: str | None
    message_count: int
    created_at: str
    updated_at: str
    path: Path


@dataclass(frozen=True)
class SessionProblem:
    """A file in the sessions dir that could not be read as a session (it is left as it is)."""

    path: Path
    message: str


@dataclass(frozen=True)
class SessionListing:
    sessions: tuple[SessionSummary, ...]
    """Newest (last updated) first."""
    problems: tuple[SessionProblem, ...] = ()


class SessionStore:
    """Sessions kept in the sessions dir as ``<created date>-<id>.json``; autosaved after every reply."""

    def __init__(self, sessions_dir: Path) -> None:
        self.sessions_dir = Path(sessions_dir)

    def path_for(self, session: ChatSession) -> Path:
        created = parse_time(session.created_at) or datetime.now(timezone.utc)
        return self.sessions_dir / f"{created.date().isoformat()}-{session.id}.json"

    def autosave(self, session: ChatSession) -> Path:
        """Write ``session`` to its file in the store (atomically) and return the path."""
        return session.save(self.path_for(session))

    def scan(self) -> SessionListing:
        """Every session in the store, newest first, and the files that are not sessions."""
        sessions: list[SessionSummary] = []
        problems: list[SessionProblem] = []
        try:
            files = sorted(p for p in self.sessions_dir.glob("*.json") if not p.name.startswith("."))
        except OSError:
            files = []
        for path in files:
            try:
                session = load_session(path)
            except SessionError as exc:
                problems.append(SessionProblem(path, str(exc)))
                continue
            sessions.append(
                SessionSummary(
                    id=session.id,
                    title=session.display_title,
                    model=session.model,
                    message_count=len(session.messages),
                    created_at=session.created_at,
                    updated_at=session.updated_at,
                    path=path,
                )
            )
        sessions.sort(
            key=lambda s: (parse_time(s.updated_at) or datetime.min.replace(tzinfo=timezone.utc), s.path.name)
        )
        sessions.reverse()
        return SessionListing(tuple(sessions), tuple(problems))

    def list(self) -> tuple[SessionSummary, ...]:
        """The sessions in the store, newest first (files that are not sessions are skipped; see :meth:`scan`)."""
        return self.scan().sessions

    def find(self, ref: str) -> Path:
        """The file of a session given by id, unique id prefix or file name."""
        ref = ref.strip()
        listing = self.scan()
        exact = [s.path for s in listing.sessions if ref in (s.id, s.path.name, s.path.stem)]
        exact += [p.path for p in listing.problems if ref in (p.path.name, p.path.stem)]
        if exact:
            return exact[0]
        prefixed = [s for s in listing.sessions if ref and s.id.startswith(ref)]
        if len(prefixed) == 1:
            return prefixed[0].path
        if len(prefixed) > 1:
            raise SessionError(f"{ref!r} matches {len(prefixed)} saved sessions", hint="give more of the id")
        raise SessionError(f"there is no saved session {ref!r} in {self.sessions_dir}", hint="list them to see the ids")

    def load(self, ref: str | Path, *, defaults: SamplingParams | None = None) -> ChatSession:
        """Load a session from a path, or from the store by id, id prefix or file name."""
        path = Path(ref).expanduser()
        if isinstance(ref, Path) or path.is_file() or len(path.parts) > 1:
            return load_session(path, defaults=defaults)
        return load_session(self.find(str(ref)), defaults=defaults)

    def delete(self, ref: str) -> Path:
        """Remove a session's file from the store (by id, id prefix or file name); return the path removed."""
        path = self.find(ref)
        try:
            path.unlink()
        except OSError as exc:
            raise SessionError(f"cannot delete {path}: {exc.strerror or exc}") from None
        return path
