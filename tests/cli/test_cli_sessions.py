"""`influence sessions list | search | show | export | rm`, on the chat store of the isolated env."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from influence_tui.cli import main
from influence_tui.core.config import load_settings
from influence_tui.core.sessions import ChatSession, load_session
from influence_tui.core.store import ChatStore


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def chats(isolated_env: Path) -> list[ChatSession]:
    store = ChatStore.for_sessions_dir(load_settings().sessions_dir)
    made = []
    for when, texts in (
        ("2026-01-02T10:00:00+00:00", ["Tell me about Paris", "Paris is the capital of France."]),
        ("2026-01-03T09:30:00+00:00", ["How do I sort a list?", "Use sorted()."]),
    ):
        session = ChatSession(created_at=when, model="TinyLlama")
        session.add_user(texts[0])
        session.add_assistant(texts[1])
        session.updated_at = when
        store.autosave(session)
        made.append(session)
    store.close()
    return made


def test_list_and_search_with_json(capsys: pytest.CaptureFixture[str], chats: list[ChatSession]) -> None:
    paris, sort = chats
    code, out, _ = run(capsys, "sessions", "list")
    assert code == 0
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].split()[:4] == ["ID", "UPDATED", "MSGS", "MODEL"]
    assert lines[1].startswith(sort.id) and "How do I sort a list?" in lines[1]
    assert lines[2].startswith(paris.id)
    code, out, _ = run(capsys, "sessions", "list", "--json")
    data = json.loads(out)
    assert [d["id"] for d in data] == [sort.id, paris.id] and data[0]["message_count"] == 2
    code, out, _ = run(capsys, "sessions", "search", "capital", "--json")
    found = json.loads(out)
    assert [d["id"] for d in found] == [paris.id]
    assert [found[0]["snippet"][s:e] for s, e in found[0]["spans"]] == ["capital"]
    code, out, _ = run(capsys, "sessions", "search", "capital")
    assert paris.id in out and "capital of France" in out
    code, out, _ = run(capsys, "sessions", "search", "nothing-like-it")
    assert code == 0 and "No chat matches" in out


def test_show_export_rm(capsys: pytest.CaptureFixture[str], chats: list[ChatSession], tmp_path: Path) -> None:
    paris, sort = chats
    code, out, _ = run(capsys, "sessions", "show", paris.id[:6])
    assert code == 0 and out.startswith("# Tell me about Paris\n") and "Paris is the capital" in out
    code, out, err = run(capsys, "sessions", "export", paris.id, "-o", str(tmp_path / "paris.md"))
    assert code == 0 and "Exported" in err
    assert "- **Model:** TinyLlama" in (tmp_path / "paris.md").read_text(encoding="utf-8")
    code, out, _ = run(capsys, "sessions", "export", paris.id, "--format", "json", "-o", str(tmp_path / "p.json"))
    assert load_session(tmp_path / "p.json").messages == paris.messages  # what /load reads
    code, out, _ = run(capsys, "sessions", "export", paris.id, "--format", "json")
    assert json.loads(out)["influence"]["id"] == paris.id
    code, _, err = run(capsys, "sessions", "rm", sort.id, "--yes")
    assert code == 0 and "Deleted “How do I sort a list?”" in err
    code, _, err = run(capsys, "sessions", "show", sort.id)
    assert code == 1 and "no saved chat" in err
