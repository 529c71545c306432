"""The chat as a daily tool: every chat in the store, the conversations pane and its search, editing, branches,
the offer to continue that leaves the keyboard alone, and a damaged store that is named and left alone."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input

from influence_tui.core.config import load_settings
from influence_tui.core.sessions import ChatSession
from influence_tui.core.store import STORE_NAME, ChatStore
from influence_tui.tui.dialogs.confirm import ConfirmDialog
from influence_tui.tui.dialogs.text_input import TextInputDialog
from influence_tui.tui.screens.chat import ChatScreen
from influence_tui.tui.widgets.conversations import ChatList, ConversationsPane
from influence_tui.tui.widgets.message_view import MessageView
from tests.fakes import FakeTokenizer, ScriptedRunner
from tests.tui.harness import UI, run_chat


def store_of(isolated_env: Path) -> ChatStore:
    return ChatStore.for_sessions_dir(isolated_env / "data" / "sessions")


def saved(isolated_env: Path, texts: list[str], when: str, title: str = "") -> ChatSession:
    session = ChatSession(created_at=when, model="TinyLlama-1.1B-Chat:Q4_K_M", title=title)
    for i, text in enumerate(texts):
        if i % 2:
            session.add_assistant(text)
        else:
            session.add_user(text)
    session.updated_at = when
    store = store_of(isolated_env)
    store.autosave(session)
    store.close()
    return session


def prompt_for(*turns: tuple[str, str]) -> tuple[int, ...]:
    """The scripted engine's prompt ids for a conversation (what the model is sent)."""
    tokenizer = FakeTokenizer()
    conversation = [{"role": role, "content": text} for role, text in turns]
    return tuple(tokenizer.encode(tokenizer.apply_chat_template(conversation)))


def pane(ui: UI) -> ConversationsPane:
    return ui.chat.query_one(ConversationsPane)


def listed(ui: UI) -> list[str]:
    chat_list = ui.chat.query_one(ChatList)
    return [str(chat_list.get_option_at_index(i).id) for i in range(chat_list.option_count)]


async def settle(ui: UI) -> None:
    for _ in range(2):
        await ui.app.workers.wait_for_complete()
        await ui.pilot.pause()


def test_the_message_is_stored_when_sent_and_the_reply_when_done(isolated_env: Path) -> None:
    runner = ScriptedRunner(["A long answer " * 30], delay=0.01)

    async def scenario(ui: UI) -> None:
        await ui.send("Remember me")
        await ui.wait_for(lambda: ui.chat.busy, "the reply to start")
        stored = store_of(isolated_env).load(ui.chat.session.id)  # another reader, as after a crash
        assert [m.content for m in stored.messages] == ["Remember me"]
        await ui.idle()
        stored = store_of(isolated_env).load(ui.chat.session.id)
        assert [m.role for m in stored.messages] == ["user", "assistant"]
        assert stored.messages[1].content.startswith("A long answer")
        assert stored.model == "SmolLM2-135M-Instruct (demo)"
        # a stopped reply is stored as far as it got
        ui.runner.replies.append("word " * 400)
        await ui.send("Again")
        await ui.wait_for(lambda: ui.chat.busy and ui.views[-1].source, "text to stream")
        await ui.keys("escape")
        await ui.idle()
        stored = store_of(isolated_env).load(ui.chat.session.id)
        assert len(stored.messages) == 4 and stored.messages[3].content.startswith("word")

    run_chat(scenario, runner=runner)


def test_the_pane_lists_searches_opens_renames_and_deletes(isolated_env: Path) -> None:
    paris = saved(isolated_env, ["Tell me about Paris", "Paris is the capital of France."], "2026-01-02T10:00:00+00:00")
    sort = saved(isolated_env, ["How do I sort a list?", "Use sorted() on it."], "2026-01-03T09:30:00+00:00")
    haiku = saved(isolated_env, ["Write a haiku", "Weights on my own disk"], "2026-01-04T18:40:00+00:00")

    async def scenario(ui: UI) -> None:
        await settle(ui)
        assert pane(ui).display  # open by default at 140 columns
        assert listed(ui) == [haiku.id, sort.id, paris.id]
        text = ui.text()
        assert "Write a haiku" in text and "2026-01-04 18:40 · TinyLlama" in text
        # search: every chat whose messages hold the words, the matches highlighted
        await ui.pilot.press("ctrl+f")
        assert ui.chat.query_one("#chat-search", Input).has_focus
        await ui.pilot.press(*"capital")
        await settle(ui)
        assert listed(ui) == [paris.id]
        assert pane(ui).hits is not None and pane(ui).hits[0].snippet.spans
        assert "1 chat found" in ui.text() and "capital of France" in ui.text()
        await ui.pilot.press("down", "enter")  # Down goes into the results, Enter opens
        await settle(ui)
        assert ui.chat.session.id == paris.id
        assert [v.source for v in ui.views] == ["Tell me about Paris", "Paris is the capital of France."]
        # clearing the search lists every chat again
        ui.chat.query_one("#chat-search", Input).value = ""
        await settle(ui)
        assert listed(ui) == [haiku.id, sort.id, paris.id]
        # r renames the highlighted chat; the one shown takes the new title
        chat_list = ui.chat.query_one(ChatList)
        chat_list.focus()
        chat_list.highlighted = listed(ui).index(paris.id)
        await ui.pilot.press("r")
        await ui.pilot.pause()
        dialog = ui.app.screen
        assert isinstance(dialog, TextInputDialog)
        dialog.query_one(Input).value = "Paris notes"
        await ui.pilot.press("enter")
        await settle(ui)
        assert ui.chat.session.title == "Paris notes"
        assert store_of(isolated_env).load(paris.id).title == "Paris notes"
        assert "Paris notes" in ui.text()
        # d deletes after asking (Esc keeps it)
        chat_list.highlighted = listed(ui).index(sort.id)
        await ui.pilot.press("d")
        await ui.pilot.pause()
        assert isinstance(ui.app.screen, ConfirmDialog)
        assert "Delete “How do I sort a list?”?" in ui.text()
        await ui.pilot.press("escape")
        await ui.pilot.pause()
        assert sort.id in listed(ui)
        await ui.pilot.press("d")
        await ui.pilot.pause()
        await ui.pilot.press("y")
        await settle(ui)
        assert listed(ui) == [haiku.id, paris.id]
        assert [c.id for c in store_of(isolated_env).list()] == [haiku.id, paris.id]
        # n starts a new chat; Ctrl+R hides the pane and gives the prompt the keyboard
        await ui.pilot.press("n")
        await settle(ui)
        assert ui.chat.session.messages == [] and ui.prompt.has_focus
        await ui.pilot.press("ctrl+r")
        assert not pane(ui).display
        await ui.pilot.press("ctrl+r")
        assert pane(ui).display and ui.chat.query_one(ChatList).has_focus

    run_chat(scenario, size=(140, 36))


def test_the_pane_starts_closed_on_a_narrow_terminal() -> None:
    async def scenario(ui: UI) -> None:
        assert not pane(ui).display
        await ui.pilot.press("ctrl+r")
        assert pane(ui).display

    run_chat(scenario, size=(100, 30))


def test_regenerate_edit_and_switch_branches_and_the_branch_shown_is_what_is_sent() -> None:
    runner = ScriptedRunner(["Red.", "Blue.", "Crimson.", "Apple."])

    async def scenario(ui: UI) -> None:
        await ui.ask("Name a colour")
        # Ctrl+Up: the messages take the keyboard; r regenerates the reply
        await ui.pilot.press("ctrl+up")
        reply = ui.views[-1]
        assert reply.has_focus
        await ui.pilot.press("r")
        await ui.idle()
        assert [v.source for v in ui.views] == ["Name a colour", "Blue."]
        assert ui.views[1].alternatives is not None and ui.views[1].alternatives.label == "‹ 2/2 ›"
        assert "‹ 2/2 ›" in ui.text()
        # Left shows the first reply again; the next message is sent with that branch as its context
        ui.views[1].focus()
        await ui.pilot.press("left")
        await ui.pilot.pause()
        assert [v.source for v in ui.views] == ["Name a colour", "Red."]
        assert "‹ 1/2 ›" in ui.text()
        await ui.pilot.press("escape")  # back to the prompt
        assert ui.prompt.has_focus
        await ui.ask("Darker")
        assert ui.runner.requests[-1].prompt_ids == prompt_for(
            ("user", "Name a colour"), ("assistant", "Red."), ("user", "Darker")
        )
        # e edits an earlier message of the user's: sent again, it starts a new branch there
        await ui.pilot.press("ctrl+up", "up", "up", "up")
        first = ui.views[0]
        assert first.has_focus
        await ui.pilot.press("e")
        assert ui.prompt.text == "Name a colour" and "Editing your message" in ui.text()
        await ui.type("Name a fruit")
        await ui.pilot.press("enter")
        await ui.idle()
        assert [v.source for v in ui.views] == ["Name a fruit", "Apple."]
        assert ui.views[0].alternatives is not None and ui.views[0].alternatives.label == "‹ 2/2 ›"
        assert ui.runner.requests[-1].prompt_ids == prompt_for(("user", "Name a fruit"))
        # the old branch is kept as it was left
        ui.views[0].focus()
        await ui.pilot.press("left")
        await ui.pilot.pause()
        assert [v.source for v in ui.views] == ["Name a colour", "Red.", "Darker", "Crimson."]
        # and the store has every branch
        stored, tree = ui.app.services.store.open_chat(ui.chat.session.id)
        assert [m.content for m in stored.messages] == ["Name a colour", "Red.", "Darker", "Crimson."]
        assert len(tree) == 7

    run_chat(scenario, runner=runner, size=(120, 36))


def test_slash_retry_keeps_the_old_reply_as_an_alternative() -> None:
    async def scenario(ui: UI) -> None:
        await ui.ask("Pick a number")
        await ui.send("/retry")
        await ui.idle()
        assert [v.source for v in ui.views] == ["Pick a number", "Seven."]
        assert ui.views[1].alternatives is not None and ui.views[1].alternatives.label == "‹ 2/2 ›"
        ui.views[1].focus()
        await ui.pilot.press("left")
        await ui.pilot.pause()
        assert ui.views[1].source == "Three."

    run_chat(scenario, replies=["Three.", "Seven."])


def test_the_offer_to_continue_leaves_the_keyboard_in_the_prompt(isolated_env: Path) -> None:
    saved(isolated_env, ["Old question", "Old answer"], "2026-01-01T08:00:00+00:00")
    saved(isolated_env, ["Last question", "Last answer"], "2026-01-05T08:00:00+00:00")

    async def typed_at_once(ui: UI) -> None:
        await settle(ui)
        assert isinstance(ui.app.screen, ChatScreen)  # no dialog
        assert "Continue your last chat? “Last question”" in ui.text()
        assert ui.prompt.has_focus
        await ui.pilot.press(*"hi there", "enter")  # typed at once: a new chat, nothing lost
        await ui.idle()
        assert [m.content for m in ui.chat.session.messages][:1] == ["hi there"]
        assert "Continue your last chat?" not in ui.text()

    async def continue_it(ui: UI) -> None:
        await settle(ui)
        await ui.pilot.press("enter")  # Enter on the empty prompt takes the offer
        await settle(ui)
        assert [m.content for m in ui.chat.session.messages] == ["Last question", "Last answer"]

    run_chat(continue_it)
    run_chat(typed_at_once)  # (opening a chat does not make it newer: the same one is offered)


def test_a_damaged_store_is_named_the_chat_still_works_and_the_file_is_left_alone(isolated_env: Path) -> None:
    path = isolated_env / "data" / "sessions" / STORE_NAME
    path.parent.mkdir(parents=True)
    garbage = b"not a database\n" * 100
    path.write_bytes(garbage)

    async def scenario(ui: UI) -> None:
        await settle(ui)
        assert any("Chats are not being saved" in e and "damaged" in e for e in ui.errors())
        view = await ui.ask("Still there?")
        assert view.source
        await ui.pilot.press("ctrl+up", "r")
        await ui.idle()
        assert ui.views[1].alternatives is not None  # branches still work, in memory
        assert len([e for e in ui.errors() if "Chats are not being saved" in e]) == 1  # said once

    run_chat(scenario, replies=["Yes.", "Still yes."], settings=load_settings())
    assert path.read_bytes() == garbage


def test_export_writes_markdown(isolated_env: Path) -> None:
    async def scenario(ui: UI) -> None:
        await ui.ask("Export me")
        await ui.send("/export chat.md")
        await ui.pilot.pause()
        text = (isolated_env / "work" / "chat.md").read_text(encoding="utf-8")
        assert text.startswith("# Export me\n") and "- **Model:** SmolLM2-135M-Instruct (demo)" in text

    run_chat(scenario)


def test_a_message_view_offers_only_what_fits_it() -> None:
    view = MessageView("user", "hi", author="You")
    assert view.check_action("request", ("edit",)) and not view.check_action("request", ("regenerate",))
    assert not view.check_action("request", ("previous",))
