"""Run the real app on a scripted engine and a fixed library, and drive it like a user: shared by the Pilot tests.

``run_chat(scenario, ...)`` starts the app (model loaded, first screen painted) and calls
``scenario(ui)``; :class:`UI` has the small steps the tests are written in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from textual.message import Message
from textual.notifications import Notify
from textual.pilot import Pilot

from influence_tui.core.config import Settings, load_settings
from influence_tui.core.types import LocalModel
from influence_tui.tui.app import InfluenceApp
from influence_tui.tui.screens.chat import ChatScreen
from influence_tui.tui.widgets.chat_log import ChatLog
from influence_tui.tui.widgets.message_view import MessageView
from influence_tui.tui.widgets.params_panel import ParamsPanel
from influence_tui.tui.widgets.prompt_input import PromptInput
from influence_tui.tui.widgets.status_bar import StatusBar
from tests.fakes import FIXED_MODELS, FixedLibrary, ScriptedRunner


@dataclass
class UI:
    app: InfluenceApp
    pilot: Pilot[None]
    runner: ScriptedRunner
    library: FixedLibrary
    notes: list[tuple[str, str]] = field(default_factory=list)
    """Every notification: (severity, message)."""

    # -- what is on screen

    @property
    def chat(self) -> ChatScreen:
        screen = self.app.get_screen_stack("chat")[0]
        assert isinstance(screen, ChatScreen)
        return screen

    @property
    def prompt(self) -> PromptInput:
        return self.chat.query_one(PromptInput)

    @property
    def panel(self) -> ParamsPanel:
        return self.chat.query_one(ParamsPanel)

    @property
    def status(self) -> StatusBar:
        return self.chat.query_one(StatusBar)

    @property
    def views(self) -> list[MessageView]:
        return self.chat.query_one(ChatLog).message_views

    def text(self) -> str:
        """Everything the terminal shows now, as plain text."""
        return "\n".join(strip.text for strip in self.app.screen._compositor.render_strips())

    def errors(self) -> list[str]:
        return [message for severity, message in self.notes if severity == "error"]

    # -- doing things

    async def wait_for(self, predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await self.pilot.pause(0.01)

    async def type(self, text: str) -> None:
        """Put ``text`` in the prompt (as if typed) and leave the cursor at its end."""
        self.prompt.focus()
        self.prompt.set_text(text)
        await self.pilot.pause()

    async def send(self, text: str) -> None:
        await self.type(text)
        await self.pilot.press("enter")
        await self.pilot.pause()

    async def keys(self, *keys: str) -> None:
        """Post key presses as a terminal delivers them, without waiting for the app to go idle in between
        (Pilot's press waits for quiet, which a streaming reply never is)."""
        from textual import events

        for key in keys:
            char = {"enter": "\r", "space": " "}.get(key, key if len(key) == 1 else None)
            self.app.post_message(events.Key(key, char))
        await self.pilot.pause(0.01)

    async def idle(self) -> None:
        """Wait until no reply is being written and every worker is done."""
        await self.wait_for(lambda: not self.chat.busy, "the reply to finish")
        await self.app.workers.wait_for_complete()
        await self.pilot.pause()

    async def ask(self, text: str) -> MessageView:
        """Send ``text`` and wait for the whole reply; return its view."""
        await self.send(text)
        await self.idle()
        return self.views[-1]


Scenario = Callable[[UI], Awaitable[None]]


def run_chat(
    scenario: Scenario,
    *,
    replies: Sequence[str] = (),
    runner: ScriptedRunner | None = None,
    size: tuple[int, int] = (100, 30),
    settings: Settings | None = None,
    models: Sequence[LocalModel] = FIXED_MODELS,
    load_model: bool = True,
) -> None:
    """Start the app on a scripted engine (``replies`` in turn), wait for the model, run ``scenario``."""

    async def main() -> None:
        engine = runner or ScriptedRunner(replies)
        library = FixedLibrary(settings or load_settings(), models)
        notes: list[tuple[str, str]] = []

        def hook(message: Message) -> None:
            if isinstance(message, Notify):
                notes.append((message.notification.severity, message.notification.message))

        app = InfluenceApp(library.settings, runner_factory=lambda: engine, library=library, load_model=load_model)
        async with app.run_test(size=size, message_hook=hook) as pilot:
            ui = UI(app, pilot, engine, library, notes)
            if load_model:
                await ui.wait_for(lambda: app.engine_state.phase in ("ready", "failed"), "the model to load")
            await app.workers.wait_for_complete()
            await pilot.pause()
            await scenario(ui)

    asyncio.run(main())
