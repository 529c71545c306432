"""The hub search screen in the real app, against the loopback Hub with the real huggingface_hub client:
search (debounced), sort, filters, details with quantizations and verdicts, stale answers, errors, and the
whole way from a search to chatting with the downloaded model."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from rich.text import Text
from textual.widgets import DataTable

from influence_tui.core.config import load_settings
from influence_tui.core.downloads import DownloadManager
from influence_tui.core.library import Library
from influence_tui.tui.dialogs.quant import QuantDialog
from influence_tui.tui.download_service import DownloadRequest
from influence_tui.tui.messages import ChatWithModel
from influence_tui.tui.screens.hub_search import HubSearchScreen
from tests.hub.conftest import BLOB, GATED, GGUF, LLAMA
from tests.hub.hubserver import HubServer
from tests.tui.hub_ui import HubUI, run_hub_app

ALL_BY_DOWNLOADS = [GGUF, LLAMA, BLOB, GATED]  # 900, 500, 10, 5


def searches(hub: HubServer) -> list[dict[str, list[str]]]:
    """The query of every search the Hub answered (not the probe each search starts with)."""
    queries = [parse_qs(urlsplit(call).query) for call in hub.api_calls if urlsplit(call).path == "/api/models"]
    return [q for q in queries if q != {"limit": ["1"]}]


def test_search_details_download_library_chat(hub: HubServer, hub_settings, manager: DownloadManager) -> None:  # type: ignore[no-untyped-def]
    """Search -> highlight -> details with every quantization and its verdict -> download (the dialog asks
    which) -> the downloads screen shows it to done -> the library lists it -> "chat with it" loads it."""

    async def scenario(ui: HubUI) -> None:
        await ui.open_hub()
        await ui.wait_for(lambda: ui.result_ids() == ALL_BY_DOWNLOADS, "every repo, most downloaded first")
        before = len(searches(hub))
        await ui.pilot.press(*"gguf")  # four keys, one search once typing pauses
        await ui.wait_for(lambda: ui.result_ids() == [GGUF], "the search for gguf")
        await ui.pilot.pause(0.5)
        assert [q.get("search") for q in searches(hub)[before:]] == [["gguf"]]

        await ui.pilot.press("enter")  # searches, and moves to the results
        assert isinstance(ui.app.focused, DataTable)
        await ui.wait_for(lambda: "Download choices" in ui.details_text(), "the details of tiny/gguf")
        details = ui.details_text()
        flat = " ".join(details.split())
        assert "tiny/gguf" in flat and "architecture llama" in flat and "context 2,048 tokens" in flat
        for quant, size in (("Q4_0", "KiB"), ("Q8_0", "KiB"), ("F16", "KiB")):
            line = next(line for line in details.splitlines() if f" {quant}" in line)
            assert size in line and "cpu" in line and "✓ fits" in line, line  # a few KiB fit any machine
        assert "Files (5)" in details and "tiny-F16-00002-of-00002.gguf" in details

        await ui.pilot.press("d")
        dialog = await ui.wait_for_screen(QuantDialog)
        table: DataTable[Text | str] = dialog.query_one("#quant-table", DataTable)
        names = [str(table.get_row_at(i)[0]).rstrip(" ★") for i in range(table.row_count)]
        assert names == ["Q4_0", "Q8_0", "F16"]  # smallest first
        assert [str(table.get_row_at(i)[5]) for i in range(3)] == ["✓ fits"] * 3
        table.move_cursor(row=names.index("Q8_0"))
        await ui.pilot.press("enter")
        await ui.wait_for(ui.entries, "the download to be listed")
        (entry,) = ui.entries()
        assert entry.request == DownloadRequest(GGUF, "Q8_0")
        assert any("F3 shows the progress" in n for n in ui.notes())

        await ui.pilot.press("f3")
        done = await ui.wait_entry(entry.id, lambda e: e.finished, "the download to finish")
        await ui.pilot.pause()
        shown = ui.row_text(done)
        assert "tiny/gguf · Q8_0" in shown and "done" in shown and "100%" in shown
        assert "In the library as tiny/gguf" in shown and "Enter chats with it" in shown
        assert hub.served(GGUF, "tiny-Q8_0.gguf") == done.total_bytes  # only the chosen quantization
        assert hub.served(GGUF, "tiny-F16-00001-of-00002.gguf") == hub.served(GGUF, "tiny-F16-00002-of-00002.gguf") == 0

        (model,) = [m for m in Library(hub_settings).models() if m.source == "models-dir"]
        assert (model.name, model.format, model.quantization, model.complete, model.loadable) == (
            GGUF,
            "gguf",
            "Q8_0",
            True,
            True,
        )
        assert done.model == model

        assert "chat" in ui.footer_keys()
        await ui.pilot.press("enter")
        await ui.wait_for(lambda: ui.app.current_mode == "chat" and ui.runner.loads == [GGUF], "chat with it")
        assert {m.model.name for m in ui.messages if isinstance(m, ChatWithModel)} == {GGUF}

    run_hub_app(hub_settings, scenario, manager=manager)


def test_sort_by_column_with_a_key_or_a_click(hub: HubServer, hub_settings) -> None:  # type: ignore[no-untyped-def]
    hub.repos[BLOB].likes = 1

    async def scenario(ui: HubUI) -> None:
        await ui.open_hub()
        await ui.wait_for(lambda: ui.result_ids() == ALL_BY_DOWNLOADS, "the first results")
        await ui.pilot.pause(0.5)
        assert len(searches(hub)) == 1  # opening the screen searches once
        await ui.pilot.press("escape")  # to the results: letters are keys there
        palette = {c.title for c in ui.app.get_system_commands(ui.app.screen)}
        assert {"Hub (f2)", "Downloads (f3)", "Download (d)", "Sort (s)", "GGUF only (g)", "Search (/)"} <= palette
        await ui.pilot.press("s")  # downloads -> likes: the Hub is asked for its most liked models
        await ui.wait_for(lambda: ui.result_ids() == [LLAMA, GGUF, BLOB, GATED], "most liked first")
        await ui.wait_for(lambda: not ui.hub.searching, "the likes search")
        assert searches(hub)[-1]["sort"] == ["likes"]
        table = ui.hub.query_one("#hub-results", DataTable)
        assert [str(c.label) for c in table.ordered_columns][2] == "Likes ▼"
        assert "sorted by likes ▼" in ui.static_text(ui.hub, "#hub-status")

        calls = len(hub.api_calls)
        await ui.pilot.click("#hub-results", offset=(3, 0))  # the Model header: by name, A to Z, here
        await ui.pilot.pause()
        assert ui.result_ids() == [BLOB, GATED, GGUF, LLAMA]
        assert str(table.ordered_columns[0].label) == "Model ▲"
        await ui.pilot.click("#hub-results", offset=(3, 0))  # again: Z to A
        await ui.pilot.pause()
        assert ui.result_ids() == [LLAMA, GGUF, GATED, BLOB]
        assert hub.api_calls[calls:] == []

    run_hub_app(hub_settings, scenario)


def test_gguf_only_and_author_filters(hub: HubServer, hub_settings) -> None:  # type: ignore[no-untyped-def]
    async def scenario(ui: HubUI) -> None:
        await ui.open_hub()
        await ui.wait_for(lambda: ui.result_ids() == ALL_BY_DOWNLOADS, "the first results")
        await ui.pilot.press("escape", "g")
        await ui.wait_for(lambda: ui.result_ids() == [GGUF], "GGUF only")
        assert searches(hub)[-1]["filter"] == ["gguf"]
        await ui.pilot.press("g")
        await ui.wait_for(lambda: ui.result_ids() == ALL_BY_DOWNLOADS, "everything again")

        ui.hub.query_one("#hub-author").focus()
        await ui.pilot.press(*"nobody", "enter")
        await ui.wait_for(lambda: not ui.hub.searching and ui.result_ids() == [], "no results")
        assert "No models match these filters" in ui.static_text(ui.hub, "#hub-message")
        assert searches(hub)[-1]["author"] == ["nobody"]

    run_hub_app(hub_settings, scenario)


def test_a_late_answer_never_replaces_the_details_shown(hub: HubServer, hub_settings) -> None:  # type: ignore[no-untyped-def]
    """The GGUF repo's details stall (its first GGUF is read for the model's shape); the cursor moves on to
    the llama, whose details show; the GGUF answer lands later, is kept, and is not shown."""
    hub.fault("tiny-Q4_0.gguf", "stall", at=0, seconds=1.0, repo=GGUF)

    async def scenario(ui: HubUI) -> None:
        await ui.open_hub()
        await ui.wait_for(lambda: ui.result_ids() == ALL_BY_DOWNLOADS, "the first results")
        await ui.wait_for(lambda: any(c.startswith(f"/api/models/{GGUF}") for c in hub.api_calls), "GGUF details")
        await ui.pilot.press("escape", "down")
        await ui.wait_for(lambda: "Download choices" in ui.details_text(), "the llama's details")
        assert LLAMA in ui.details_text()
        screen: HubSearchScreen = ui.hub
        await ui.wait_for(lambda: GGUF in screen.details_cache, "the stalled answer", timeout=10)
        await ui.pilot.pause(0.1)
        assert LLAMA in ui.details_text() and "tiny/gguf" not in ui.details_text()

        calls = len(hub.api_calls)
        await ui.pilot.press("up")  # back to the GGUF repo: shown from what arrived, no new request
        await ui.wait_for(lambda: "Q8_0" in ui.details_text(), "the GGUF details")
        assert hub.api_calls[calls:] == []

    run_hub_app(hub_settings, scenario)


def test_gated_repo_says_what_to_do(hub: HubServer, hub_settings) -> None:  # type: ignore[no-untyped-def]
    async def scenario(ui: HubUI) -> None:
        await ui.open_hub()
        await ui.wait_for(lambda: ui.result_ids() == ALL_BY_DOWNLOADS, "the first results")
        table = ui.hub.query_one("#hub-results", DataTable)
        assert "(gated)" in str(table.get_row_at(3)[0])
        await ui.pilot.press("escape", "down", "down", "down")
        await ui.wait_for(lambda: "Download choices" in ui.details_text() and GATED in ui.details_text(), "details")
        assert "gated accept its license" in " ".join(ui.details_text().split()), ui.details_text()
        await ui.pilot.press("d")
        await ui.wait_for(lambda: ui.notes("error"), "the refusal")
        (error,) = ui.notes("error")
        assert f"{GATED} is gated: accept its license at {hub.url}/{GATED}" in error and "HF_TOKEN" in error
        assert ui.entries() == []

    run_hub_app(hub_settings, scenario)


def test_unreachable_hub_says_so_and_what_to_do(unused_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFLUENCE_MIRROR", f"http://127.0.0.1:{unused_port}")

    async def scenario(ui: HubUI) -> None:
        screen = await ui.open_hub()
        message = ui.static_text(screen, "#hub-message")
        assert message.startswith("Cannot reach the Hub\n")
        assert f"cannot reach the Hub at http://127.0.0.1:{unused_port}: connection refused" in message
        assert "Check the network connection; a mirror can be set with --mirror URL or INFLUENCE_MIRROR." in message
        assert "Ctrl+R searches again." in message
        assert not screen.query_one("#hub-results").display
        await ui.pilot.press("ctrl+r")
        await ui.wait_for(lambda: not screen.searching, "the second try")
        assert "Cannot reach the Hub" in ui.static_text(screen, "#hub-message")

    run_hub_app(load_settings(), scenario, size=(80, 24))


def test_text_from_the_hub_is_never_markup(hub: HubServer, hub_settings, repo_folders, tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "brackets"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((repo_folders["blob"] / "model.safetensors").read_bytes())
    (folder / "notes [draft] [red].md").write_text("[bold]not bold[/bold]")
    hub.add_repo("tiny/brackets", folder, downloads=10_000, tags=["[bold]loud[/bold]", "x[/]"])

    async def scenario(ui: HubUI) -> None:
        await ui.open_hub()
        await ui.wait_for(lambda: ui.result_ids()[:1] == ["tiny/brackets"], "the repo with brackets")
        table = ui.hub.query_one("#hub-results", DataTable)
        assert str(table.get_row_at(0)[4]) == "[bold]loud[/bold], x[/]"
        await ui.wait_for(lambda: "Files (2)" in ui.details_text(), "its details")
        assert "notes [draft] [red].md" in ui.details_text()

    run_hub_app(hub_settings, scenario)
