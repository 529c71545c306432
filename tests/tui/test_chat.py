"""The chat screen on a scripted engine: send, stream, stop, slash commands, the panel, errors, copy."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from textual.widgets import Input, Markdown
from textual.widgets.markdown import MarkdownStream

from influence_tui.core.store import ChatStore
from influence_tui.tui.screens.chat import ChatScreen
from tests.fakes import ScriptedRunner
from tests.tui.harness import UI, run_chat

CODE_REPLY = """Here is a function:

```python
def add(a, b):
    return a + b
```

| x | y |
|---|---|
| 1 | 2 |
"""


def test_the_chat_is_the_home_screen_and_the_model_loads_after_the_first_paint() -> None:
    async def scenario(ui: UI) -> None:
        assert isinstance(ui.app.screen, ChatScreen)
        assert ui.app.first_paint_at is not None
        assert ui.runner.loads == ["SmolLM2-135M-Instruct (demo)"]
        assert ui.app.engine_state.ready
        shown = ui.text()
        assert "● SmolLM2-135M-Instruct (demo)" in shown
        assert "cpu · float32" in shown
        assert "Ask anything" in shown  # the welcome note
        assert ui.prompt.has_focus
        # every binding of ours is in the command palette too
        names = [command.title for command in ui.app.get_system_commands(ui.app.screen)]
        for expected in ("Chat (f1)", "Library (f4)", "Model (^l)", "Save (^s)", "Open (^o)", "Params (^t)"):
            assert any(name.replace("ctrl+", "^") == expected for name in names), names
        assert not any(name.startswith("Cursor") for name in names)  # not the prompt's editing keys

    run_chat(scenario)


def test_send_streams_the_reply_as_markdown_and_records_it(settings: object, isolated_env: Path) -> None:
    async def scenario(ui: UI) -> None:
        view = await ui.ask("Show me some code")
        assert [(m.role, m.content) for m in ui.chat.session.messages] == [
            ("user", "Show me some code"),
            ("assistant", CODE_REPLY),
        ]
        assert view.source == CODE_REPLY
        assert view.meta.endswith(" tokens · 0.12 s to first token · 42.0 tok/s") and view.state == ""
        shown = ui.text()
        assert "def add(a, b):" in shown
        assert "return a + b" in shown
        assert "Ask anything" not in shown  # the welcome note went with the first message
        assert "TTFT 0.12 s · 42.0 tok/s" in shown
        assert ui.prompt.text == ""
        # in the chat store (the message when sent, the reply when done)
        stored = ChatStore.for_sessions_dir(isolated_env / "data" / "sessions").load(ui.chat.session.id)
        assert [m.content for m in stored.messages] == ["Show me some code", CODE_REPLY]

    run_chat(scenario, replies=[CODE_REPLY])


def test_the_reply_streams_through_a_markdown_stream_with_one_final_update(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    writes: list[str] = []
    updates: list[str] = []
    real_write, real_update = MarkdownStream.write, Markdown.update

    async def write(self: MarkdownStream, fragment: str) -> None:
        writes.append(fragment)
        await real_write(self, fragment)

    def update(self: Markdown, markdown: str):  # type: ignore[no-untyped-def]
        view = self.parent.parent if self.parent is not None else None
        if view is not None and view.has_class("-assistant"):
            updates.append(markdown)
        return real_update(self, markdown)

    monkeypatch.setattr(MarkdownStream, "write", write)
    monkeypatch.setattr(Markdown, "update", update)
    reply = " ".join(f"word{i}" for i in range(60))

    async def scenario(ui: UI) -> None:
        await ui.ask("Count")
        assert "".join(writes) == reply
        assert len(writes) > 1  # it streamed
        assert [u for u in updates if u] == [reply]  # and one full render at the end (after the empty start)

    run_chat(scenario, runner=ScriptedRunner([reply], delay=0.005))


def test_a_long_reply_streams_in_parts_each_rendered_once_at_its_end(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    updates: list[tuple[int, str]] = []
    real_update = Markdown.update

    def update(self: Markdown, markdown: str):  # type: ignore[no-untyped-def]
        view = self.parent.parent if self.parent is not None else None
        if markdown and view is not None and view.has_class("-assistant"):
            updates.append((id(self), markdown))
        return real_update(self, markdown)

    monkeypatch.setattr(Markdown, "update", update)
    paragraph = "A sentence of the long answer, with `code` and *emphasis*. " * 6 + "\n\n"
    reply = (paragraph + "```text\nblock\n```\n\n") * 30

    async def scenario(ui: UI) -> None:
        await ui.send("/set max_tokens 4000")
        view = await ui.ask("Write a lot")
        parts = view.parts
        assert len(parts) > 3
        assert view.source == reply
        assert [text for _, text in updates] == [part.source for part in parts]  # one final render per part
        assert len({widget for widget, _ in updates}) == len(parts)
        assert ui.chat.session.messages[-1].content == reply

    run_chat(scenario, runner=ScriptedRunner([reply], delay=0.002, burst=20))


def test_the_log_follows_the_reply_only_while_the_user_is_at_the_bottom() -> None:
    # long enough to still be streaming after every step below on a busy machine; Esc ends it
    reply = "".join(f"Line {i} of a long answer.\n\n" for i in range(800))

    async def scenario(ui: UI) -> None:
        from influence_tui.tui.widgets.chat_log import ChatLog

        log = ui.chat.query_one(ChatLog)
        await ui.send("/set max_tokens 5000")
        await ui.type("Talk")
        await ui.keys("enter")
        await ui.wait_for(lambda: log.max_scroll_y > 30, "the reply to fill more than a screen")
        await ui.wait_for(lambda: log.scroll_y == log.max_scroll_y, "following the reply", timeout=2)
        await ui.keys("pageup")
        await ui.wait_for(lambda: log.scroll_y < log.max_scroll_y - 10, "the page up")
        await ui.wait_for(lambda: log.scroll_y == log.scroll_target_y, "the scroll to settle")
        held = log.scroll_y
        await ui.keys(*"typing")  # keys are answered while the reply streams
        await ui.wait_for(lambda: ui.prompt.text == "typing", "the typing")
        await ui.wait_for(lambda: log.max_scroll_y > held + 40, "more of the reply")
        assert ui.chat.busy
        assert log.scroll_y == held  # not dragged down while reading
        log.scroll_end(animate=False)  # back at the bottom: following again
        await ui.wait_for(lambda: log.scroll_y == log.max_scroll_y, "back at the bottom", timeout=2)
        bottom = log.max_scroll_y
        await ui.wait_for(lambda: log.max_scroll_y > bottom + 5, "more of the reply")
        await ui.wait_for(lambda: log.scroll_y == log.max_scroll_y, "following again", timeout=2)
        await ui.keys("escape")
        await ui.idle()

    # 150 tokens/s: over 30 s for the whole reply, so it is still streaming at the end on a loaded CI machine
    run_chat(scenario, runner=ScriptedRunner([reply], delay=0.02, burst=3, context_length=8192))


def test_escape_stops_the_reply_at_once_and_keeps_the_partial_marked_stopped() -> None:
    reply = " ".join(f"w{i}" for i in range(400))

    async def scenario(ui: UI) -> None:
        await ui.send("Talk for a long time")
        await ui.wait_for(lambda: ui.chat._reply is not None and len(ui.chat._reply.parts) >= 3, "some text")
        view = ui.views[-1]
        await ui.pilot.press("escape")
        # at once: marked stopped, and no more text shows
        assert view.state == "stopped" and view.meta.endswith("stopped")
        shown_at_stop = ui.chat._reply.text if ui.chat._reply else view.source
        await ui.idle()
        assert view.source == shown_at_stop
        assert "stopped" in ui.text()
        last = ui.chat.session.messages[-1]
        assert last.role == "assistant"
        assert last.content == shown_at_stop
        assert 0 < len(last.content) < len(reply)
        stats = ui.chat.session.last_stats
        assert stats is not None and stats.finish_reason == "cancelled"
        assert stats.generated_tokens < 400  # the engine stopped too
        # Esc is only offered while a reply is being written
        assert ui.chat.check_action("stop", ()) is False
        # and the conversation goes on
        view = await ui.ask("And now briefly")
        assert view.source == "Hello! How can I help?"

    run_chat(scenario, runner=ScriptedRunner([reply], delay=0.01))


def test_set_changes_the_panel_and_the_panel_changes_what_set_shows() -> None:
    async def scenario(ui: UI) -> None:
        await ui.send("/set temperature 0.2")
        assert ui.chat.session.params.temperature == 0.2
        assert ui.panel.input_for("temperature").value == "0.2"
        assert "✓ temperature set to 0.2" in ui.text()

        field = ui.panel.input_for("top_k")
        field.focus()
        field.value = "40"
        await ui.pilot.press("enter")
        await ui.pilot.pause()
        assert ui.chat.session.params.top_k == 40

        await ui.send("/set top_k")
        assert "top_k = 40" in ui.text()
        await ui.send("/params")
        assert re.search(r"top_k\s+40\s", ui.text())

        system = ui.panel.input_for("system")
        system.focus()
        system.value = "You are terse."
        await ui.pilot.press("tab")  # leaving the field applies it too
        await ui.pilot.pause()
        assert ui.chat.session.system_prompt == "You are terse."
        await ui.send("/system")
        assert "System prompt: You are terse." in ui.text()

        # the next reply is generated with the session's parameters
        await ui.ask("Hi")
        assert ui.runner.requests[-1].params.temperature == 0.2
        assert ui.runner.requests[-1].params.top_k == 40

    run_chat(scenario, size=(120, 40))


def test_an_out_of_range_value_is_refused_with_a_message() -> None:
    async def scenario(ui: UI) -> None:
        field = ui.panel.input_for("temperature")
        field.focus()
        field.value = "500"
        await ui.pilot.pause()
        assert field.has_class("-invalid")  # feedback while typing
        await ui.pilot.press("enter")
        await ui.pilot.pause()
        assert ui.chat.session.params.temperature == 0.7
        assert field.value == "0.7"  # put back
        assert any("out of range" in e and "stays 0.7" in e for e in ui.errors())

        await ui.send("/set max_tokens lots")
        assert ui.chat.session.params.max_tokens == 512
        assert ui.prompt.text == "/set max_tokens lots"  # kept, to fix
        assert any("max_tokens" in e and "whole number" in e for e in ui.errors())

        await ui.send("/frobnicate")
        assert any("unknown command /frobnicate" in e for e in ui.errors())

    run_chat(scenario, size=(120, 36))


def test_the_panel_opens_on_wide_terminals_and_toggles() -> None:
    async def wide(ui: UI) -> None:
        assert ui.panel.display

    async def narrow(ui: UI) -> None:
        assert ui.status.compact  # no meter cells, no time to first token
        await ui.ask("Hi")
        assert "42.0 tok/s" in ui.text() and "TTFT" not in ui.text()
        assert not ui.panel.display
        await ui.pilot.press("ctrl+t")
        assert ui.panel.display
        assert isinstance(ui.app.focused, Input)  # the keyboard goes to the panel
        await ui.pilot.press("ctrl+t")
        assert not ui.panel.display
        assert ui.prompt.has_focus

    run_chat(wide, size=(120, 36))
    run_chat(narrow, size=(80, 24))


def test_model_text_is_never_markup() -> None:
    reply = "Use [bold] and [/] and [red]x[/red] literally; also [link=http://x]y[/link] and \\[esc]."

    async def scenario(ui: UI) -> None:
        await ui.ask("[b]my own[/b] text")
        shown = ui.text()
        assert "[bold] and [/] and [red]x[/red]" in shown
        assert "[link=http://x]y[/link]" in shown
        assert "[b]my own[/b] text" in shown
        assert not ui.errors()

    run_chat(scenario, replies=[reply], size=(120, 30))


def test_enter_sends_and_ctrl_j_starts_a_new_line() -> None:
    async def scenario(ui: UI) -> None:
        await ui.type("first line")
        await ui.pilot.press("ctrl+j")
        await ui.keys(*"second", "shift+enter", *"third")
        assert ui.prompt.text == "first line\nsecond\nthird"
        assert not ui.chat.session.messages
        await ui.pilot.press("enter")
        await ui.idle()
        assert ui.chat.session.messages[0].content == "first line\nsecond\nthird"

    run_chat(scenario)


def test_keys_typed_in_one_burst_are_sent_in_order() -> None:
    """A terminal delivers fast typing (or tmux send-keys, or a paste without brackets) in one read: Enter must
    send the text typed just before it, not what the prompt held when the burst arrived."""
    from textual import events

    async def scenario(ui: UI) -> None:
        await ui.type("old text")
        for key, char in [*((c, c) for c in " and more"), ("ctrl+j", "\n"), *((c, c) for c in "last"), ("enter", "\r")]:
            ui.app.post_message(events.Key(key, char))
        await ui.idle()
        assert ui.chat.session.messages[0].content == "old text and more\nlast"
        assert ui.prompt.text == ""

    run_chat(scenario)


def test_command_names_complete() -> None:
    async def scenario(ui: UI) -> None:
        await ui.type("/s")
        hint = ui.text()
        for name in ("/sessions", "/set", "/stats", "/system"):
            assert name in hint
        await ui.type("/cl")
        await ui.pilot.press("tab")
        assert ui.prompt.text == "/clear "
        assert ui.prompt.has_focus
        assert "/clear — start a new conversation" in ui.text()
        await ui.type("/he")
        assert ui.prompt.suggestion == "lp"  # ghost text; Right takes it
        await ui.pilot.press("right")
        assert ui.prompt.text == "/help"
        await ui.pilot.press("enter")
        await ui.pilot.pause()
        assert "/retry" in ui.text() and "answer your last message again" in ui.text()

    run_chat(scenario, size=(120, 36))


def test_retry_clear_and_quit() -> None:
    async def scenario(ui: UI) -> None:
        await ui.ask("Hello")
        await ui.send("/retry")
        await ui.idle()
        assert [m.content for m in ui.chat.session.messages] == ["Hello", "second answer"]
        assert len(ui.runner.requests) == 2
        assert [v.source for v in ui.views] == ["Hello", "second answer"]
        await ui.pilot.press("ctrl+n")
        await ui.pilot.pause()
        assert ui.chat.session.messages == []
        assert ui.views == []
        assert "Ask anything" in ui.text()
        await ui.send("/quit")
        await ui.pilot.pause()
        assert ui.app.return_code == 0 or not ui.app.is_running

    run_chat(scenario, replies=["first answer", "second answer"])


def test_a_message_sent_while_the_model_loads_is_answered_when_it_is_ready() -> None:
    async def scenario(ui: UI) -> None:
        ui.app.load_model(None)
        await ui.wait_for(lambda: ui.app.engine_state.phase == "loading", "loading")
        await ui.send("Are you there?")
        assert "Waiting for SmolLM2-135M-Instruct (demo) to load…" in ui.text()
        assert "loading SmolLM2-135M-Instruct (demo)" in ui.text()
        gate.set()
        await ui.wait_for(lambda: len(ui.chat.session.messages) == 2, "the reply", timeout=10)
        assert ui.chat.session.messages[-1].content == "Yes."

    gate = threading.Event()
    run_chat(scenario, runner=ScriptedRunner(["Yes."], load_gate=gate), load_model=False)


def test_errors_are_notifications_never_crashes() -> None:
    async def scenario(ui: UI) -> None:
        # no model yet: the message stays in the prompt
        await ui.send("Hello?")
        assert ui.prompt.text == "Hello?"
        assert any("No model is loaded" in e for e in ui.errors())
        # a load that fails
        ui.app.load_model(None)
        await ui.wait_for(lambda: ui.app.engine_state.phase == "failed", "the load to fail")
        # the notification follows the state change by a message or two
        await ui.wait_for(lambda: any("weights are corrupt" in e for e in ui.errors()), "the load's error")
        await ui.wait_for(lambda: "✕ SmolLM2-135M-Instruct (demo): not loaded" in ui.text(), "the status bar")
        # another model loads; a generation that breaks off keeps what came
        tiny = ui.library.resolve("TinyLlama-1.1B-Chat:Q4_K_M")
        ui.app.load_model(tiny)
        await ui.wait_for(lambda: ui.app.engine_state.ready, "TinyLlama")
        ui.runner.fail_after = 2
        view = await ui.ask("Go")
        assert view.state == "failed"
        assert view.meta == "failed · /retry tries again"
        assert view.source == "one two"
        assert any("the engine broke down" in e and "/retry" in e for e in ui.errors())
        assert ui.chat.session.messages[-1].content == "one two"
        assert ui.app.is_running

    runner = ScriptedRunner(
        ["one two three four"], fail_loading={"SmolLM2-135M-Instruct (demo)": "the weights are corrupt"}
    )
    run_chat(scenario, runner=runner, load_model=False)


def test_copy_the_last_reply_and_a_code_block() -> None:
    two_blocks = CODE_REPLY + "\n```sh\nmake test\n```\n"

    async def scenario(ui: UI) -> None:
        await ui.pilot.press("ctrl+b")
        assert any("no reply to copy" in n for _, n in ui.notes)
        await ui.ask("Code please")
        await ui.pilot.press("ctrl+b")
        assert ui.app.clipboard == CODE_REPLY
        await ui.pilot.press("ctrl+g")
        assert ui.app.clipboard == "def add(a, b):\n    return a + b\n"
        await ui.ask("Two blocks")
        await ui.pilot.press("ctrl+g")
        await ui.pilot.pause()
        from influence_tui.tui.dialogs.code_picker import CodePickerDialog

        assert isinstance(ui.app.screen, CodePickerDialog)
        await ui.pilot.press("down", "enter")
        await ui.pilot.pause()
        assert ui.app.clipboard == "make test\n"

    run_chat(scenario, replies=[CODE_REPLY, two_blocks])


def test_the_context_meter_warns_and_says_what_is_left_out() -> None:
    long_reply = " ".join(["word"] * 12)

    async def scenario(ui: UI) -> None:
        await ui.send("/set max_tokens 16")
        for question in ("What is the capital of France?", "And of Italy?"):
            await ui.ask(question)
        status = ui.status.query_one("#status-context")
        assert status.has_class("-warn")  # before anything is left out, it warns and says what would go
        assert any('push out the oldest exchange ("What is the capital of France?")' in n for _, n in ui.notes)
        for question in ("And Greece?", "And Malta?"):
            await ui.ask(question)
        status = ui.status.query_one("#status-context")
        assert status.has_class("-full")
        warnings = [n for severity, n in ui.notes if severity == "warning"]
        assert any("left out to fit the model's context" in w for w in warnings)
        assert ui.views[0].has_class("-left-out")  # dimmed in the log
        assert not ui.views[-1].has_class("-left-out")

    run_chat(scenario, runner=ScriptedRunner([long_reply] * 4, context_length=64))
