"""Chat slash commands: parsing, help, and their effects on a session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from influence_tui.core import slash
from influence_tui.core.sessions import ChatSession, SessionStore, load_session
from influence_tui.core.slash import (
    COMMANDS,
    Clear,
    Help,
    History,
    Invalid,
    Load,
    Params,
    Quit,
    Retry,
    Save,
    Sessions,
    Set,
    SlashAction,
    Stats,
    System,
    Title,
    Undo,
    execute,
    parse,
)
from influence_tui.core.types import GenerationStats


def _session() -> ChatSession:
    session = ChatSession(system_prompt="Be brief.", model="tiny")
    session.add_user("What is the capital of France?")
    session.add_assistant("Paris.")
    return session


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("/help", Help()),
        ("/?", Help()),
        ("/help set", Help("set")),
        ("/help /save", Help("save")),
        ("/clear", Clear()),
        ("  /CLEAR  ", Clear()),
        ("/history", History()),
        ("/retry", Retry()),
        ("/undo", Undo()),
        ("/system", System()),
        ("/system You are a pirate.", System("You are a pirate.")),
        ("/system --clear", System(clear=True)),
        ("/set", Set()),
        ("/set temperature 0.9", Set("temperature", "0.9")),
        ("/set top_k", Set("top_k", None)),
        ("/set stop \\n\\nUser:", Set("stop", "\\n\\nUser:")),
        ("/params", Params()),
        ("/stats", Stats()),
        ("/title Trip planning", Title("Trip planning")),
        ("/save project_discussion.json", Save("project_discussion.json")),
        ('/save "my chat.json"', Save("my chat.json")),
        ("/load project_discussion.json", Load("project_discussion.json")),
        ("/sessions", Sessions()),
        ("/quit", Quit()),
        ("/exit", Quit()),
        ("/q", Quit()),
    ],
)
def test_parse(line: str, command: slash.SlashCommand) -> None:
    assert parse(line) == command


@pytest.mark.parametrize("line", ["hello", "", "   ", "what does /help do?", "/usr/bin/env: not found", "/2 is half"])
def test_chat_text_is_not_a_command(line: str) -> None:
    assert parse(line) is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/", "type a command after /"),
        ("/hlep", "unknown command /hlep: did you mean /help? /help lists the commands"),
        ("/sav x.json", "did you mean /save?"),
        ("/frobnicate", "unknown command /frobnicate: /help lists the commands"),
        ("/save", "usage: /save FILE — save this conversation to a JSON file"),
        ("/load", "usage: /load FILE|ID"),
        ("/title", "usage: /title TEXT"),
        ("/clear everything", "/clear takes no argument"),
        ("/quit now", "/quit takes no argument"),
    ],
)
def test_bad_input_gets_a_message(line: str, message: str) -> None:
    command = parse(line)
    assert isinstance(command, Invalid)
    assert message in command.message
    result = execute(command, _session())
    assert not result.ok and message in result.message and result.action is SlashAction.NONE


def test_help_lists_every_command_with_a_description() -> None:
    result = execute(Help(), _session())
    assert result.ok
    for spec in COMMANDS:
        line = next(line for line in result.message.splitlines() if line.strip().startswith(f"/{spec.name}"))
        assert spec.summary in line
    assert "/exit" in result.message  # aliases are shown
    one = execute(Help("set"), _session()).message
    assert one.startswith("/set [PARAM VALUE]") and "temperature" in one
    assert "unknown command /nope" in execute(Help("nope"), _session()).message


def test_clear_keeps_the_system_prompt_and_params() -> None:
    session = _session()
    session.set_param("temperature", "0.1")
    result = execute(Clear(), session)
    assert result.action is SlashAction.RELOAD and "cleared" in result.message
    assert session.messages == [] and session.system_prompt == "Be brief." and session.params.temperature == 0.1


def test_history_shows_every_message() -> None:
    result = execute(History(), _session())
    assert "Be brief." in result.message and "capital of France" in result.message and "Paris." in result.message


def test_set_lists_changes_and_refuses_bad_values() -> None:
    session = _session()
    listing = execute(Set(), session).message
    for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens", "seed", "stop"):
        assert name in listing
    assert execute(Params(), session).message == listing

    result = slash.run("/set temperature 0.9", session)
    assert result is not None and result.ok and result.action is SlashAction.UPDATED
    assert result.message == "✓ temperature set to 0.9" and session.params.temperature == 0.9
    assert slash.run("/set max-tokens 1024", session).message == "✓ max_tokens set to 1024"  # type: ignore[union-attr]
    assert session.params.max_tokens == 1024
    shown = execute(Set("top_k"), session)
    assert shown.ok and shown.message.startswith("top_k = off")

    bad = execute(Set("temperature", "hot"), session)
    assert not bad.ok and "'hot' is not a number" in bad.message
    unknown = execute(Set("tempature", "1"), session)
    assert not unknown.ok and "unknown parameter 'tempature'" in unknown.message
    assert "did you mean temperature" in unknown.message
    assert session.params.temperature == 0.9


def test_system_shows_sets_and_clears() -> None:
    session = _session()
    assert execute(System(), session).message == "System prompt: Be brief."
    result = execute(System("You are a pirate."), session)
    assert result.action is SlashAction.UPDATED and session.system_prompt == "You are a pirate."
    assert execute(System(clear=True), session).ok and session.system_prompt is None
    assert "No system prompt" in execute(System(), session).message


def test_stats_retry_undo_title() -> None:
    session = _session()
    stats = execute(Stats(), session)
    assert stats.action is SlashAction.SHOW_STATS and "No reply yet" in stats.message
    session.add_user("And Italy?")
    session.add_assistant("Rome.", GenerationStats(12, 3, 0.25, 42.0, 0.4, "stop"))
    stats = execute(Stats(), session)
    assert "12 prompt tokens" in stats.message and "42.0 tokens/s" in stats.message and "stop" in stats.message

    retry = execute(Retry(), session)
    assert retry.action is SlashAction.RETRY and [m.content for m in retry.removed] == ["Rome."]
    assert session.messages[-1].content == "And Italy?"

    undo = execute(Undo(), session)
    assert undo.action is SlashAction.RELOAD and [m.content for m in undo.removed] == ["And Italy?"]
    assert [m.content for m in session.messages] == ["What is the capital of France?", "Paris."]

    empty = ChatSession()
    assert not execute(Retry(), empty).ok and "nothing to retry" in execute(Retry(), empty).message
    assert not execute(Undo(), empty).ok

    title = execute(Title("  Capitals   of Europe "), session)
    assert title.action is SlashAction.UPDATED and session.title == "Capitals of Europe"


def test_quit_and_exit() -> None:
    for line in ("/quit", "/exit"):
        result = slash.run(line, _session())
        assert result is not None and result.action is SlashAction.QUIT
    assert slash.run("hello there", _session()) is None


def test_save_and_load_files(tmp_path: Path) -> None:
    session = _session()
    result = execute(Save("project"), session, base_dir=tmp_path)
    path = tmp_path / "project.json"
    assert result.ok and result.path == path and "saved to" in result.message
    assert load_session(path).messages == session.messages

    other = ChatSession(model="current-model")
    loaded = execute(Load("project"), other, base_dir=tmp_path)
    assert loaded.ok and loaded.action is SlashAction.RELOAD and loaded.path == path
    assert loaded.session is not None and loaded.session.messages == session.messages
    assert loaded.session.model == "tiny" and "Messages: 2" in loaded.message
    assert other.messages == []  # the current session is replaced by the front end, not changed

    missing = execute(Load("nowhere.json"), other, base_dir=tmp_path)
    assert not missing.ok and "no session file" in missing.message

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes", encoding="utf-8")
    refused = execute(Save("notes.txt"), session, base_dir=tmp_path)
    assert not refused.ok and "not overwritten" in refused.message
    assert notes.read_text(encoding="utf-8") == "my notes"
    corrupt = execute(Load("notes.txt"), other, base_dir=tmp_path)
    assert not corrupt.ok and "not valid JSON" in corrupt.message


def test_load_by_id_and_list_sessions_from_the_store(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "sessions")
    session = _session()
    store.autosave(session)
    (tmp_path / "sessions" / "broken.json").write_text(json.dumps({"nothing": 1}), encoding="utf-8")

    listing = execute(Sessions(), ChatSession(), store=store)
    assert listing.ok and session.id in listing.message and session.title in listing.message
    assert "skipped broken.json" in listing.message
    assert not execute(Sessions(), ChatSession()).ok  # no store

    loaded = execute(Load(session.id), ChatSession(), store=store, base_dir=tmp_path)
    assert loaded.ok and loaded.session is not None and loaded.session.id == session.id
    assert not execute(Load("zzz"), ChatSession(), store=store, base_dir=tmp_path).ok
