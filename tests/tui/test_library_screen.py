"""The library screen in the real app, driven by Pilot: rows, details, rescan and problems."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from rich.style import Style
from rich.text import Text
from textual.color import Color
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from influence_tui.core.config import load_settings
from influence_tui.core.library import DEMO_NAME
from influence_tui.tui.app import InfluenceApp
from influence_tui.tui.screens.library import LibraryScreen
from tests.fakes import ScriptedRunner

Scenario = Callable[[InfluenceApp, Pilot[None]], Awaitable[None]]


def run_app(scenario: Scenario, size: tuple[int, int] = (100, 30)) -> None:
    async def main() -> None:
        # A scripted engine and no model loading: these tests are about the library screen.
        app = InfluenceApp(load_settings(), runner_factory=ScriptedRunner, load_model=False)
        async with app.run_test(size=size) as pilot:
            await app.switch_mode("library")
            await scanned(app, pilot)
            await scenario(app, pilot)

    asyncio.run(main())


async def scanned(app: InfluenceApp, pilot: Pilot[None]) -> LibraryScreen:
    """Wait for the scan worker to finish and its rows to be shown."""
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, LibraryScreen)
    return screen


def table(app: InfluenceApp) -> DataTable[str | Text]:
    return app.screen.query_one("#model-table", DataTable)


def rows(app: InfluenceApp) -> list[list[str]]:
    t = table(app)
    return [[str(cell) for cell in t.get_row_at(i)] for i in range(t.row_count)]


def text_of(app: InfluenceApp, selector: str) -> str:
    """What a Static shows (its rendered content, so text that failed to render is not mistaken for shown)."""
    return str(app.screen.query_one(selector, Static).render())


def details(app: InfluenceApp) -> dict[str, str]:
    """The details panel as {label: value} (problems joined under "Problem")."""
    found: dict[str, str] = {}
    for line in text_of(app, "#model-details").splitlines():
        key, value = line[:14].strip(), line[14:].strip()
        found[key] = f"{found[key]} | {value}" if key in found else value
    return found


def test_library_table_shows_the_demo_and_an_imported_model(tiny_llama: Path, models_dir: Path) -> None:
    shutil.move(tiny_llama, models_dir / "tiny-llama")

    async def scenario(app: InfluenceApp, pilot: Pilot[None]) -> None:
        assert rows(app) == [
            ["tiny-llama", "safetensors/F32", "125K", rows(app)[0][3], "models dir"],
            [DEMO_NAME, "GGUF/Q4_1", "135M", "94 MiB", "demo"],
        ]
        assert rows(app)[0][3].endswith("KiB")
        status = text_of(app, "#library-status")
        assert status.startswith("2 models · ")
        assert f"models dir: {models_dir}" in status
        shown = details(app)
        assert shown["Name"] == "tiny-llama"
        assert shown["Architecture"] == "llama"
        assert shown["Context"] == "256"
        assert "Problem" not in shown

    run_app(scenario)


def test_details_follow_the_cursor(tiny_llama: Path, models_dir: Path, demo_gguf: Path) -> None:
    shutil.move(tiny_llama, models_dir / "tiny-llama")

    async def scenario(app: InfluenceApp, pilot: Pilot[None]) -> None:
        assert details(app)["Name"] == "tiny-llama"
        table(app).focus()
        await pilot.press("down")
        await pilot.pause()
        shown = details(app)
        assert shown["Name"] == DEMO_NAME
        assert shown["Format"] == "GGUF/Q4_1"
        assert shown["Architecture"] == "llama"
        assert shown["Parameters"] == "135M"
        assert shown["Context"] == "8192"
        assert shown["Size"] == "94 MiB"
        assert shown["Chat template"] == "yes"
        assert shown["Source"] == "demo"
        await pilot.press("up")
        await pilot.pause()
        assert details(app)["Name"] == "tiny-llama"

    run_app(scenario)


def test_r_rescans_and_picks_up_a_new_model(tiny_llama: Path, models_dir: Path) -> None:
    async def scenario(app: InfluenceApp, pilot: Pilot[None]) -> None:
        assert [row[0] for row in rows(app)] == [DEMO_NAME]
        assert text_of(app, "#library-status").startswith("1 model · ")
        shutil.move(tiny_llama, models_dir / "tiny-llama")
        table(app).focus()
        await pilot.press("r")
        await scanned(app, pilot)
        assert [row[0] for row in rows(app)] == ["tiny-llama", DEMO_NAME]
        assert text_of(app, "#library-status").startswith("2 models · ")

    run_app(scenario)


def test_details_match_the_cursor_after_a_rescan(tiny_llama: Path, models_dir: Path) -> None:
    shutil.copytree(tiny_llama, models_dir / "tiny-a")
    shutil.copytree(tiny_llama, models_dir / "tiny-b")

    async def scenario(app: InfluenceApp, pilot: Pilot[None]) -> None:
        table(app).focus()
        await pilot.press("down")
        await pilot.pause()
        assert details(app)["Name"] == "tiny-b"
        await pilot.press("r")
        await scanned(app, pilot)
        t = table(app)
        highlighted = str(t.get_row_at(t.cursor_row)[0])
        assert details(app)["Name"] == highlighted

    run_app(scenario)


def test_a_broken_model_shows_its_problem(models_dir: Path) -> None:
    broken = models_dir / "old-model"
    broken.mkdir()
    (broken / "pytorch_model.bin").write_bytes(b"\x80\x02")

    async def scenario(app: InfluenceApp, pilot: Pilot[None]) -> None:
        assert rows(app)[0][:2] == ["old-model !", ".bin (unsupported)"]
        shown = details(app)
        assert shown["Name"] == "old-model"
        assert "only PyTorch pickle weights" in shown["Problem"]
        name_cell = table(app).get_row_at(0)[0]
        assert isinstance(name_cell, Text)
        error = Color.parse(app.theme_variables["error"])
        marks = [span.style for span in name_cell.spans if isinstance(span.style, Style)]
        assert any(style.color is not None and style.color.triplet == error.rich_color.triplet for style in marks)

    run_app(scenario)


def test_narrow_terminal_stacks_the_details(tiny_llama: Path, models_dir: Path) -> None:
    shutil.move(tiny_llama, models_dir / "tiny-llama")

    async def scenario(app: InfluenceApp, pilot: Pilot[None]) -> None:
        assert app.screen.has_class("-narrow")
        t = app.screen.query_one("#model-table")
        d = app.screen.query_one("#model-details")
        assert d.region.y >= t.region.bottom  # under the table, not beside it
        assert details(app)["Name"] == "tiny-llama"

    run_app(scenario, size=(80, 24))


def write_odd_safetensors(folder: Path, dtype: str) -> None:
    """A folder whose safetensors header names a dtype that looks like markup."""
    import json
    import struct

    folder.mkdir(parents=True)
    body = json.dumps({"w": {"dtype": dtype, "shape": [1], "data_offsets": [0, 4]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 4)


def test_model_metadata_is_never_markup(models_dir: Path, tmp_path: Path) -> None:
    """Names, header fields and paths are text from disk: shown as they are, never parsed as markup."""
    write_odd_safetensors(models_dir / "odd [/b] model", "[/x]")

    async def scenario(app: InfluenceApp, pilot: Pilot[None]) -> None:
        assert rows(app)[0][:2] == ["odd [/b] model !", "safetensors/[/x]"]
        assert details(app)["Format"] == "safetensors/[/x]"

    run_app(scenario)


def test_a_models_dir_path_with_brackets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    odd_dir = tmp_path / "[" / "models]"  # ".../[/models]": a closing tag, were it markup
    odd_dir.mkdir(parents=True)
    monkeypatch.setenv("INFLUENCE_MODELS_DIR", str(odd_dir))

    async def scenario(app: InfluenceApp, pilot: Pilot[None]) -> None:
        assert text_of(app, "#library-status").endswith(f"models dir: {odd_dir}")

    run_app(scenario)
