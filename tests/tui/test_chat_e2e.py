"""End to end: the real app, the real engine and the demo model, asked a question in the chat pane."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from influence_tui.core.config import load_settings
from influence_tui.core.library import DEMO_NAME
from influence_tui.tui.app import InfluenceApp
from influence_tui.tui.screens.chat import ChatScreen
from tests.fakes import FixedLibrary, ScriptedRunner
from tests.tui.harness import UI


@pytest.mark.slow
def test_the_demo_model_answers_the_capital_of_france(demo_gguf: Path) -> None:
    async def main() -> None:
        app = InfluenceApp(load_settings())  # the real engine runner and library: the demo model
        async with app.run_test(size=(120, 36)) as pilot:
            ui = UI(app, pilot, ScriptedRunner(), FixedLibrary(app.settings))  # (only its helpers are used)
            await ui.wait_for(lambda: app.engine_state.phase in ("ready", "failed"), "the demo model", timeout=180)
            assert app.engine_state.ready, app.engine_state.error
            assert app.engine_state.info is not None and app.engine_state.info.name == DEMO_NAME
            await ui.send("/set temperature 0")
            assert ui.chat.session.params.temperature == 0.0
            await ui.send("What is the capital of France?")
            await ui.wait_for(lambda: not ui.chat.busy, "the reply", timeout=180)
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert isinstance(app.screen, ChatScreen)
            reply = ui.views[-1]
            assert reply.role == "assistant"
            assert "Paris" in reply.source
            assert "Paris" in ui.text()  # shown in the chat pane
            assert ui.chat.session.last_stats is not None
            assert ui.chat.session.last_stats.generated_tokens > 0
            assert "tok/s" in ui.text()

    asyncio.run(main())
