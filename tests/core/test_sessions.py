"""Chat sessions: prompts within the context window, JSON files (ours and the original tool's), the store."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from influence_tui.core.errors import ConfigError, InfluenceError, SessionError
from influence_tui.core.sessions import (
    NO_SYSTEM_ROLE_WARNING,
    ChatSession,
    SessionStore,
    build_prompt,
    load_session,
    make_title,
    normalize_timestamp,
    parse_stop,
)
from influence_tui.core.types import ChatMessage, GenerationStats, SamplingParams


@pytest.fixture
def tokenizer(tiny_llama_template: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_template)


def _chat(exchanges: int, *, system: str | None = "You are terse.") -> ChatSession:
    session = ChatSession(system_prompt=system)
    for n in range(exchanges):
        session.add_user(f"question number {n} about Paris and Rome")
        session.add_assistant(f"answer number {n}: the capital of France is Paris")
    session.add_user("the newest question")
    return session


def _is_utc_iso(text: str) -> bool:
    parsed = datetime.fromisoformat(text)
    return parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ prompts


def test_prompt_uses_the_models_chat_template(tokenizer: Any) -> None:
    session = _chat(1)
    plan = session.build_prompt(tokenizer, context_length=4096, reserve_tokens=64)
    expected = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": session.messages[0].content},
            {"role": "assistant", "content": session.messages[1].content},
            {"role": "user", "content": "the newest question"},
        ],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert plan.prompt_text == expected
    assert plan.prompt_text.endswith("<|im_start|>assistant\n")
    assert list(plan.prompt_ids) == tokenizer.encode(expected, add_special_tokens=False)
    assert plan.used_chat_template and plan.warning is None
    assert plan.dropped == 0 and plan.dropped_indexes == () and plan.dropped_notice is None
    assert plan.prompt_tokens == len(plan.prompt_ids)


def test_no_chat_template_falls_back_to_a_plain_format_with_a_warning(tokenizer: Any) -> None:
    tokenizer.chat_template = None
    session = ChatSession(system_prompt="Be kind.")
    session.add_user("hi")
    session.add_assistant("hello")
    session.add_user("again")
    plan = session.build_prompt(tokenizer, context_length=4096, reserve_tokens=16)
    assert plan.prompt_text == "System: Be kind.\n\nUser: hi\n\nAssistant: hello\n\nUser: again\n\nAssistant:"
    assert not plan.used_chat_template
    assert plan.warning is not None and "no chat template" in plan.warning
    assert tokenizer.decode(list(plan.prompt_ids)) == plan.prompt_text


def test_template_without_a_system_role_gets_the_system_prompt_in_the_first_message(tokenizer: Any) -> None:
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"
    )
    session = ChatSession(system_prompt="Be kind.")
    session.add_user("hi")
    plan = session.build_prompt(tokenizer, context_length=4096, reserve_tokens=16)
    assert plan.prompt_text == "[user] Be kind.\n\nhi\n[assistant]"
    assert plan.warning == NO_SYSTEM_ROLE_WARNING


def test_a_template_that_fails_otherwise_is_a_session_error(tokenizer: Any) -> None:
    tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
    session = ChatSession()
    session.add_user("hi")
    with pytest.raises(SessionError, match="must alternate"):
        session.build_prompt(tokenizer, context_length=4096, reserve_tokens=16)


def test_history_is_fitted_by_dropping_the_oldest_exchanges(tokenizer: Any) -> None:
    session = _chat(6)
    full = session.build_prompt(tokenizer, context_length=100_000, reserve_tokens=0).prompt_tokens
    reserve = 20
    context = full + reserve - 40  # too small for everything
    plan = session.build_prompt(tokenizer, context_length=context, reserve_tokens=reserve)

    assert 1 <= plan.dropped < 6
    assert plan.dropped_indexes == tuple(range(2 * plan.dropped))  # whole exchanges, oldest first
    assert plan.prompt_tokens + reserve <= context
    assert "You are terse." in plan.prompt_text
    assert plan.prompt_text.rstrip().endswith("the newest question<|im_end|>\n<|im_start|>assistant")
    for n in range(6):
        assert (f"question number {n} " in plan.prompt_text) == (n >= plan.dropped)
        assert (f"answer number {n}:" in plan.prompt_text) == (n >= plan.dropped)
    notice = plan.dropped_notice
    assert notice is not None and str(plan.dropped) in notice

    # As few as possible were dropped: keeping one more exchange would not fit.
    one_more = ChatSession(system_prompt=session.system_prompt, messages=session.messages[2 * (plan.dropped - 1) :])
    longer = one_more.build_prompt(tokenizer, context_length=100_000, reserve_tokens=0).prompt_tokens
    assert longer + reserve > context


def test_fitting_keeps_the_system_prompt_and_newest_message_when_all_else_goes(tokenizer: Any) -> None:
    session = _chat(4)
    minimal = ChatSession(system_prompt=session.system_prompt, messages=session.messages[-1:])
    needed = minimal.build_prompt(tokenizer, context_length=100_000, reserve_tokens=0).prompt_tokens
    plan = session.build_prompt(tokenizer, context_length=needed + 10, reserve_tokens=10)
    assert plan.dropped == 4
    assert plan.dropped_indexes == tuple(range(8))
    assert "You are terse." in plan.prompt_text and "the newest question" in plan.prompt_text
    assert "question number" not in plan.prompt_text


def test_a_newest_message_too_long_for_the_context_is_an_error(tokenizer: Any) -> None:
    session = _chat(2)
    session.add_assistant("reply")
    session.add_user("word " * 400)
    with pytest.raises(SessionError, match=r"too long for the model's context: the prompt needs \d+ tokens") as info:
        session.build_prompt(tokenizer, context_length=256, reserve_tokens=64)
    assert "256" in str(info.value)
    assert isinstance(info.value, InfluenceError)


def test_prompt_needs_a_user_message_last(tokenizer: Any) -> None:
    session = ChatSession()
    with pytest.raises(SessionError, match="no user message"):
        session.build_prompt(tokenizer, context_length=256, reserve_tokens=16)
    session.add_user("hi")
    session.add_assistant("hello")
    with pytest.raises(SessionError, match="ends with a reply"):
        session.build_prompt(tokenizer, context_length=256, reserve_tokens=16)


def test_build_prompt_over_a_message_list_keeps_system_messages(tokenizer: Any) -> None:
    messages = [
        ChatMessage("system", "Rules."),
        ChatMessage("user", "old question " * 20),
        ChatMessage("assistant", "old answer " * 20),
        ChatMessage("user", "new question"),
    ]
    minimal = build_prompt(tokenizer, [messages[0], messages[3]], context_length=100_000, reserve_tokens=0)
    plan = build_prompt(tokenizer, messages, context_length=minimal.prompt_tokens + 5, reserve_tokens=5)
    assert plan.dropped_indexes == (1, 2)
    assert plan.prompt_text == minimal.prompt_text


# ------------------------------------------------------------------------------------------ session changes


def test_messages_are_timestamped_in_utc_and_the_first_names_the_session() -> None:
    session = ChatSession()
    user = session.add_user("What is the capital of France, and why is it such a well-known city to visit?")
    reply = session.add_assistant("Paris.")
    assert [m.role for m in session.messages] == ["user", "assistant"]
    assert _is_utc_iso(user.timestamp) and _is_utc_iso(reply.timestamp)
    assert session.title.startswith("What is the capital of France") and session.title.endswith("…")
    assert len(session.title) <= 60
    assert session.updated_at == reply.timestamp
    with pytest.raises(SessionError, match="empty"):
        session.add_user("   ")


def test_make_title_and_timestamps() -> None:
    assert make_title("  hello\n  world ") == "hello world"
    assert make_title("x" * 100).endswith("…") and len(make_title("x" * 100)) == 60
    assert normalize_timestamp("2026-01-29T14:30:15Z") == "2026-01-29T14:30:15+00:00"
    assert normalize_timestamp("2026-01-29T16:30:15+02:00") == "2026-01-29T14:30:15+00:00"
    naive = datetime(2026, 1, 29, 14, 30, 15).astimezone().astimezone(timezone.utc)
    assert normalize_timestamp("2026-01-29 14:30:15") == naive.isoformat(timespec="seconds")
    assert normalize_timestamp("yesterday") == "yesterday"


def test_clear_keeps_system_prompt_params_and_model_and_starts_a_new_id() -> None:
    session = _chat(2)
    session.model = "tiny"
    session.set_param("temperature", "0.2")
    session.last_stats = GenerationStats(3, 4, 0.1, 10.0, 0.5, "stop")
    old_id = session.id
    session.clear()
    assert session.messages == [] and session.title == "" and session.last_stats is None
    assert session.system_prompt == "You are terse." and session.params.temperature == 0.2
    assert session.model == "tiny" and session.id != old_id


def test_retry_and_undo() -> None:
    session = _chat(1)
    with pytest.raises(SessionError, match="nothing to retry"):
        ChatSession().prepare_retry()
    # The newest user message has no reply yet: retry removes nothing.
    assert session.prepare_retry() == ()
    reply = session.add_assistant("first try")
    assert session.prepare_retry() == (reply,)
    assert session.messages[-1].content == "the newest question"

    session.add_assistant("second try")
    removed = session.pop_last_exchange()
    assert [m.content for m in removed] == ["the newest question", "second try"]
    assert [m.role for m in session.messages] == ["user", "assistant"]
    assert session.pop_last_exchange() and session.messages == []
    assert session.pop_last_exchange() == ()


def test_set_param_validates_like_the_settings() -> None:
    session = ChatSession()
    assert session.set_param("temperature", "0.9") == "temperature"
    assert session.params.temperature == 0.9
    assert session.set_param("top-p", "0.5") == "top_p" and session.params.top_p == 0.5
    assert session.set_param("temp", "0") == "temperature" and session.params.temperature == 0.0
    session.set_param("top_k", "40")
    assert session.params.top_k == 40
    session.set_param("top_k", "0")
    assert session.params.top_k is None and session.param_display("top_k") == "off"
    session.set_param("min_p", "0.05")
    session.set_param("seed", "42")
    session.set_param("max_tokens", "1024")
    session.set_param("repeat_penalty", "1.3")
    session.set_param("repeat_last_n", "0")
    assert (session.params.min_p, session.params.seed, session.params.max_tokens) == (0.05, 42, 1024)
    assert (session.params.repeat_penalty, session.params.repeat_last_n) == (1.3, 0)

    with pytest.raises(ConfigError, match="'hot' is not a number"):
        session.set_param("temperature", "hot")
    with pytest.raises(ConfigError, match="out of range"):
        session.set_param("top_p", "1.5")
    with pytest.raises(ConfigError, match="out of range"):
        session.set_param("max_tokens", "0")
    with pytest.raises(ConfigError, match="did you mean temperature"):
        session.set_param("tempreature", "1")
    assert session.params.temperature == 0.0  # unchanged by the failures


def test_stop_strings() -> None:
    session = ChatSession()

    def stops() -> tuple[str, ...]:
        return session.params.stop

    session.set_param("stop", "\\n\\nUser:")
    assert stops() == ("\n\nUser:",)
    session.set_param("stop", '["###", "END"]')
    assert stops() == ("###", "END")
    assert session.param_display("stop") == '["###", "END"]'
    session.set_param("stop", "off")
    assert stops() == () and session.param_display("stop") == "off"
    with pytest.raises(ConfigError):
        parse_stop('["ok", 3]')
    with pytest.raises(ConfigError):
        parse_stop("[not json")


def test_history_text() -> None:
    session = ChatSession(system_prompt="Be kind.")
    assert "(no messages yet)" in session.history_text()
    session.add_user("hi")
    session.add_assistant("hello [bold]there[/]")
    text = session.history_text()
    assert text.startswith("System: Be kind.")
    assert "You (" in text and "):\nhi" in text and "Assistant (" in text and "hello [bold]there[/]" in text


def test_from_settings(settings: Any) -> None:
    session = ChatSession.from_settings(settings, model="some/model", system_prompt="S")
    assert session.params == SamplingParams.from_settings(settings)
    assert (session.model, session.system_prompt) == ("some/model", "S")


# ------------------------------------------------------------------------------------------ files


def _full_session() -> ChatSession:
    session = ChatSession(system_prompt="You are a helpful assistant.", model="owner/repo")
    session.set_param("temperature", "0.3")
    session.set_param("top_k", "20")
    session.set_param("min_p", "0.1")
    session.set_param("seed", "7")
    session.set_param("stop", '["\\n\\n", "User:"]')
    session.set_param("repeat_last_n", "32")
    session.add_user("Hello! 你好 😀")
    session.add_assistant("Hello! How can I help you today?")
    return session


def test_save_load_round_trip_keeps_every_field(tmp_path: Path) -> None:
    session = _full_session()
    path = session.save(tmp_path / "chat.json")
    loaded = load_session(path)
    assert loaded.to_dict() == session.to_dict()
    assert loaded.messages == session.messages
    assert loaded.params == session.params
    for name in ("id", "title", "model", "system_prompt", "created_at", "updated_at"):
        assert getattr(loaded, name) == getattr(session, name)
    data = json.loads(path.read_text(encoding="utf-8"))
    # The original tool's keys are at the top level.
    assert data["model_path"] == "owner/repo" and data["system_prompt"] == "You are a helpful assistant."
    assert (data["max_tokens"], data["temperature"], data["top_p"], data["top_k"]) == (512, 0.3, 0.9, 20)
    assert data["repeat_penalty"] == 1.1 and data["created_at"] == session.created_at
    assert data["messages"][0] == {
        "role": "user",
        "content": "Hello! 你好 😀",
        "timestamp": session.messages[0].timestamp,
    }
    assert data["influence"]["version"] == 1 and data["influence"]["stop"] == ["\n\n", "User:"]
    assert "你好" in path.read_text(encoding="utf-8")  # readable, not \u-escaped


def test_loading_a_file_written_by_the_original_tool(tmp_path: Path) -> None:
    path = tmp_path / "project_discussion.json"
    original = {
        "model_path": "./models/TinyLlama_TinyLlama-1.1B-Chat-v1.0",
        "system_prompt": "You are a helpful assistant.",
        "max_tokens": 256,
        "temperature": 0.8,
        "top_p": 0.95,
        "top_k": None,
        "repeat_penalty": 1.2,
        "messages": [
            {"role": "user", "content": "Hello!", "timestamp": "2026-01-29 14:30:15"},
            {"role": "assistant", "content": "Hello! How can I help you today?", "timestamp": "2026-01-29 14:30:18"},
        ],
        "created_at": "2026-01-29 14:30:00",
    }
    path.write_text(json.dumps(original), encoding="utf-8")
    session = load_session(path, defaults=SamplingParams(min_p=0.02))
    assert session.model == "./models/TinyLlama_TinyLlama-1.1B-Chat-v1.0"
    assert session.system_prompt == "You are a helpful assistant."
    assert [(m.role, m.content) for m in session.messages] == [
        ("user", "Hello!"),
        ("assistant", "Hello! How can I help you today?"),
    ]
    assert session.messages[0].timestamp == normalize_timestamp("2026-01-29 14:30:15")
    assert _is_utc_iso(session.messages[0].timestamp) and _is_utc_iso(session.created_at)
    params = session.params
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k) == (256, 0.8, 0.95, None)
    assert params.repeat_penalty == 1.2 and params.min_p == 0.02  # the rest from the defaults
    assert session.title == "Hello!" and session.id == "project_discussion"  # stable across loads
    assert session.updated_at == session.messages[-1].timestamp

    # The README's shorter example (no parameters) loads too, and saving it back keeps the original keys.
    minimal = {k: original[k] for k in ("model_path", "system_prompt", "messages", "created_at")}
    path.write_text(json.dumps(minimal), encoding="utf-8")
    session = load_session(path)
    assert session.params == SamplingParams() and len(session.messages) == 2
    session.save(path)
    assert set(original) <= set(json.loads(path.read_text(encoding="utf-8")))


def test_a_system_message_in_the_list_becomes_the_system_prompt(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps({"messages": [{"role": "system", "content": "Rules."}, {"role": "user", "content": "hi"}]}),
        encoding="utf-8",
    )
    session = load_session(path)
    assert session.system_prompt == "Rules." and [m.role for m in session.messages] == ["user"]
    assert session.messages[0].timestamp == ""


def test_a_corrupt_file_is_refused_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    path.write_text('{"messages": [', encoding="utf-8")
    with pytest.raises(SessionError, match="not valid JSON"):
        load_session(path)
    with pytest.raises(SessionError, match="not an Influence session file, so it was not overwritten"):
        _full_session().save(path)
    assert path.read_text(encoding="utf-8") == '{"messages": ['
    _full_session().save(path, overwrite=True)
    assert load_session(path).title == "Hello! 你好 😀"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[1, 2]", "expected a JSON object"),
        ('{"name": "my notes"}', 'no "messages" list'),
        ('{"messages": "hi"}', 'no "messages" list'),
        ('{"messages": [1]}', "message 1 is not an object"),
        ('{"messages": [{"role": "tool", "content": "x"}]}', "unknown role 'tool'"),
        ('{"messages": [{"role": "user", "content": 3}]}', "no text content"),
        ('{"messages": [{"role": "user", "content": "x", "timestamp": 5}]}', "timestamp"),
        ('{"messages": [], "system_prompt": 5}', '"system_prompt" is not text'),
        ('{"messages": [], "temperature": "hot"}', '"temperature" is not a number'),
        ('{"messages": [], "temperature": 500}', "out of range"),
        ('{"messages": [], "influence": []}', '"influence" is not an object'),
        ('{"messages": [], "influence": {"id": "../../etc"}}', "not a session id"),
        ('{"messages": [], "influence": {"stop": "x"}}', '"stop" is not a list'),
        ('{"messages": [], "influence": {"version": 99}}', "newer Influence"),
    ],
)
def test_foreign_json_is_refused_and_left_alone(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "other.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SessionError, match=problem.replace("(", r"\(").replace("[", r"\[")):
        load_session(path)
    with pytest.raises(SessionError, match="not overwritten"):
        _full_session().save(path)
    assert path.read_text(encoding="utf-8") == content


def test_unreadable_files_are_session_errors(tmp_path: Path) -> None:
    with pytest.raises(SessionError, match="no session file"):
        load_session(tmp_path / "missing.json")
    with pytest.raises(SessionError, match="is a folder"):
        load_session(tmp_path)
    binary = tmp_path / "blob.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SessionError, match="not UTF-8"):
        load_session(binary)
    with pytest.raises(SessionError, match="is a folder"):
        _full_session().save(tmp_path)


def test_saving_over_a_session_file_is_allowed_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "chats" / "chat.json"
    first = _full_session()
    first.save(path)
    second = _full_session()
    second.add_user("more")
    second.save(path)
    assert len(load_session(path).messages) == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["chat.json"]  # no temp files left


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "chats" / "chat.json"
    _full_session().save(path)
    before = path.read_bytes()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    changed = _full_session()
    changed.add_user("more")
    with pytest.raises(SessionError, match=r"cannot save the session .*No space left"):
        changed.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["chat.json"]


# ------------------------------------------------------------------------------------------ the store


def test_store_autosave_list_load_delete_with_a_corrupt_file(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "sessions")
    assert store.list() == () and store.scan().problems == ()  # the dir does not exist yet

    older = _chat(1)
    older.created_at = older.updated_at = "2026-01-02T10:00:00+00:00"
    newer = _chat(2, system=None)
    newer.created_at = "2026-01-03T09:00:00+00:00"
    newer.updated_at = "2026-01-03T10:00:00+00:00"
    older_path = store.autosave(older)
    newer_path = store.autosave(newer)
    assert older_path == tmp_path / "sessions" / f"2026-01-02-{older.id}.json"
    assert newer_path.name == f"2026-01-03-{newer.id}.json"
    corrupt = tmp_path / "sessions" / "2026-01-01-broken.json"
    corrupt.write_text("{not json", encoding="utf-8")

    listing = store.scan()
    assert [s.id for s in listing.sessions] == [newer.id, older.id]  # newest first
    summary = listing.sessions[0]
    assert (summary.title, summary.message_count, summary.path) == (newer.title, 5, newer_path)
    assert summary.updated_at == "2026-01-03T10:00:00+00:00" and summary.model is None
    assert [p.path for p in listing.problems] == [corrupt]
    assert "not valid JSON" in listing.problems[0].message
    assert store.list() == listing.sessions

    # Autosaving again after another reply updates the same file.
    older.add_assistant("late reply")
    assert store.autosave(older) == older_path
    assert store.list()[0].id == older.id

    assert store.load(older.id).messages == older.messages
    assert store.load(newer.id[:8]).id == newer.id
    assert store.load(older_path).id == older.id
    assert store.load(str(newer_path)).id == newer.id
    with pytest.raises(SessionError, match="no saved session"):
        store.load("nope")

    assert store.delete(older.id) == older_path and not older_path.exists()
    assert store.delete("2026-01-01-broken") == corrupt and not corrupt.exists()
    with pytest.raises(SessionError, match="no saved session"):
        store.delete(older.id)
    assert [s.id for s in store.list()] == [newer.id]

    # A file from the original tool (no id of ours) is listed under its file name and loads by it.
    legacy = tmp_path / "sessions" / "old_chat.json"
    legacy.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}), encoding="utf-8")
    assert "old_chat" in [s.id for s in store.list()]
    assert store.load("old_chat").messages[0].content == "hi"


def test_store_autosave_refuses_to_replace_a_file_that_is_not_a_session(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    session = _chat(1)
    path = store.path_for(session)
    path.write_text("hand-written notes", encoding="utf-8")
    with pytest.raises(SessionError, match="not overwritten"):
        store.autosave(session)
    assert path.read_text(encoding="utf-8") == "hand-written notes"
