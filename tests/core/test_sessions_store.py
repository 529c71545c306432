"""The chat store (SQLite): branches, search, migrations, the JSON import, crashes, damaged and locked files."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from influence_tui.core import slash
from influence_tui.core.branches import ChatTree
from influence_tui.core.errors import SessionError
from influence_tui.core.export import chat_markdown
from influence_tui.core.sessions import ChatSession, SessionStore, load_session
from influence_tui.core.store import (
    SCHEMA_VERSION,
    STORE_NAME,
    ChatStore,
    StoreError,
    fts_query,
    make_snippet,
)
from influence_tui.core.types import ChatMessage, SamplingParams


def _chat(*texts: str, when: str = "2026-01-02T10:00:00+00:00", **kw: object) -> ChatSession:
    session = ChatSession(created_at=when, model="TinyLlama", **kw)  # type: ignore[arg-type]
    for i, text in enumerate(texts):
        if i % 2:
            session.add_assistant(text)
        else:
            session.add_user(text)
    session.updated_at = when
    return session


# ------------------------------------------------------------------------------------------ the tree


def test_the_tree_keeps_every_branch_and_adopts_linear_messages() -> None:
    tree = ChatTree()
    q, a1, a2 = (
        ChatMessage("user", "q", "t1"),
        ChatMessage("assistant", "a1", "t2"),
        ChatMessage("assistant", "a2", "t3"),
    )
    assert len(tree.adopt([q, a1])) == 2
    assert tree.adopt([q, a1]) == []  # nothing new
    assert [n.message for n in tree.adopt([q, a2])] == [a2]  # a regenerated reply: a sibling of the first
    assert tree.messages() == [q, a2]
    a2_id = tree.head
    assert a2_id is not None
    assert tree.alternatives(a2_id).label == "‹ 2/2 ›"
    tree.switch(a2_id, -1)
    assert tree.messages() == [q, a1]
    assert tree.switch(tree.path()[1].id, -1) is None  # no alternative before the first
    # an edited first message: a second root, with its own branch; switching back shows the first as left
    q2 = ChatMessage("user", "q edited", "t4")
    tree.adopt([q2])
    assert tree.alternatives(tree.path()[0].id).label == "‹ 2/2 ›"
    tree.switch(tree.path()[0].id, -1)
    assert tree.messages() == [q, a1]
    removed = tree.remove(tree.path()[1].id)
    assert len(removed) == 1 and tree.messages() == [q]


# ------------------------------------------------------------------------------------------ the store


def test_autosave_open_list_rename_delete(tmp_path: Path) -> None:
    store = ChatStore(tmp_path / STORE_NAME)
    older = _chat("Tell me about Paris", "Paris is the capital of France.", when="2026-01-02T10:00:00+00:00")
    newer = _chat("How do I sort a list?", "Use sorted().", when="2026-01-03T09:30:00+00:00", system_prompt="Be brief")
    newer.set_param("temperature", "0.2")
    newer.set_param("stop", '["\\n\\n"]')
    newer.updated_at = "2026-01-03T09:30:00+00:00"
    store.autosave(older)
    store.autosave(newer)
    assert store.autosave(ChatSession()) == ChatTree()  # an empty new chat is not stored
    assert [c.id for c in store.list()] == [newer.id, older.id]
    summary = store.list()[0]
    assert (summary.title, summary.model, summary.message_count) == ("How do I sort a list?", "TinyLlama", 2)

    session, tree = store.open_chat(newer.id[:6])
    assert session.messages == newer.messages and len(tree) == 2
    assert session.system_prompt == "Be brief"
    assert session.params.temperature == 0.2 and session.params.stop == ("\n\n",)
    assert (session.created_at, session.updated_at, session.title) == (newer.created_at, newer.updated_at, newer.title)

    assert store.rename(older.id, "  Paris  notes ").title == "Paris notes"
    assert store.load(older.id).title == "Paris notes"
    assert store.delete(older.id).id == older.id
    assert [c.id for c in store.list()] == [newer.id]
    with pytest.raises(SessionError, match="no saved chat"):
        store.load(older.id)
    assert store.search("Paris") == ()  # its messages went with it


def test_a_regenerated_reply_and_an_edit_are_kept_as_branches(tmp_path: Path) -> None:
    store = ChatStore(tmp_path / STORE_NAME)
    session = _chat("Name a colour", "Red.")
    store.autosave(session)
    # /retry: the reply is taken out and answered again
    assert slash.run("/retry", session, store=store) is not None
    session.add_assistant("Blue.")
    tree = store.autosave(session)
    assert len(tree) == 3 and tree.alternatives(tree.path()[1].id).label == "‹ 2/2 ›"
    # an edit of the first message: a second branch from the start
    del session.messages[:]
    session.add_user("Name a fruit")
    session.add_assistant("Apple.")
    tree = store.autosave(session)
    assert tree.alternatives(tree.path()[0].id).label == "‹ 2/2 ›"
    # what is stored is the branch shown, and every other branch
    again, stored = store.open_chat(session.id)
    assert [m.content for m in again.messages] == ["Name a fruit", "Apple."]
    stored.switch(stored.path()[0].id, -1)
    assert [m.content for m in stored.messages()] == ["Name a colour", "Blue."]  # as it was last shown
    again.messages = stored.messages()
    store.autosave(again)
    assert [m.content for m in store.load(session.id).messages] == ["Name a colour", "Blue."]
    assert {h.chat.id for h in store.search("red")} == {session.id}  # old branches are searched too


def test_search_finds_words_in_any_message_with_the_matches_marked(tmp_path: Path) -> None:
    store = ChatStore(tmp_path / STORE_NAME)
    a = _chat("How do I read a file line by line?", "Iterate over the file object.", when="2026-01-02T10:00:00+00:00")
    b = _chat("Write a haiku", "Weights on my own disk, files of night", when="2026-01-03T10:00:00+00:00")
    c = _chat("Café crème?", "Oui.", when="2026-01-04T10:00:00+00:00")
    for chat in (a, b, c):
        store.autosave(chat)
    hits = store.search("file")
    assert [h.chat.id for h in hits] == [b.id, a.id]  # the newest match first; "files" matches as a prefix
    first = hits[1]
    assert first.snippet.text == "Iterate over the file object."  # the newest matching message of the chat
    marked = [first.snippet.text[s:e] for s, e in first.snippet.spans]
    assert marked == ["file"]
    assert [h.chat.id for h in store.search("read line")] == [a.id]  # every word
    cafe = store.search("cafe")
    assert [h.chat.id for h in cafe] == [c.id]  # accents do not matter, in the search or the marks
    assert [cafe[0].snippet.text[s:e] for s, e in cafe[0].snippet.spans] == ["Café"]
    assert store.search("") == () and store.search('"*) AND (') == ()  # no words: nothing; syntax is quoted
    store.rename(b.id, "Poetry corner")
    hit = store.search("poetry")[0]
    assert hit.chat.id == b.id and hit.snippet.text[slice(*hit.snippet.spans[0])] == "Poetry"


def test_query_and_snippet_helpers() -> None:
    assert fts_query("hello wor") == '"hello" "wor"*'
    assert fts_query("  ") is None
    long = "word " * 30 + "the needle is here " + "word " * 60
    snippet = make_snippet(long, "needle")
    assert snippet.text.startswith("…") and snippet.text.endswith("…") and len(snippet.text) <= 162
    assert [snippet.text[s:e] for s, e in snippet.spans] == ["needle"]
    assert make_snippet("no match here", "zzz") == make_snippet("no match here", "")


def test_first_open_imports_the_json_sessions_and_nothing_is_lost(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    json_store = SessionStore(sessions)
    ours = _chat("Explain the GIL", "One thread at a time.", system_prompt="You are terse")
    ours.set_param("seed", "7")
    ours.title = "GIL"
    json_store.autosave(ours)
    legacy = sessions / "old_chat.json"  # the original tool's format: no id, naive local times
    legacy.write_text(
        json.dumps(
            {
                "model_path": "/models/x",
                "temperature": 0.5,
                "messages": [
                    {"role": "user", "content": "hi", "timestamp": "2025-12-01 10:00:00"},
                    {"role": "assistant", "content": "hello", "timestamp": "2025-12-01 10:00:05"},
                ],
                "created_at": "2025-12-01 10:00:00",
            }
        ),
        encoding="utf-8",
    )
    broken = sessions / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in sessions.iterdir()}

    store = ChatStore.for_sessions_dir(sessions).open()
    report = store.import_report
    assert report is not None and report.imported == 2
    assert [p.path for p in report.problems] == [broken]
    assert {p.name: p.read_bytes() for p in sessions.iterdir() if p.suffix == ".json"} == before  # untouched
    for original in (load_session(next(sessions.glob(f"*{ours.id}.json"))), load_session(legacy)):
        copy = store.load(original.id)
        assert copy.to_dict() == original.to_dict()  # every field, message and time
    store.close()
    # the second open imports nothing again
    again = ChatStore.for_sessions_dir(sessions).open()
    assert again.import_report is None and again.count() == 2


def test_migrations_follow_user_version_and_a_newer_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / STORE_NAME
    store = ChatStore(path).open()
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    size = path.stat().st_size
    with pytest.raises(StoreError, match="newer Influence"):
        ChatStore(path).open()
    assert path.stat().st_size == size


def test_a_damaged_store_is_named_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / STORE_NAME
    garbage = b"this is not a database, but someone's notes\n" * 200
    path.write_bytes(garbage)
    store = ChatStore(path)
    with pytest.raises(StoreError, match=r"is damaged .* left as it is") as caught:
        store.autosave(_chat("hello", "hi"))
    assert f"mv {path} {path}.broken" in str(caught.value)
    with pytest.raises(StoreError):
        store.list()
    assert path.read_bytes() == garbage


def test_a_locked_store_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("influence_tui.core.store.LOCK_TIMEOUT_S", 0.2)
    path = tmp_path / STORE_NAME
    ChatStore(path).open().close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        store = ChatStore(path)
        with pytest.raises(StoreError, match="locked by another program"):
            store.autosave(_chat("hello", "hi"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_crash_mid_reply_loses_only_the_reply(tmp_path: Path) -> None:
    """kill -9 while the reply streams: the user's message, written when it was sent, is there."""
    path = tmp_path / STORE_NAME
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from influence_tui.core.sessions import ChatSession
        from influence_tui.core.store import ChatStore
        store = ChatStore({str(path)!r})
        session = ChatSession(id="crashchat")
        session.add_user("first question")
        session.add_assistant("first answer")
        store.autosave(session)
        session.add_user("second question")
        store.autosave(session)          # written at send
        print("streaming", flush=True)
        time.sleep(60)                   # the reply is being written when the process dies
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2]
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "streaming"
    process.kill()  # SIGKILL: no cleanup, no atexit
    process.wait()
    session = ChatStore(path).load("crashchat")
    assert [m.content for m in session.messages] == ["first question", "first answer", "second question"]


def test_markdown_export_has_model_parameters_and_dates() -> None:
    session = _chat("Hi [bold]", "Hello", system_prompt="Be kind")
    session.params = SamplingParams(temperature=0.3)
    text = chat_markdown(session)
    assert text.startswith("# Hi [bold]\n")
    assert "- **Model:** TinyLlama" in text and "temperature 0.3" in text
    assert "- **Created:** 2026-01-02 10:00 UTC" in text
    assert "## System prompt\n\nBe kind" in text
    assert "## You · " in text and "## TinyLlama · " in text and text.endswith("Hello\n")


def test_slash_load_sessions_and_export_use_the_store(tmp_path: Path) -> None:
    store = ChatStore(tmp_path / STORE_NAME)
    saved = _chat("Saved question", "Saved answer")
    store.autosave(saved)
    current = ChatSession()
    listed = slash.run("/sessions", current, store=store)
    assert listed is not None and saved.id in listed.message
    loaded = slash.run(f"/load {saved.id[:5]}", current, store=store)
    assert loaded is not None and loaded.ok and loaded.session is not None
    assert loaded.session.messages == saved.messages
    exported = slash.run("/export notes", saved, store=store, base_dir=tmp_path)
    assert exported is not None and exported.ok and exported.path == tmp_path / "notes.md"
    assert "Saved answer" in (tmp_path / "notes.md").read_text(encoding="utf-8")
    # /save and /load keep the JSON format as export and import
    assert slash.run("/save copy", saved, base_dir=tmp_path) is not None
    assert load_session(tmp_path / "copy.json").messages == saved.messages
    os.chdir(tmp_path)
    again = slash.run("/load copy.json", ChatSession(), store=store, base_dir=tmp_path)
    assert again is not None and again.session is not None and again.session.id == saved.id
