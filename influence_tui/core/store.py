"""The chat store: every conversation in one SQLite database (stdlib ``sqlite3``, WAL, FTS5 full-text search).

It holds each chat's title, model, system prompt and sampling parameters, and its messages as a tree
(:mod:`influence_tui.core.branches`: every message has a parent, so edits and regenerated replies are kept as
branches) with the branch shown. Messages are indexed by FTS5, so a search across ten thousand chats takes
milliseconds (``bench/store_search.py``; the query and snippets: :mod:`.store_search`).

Writes are small transactions, one per change: a front end writes the user's message when it is sent and the
reply when it is done or stopped (:meth:`ChatStore.autosave`), so a crash loses at most the reply being
written. WAL lets a second Influence read and write the same store.

The schema (:mod:`.store_schema`) is migrated on open by ``PRAGMA user_version`` (each step runs once, in one
transaction). The first open imports the JSON session files of the sessions dir (the files stay as they are);
``/save`` and ``/load`` still write and read that JSON format, now as export and import.

A database that is damaged, locked by another program, or written by a newer Influence raises a
:class:`StoreError` that says so; nothing is written to it, and it is never replaced.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from influence_tui.core.branches import ChatTree, Node
from influence_tui.core.errors import SessionError
from influence_tui.core.sessions import ChatSession, SessionProblem, SessionStore, make_title, utc_now
from influence_tui.core.store_schema import MIGRATIONS, SCHEMA_VERSION, migration_statements
from influence_tui.core.store_search import Snippet, fts_query, make_snippet
from influence_tui.core.types import ChatMessage, SamplingParams

__all__ = [  # the schema version and the search helpers are re-exported: callers import them from here
    "SCHEMA_VERSION",
    "STORE_NAME",
    "ChatStore",
    "ChatSummary",
    "ImportReport",
    "SearchHit",
    "Snippet",
    "StoreError",
    "fts_query",
    "make_snippet",
    "store_path",
]

STORE_NAME = "chats.db"
"""The database's file name, in the sessions dir."""

LOCK_TIMEOUT_S = 2.0
"""How long a write waits for another program's write to finish before the store is said to be locked."""

SCAN_BATCH = 512
"""Matches read at a time while a search collects chats (it stops once it has enough)."""


class StoreError(SessionError):
    """The chat store cannot be opened, read or written (damaged, locked, too new); it was left as it is."""


# ------------------------------------------------------------------------------------------ what it returns


@dataclass(frozen=True)
class ChatSummary:
    """One chat as a list shows it."""

    id: str
    title: str
    model: str | None
    message_count: int
    """Messages in the branch shown."""
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class SearchHit:
    chat: ChatSummary
    snippet: Snippet
    """From the newest matching message (or the title, when only it matches)."""


@dataclass(frozen=True)
class ImportReport:
    """What the first open took from the JSON session files."""

    imported: int = 0
    problems: tuple[SessionProblem, ...] = ()
    source: Path | None = None


# ------------------------------------------------------------------------------------------ helpers


def store_path(sessions_dir: Path) -> Path:
    return Path(sessions_dir) / STORE_NAME


def params_to_json(params: SamplingParams) -> str:
    data = asdict(params)
    data["stop"] = list(params.stop)
    return json.dumps(data, ensure_ascii=False)


def params_from_json(text: str, defaults: SamplingParams) -> SamplingParams:
    """The stored parameters over ``defaults``; a value of the wrong type keeps the default."""
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError:
        return defaults
    if not isinstance(data, dict):
        return defaults
    values: dict[str, Any] = {}
    for spec in fields(SamplingParams):
        if spec.name not in data:
            continue
        value = data[spec.name]
        if spec.name == "stop":
            if isinstance(value, list) and all(isinstance(s, str) for s in value):
                values["stop"] = tuple(value)
        elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            values[spec.name] = value
    return replace(defaults, **values)


# ------------------------------------------------------------------------------------------ the store


class ChatStore:
    """The chats in ``path`` (a SQLite file, created on first use). Safe to use from several threads."""

    def __init__(self, path: Path, *, import_dir: Path | None = None) -> None:
        """``import_dir``: JSON session files imported when the store is created (default: its folder)."""
        self.path = Path(path)
        self.import_dir = Path(import_dir) if import_dir is not None else self.path.parent
        self.import_report: ImportReport | None = None
        """Set when this open created the store and imported the JSON sessions."""
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    @classmethod
    def for_sessions_dir(cls, sessions_dir: Path) -> ChatStore:
        return cls(store_path(sessions_dir), import_dir=sessions_dir)

    # -------------------------------------------------------------- opening

    def open(self) -> ChatStore:
        """Open (and create, migrate, import into) the store now; :class:`StoreError` when it cannot be used."""
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
        return self

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _problem(self, exc: sqlite3.Error, doing: str) -> StoreError:
        text = str(exc)
        lowered = text.lower()
        if "locked" in lowered or "busy" in lowered:
            return StoreError(
                f"the chat store {self.path} is locked by another program ({doing})",
                hint="close the other program or try again; nothing was changed",
            )
        if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
            return StoreError(
                f"the chat store {self.path} is damaged ({text}), so it was left as it is",
                hint=f"move it away (mv {self.path} {self.path}.broken) and a new one starts; the JSON session "
                "files beside it are imported again",
            )
        if "unable to open" in lowered or "readonly" in lowered or "read-only" in lowered:
            return StoreError(
                f"cannot open the chat store {self.path}: {text}", hint="check the folder exists and is writable"
            )
        return StoreError(f"the chat store {self.path} failed while {doing}: {text}")

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path.parent}: {exc.strerror or exc}") from None
        try:
            conn = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._problem(exc, "opening it") from None
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the chat store {self.path} was written by a newer Influence (schema {version}, this one "
                    f"knows {SCHEMA_VERSION}), so it was left as it is",
                    hint="upgrade Influence",
                )
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            if version < SCHEMA_VERSION:
                self._migrate(conn, version)
        except StoreError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise self._problem(exc, "opening it") from None
        return conn

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again inside the transaction: another program may have migrated it meanwhile.
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
            for step in range(current, SCHEMA_VERSION):
                for statement in migration_statements(MIGRATIONS[step]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {step + 1}")
            if current == 0:
                self.import_report = self._import_json(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _import_json(self, conn: sqlite3.Connection) -> ImportReport:
        """Copy every JSON session of :attr:`import_dir` into the store (the files stay as they are)."""
        listing = SessionStore(self.import_dir).scan()
        problems = list(listing.problems)
        count = 0
        for summary in reversed(listing.sessions):  # oldest first
            try:
                session = SessionStore(self.import_dir).load(summary.path)
            except SessionError as exc:
                problems.append(SessionProblem(summary.path, str(exc)))
                continue
            self._save(conn, session)
            conn.execute(
                "INSERT OR REPLACE INTO imported (name, chat_id, imported_at) VALUES (?, ?, ?)",
                (summary.path.name, session.id, utc_now()),
            )
            count += 1
        return ImportReport(count, tuple(problems), self.import_dir)

    @contextmanager
    def _reading(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn if self._conn is not None else self.open()._conn
            assert conn is not None
            try:
                yield conn
            except sqlite3.Error as exc:
                raise self._problem(exc, doing) from None

    @contextmanager
    def _writing(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        with self._reading(doing) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -------------------------------------------------------------- reading

    def list(self, limit: int | None = None) -> tuple[ChatSummary, ...]:
        """The chats, last updated first."""
        with self._reading("listing the chats") as conn:
            rows = conn.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM chats ORDER BY updated_at DESC, rowid DESC LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        return tuple(_summary(row) for row in rows)

    def count(self) -> int:
        with self._reading("counting the chats") as conn:
            return int(conn.execute("SELECT count(*) FROM chats").fetchone()[0])

    def find(self, ref: str) -> str:
        """The id of the chat given by id or unique id prefix."""
        ref = ref.strip()
        with self._reading("finding a chat") as conn:
            if ref and conn.execute("SELECT 1 FROM chats WHERE id = ?", (ref,)).fetchone():
                return ref
            like = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = conn.execute("SELECT id FROM chats WHERE id LIKE ? ESCAPE '\\' LIMIT 2", (like,)).fetchall()
        if ref and len(rows) == 1:
            return str(rows[0][0])
        if ref and len(rows) > 1:
            raise SessionError(f"{ref!r} matches several saved chats", hint="give more of the id")
        raise SessionError(f"there is no saved chat {ref!r}", hint="`influence sessions list` shows the ids")

    def summary(self, ref: str) -> ChatSummary:
        chat_id = self.find(ref)
        with self._reading("reading a chat") as conn:
            row = conn.execute(f"SELECT {_SUMMARY_COLUMNS} FROM chats WHERE id = ?", (chat_id,)).fetchone()
        return _summary(row)

    def tree(self, chat_id: str) -> ChatTree:
        """Every message of a chat (an empty tree for a chat not stored)."""
        with self._reading("reading a chat") as conn:
            return self._tree(conn, chat_id)

    def open_chat(self, ref: str, *, defaults: SamplingParams | None = None) -> tuple[ChatSession, ChatTree]:
        """A chat (by id or id prefix) as a session showing its current branch, and its tree."""
        chat_id = self.find(ref)
        with self._reading("reading a chat") as conn:
            row = conn.execute(
                "SELECT id, title, model, system_prompt, params, created_at, updated_at FROM chats WHERE id = ?",
                (chat_id,),
            ).fetchone()
            tree = self._tree(conn, chat_id)
        session = ChatSession(
            system_prompt=row[3] or None,
            params=params_from_json(row[4], defaults or SamplingParams()),
            model=row[2] or None,
            messages=tree.messages(),
            title=row[1] or "",
            id=row[0],
            created_at=row[5],
            updated_at=row[6],
        )
        return session, tree

    def load(self, ref: str, *, defaults: SamplingParams | None = None) -> ChatSession:
        """A chat (by id or id prefix) showing its current branch."""
        return self.open_chat(ref, defaults=defaults)[0]

    def _tree(self, conn: sqlite3.Connection, chat_id: str) -> ChatTree:
        head_row = conn.execute("SELECT head FROM chats WHERE id = ?", (chat_id,)).fetchone()
        rows = conn.execute(
            "SELECT id, parent, role, content, created_at FROM messages WHERE chat_id = ? ORDER BY seq", (chat_id,)
        ).fetchall()
        nodes = [Node(row[0], row[1], ChatMessage(row[2], row[3], row[4])) for row in rows]
        return ChatTree.from_nodes(nodes, head_row[0] if head_row else None)

    def search(self, text: str, *, limit: int = 100) -> tuple[SearchHit, ...]:
        """The chats whose messages hold every word of ``text`` (the last one as a prefix), the chat with the
        newest match first, each with a snippet of that message; then the chats whose title alone matches.

        FTS5 hands the matches newest first, and reading stops once ``limit`` chats are found, so a word found
        in every message costs no more than a rare one."""
        query = fts_query(text)
        if query is None:
            return ()
        found: dict[str, int | None] = {}  # chat id -> seq of its newest matching message
        with self._reading("searching the chats") as conn:
            try:
                cursor = conn.execute(
                    "SELECT m.chat_id, m.seq FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid "
                    "WHERE messages_fts MATCH ? ORDER BY messages_fts.rowid DESC",
                    (query,),
                )
                while len(found) < limit:
                    rows = cursor.fetchmany(SCAN_BATCH)
                    if not rows:
                        break
                    for chat_id, seq in rows:
                        if chat_id not in found:
                            found[chat_id] = seq
                            if len(found) >= limit:
                                break
                cursor.close()
            except sqlite3.OperationalError as exc:
                if "fts5" in str(exc).lower():
                    return ()  # a query FTS5 cannot read: nothing matches
                raise
            if len(found) < limit:
                for (chat_id,) in conn.execute(
                    "SELECT c.id FROM chats_fts JOIN chats c ON c.rowid = chats_fts.rowid "
                    "WHERE chats_fts MATCH ? ORDER BY chats_fts.rowid DESC LIMIT ?",
                    (query, limit),
                ):
                    if len(found) < limit:
                        found.setdefault(chat_id, None)
            ids = list(found)
            marks = ",".join("?" * len(ids))
            chats = {
                row[0]: _summary(row)
                for row in conn.execute(f"SELECT {_SUMMARY_COLUMNS} FROM chats WHERE id IN ({marks})", ids)
            }
            seqs = [seq for seq in found.values() if seq is not None]
            contents = dict(
                conn.execute(f"SELECT seq, content FROM messages WHERE seq IN ({','.join('?' * len(seqs))})", seqs)
            )
        hits: list[SearchHit] = []
        for chat_id, seq in found.items():
            chat = chats.get(chat_id)
            if chat is None:
                continue
            source = contents.get(seq) if seq is not None else None
            hits.append(SearchHit(chat, make_snippet(source if source is not None else chat.title, text)))
        return tuple(hits)

    # -------------------------------------------------------------- writing

    def autosave(self, session: ChatSession) -> ChatTree:
        """Store the session: its details, and its messages as the branch shown (messages not yet stored are
        added, those that differ from the stored branch start a new one). Return the chat's tree.

        A session with no message that is not stored yet is not stored."""
        with self._writing("saving a chat") as conn:
            return self._save(conn, session)

    def _save(self, conn: sqlite3.Connection, session: ChatSession) -> ChatTree:
        tree = self._tree(conn, session.id)
        exists = bool(tree) or conn.execute("SELECT 1 FROM chats WHERE id = ?", (session.id,)).fetchone()
        if not exists and not session.messages:
            return tree
        added = tree.adopt(session.messages)
        title = session.title or make_title(next((m.content for m in session.messages if m.role == "user"), ""))
        conn.execute(
            """
            INSERT INTO chats (id, title, model, system_prompt, params, created_at, updated_at, head, message_count)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (id) DO UPDATE SET
                title = excluded.title, model = excluded.model, system_prompt = excluded.system_prompt,
                params = excluded.params, updated_at = excluded.updated_at, head = excluded.head,
                message_count = excluded.message_count
            """,
            (
                session.id,
                title,
                session.model,
                session.system_prompt,
                params_to_json(session.params),
                session.created_at,
                session.updated_at,
                tree.head,
                len(session.messages),
            ),
        )
        conn.executemany(
            "INSERT INTO messages (id, chat_id, parent, role, content, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            [(n.id, session.id, n.parent, n.message.role, n.message.content, n.message.timestamp) for n in added],
        )
        return tree

    def rename(self, ref: str, title: str) -> ChatSummary:
        chat_id = self.find(ref)
        title = " ".join(title.split())
        if not title:
            raise SessionError("a chat's title cannot be empty")
        with self._writing("renaming a chat") as conn:
            conn.execute("UPDATE chats SET title = ? WHERE id = ?", (title, chat_id))
        return self.summary(chat_id)

    def delete(self, ref: str) -> ChatSummary:
        """Remove a chat and all its messages; return what it was."""
        summary = self.summary(ref)
        with self._writing("deleting a chat") as conn:
            conn.execute("DELETE FROM messages WHERE chat_id = ?", (summary.id,))
            conn.execute("DELETE FROM chats WHERE id = ?", (summary.id,))
        return summary

    def import_session(self, session: ChatSession) -> ChatTree:
        """Store a session read from a JSON file (merged into the stored chat of the same id, if any)."""
        return self.autosave(session)


_SUMMARY_COLUMNS = "id, title, model, message_count, created_at, updated_at"


def _summary(row: Sequence[Any]) -> ChatSummary:
    return ChatSummary(
        id=str(row[0]),
        title=str(row[1] or "") or "New chat",
        model=row[2] or None,
        message_count=int(row[3]),
        created_at=str(row[4]),
        updated_at=str(row[5]),
    )
