"""Fixed scenes of the chat and library screens and their dialogs, for the snapshot tests and `make screenshots`.

Everything shown is fixed: the scripted engine's figures, the fixed library's models and paths, the sessions'
dates (shown in the local time zone: the callers pin it to UTC). Each scene is a ``run_before`` for
``snap_compare``: it drives the app from its first paint to the picture, then hides what blinks or times out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Input, TextArea

from influence_tui.core.config import Settings
from influence_tui.core.sessions import ChatSession, SessionStore
from influence_tui.tui.app import InfluenceApp
from tests.fakes import FixedLibrary, ScriptedRunner

QUESTION_1 = "How do I read a file line by line in Python?"
REPLY_1 = """Open it with a `with` block and iterate over the file object: it yields one line at a time, so even a
huge file never has to fit in memory.

```python
from pathlib import Path

with Path("notes.txt").open(encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
        print(number, line.rstrip("\\n"))
```

Each `line` keeps its trailing newline; `rstrip("\\n")` removes it.
"""

QUESTION_2 = "Which way should I use when?"
REPLY_2 = """| Way | Memory | Good for |
|-----|--------|----------|
| `for line in f` | one line | large files, streaming |
| `f.readlines()` | whole file | small files you index into |
| `Path.read_text().splitlines()` | whole file | short scripts |

For anything that might grow, **iterate**: it is the fastest and never runs out of memory.

```python
with open("notes.txt", encoding="utf-8") as f:
    count = sum(1 for _ in f)
```

```sh
python count_lines.py notes.txt
```
"""

SAVED_SESSIONS = (
    (
        "2026-01-05T09:12:00+00:00",
        ["Explain Python's GIL in two sentences", "The GIL lets one thread run Python bytecode at a time…"],
    ),
    ("2026-01-04T18:40:00+00:00", ["Write a haiku about local models", "Weights on my own disk…"]),
    ("2026-01-02T08:05:00+00:00", ["What is the capital of France?", "Paris."]),
)

Scene = Callable[[Pilot[None]], Awaitable[None]]


@contextmanager
def utc() -> Iterator[None]:
    """Local time is UTC inside the block (dates in pictures must not depend on the machine)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def make_app(settings: Settings, replies: tuple[str, ...] = (REPLY_1, REPLY_2)) -> InfluenceApp:
    runner = ScriptedRunner(list(replies))
    return InfluenceApp(settings, runner_factory=lambda: runner, library=FixedLibrary(settings))  # type: ignore[arg-type, return-value]


def save_sessions(sessions_dir: Path) -> None:
    store = SessionStore(sessions_dir)
    for when, texts in SAVED_SESSIONS:
        session = ChatSession(created_at=when, model="TinyLlama-1.1B-Chat:Q4_K_M")
        session.add_user(texts[0])
        session.add_assistant(texts[1])
        session.updated_at = when
        store.autosave(session)


async def settle(pilot: Pilot[None]) -> None:
    """Let the workers answer and the screen catch up (a worker's answer can start another: twice)."""
    for _ in range(2):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


async def still(pilot: Pilot[None]) -> None:
    """No toasts, no blinking cursors: the picture is the same every time."""
    await settle(pilot)
    pilot.app.clear_notifications()
    for screen in pilot.app.screen_stack:
        for field in screen.query(TextArea):
            field.cursor_blink = False
        for line in screen.query(Input):
            line.cursor_blink = False
    await pilot.pause()


async def ready(pilot: Pilot[None]) -> None:
    app = pilot.app
    assert isinstance(app, InfluenceApp)
    for _ in range(200):
        if app.engine_state.ready:
            break
        await pilot.pause(0.02)
    await settle(pilot)
    app.clear_notifications()  # the "loaded" toast: before any dialog covers the screen that shows it
    await pilot.pause()


async def ask(pilot: Pilot[None], text: str) -> None:
    from influence_tui.tui.widgets.prompt_input import PromptInput

    prompt = pilot.app.screen.query_one(PromptInput)
    prompt.focus()
    prompt.set_text(text)
    await pilot.press("enter")
    for _ in range(500):
        await pilot.pause(0.01)
        if not getattr(pilot.app.screen, "busy", False):
            break
    await settle(pilot)


async def conversation(pilot: Pilot[None]) -> None:
    await ready(pilot)
    await ask(pilot, QUESTION_1)
    await ask(pilot, QUESTION_2)
    await still(pilot)


async def welcome(pilot: Pilot[None]) -> None:
    await ready(pilot)
    await still(pilot)


async def library(pilot: Pilot[None]) -> None:
    await ready(pilot)
    await pilot.press("f4")
    await settle(pilot)
    await pilot.pause(0.1)  # DataTable sizes its columns on the next refresh
    await still(pilot)


async def offer_to_continue(pilot: Pilot[None]) -> None:
    await ready(pilot)
    await still(pilot)


async def save_dialog(pilot: Pilot[None]) -> None:
    await conversation(pilot)
    await pilot.press("ctrl+s")
    await still(pilot)


async def open_dialog(pilot: Pilot[None]) -> None:
    await ready(pilot)
    await pilot.press("escape")  # not the offer to continue
    await pilot.press("ctrl+o")
    await settle(pilot)
    await pilot.pause(0.1)
    await still(pilot)


async def model_picker(pilot: Pilot[None]) -> None:
    await ready(pilot)
    await pilot.press("ctrl+l")
    await settle(pilot)
    await pilot.pause(0.1)
    await still(pilot)


async def code_picker(pilot: Pilot[None]) -> None:
    await conversation(pilot)
    await pilot.press("ctrl+g")  # the last reply has two blocks: which one?
    await still(pilot)


async def remove_dialog(pilot: Pilot[None]) -> None:
    await library(pilot)
    await pilot.press("down", "d")
    await still(pilot)


async def import_dialog(pilot: Pilot[None]) -> None:
    await library(pilot)
    await pilot.press("i")
    await settle(pilot)
    field = pilot.app.screen.query_one(Input)
    field.value = "~/Downloads/mistral-7b-instruct.Q4_K_M.gguf"
    field.cursor_position = len(field.value)
    await still(pilot)


# ------------------------------------------------------------------------------------------ chats and branches

BRANCH_QUESTION = "Suggest a colour for the logo of a note-taking app."
BRANCH_REPLIES = (
    "**Teal**: calm, focused and easy to read on light and dark backgrounds.",
    "**Amber**: warm and friendly; it stands out in a dock full of blue icons.",
)


async def chats_pane(pilot: Pilot[None]) -> None:
    """The conversations pane opened with Ctrl+R over the saved chats."""
    await ready(pilot)
    await pilot.press("ctrl+r")
    await settle(pilot)
    await still(pilot)


async def chats_search(pilot: Pilot[None]) -> None:
    """A search in the pane: the chats found, the matches highlighted."""
    await ready(pilot)
    await pilot.press("ctrl+f")
    await pilot.press(*"local models")
    await settle(pilot)
    await pilot.pause(0.05)
    await settle(pilot)
    await still(pilot)


async def branches(pilot: Pilot[None]) -> None:
    """A regenerated reply: the second of two alternatives, the message focused (Left/Right switch)."""
    await ready(pilot)
    await ask(pilot, BRANCH_QUESTION)
    await pilot.press("ctrl+up", "r")
    for _ in range(500):
        await pilot.pause(0.01)
        if not getattr(pilot.app.screen, "busy", False):
            break
    await settle(pilot)
    from influence_tui.tui.widgets.chat_log import ChatLog

    pilot.app.screen.query_one(ChatLog).message_views[-1].focus()
    await still(pilot)


async def editing(pilot: Pilot[None]) -> None:
    """An earlier message of the user's being edited in the prompt (Enter sends it as a new branch)."""
    await ready(pilot)
    await ask(pilot, BRANCH_QUESTION)
    await pilot.press("ctrl+up", "up", "e")
    await settle(pilot)
    from influence_tui.tui.widgets.prompt_input import PromptInput

    prompt = pilot.app.screen.query_one(PromptInput)
    prompt.set_text("Suggest a colour for the logo of a calendar app.")
    await pilot.pause(0.5)  # a loaded machine: let scrolling and the edit marker finish before the picture
    await still(pilot)
