"""Write screenshots/ from the real app (never hand-edited): `make screenshots`.

Runs the app headless at fixed sizes in a throwaway data dir that holds the demo model (and whatever else a
screen needs), saves Textual's SVG, and turns it into PNG when `rsvg-convert` (librsvg2-bin) is installed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "screenshots"


async def _library(size: tuple[int, int], name: str) -> Path:
    from influence_tui.core.config import load_settings
    from influence_tui.tui.app import InfluenceApp

    app = InfluenceApp(load_settings(), load_model=False)
    async with app.run_test(size=size) as pilot:
        await app.switch_mode("library")
        await pilot.pause(0.5)
        await app.workers.wait_for_complete()
        await pilot.pause(1.0)  # DataTable sizes its columns on the next refresh
        return Path(app.save_screenshot(filename=f"{name}.svg", path=str(OUT)))


# ------------------------------------------------------------------------------------------ chat, dialogs


async def _chat_screen(
    size: tuple[int, int], name: str, scene: str, *, sessions: bool = False, replies: tuple[str, ...] | None = None
) -> Path:
    """The chat screen or one of its (or the library's) dialogs, on the scripted engine and the fixed library of
    the snapshot tests (tests/tui/scenes.py): a conversation with a code block and a table, fixed figures."""
    from dataclasses import replace

    from influence_tui.core.config import load_settings
    from tests.tui import scenes

    settings = load_settings()
    settings = replace(settings, sessions_dir=settings.sessions_dir / name)  # each picture its own saved chats
    if sessions:
        scenes.save_sessions(settings.sessions_dir)
    with scenes.utc():
        app = scenes.make_app(settings, replies) if replies else scenes.make_app(settings)
        async with app.run_test(size=size) as pilot:
            await getattr(scenes, scene)(pilot)
            return Path(app.save_screenshot(filename=f"{name}.svg", path=str(OUT)))


def chat_shots() -> list[Path]:
    return [
        asyncio.run(_chat_screen((120, 36), "chat-120x36", "conversation")),
        asyncio.run(_chat_screen((80, 24), "chat-80x24", "conversation")),
        asyncio.run(_chat_screen((120, 36), "dialog-continue-120x36", "offer_to_continue", sessions=True)),
        asyncio.run(_chat_screen((120, 36), "dialog-open-120x36", "open_dialog", sessions=True)),
        asyncio.run(_chat_screen((120, 36), "dialog-save-120x36", "save_dialog")),
        asyncio.run(_chat_screen((120, 36), "dialog-model-120x36", "model_picker")),
        asyncio.run(_chat_screen((120, 36), "dialog-code-120x36", "code_picker")),
        asyncio.run(_chat_screen((120, 36), "dialog-remove-120x36", "remove_dialog")),
        asyncio.run(_chat_screen((120, 36), "dialog-import-120x36", "import_dialog")),
        asyncio.run(_chat_screen((120, 36), "chats-search-120x36", "chats_search", sessions=True)),
        asyncio.run(_chat_screen((120, 36), "branches-120x36", "branches", replies=scenes_replies())),
    ]


def scenes_replies() -> tuple[str, ...]:
    from tests.tui import scenes

    return scenes.BRANCH_REPLIES


# ------------------------------------------------------------------------------------------ hub search, downloads


async def _hub_screen(size: tuple[int, int], name: str, steps: str) -> Path:
    """The hub search, its quantization dialog or the downloads screen of the real app, on the fixed Hub answers
    and download states of tests/tui/hub_data.py (the same as the snapshot tests: no network needed)."""
    from unittest import mock

    from influence_tui.core.config import load_settings
    from influence_tui.tui.app import InfluenceApp
    from tests.tui import hub_data

    with mock.patch.dict(os.environ, {"INFLUENCE_MODELS_DIR": hub_data.MODELS_DIR}), hub_data.fixed_hub():
        app = InfluenceApp(load_settings(), load_model=False)
        async with app.run_test(size=size) as pilot:
            await getattr(hub_data, steps)(pilot)
            return Path(app.save_screenshot(filename=f"{name}.svg", path=str(OUT)))


def hub_shots() -> list[Path]:
    return [
        asyncio.run(_hub_screen((120, 36), "hub-search-120x36", "open_hub")),
        asyncio.run(_hub_screen((80, 24), "hub-search-80x24", "open_hub")),
        asyncio.run(_hub_screen((120, 36), "hub-quant-dialog-120x36", "open_quant_dialog")),
        asyncio.run(_hub_screen((120, 36), "downloads-120x36", "open_downloads")),
    ]


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for var in ("INFLUENCE_CONFIG_DIR", "INFLUENCE_DATA_DIR", "INFLUENCE_CACHE_DIR", "HF_HOME"):
            os.environ[var] = str(Path(tmp) / var.lower())
        os.environ["HF_HUB_OFFLINE"] = "1"
        shots = [asyncio.run(_library((80, 24), "library-80x24")), asyncio.run(_library((120, 34), "library-120x34"))]
        shots += hub_shots()
        shots += chat_shots()
    converter = shutil.which("rsvg-convert")
    for svg in shots:
        if converter:
            subprocess.run([converter, str(svg), "-o", str(svg.with_suffix(".png"))], check=True)
        print(f"wrote {svg}" + (f" and {svg.with_suffix('.png').name}" if converter else ""))


if __name__ == "__main__":
    main()
