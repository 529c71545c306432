"""The TUI with remote models (Pilot, the real app): the picker and the library list them, a chat streams from the
llama.cpp server and answers Paris, the status bar says the chat leaves this machine, Esc stops it, a reopened
chat goes back to its remote model; a reply cut by the remote is kept and marked interrupted."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from textual.widgets import DataTable

from influence_tui.core.remotes import Remote, save_remote
from influence_tui.tui.dialogs.model_picker import ModelPickerDialog
from influence_tui.tui.messages import ChatWithModel
from influence_tui.tui.screens.library import LibraryScreen
from tests.fakes import FIXED_MODELS
from tests.remote.conftest import DEMO_ID
from tests.remote.scripted import MODELS, ScriptedServer, Seen, Step, chunked_head, delta, response, sse
from tests.tui.harness import UI, run_chat

REMOTE_NAME = f"{DEMO_ID}@llama"


async def pick(ui: UI, name: str) -> None:
    """Ctrl+L, wait for ``name`` among the rows (the remotes answer after the local models), Enter on it."""
    await ui.pilot.press("ctrl+l")
    await ui.pilot.pause()
    dialog = ui.app.screen
    assert isinstance(dialog, ModelPickerDialog)
    table = dialog.query_one(DataTable)
    await ui.wait_for(lambda: any(m.name == name for m in dialog.models), f"{name} in the picker")
    row = next(i for i, m in enumerate(dialog.models) if m.name == name)
    table.move_cursor(row=row)
    await ui.pilot.press("enter")
    await ui.wait_for(
        lambda: (
            ui.app.engine_state.ready
            and ui.app.engine_state.model is not None
            and ui.app.engine_state.model.name == name
        ),
        f"{name} to be chosen",
    )


@pytest.mark.slow
def test_a_chat_with_the_llama_server(llama: Remote) -> None:
    async def scenario(ui: UI) -> None:
        await pick(ui, REMOTE_NAME)
        assert f"↗ remote {llama.host} · leaves this machine" in ui.text()
        assert any("Your messages are sent to" in note for _, note in ui.notes)
        for command in (
            "/system You are a helpful assistant.",
            "/set temperature 0",
            "/set max_tokens 16",
            "/set repeat_penalty 1",
        ):
            await ui.send(command)
        reply = await ui.ask("What is the capital of France?")
        assert "Paris" in reply.source and "Paris" in ui.text()
        assert ui.chat.session.model == REMOTE_NAME
        stats = ui.chat.session.last_stats
        assert stats is not None and stats.generated_tokens > 0 and "tok/s" in ui.text()

        # Esc stops a long reply at once; the next question is answered
        # (greedy counting runs on for the whole budget; a sampled story may end on its own before the key)
        await ui.send("/set max_tokens 400")
        before = len(ui.views)
        await ui.send("Count from 1 to 500, one number per line.")
        # (a new reply's view: the last one may still be the previous answer when the machine is busy)
        await ui.wait_for(
            lambda: len(ui.views) >= before + 2 and ui.views[-1].role == "assistant" and len(ui.views[-1].source) > 10,
            "the count to start",
            timeout=30,
        )
        await ui.pilot.press("escape")
        await ui.wait_for(lambda: not ui.chat.busy, "the story to stop", timeout=2)
        await ui.idle()
        assert ui.views[-1].state == "stopped", (before, [(v.role, v.state, v.source[:40]) for v in ui.views])
        await ui.send("/set max_tokens 16")
        assert "Paris" in (await ui.ask("What is the capital of France?")).source

        # the saved chat remembers the remote model and reopens with it
        summary = next(s for s in ui.app.services.store.list() if s.id == ui.chat.session.id)
        assert summary.model == REMOTE_NAME
        ui.app.post_message(ChatWithModel(FIXED_MODELS[1]))
        await ui.wait_for(lambda: ui.app.engine_state.ready and ui.app.engine_state.remote is None, "a local model")
        assert "leaves this machine" not in ui.text()
        await ui.chat.open_session(summary)
        await ui.wait_for(
            lambda: (
                ui.app.engine_state.ready
                and ui.app.engine_state.model is not None
                and ui.app.engine_state.model.name == REMOTE_NAME
            ),
            "the chat's remote model",
        )

    run_chat(scenario, size=(100, 30))


def cut_reply(seen: Seen) -> Iterable[Step]:
    if seen.path.endswith("/models"):
        return response(200, {"data": [{"id": "m", "owned_by": "vllm"}]})  # no context length given
    return [chunked_head(), sse(delta("Half a")), sse(delta(" sentence")), 0.05, None]


def test_a_reply_cut_by_the_remote_is_kept_and_marked_interrupted() -> None:
    server = ScriptedServer(cut_reply)
    save_remote(Remote(name="lab", url=f"{server.url}/v1", kind="openai"))

    async def scenario(ui: UI) -> None:
        await pick(ui, "m@lab")
        await ui.ask("Hello?")
        view = ui.views[-1]
        assert view.source == "Half a sentence"
        assert view.state == "failed" and "interrupted" in ui.text()
        assert ui.chat.session.messages[-1].content == "Half a sentence"
        assert any("broke in the middle of the reply" in note for _, note in ui.notes)
        # a remote of unknown context: the meter counts without a limit and never warns
        assert "/?" in ui.text()

    try:
        run_chat(scenario, size=(100, 30))
    finally:
        server.stop()


def test_the_library_lists_remote_models_and_an_unreachable_remote(unused_port: int) -> None:
    server = ScriptedServer(lambda seen: response(200, MODELS))
    save_remote(Remote(name="lab", url=f"{server.url}/v1", kind="openai"))
    save_remote(Remote(name="down", url=f"http://127.0.0.1:{unused_port}/v1", kind="openai"))

    async def scenario(ui: UI) -> None:
        await ui.pilot.press("f4")
        screen = ui.app.screen
        assert isinstance(screen, LibraryScreen)
        await ui.wait_for(lambda: bool(screen.listings), "the remotes to answer")
        await ui.pilot.pause()
        text = ui.text()
        assert "m@lab" in text and "@down unreachable" in text and "remote (1 remote unreachable)" in text
        names = [m.name for m in screen.models]
        assert names[: len(FIXED_MODELS)] == [m.name for m in FIXED_MODELS] and names[-1] == "m@lab"
        table = screen.query_one(DataTable)
        table.move_cursor(row=names.index("m@lab"))
        await ui.pilot.pause()
        assert "Chats with it leave this" in ui.text() and "machine: they are sent to" in ui.text()
        await ui.pilot.press("c")
        await ui.wait_for(lambda: ui.app.engine_state.ready and ui.app.engine_state.remote is not None, "m@lab")
        assert ui.app.engine_state.model is not None and ui.app.engine_state.model.name == "m@lab"

    try:
        run_chat(scenario, size=(120, 36))
    finally:
        server.stop()
