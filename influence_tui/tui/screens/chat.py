"""The chat: the home screen. A conversation with the loaded model, streamed in as Markdown.

The :class:`~influence_tui.core.sessions.ChatSession` is the one state: the log, the parameter panel and the
status bar show it, slash commands (:mod:`influence_tui.core.slash`) and the panel change it. A reply is
generated on the engine's thread; a thread worker here reads its token stream and posts the text up in
chunks, which go into the reply's Markdown through ``Markdown.get_stream()`` and get one full render at the
end. Stopping cancels the worker, whose cancel event is the engine request's stop event.

Every chat lives in the chat store (:mod:`influence_tui.core.store`) as a tree of messages
(:mod:`influence_tui.core.branches`); the session's messages are the branch shown, and what is sent to the
model. The store is written at once, in one short transaction, whenever the conversation changes: the user's
message when it is sent, the reply when it ends or is stopped. The conversations pane lists and searches the
store; reading it for the pane runs in workers.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static, TextArea
from textual.worker import Worker, get_current_worker

from influence_tui.core import slash
from influence_tui.core.branches import ChatTree
from influence_tui.core.chat import finish_reply, is_remote, reply_reserve, start_reply
from influence_tui.core.errors import InfluenceError, RemoteError
from influence_tui.core.export import export_markdown
from influence_tui.core.sessions import ChatSession, PromptPlan
from influence_tui.core.store import ChatSummary, ImportReport
from influence_tui.core.types import ChatMessage, GenerationStats
from influence_tui.tui.dialogs.code_picker import CodePickerDialog
from influence_tui.tui.dialogs.confirm import ConfirmDialog
from influence_tui.tui.dialogs.model_picker import ModelPickerDialog
from influence_tui.tui.dialogs.sessions import LoadSessionDialog, local_time
from influence_tui.tui.dialogs.text_input import TextInputDialog
from influence_tui.tui.messages import ChatWithModel, ReplyChunk, ReplyFailed, ReplyFinished, ReplyStarted
from influence_tui.tui.paths import stylesheet
from influence_tui.tui.services import AnyModel, EngineState, services_of
from influence_tui.tui.widgets.chat_log import ChatLog
from influence_tui.tui.widgets.conversations import ConversationsPane
from influence_tui.tui.widgets.message_view import CodeBlock, MessageView, NoteView, code_blocks, stats_line
from influence_tui.tui.widgets.mode_bar import ModeBar
from influence_tui.tui.widgets.params_panel import SYSTEM, ParamsPanel
from influence_tui.tui.widgets.prompt_input import PromptInput, command_matches
from influence_tui.tui.widgets.status_bar import ContextUse, StatusBar

FLUSH_INTERVAL_S = 1 / 30
"""The worker sends text up at most this often at first (tokens that come faster travel together)."""
FLUSH_TOKENS = 500
"""After this many tokens the interval grows with the reply: every update lays out the whole log, so a reply
twice as long is updated half as often, and streaming costs the same per token however long the reply gets."""
FLUSH_INTERVAL_MAX_S = 0.25


def flush_interval(tokens: int) -> float:
    """Seconds between two updates of a reply that has ``tokens`` tokens so far."""
    return min(FLUSH_INTERVAL_MAX_S, FLUSH_INTERVAL_S * max(1.0, tokens / FLUSH_TOKENS))


WELCOME = (
    "Ask anything.\n"
    "Enter sends · Ctrl+J new line · Esc stops a reply\n"
    "/help commands · Ctrl+L model · Ctrl+R chats · Ctrl+Up messages · Ctrl+P every action"
)

#: Commands that replace the conversation: not while a reply is being written into it.
_REPLACING = (slash.Clear, slash.Retry, slash.Undo, slash.Load)

CHAT_LIST_LIMIT = 500
"""The pane lists this many chats, newest first (a search finds any)."""


class _Reply:
    """The reply being written: where it shows, and the text received so far."""

    def __init__(self, reply_id: int, view: MessageView) -> None:
        self.id = reply_id
        self.view = view
        self.parts: list[str] = []
        self.stopped = False
        self.worker: Worker[None] | None = None
        self.plan: PromptPlan | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


class ChatScreen(Screen[None]):
    """The conversation, the prompt, the parameter panel and the status bar."""

    CSS_PATH = stylesheet("chat.tcss")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "stop", "Stop", id="chat.stop"),
        Binding("ctrl+l", "pick_model", "Model", id="chat.model"),
        Binding("ctrl+n", "new_chat", "New chat", id="chat.new", show=False),
        Binding("ctrl+s", "save", "Save", id="chat.save"),
        Binding("ctrl+o", "open", "Open", id="chat.open"),
        Binding("ctrl+t", "toggle_params", "Params", id="chat.params"),
        Binding("ctrl+r", "toggle_chats", "Chats", id="chat.chats"),
        Binding("ctrl+f", "find_chats", "Find", id="chat.find", show=False),
        Binding("ctrl+up", "focus_messages", "Messages", id="chat.messages", show=False),
        Binding("ctrl+b", "copy_reply", "Copy", id="chat.copy_reply"),
        Binding("ctrl+g", "copy_code", "Copy code", id="chat.copy_code", show=False),
        Binding("pageup", "scroll_log(-1)", "Scroll up", id="chat.page_up", show=False, priority=True),
        Binding("pagedown", "scroll_log(1)", "Scroll down", id="chat.page_down", show=False, priority=True),
    ]

    WIDE = 110
    """From this many columns the parameter panel starts open."""
    CHATS_WIDE = 140
    """From this many columns the conversations pane starts open."""
    NARROW = 100
    """Under this many columns the status bar drops the meter cells and the time to first token."""

    def __init__(self) -> None:
        super().__init__()
        self.session = ChatSession()
        """Replaced on mount by one with the settings' defaults; then by /load, /clear... (never None)."""
        self._reply: _Reply | None = None
        self._reply_count = 0
        self._waiting_for_model = False
        self._queued: str | None = None
        self._panel_follows_width = True
        self._context_used = 0
        self._left_out: tuple[int, ...] = ()
        self._context_level = "ok"
        self._template_warned = False
        self.chat_tree = ChatTree()
        """Every message of the chat shown; the session's messages are its branch shown."""
        self._tree_id = self.session.id
        self._store_problem: str | None = None
        self._editing: int | None = None
        """The index of the user's message being edited in the prompt."""
        self._chats_follow_width = True
        self._offer: ChatSummary | None = None
        """The last chat, offered to continue until the user starts or answers."""

    # ------------------------------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield ModeBar("chat")
        with Horizontal(id="chat-body"):
            yield ConversationsPane(id="chats", classes="panel")
            with Vertical(id="chat-main"):
                yield ChatLog(id="chat-log")
                yield Static(id="completions")
                yield PromptInput(id="prompt", placeholder="Message the model · / for commands")
            yield ParamsPanel(id="params", classes="panel")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        services = services_of(self)
        self.session = ChatSession.from_settings(services.settings)
        self.query_one("#params", ParamsPanel).border_title = "Parameters"
        self.query_one(ConversationsPane).border_title = "Chats"
        self._tree_id = self.session.id
        self.query_one("#completions", Static).display = False
        self._fit_width(self.app.size.width)
        self._sync_panel()
        self.sub_title = self.session.display_title
        self.watch(self.app, "engine_state", self._engine_changed)
        self.query_one(PromptInput).focus()
        self.call_after_refresh(self._welcome)
        self._find_last_session()

    async def _welcome(self) -> None:
        log = self.query_one(ChatLog)
        if not log.message_views and not log.query(".-welcome"):
            note = NoteView(WELCOME, kind="welcome")
            await log.mount(note, before=0 if log.children else None)  # above the offer to continue

    def on_resize(self, event: events.Resize) -> None:
        self._fit_width(event.size.width)

    def _fit_width(self, width: int) -> None:
        if self._panel_follows_width:
            self._show_panel(width >= self.WIDE)
        if self._chats_follow_width:
            self._show_chats(width >= self.CHATS_WIDE)
        self.query_one(Footer).compact = width < self.WIDE
        self.query_one(StatusBar).compact = width < self.NARROW
        self.set_class(width < self.NARROW, "-narrow")  # a narrower conversations pane

    def _show_panel(self, show: bool) -> None:
        self.query_one("#params", ParamsPanel).display = show

    # ------------------------------------------------------------------------------------------ state shown

    @property
    def engine(self) -> EngineState:
        state = getattr(self.app, "engine_state", None)
        return state if isinstance(state, EngineState) else EngineState()

    @property
    def busy(self) -> bool:
        """A reply is being written (or stopping)."""
        return self._reply is not None

    def _model_name(self) -> str:
        engine = self.engine
        if engine.info is not None:
            return engine.info.name
        return self.session.model or "Assistant"

    def _sync_panel(self) -> None:
        panel = self.query_one("#params", ParamsPanel)
        panel.params = self.session.params
        panel.system_prompt = self.session.system_prompt
        self._show_context()

    def _engine_changed(self, state: EngineState) -> None:
        self.query_one(StatusBar).engine = state
        if state.ready and state.model is not None:
            self.session.model = state.model.name
        self._show_context()
        if self._waiting_for_model and state.phase in ("ready", "failed"):
            self._waiting_for_model = False
            if state.ready:
                self.run_worker(self._start_reply(), group="chat-start", exclusive=True, exit_on_error=False)
            else:
                self.notify(
                    "Your message was not answered: the model did not load. Pick another with Ctrl+L, then /retry.",
                    severity="error",
                    timeout=10,
                    markup=False,
                )
        self.refresh_bindings()

    def _show_context(self) -> None:
        info = self.engine.info
        status = self.query_one(StatusBar)
        if info is None:
            status.context = None
            return
        use = ContextUse(
            used=self._context_used,
            length=info.context_length,
            reserve=reply_reserve(self.session.params, info.context_length),
            left_out=self._exchanges_left_out(),
        )
        status.context = use
        if use.level != self._context_level:
            self._context_level = use.level
            self._warn_context(use)

    def _exchanges_left_out(self) -> int:
        return sum(
            1 for i in self._left_out if i < len(self.session.messages) and self.session.messages[i].role == "user"
        )

    def _warn_context(self, use: ContextUse) -> None:
        if use.level == "ok":
            return
        oldest = next(
            (m for i, m in enumerate(self.session.messages) if m.role == "user" and i not in self._left_out),
            None,
        )
        which = f' ("{_first_line(oldest.content)}")' if oldest else ""
        if use.level == "warn":
            message = (
                f"The context is {use.used * 100 // use.budget}% full: a long next message will push out the oldest "
                f"exchange{which}. /clear or Ctrl+N starts afresh."
            )
        else:
            message = (
                f"The context is full: the oldest exchanges are left out of the prompt (dimmed in the log); next to "
                f"go is{which or ' the oldest one'}."
            )
        self.notify(message, title="Context", severity="warning", timeout=8, markup=False)

    # ------------------------------------------------------------------------------------------ the prompt

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        if not isinstance(event.text_area, PromptInput):
            return
        if self._editing is not None:
            return  # the editing hint stays until the message is sent or Esc
        hint = self.query_one("#completions", Static)
        text = event.text_area.text
        matches = command_matches(text)
        if matches and matches != [text[1:].lower()]:
            hint.update(Content("  ".join(f"/{name}" for name in matches) + "   Tab completes"))
            hint.display = True
            return
        usage = _usage_for(text)
        hint.update(Content(usage))
        hint.display = bool(usage)

    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        event.stop()
        if not event.text.strip():
            if self._offer is not None and not self.session.messages:
                await self.open_session(self._offer)  # Enter on an empty prompt takes the offer
            return
        if await self.submit(event.text):
            event.prompt.clear()

    async def submit(self, text: str) -> bool:
        """Run a slash command or send a message. False when nothing was done (the prompt keeps the text)."""
        if self._editing is not None and slash.parse(text) is None:
            return await self.send_edited(self._editing, text)
        command = slash.parse(text)
        if command is not None:
            return await self.run_command(command)
        return await self.send(text)

    async def run_command(self, command: slash.SlashCommand) -> bool:
        if self.busy and isinstance(command, _REPLACING):
            self._tell_busy()
            return False
        services = services_of(self)
        result = slash.execute(command, self.session, store=services.store, base_dir=Path.cwd())
        if not result.ok:
            self.notify(result.message, title="Command", severity="error", timeout=8, markup=False)
            return False
        if result.session is not None:
            self.session = result.session
        action = result.action
        if action is slash.SlashAction.QUIT:
            self.app.exit()
            return True
        if action in (slash.SlashAction.RELOAD, slash.SlashAction.RETRY, slash.SlashAction.UPDATED):
            self._stop_editing()
            self._record()  # a /retry keeps the old reply as an alternative of the new one
        if action in (slash.SlashAction.RELOAD, slash.SlashAction.RETRY):
            await self._show_session()
        if action is slash.SlashAction.UPDATED:
            self._sync_panel()
            self.sub_title = self.session.display_title
        if result.message and action is not slash.SlashAction.RETRY:
            await self.query_one(ChatLog).add_note(result.message, kind="command")
        if action is slash.SlashAction.RETRY:
            await self._answer()
        return True

    async def send(self, text: str) -> bool:
        if self._reply is not None:
            if self._reply.stopped and self._queued is None:
                self._queued = text  # sent as soon as the stopped reply is closed
                return True
            self._tell_busy()
            return False
        if self.engine.phase in ("idle", "failed"):
            self.notify(
                "No model is loaded: Ctrl+L picks one, F4 opens the library.",
                severity="error",
                timeout=8,
                markup=False,
            )
            return False
        self.session.add_user(text)
        self._offer = None
        self._record()  # the message is kept even if the app dies before the reply
        log = self.query_one(ChatLog)
        await log.query(".-welcome, .-offer").remove()
        view = MessageView("user", text, author="You", index=len(self.session.messages) - 1)
        await log.add(view)
        self._show_branches()
        self.sub_title = self.session.display_title
        await self._answer()
        return True

    async def send_edited(self, index: int, text: str) -> bool:
        """Send ``text`` in place of the user's message at ``index``: a new branch from there (the old one is
        kept as its alternative)."""
        if self.busy:
            self._tell_busy()
            return False
        self._stop_editing()
        del self.session.messages[index:]
        self.session.touch()
        await self._show_session(measure=False)
        return await self.send(text)

    def _tell_busy(self) -> None:
        self.notify("A reply is being written: wait for it, or press Esc to stop it.", severity="warning", markup=False)

    async def _answer(self) -> None:
        """Reply to the last user message, now or once the model has loaded."""
        engine = self.engine
        if engine.phase == "loading":
            self._waiting_for_model = True
            name = engine.model.name if engine.model else "the model"
            await self.query_one(ChatLog).add_note(f"Waiting for {name} to load…", kind="info")
            return
        if not engine.ready:
            self.notify("No model is loaded: Ctrl+L picks one, then /retry answers.", severity="error", markup=False)
            return
        await self._start_reply()

    # ------------------------------------------------------------------------------------------ a reply

    async def _start_reply(self) -> None:
        if self._reply is not None:
            return
        self._reply_count += 1
        view = MessageView("assistant", author=self._model_name())
        await self.query_one(ChatLog).add(view)
        view.set_state("streaming")
        reply = _Reply(self._reply_count, view)
        self._reply = reply
        reply.worker = self._generate(reply.id)
        self.query_one(StatusBar).busy = True
        self.refresh_bindings()

    @work(thread=True, exclusive=True, group="chat-reply", exit_on_error=False, name="chat reply")
    def _generate(self, reply_id: int) -> None:
        """Build the prompt, queue the request, and pass its text up (runs in a thread; touches no widget)."""
        worker = get_current_worker()
        runner = services_of(self).chat_engine
        try:
            reply = start_reply(runner, self.session, worker.cancelled_event)
        except InfluenceError as exc:
            self.post_message(ReplyFailed(reply_id, str(exc)))
            return
        except Exception as exc:  # a bug: say so and keep the app alive
            self.app.log.error(traceback.format_exc())
            self.post_message(ReplyFailed(reply_id, f"{type(exc).__name__}: {exc}", expected=False))
            return
        self.post_message(ReplyStarted(reply_id, reply.plan))
        pending: list[str] = []
        last = time.monotonic()
        tokens = 0
        try:
            for event in reply.stream:
                if event.text:
                    pending.append(event.text)
                tokens += 1
                now = time.monotonic()
                if pending and (event.done or now - last >= flush_interval(tokens)):
                    self.post_message(ReplyChunk(reply_id, "".join(pending)))
                    pending.clear()
                    last = now
        except Exception as exc:
            if pending:
                self.post_message(ReplyChunk(reply_id, "".join(pending)))
            expected = isinstance(exc, InfluenceError)
            if not expected:
                self.app.log.error(traceback.format_exc())
            interrupted = isinstance(exc, RemoteError) and bool(exc.partial_text)
            text = str(exc) if expected else f"{type(exc).__name__}: {exc}"
            self.post_message(ReplyFailed(reply_id, text, expected, interrupted=interrupted))
            return
        if pending:
            self.post_message(ReplyChunk(reply_id, "".join(pending)))
        self.post_message(ReplyFinished(reply_id, reply.stream.stats))

    def on_reply_started(self, message: ReplyStarted) -> None:
        reply = self._reply
        if reply is None or reply.id != message.reply_id:
            return
        plan = reply.plan = message.plan
        self._left_out = plan.dropped_indexes
        self.query_one(ChatLog).mark_left_out(plan.dropped_indexes)
        if plan.dropped_notice:
            self.notify(
                plan.dropped_notice + " (dimmed in the log).", title="Context", severity="warning", markup=False
            )
        if plan.warning and not self._template_warned:
            self._template_warned = True
            self.notify(plan.warning, title="Prompt", severity="warning", timeout=10, markup=False)
        self._context_used = plan.prompt_tokens
        self._show_context()

    async def on_reply_chunk(self, message: ReplyChunk) -> None:
        reply = self._reply
        if reply is None or reply.id != message.reply_id or reply.stopped:
            return
        reply.parts.append(message.text)
        await reply.view.write(message.text)

    async def on_reply_finished(self, message: ReplyFinished) -> None:
        await self._close_reply(message.reply_id, message.stats)

    async def on_reply_failed(self, message: ReplyFailed) -> None:
        what = "Generation failed" if message.expected else "Generation broke (a bug; details in the log)"
        if message.interrupted:
            what = "Reply interrupted"
        self.notify(
            f"{message.error}. /retry tries again; Ctrl+L picks another model.",
            title=what,
            severity="error",
            timeout=10,
            markup=False,
        )
        await self._close_reply(message.reply_id, None, failed=True, interrupted=message.interrupted)

    async def _close_reply(
        self, reply_id: int, stats: GenerationStats | None, *, failed: bool = False, interrupted: bool = False
    ) -> None:
        reply = self._reply
        if reply is None or reply.id != reply_id:
            return
        self._reply = None
        text = reply.text
        view = reply.view
        await view.finish()  # the stream stops and the text gets its one full render
        stopped = reply.stopped or (stats is not None and stats.finish_reason == "cancelled")
        view.set_state("failed" if failed else "stopped" if stopped else "")
        if not failed or text:
            before = len(self.session.messages)
            finish_reply(self.session, text, stats)
            if len(self.session.messages) > before:
                view.index = before
        meta = stats_line(stats, stopped=stopped)
        if interrupted:
            meta = "interrupted: the remote broke off · the text so far is kept · /retry asks again"
        elif failed:
            meta = "failed · /retry tries again"
        view.show_meta(meta)
        status = self.query_one(StatusBar)
        status.busy = False
        if stats is not None and stats.generated_tokens:
            status.stats = stats
        if stats is not None:
            self._context_used = stats.prompt_tokens + stats.generated_tokens
        self._show_context()
        self._record()
        self._show_branches()
        self.refresh_bindings()
        if self._queued is not None:
            text, self._queued = self._queued, None
            await self.send(text)

    def action_stop(self) -> None:
        """Stop the reply now: no more text shows; the engine stops at its next token. (While editing a
        message and not replying: stop editing.)"""
        reply = self._reply
        if reply is None and self._editing is not None:
            self._stop_editing()
            self.query_one(PromptInput).clear()
            return
        if reply is None or reply.stopped:
            return
        reply.stopped = True
        if reply.worker is not None:
            reply.worker.cancel()
        reply.view.set_state("stopped")
        reply.view.show_meta("stopped")
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return (self._reply is not None and not self._reply.stopped) or self._editing is not None
        return True

    # ------------------------------------------------------------------------------------------ sessions

    def _record(self) -> None:
        """Write the session to the store now: its details, its new messages, the branch shown. Without a
        store (damaged, locked) the branches are kept here, and the user is told once."""
        if self._tree_id != self.session.id:
            self.chat_tree = ChatTree()
            self._tree_id = self.session.id
        try:
            self.chat_tree = services_of(self).store.autosave(self.session)
        except InfluenceError as exc:
            self.chat_tree.adopt(self.session.messages)
            if self._store_problem != str(exc):
                self._store_problem = str(exc)
                self.notify(f"Chats are not being saved: {exc}", severity="error", timeout=15, markup=False)
            return
        self._store_problem = None
        self._refresh_chats()

    def _show_branches(self) -> None:
        """``‹ 2/3 ›`` on each message that has alternatives."""
        path = self.chat_tree.path()
        for view in self.query_one(ChatLog).message_views:
            index = view.index
            if index is not None and index < len(path) and path[index].message == self.session.messages[index]:
                view.set_alternatives(self.chat_tree.alternatives(path[index].id))
            else:
                view.set_alternatives(None)
        self.query_one(ConversationsPane).mark_current(self.session.id if self.session.messages else None)

    def _snapshot(self) -> ChatSession:
        return replace(self.session, messages=list(self.session.messages))

    async def _show_session(self, *, measure: bool = True) -> None:
        """Show the session from scratch (after a load, /clear, /undo, /retry, a switch of branches)."""
        log = self.query_one(ChatLog)
        await log.show_messages(self.session.messages, assistant_name=self.session.model or self._model_name())
        if not self.session.messages:
            await log.add_note(WELCOME, kind="welcome")
        self._left_out = ()
        self._context_level = "ok"
        self._context_used = 0
        self._sync_panel()
        self._show_branches()
        self.sub_title = self.session.display_title
        if self.session.messages and measure:
            self._measure_context(list(self.session.messages), self.session.system_prompt)

    @work(thread=True, exclusive=True, group="chat-measure", exit_on_error=False, name="measure context")
    def _measure_context(self, messages: list[ChatMessage], system_prompt: str | None) -> None:
        runner = services_of(self).chat_engine
        if runner.info is None:
            return
        conversation: list[dict[str, str]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        conversation += [{"role": m.role, "content": m.content} for m in messages]
        try:
            if is_remote(runner):  # the remote tokenizes: an estimate until its first reply says
                used = runner.estimate_tokens(conversation)
            else:
                used = len(runner.apply_chat_template(conversation, add_generation_prompt=False))
        except Exception:  # a template that refuses this shape: the meter waits for the next reply
            return
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._set_context_used, used)

    def _set_context_used(self, used: int) -> None:
        self._context_used = used
        self._show_context()

    @work(thread=True, exclusive=True, group="chat-offer", exit_on_error=False, name="find the last chat")
    def _find_last_session(self) -> None:
        store = services_of(self).store
        try:
            store.open()  # the first open creates the store and imports the JSON sessions
            latest = next((s for s in store.list(limit=20) if s.message_count), None)
        except InfluenceError as exc:
            self.app.call_from_thread(self._store_failed, str(exc))
            return
        if store.import_report is not None:
            self.app.call_from_thread(self._tell_imported, store.import_report)
        if latest is not None:
            self.app.call_from_thread(self._offer_last_session, latest)
        self.app.call_from_thread(self._refresh_chats)

    def _store_failed(self, problem: str) -> None:
        self._store_problem = problem
        self.notify(f"Chats are not being saved: {problem}", severity="error", timeout=15, markup=False)

    def _tell_imported(self, report: ImportReport) -> None:
        if report.imported:
            plural = "s" if report.imported != 1 else ""
            self.notify(
                f"{report.imported} saved chat{plural} imported from {report.source} (the JSON files stay as they are)",
                markup=False,
            )
        for problem in report.problems:
            self.notify(f"Not imported: {problem.message}", severity="warning", timeout=10, markup=False)

    def _offer_last_session(self, summary: ChatSummary) -> None:
        """Offer the last chat in the log, without taking the keyboard: whatever is typed goes into the prompt
        and starts a new chat; Enter on the empty prompt (or Enter in the pane) continues the last one."""
        if self.session.messages or self.busy:
            return  # the user has already started
        self._offer = summary
        plural = "s" if summary.message_count != 1 else ""
        model = f" · {summary.model}" if summary.model else ""
        text = (
            f"Continue your last chat? “{summary.title}”\n"
            f"{summary.message_count} message{plural} · {local_time(summary.updated_at)}{model}\n"
            "Enter on the empty prompt continues it · typing starts a new chat"
        )
        self.query_one(ChatLog).mount(NoteView(text, kind="offer"))

    async def open_session(self, summary: ChatSummary | str) -> None:
        if self.busy:
            self._tell_busy()
            return
        chat_id = summary if isinstance(summary, str) else summary.id
        try:
            session, tree = services_of(self).store.open_chat(chat_id, defaults=self.session.params)
        except InfluenceError as exc:
            self.notify(f"{exc}", title="Not opened", severity="error", timeout=10, markup=False)
            return
        self._offer = None
        self._stop_editing()
        engine = self.engine
        remote = services_of(self).remotes.model(session.model) if session.model else None
        if remote is not None and (engine.model is None or engine.model.name != remote.name):
            self.notify(f"This chat was with {remote.name}: continuing with it (on {remote.host}).", markup=False)
            self.post_message(ChatWithModel(remote))  # a remote model loads at once: reopen the chat with it
        elif engine.model is not None and session.model and session.model != engine.model.name:
            self.notify(
                f"This chat was with {session.model}; replies now come from {engine.model.name} (Ctrl+L switches).",
                markup=False,
            )
        self.session = session
        self.chat_tree = tree
        self._tree_id = session.id
        await self._show_session()
        self.notify(f"Opened “{session.display_title}” ({len(session.messages)} messages)", markup=False)

    def action_open(self) -> None:
        if self.busy:
            self._tell_busy()
            return

        def chosen(summary: ChatSummary | None) -> None:
            if summary is not None:
                self.run_worker(self.open_session(summary), group="chat-open", exit_on_error=False)

        self.app.push_screen(LoadSessionDialog(services_of(self).store), chosen)

    def action_save(self) -> None:
        if not self.session.messages:
            self.notify("Nothing to save yet: send a message first.", severity="warning", markup=False)
            return

        def named(name: str | None) -> None:
            if name:
                self._save(name)

        self.app.push_screen(
            TextInputDialog(
                "Save this chat",
                "A name for it (Ctrl+O opens it later), or a file path ending in .json for a copy there.",
                value=self.session.title,
                placeholder="name",
                confirm="Save",
            ),
            named,
        )

    def _save(self, name: str) -> None:
        if name.endswith(".json") or "/" in name:
            self._save_copy(slash.resolve_path(name), self._snapshot())
            return
        self.session.title = " ".join(name.split())
        self.session.touch()
        self.sub_title = self.session.display_title
        self._record()
        if self._store_problem is None:
            self.notify(f"Saved as “{self.session.display_title}”: Ctrl+R lists your chats.", markup=False)

    @work(thread=True, exclusive=True, group="chat-save", exit_on_error=False, name="save chat copy")
    def _save_copy(self, path: Path, snapshot: ChatSession) -> None:
        try:
            written = snapshot.save(path)
        except InfluenceError as exc:
            self.app.call_from_thread(self.notify, f"Not saved: {exc}", severity="error", timeout=10, markup=False)
            return
        self.app.call_from_thread(self.notify, f"Saved a copy to {written}", markup=False)

    async def action_new_chat(self) -> None:
        await self.run_command(slash.Clear())

    # ------------------------------------------------------------------------------------------ the model

    def action_pick_model(self) -> None:
        engine = self.engine

        def chosen(model: AnyModel | None) -> None:
            if model is not None:
                self.post_message(ChatWithModel(model))

        services = services_of(self)
        current = engine.model.name if engine.model else None
        self.app.push_screen(ModelPickerDialog(services.library, current, remotes=services.remotes), chosen)

    # ------------------------------------------------------------------------------------------ the panel

    def action_toggle_params(self) -> None:
        panel = self.query_one("#params", ParamsPanel)
        self._panel_follows_width = False
        self._show_panel(not panel.display)
        if panel.display:
            panel.input_for("temperature").focus()
        else:
            self.query_one(PromptInput).focus()

    # ------------------------------------------------------------------------------------------ the chats pane

    def _show_chats(self, show: bool) -> None:
        pane = self.query_one(ConversationsPane)
        was = pane.display
        pane.display = show
        if show and not was:
            self._refresh_chats()

    def action_toggle_chats(self) -> None:
        pane = self.query_one(ConversationsPane)
        self._chats_follow_width = False
        self._show_chats(not pane.display)
        if pane.display:
            pane.chat_list.focus()
        else:
            self.query_one(PromptInput).focus()

    def action_find_chats(self) -> None:
        self._chats_follow_width = False
        self._show_chats(True)
        self.query_one("#chat-search").focus()

    def _refresh_chats(self) -> None:
        if self.query_one(ConversationsPane).display:
            self._list_chats()

    @work(thread=True, exclusive=True, group="chat-list", exit_on_error=False, name="list the chats")
    def _list_chats(self) -> None:
        try:
            chats = services_of(self).store.list(limit=CHAT_LIST_LIMIT)
        except InfluenceError:
            return  # said once already, by whatever found it
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._chats_listed, chats)

    def _chats_listed(self, chats: tuple[ChatSummary, ...]) -> None:
        pane = self.query_one(ConversationsPane)
        pane.show_chats(chats, self.session.id if self.session.messages else None)
        if pane.search_text.strip():
            self._search_chats(pane.search_text.strip())  # a search shown stays up to date

    def on_conversations_pane_search_changed(self, event: ConversationsPane.SearchChanged) -> None:
        event.stop()
        if event.text:
            self._search_chats(event.text)
        else:
            self.query_one(ConversationsPane).show_hits("", None)

    @work(thread=True, exclusive=True, group="chat-search", exit_on_error=False, name="search the chats")
    def _search_chats(self, text: str) -> None:
        try:
            hits = services_of(self).store.search(text, limit=CHAT_LIST_LIMIT)
        except InfluenceError as exc:
            self.app.call_from_thread(self.notify, f"{exc}", severity="error", markup=False)
            return
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.query_one(ConversationsPane).show_hits, text, hits)

    async def on_conversations_pane_open_chat(self, event: ConversationsPane.OpenChat) -> None:
        event.stop()
        if event.chat_id == self.session.id and self.session.messages:
            self.query_one(PromptInput).focus()
            return
        await self.open_session(event.chat_id)

    async def on_conversations_pane_new_chat(self, event: ConversationsPane.NewChat) -> None:
        event.stop()
        await self.action_new_chat()
        self.query_one(PromptInput).focus()

    def on_conversations_pane_delete_chat(self, event: ConversationsPane.DeleteChat) -> None:
        event.stop()
        chat_id = event.chat_id
        pane = self.query_one(ConversationsPane)
        summary = next((c for c in pane.chats if c.id == chat_id), None)
        title = summary.title if summary else chat_id

        async def answered(delete: bool | None) -> None:
            if not delete:
                return
            if chat_id == self.session.id and self.busy:
                self._tell_busy()
                return
            try:
                services_of(self).store.delete(chat_id)
            except InfluenceError as exc:
                self.notify(f"Not deleted: {exc}", severity="error", timeout=10, markup=False)
                return
            self.notify(f"Deleted “{title}”", markup=False)
            if chat_id == self.session.id:
                self.session.clear()
                self._tree_id = ""
                await self._show_session()
            self._refresh_chats()

        self.app.push_screen(
            ConfirmDialog(
                f"Delete “{title}”?",
                "The chat and every branch of it are removed from the store. This cannot be undone.",
                confirm="Delete",
                cancel="Keep",
                danger=True,
            ),
            answered,
        )

    def on_conversations_pane_rename_chat(self, event: ConversationsPane.RenameChat) -> None:
        event.stop()
        chat_id = event.chat_id
        summary = next((c for c in self.query_one(ConversationsPane).chats if c.id == chat_id), None)

        def named(title: str | None) -> None:
            if not title:
                return
            try:
                renamed = services_of(self).store.rename(chat_id, title)
            except InfluenceError as exc:
                self.notify(f"Not renamed: {exc}", severity="error", timeout=10, markup=False)
                return
            if chat_id == self.session.id:
                self.session.title = renamed.title
                self.sub_title = self.session.display_title
            self._refresh_chats()

        self.app.push_screen(
            TextInputDialog(
                "Rename this chat", value=summary.title if summary else "", placeholder="title", confirm="Rename"
            ),
            named,
        )

    def on_conversations_pane_export_chat(self, event: ConversationsPane.ExportChat) -> None:
        event.stop()
        chat_id = event.chat_id

        def chosen(name: str | None) -> None:
            if name:
                self._export_chat(chat_id, slash.resolve_path(name))

        self.app.push_screen(
            TextInputDialog(
                "Export this chat as Markdown",
                "A file to write (its model, parameters, dates and the branch shown).",
                value=f"chat-{chat_id}.md",
                placeholder="file.md",
                confirm="Export",
            ),
            chosen,
        )

    @work(thread=True, exclusive=True, group="chat-export", exit_on_error=False, name="export a chat")
    def _export_chat(self, chat_id: str, path: Path) -> None:
        try:
            session = services_of(self).store.load(chat_id)
            written = export_markdown(session, path if path.suffix else path.with_suffix(".md"))
        except InfluenceError as exc:
            self.app.call_from_thread(self.notify, f"Not exported: {exc}", severity="error", markup=False)
            return
        self.app.call_from_thread(self.notify, f"Exported to {written}", markup=False)

    # ------------------------------------------------------------------------------------------ branches

    def action_focus_messages(self) -> None:
        views = self.query_one(ChatLog).message_views
        if views:
            views[-1].focus()

    async def on_message_view_requested(self, event: MessageView.Requested) -> None:
        event.stop()
        view, request = event.view, event.request
        views = self.query_one(ChatLog).message_views
        position = views.index(view) if view in views else -1
        if request == "leave":
            self.query_one(PromptInput).focus()
        elif request == "up":
            if position > 0:
                views[position - 1].focus()
        elif request == "down":
            if 0 <= position < len(views) - 1:
                views[position + 1].focus()
            else:
                self.query_one(PromptInput).focus()
        elif view.index is None or self.busy:
            self._tell_busy()
        elif request in ("previous", "next"):
            await self.switch_branch(view.index, -1 if request == "previous" else 1)
        elif request == "edit":
            self.edit_message(view.index)
        elif request == "regenerate":
            await self.regenerate(view.index)

    async def switch_branch(self, index: int, step: int) -> None:
        """Show the alternative ``step`` places from the message at ``index`` (and what follows it)."""
        path = self.chat_tree.path()
        if index >= len(path) or self.chat_tree.switch(path[index].id, step) is None:
            return
        self.session.messages = self.chat_tree.messages()
        self._record()
        await self._show_session()
        views = self.query_one(ChatLog).message_views
        if index < len(views):
            views[index].focus()

    def edit_message(self, index: int) -> None:
        """Put the user's message at ``index`` in the prompt; sending it starts a new branch there."""
        message = self.session.messages[index]
        self._stop_editing()
        self._editing = index
        for view in self.query_one(ChatLog).message_views:
            view.set_class(view.index == index, "-editing")
        prompt = self.query_one(PromptInput)
        prompt.set_text(message.content)
        prompt.focus()
        hint = self.query_one("#completions", Static)
        hint.update(Content("Editing your message: Enter sends it as a new branch (the old one is kept) · Esc cancels"))
        hint.display = True
        self.refresh_bindings()

    def _stop_editing(self) -> None:
        if self._editing is None:
            return
        self._editing = None
        for view in self.query_one(ChatLog).query(".-editing"):
            view.remove_class("-editing")
        hint = self.query_one("#completions", Static)
        hint.update(Content(""))
        hint.display = False
        self.refresh_bindings()

    async def regenerate(self, index: int) -> None:
        """Answer again the message before the reply at ``index``: the old reply is kept as an alternative."""
        if self.session.messages[index].role != "assistant" or index == 0:
            return
        del self.session.messages[index:]
        self.session.touch()
        self._record()
        await self._show_session(measure=False)
        await self._answer()

    def on_params_panel_changed(self, event: ParamsPanel.Changed) -> None:
        event.stop()
        panel = self.query_one("#params", ParamsPanel)
        if event.name == SYSTEM:
            self.session.set_system_prompt(event.value)
            self.notify("System prompt set" if self.session.system_prompt else "System prompt removed", markup=False)
        else:
            try:
                name = self.session.set_param(event.name, event.value)
            except InfluenceError as exc:
                self.notify(
                    f"{exc}. The value stays {self.session.param_display(event.name)}.",
                    title="Not changed",
                    severity="error",
                    timeout=8,
                    markup=False,
                )
                panel.revert(event.name)
                return
            self.notify(f"{name} = {self.session.param_display(name)}", markup=False)
        self._sync_panel()
        if self.session.messages:
            self._record()

    # ------------------------------------------------------------------------------------------ copy, scroll

    def _last_reply_text(self) -> str:
        if self._reply is not None and self._reply.parts:
            return self._reply.text
        return next((m.content for m in reversed(self.session.messages) if m.role == "assistant"), "")

    def action_copy_reply(self) -> None:
        text = self._last_reply_text()
        if not text:
            self.notify("There is no reply to copy yet.", severity="warning", markup=False)
            return
        self.app.copy_to_clipboard(text)
        self.notify(f"Copied the last reply ({len(text):,} characters)", markup=False)

    def action_copy_code(self) -> None:
        blocks = code_blocks(self._last_reply_text())
        if not blocks:
            self.notify("The last reply has no code block.", severity="warning", markup=False)
            return
        if len(blocks) == 1:
            self._copy_block(blocks[0])
            return

        def chosen(block: CodeBlock | None) -> None:
            if block is not None:
                self._copy_block(block)

        self.app.push_screen(CodePickerDialog(blocks), chosen)

    def _copy_block(self, block: CodeBlock) -> None:
        self.app.copy_to_clipboard(block.code)
        lines = len(block.code.splitlines())
        self.notify(
            f"Copied the {block.language or 'code'} block ({lines} line{'s' if lines != 1 else ''})", markup=False
        )

    def action_scroll_log(self, direction: int) -> None:
        log = self.query_one(ChatLog)
        if direction < 0:
            log.scroll_page_up()
        else:
            log.scroll_page_down()


def _first_line(text: str, limit: int = 40) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def _usage_for(text: str) -> str:
    """``/set [PARAM VALUE] — change a sampling parameter…`` once a whole command name is typed."""
    if not text.startswith("/"):
        return ""
    word = text[1:].split(maxsplit=1)[0].lower() if text[1:].strip() else ""
    for spec in slash.COMMANDS:
        if word == spec.name or word in spec.aliases:
            return f"{spec.usage} — {spec.summary}"
    return ""
