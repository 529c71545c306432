"""The chat store's SQLite schema: the migration steps by ``PRAGMA user_version``, and a step cut into statements."""

from __future__ import annotations

import sqlite3

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migration_statements"]

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: chats, their messages as a tree, full-text search over the messages and the titles, the JSON
    # files imported.
    """
    CREATE TABLE chats (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL DEFAULT '',
        model TEXT,
        system_prompt TEXT,
        params TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        head TEXT,
        message_count INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX chats_by_update ON chats (updated_at DESC);
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        chat_id TEXT NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
        parent TEXT,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX messages_by_chat ON messages (chat_id, seq);
    CREATE VIRTUAL TABLE messages_fts USING fts5 (
        content, content = 'messages', content_rowid = 'seq', tokenize = 'unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts (rowid, content) VALUES (new.seq, new.content);
    END;
    CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.seq, old.content);
    END;
    CREATE TRIGGER messages_au AFTER UPDATE OF content ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.seq, old.content);
        INSERT INTO messages_fts (rowid, content) VALUES (new.seq, new.content);
    END;
    CREATE VIRTUAL TABLE chats_fts USING fts5 (
        title, content = 'chats', content_rowid = 'rowid', tokenize = 'unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER chats_ai AFTER INSERT ON chats BEGIN
        INSERT INTO chats_fts (rowid, title) VALUES (new.rowid, new.title);
    END;
    CREATE TRIGGER chats_ad AFTER DELETE ON chats BEGIN
        INSERT INTO chats_fts (chats_fts, rowid, title) VALUES ('delete', old.rowid, old.title);
    END;
    CREATE TRIGGER chats_au AFTER UPDATE OF title ON chats WHEN old.title IS NOT new.title BEGIN
        INSERT INTO chats_fts (chats_fts, rowid, title) VALUES ('delete', old.rowid, old.title);
        INSERT INTO chats_fts (rowid, title) VALUES (new.rowid, new.title);
    END;
    CREATE TABLE imported (
        name TEXT PRIMARY KEY,
        chat_id TEXT,
        imported_at TEXT NOT NULL
    );
    """,
)
"""Step ``n`` takes a store from ``user_version`` n to n + 1."""

SCHEMA_VERSION = len(MIGRATIONS)
"""``PRAGMA user_version`` of a store this version writes."""


def migration_statements(script: str) -> list[str]:
    """A migration's statements (a trigger's body keeps its own semicolons)."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements
