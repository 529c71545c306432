"""The downloads screen and the app's download service, against the loopback Hub: progress to done, cancel and
resume from the bytes on disk, a download that keeps failing verification, downloads that go on while another
screen is shown, the warning before quitting, and unfinished downloads remembered for the next start."""

from __future__ import annotations

import asyncio
from pathlib import Path

from influence_tui.core.downloads import DownloadManager, folder_name, staging_dir
from influence_tui.core.library import Library
from influence_tui.core.types import DownloadProgress, FileProgress
from influence_tui.tui.app import InfluenceApp
from influence_tui.tui.dialogs.confirm import ConfirmDialog
from influence_tui.tui.download_service import DownloadRequest, DownloadUpdated
from tests.hub.conftest import BLOB, GGUF
from tests.hub.hubserver import HubServer
from tests.tui.hub_ui import HubUI, run_hub_app

BLOB_FILE = "model.safetensors"


def blob_size(hub: HubServer) -> int:
    return hub.repos[BLOB].revisions["main"].files[BLOB_FILE].size


def partial_bytes(settings, repo: str) -> int:  # type: ignore[no-untyped-def]
    staging = staging_dir(Path(settings.models_dir) / folder_name(repo))
    return sum(p.stat().st_size for p in staging.glob("*.part")) if staging.is_dir() else 0


def library_names(settings) -> list[str]:  # type: ignore[no-untyped-def]
    return [m.name for m in Library(settings).models() if m.source == "models-dir"]


def test_cancel_then_resume_from_the_bytes_on_disk(hub: HubServer, hub_settings, manager: DownloadManager) -> None:  # type: ignore[no-untyped-def]
    hub.throttle_bps = 400_000  # 1 MiB in ~2.5 s
    size = blob_size(hub)

    async def scenario(ui: HubUI) -> None:
        entry = ui.app.downloads.download(DownloadRequest(BLOB))
        await ui.pilot.press("f3")
        running = await ui.wait_entry(entry.id, lambda e: e.state == "downloading" and e.done_bytes > 64_000, "bytes")
        shown = ui.row_text(running)
        assert "tiny/blob" in shown and "downloading" in shown and "/s" in shown and "ETA" in shown
        assert ui.footer_keys() >= {"cancel"} and "resume" not in ui.footer_keys()

        await ui.pilot.press("x")
        stopped = await ui.wait_entry(entry.id, lambda e: e.state == "cancelled", "the cancel")
        await ui.pilot.pause()
        assert "cancelled; r resumes from the bytes on disk" in ui.row_text(stopped)
        assert "resume" in ui.footer_keys() and "cancel" not in ui.footer_keys()
        hub.wait_idle()
        kept = partial_bytes(hub_settings, BLOB)
        assert 0 < kept < size
        assert library_names(hub_settings) == []

        hub.throttle_bps = None
        hub.reset_counters()
        await ui.pilot.press("r")
        done = await ui.wait_entry(entry.id, lambda e: e.finished, "the resumed download")
        assert hub.served(BLOB, BLOB_FILE) == size - kept  # the kept bytes were not fetched again
        assert [r.range for r in hub.requests if r.path == BLOB_FILE and r.method == "GET"] == [f"bytes={kept}-"]
        assert done.result is not None and done.result.reused_bytes >= kept
        assert library_names(hub_settings) == [BLOB]
        assert len(ui.app.downloads.entries) == 1  # the same row, resumed

    run_hub_app(hub_settings, scenario, manager=manager)


def test_a_download_that_keeps_failing_shows_why(hub: HubServer, hub_settings, manager: DownloadManager) -> None:  # type: ignore[no-untyped-def]
    hub.fault(BLOB_FILE, "corrupt", at=1000, times=100, repo=BLOB)

    async def scenario(ui: HubUI) -> None:
        await ui.pilot.press("f3")
        entry = ui.app.downloads.download(DownloadRequest(BLOB))
        failed = await ui.wait_entry(entry.id, lambda e: e.state == "failed", "the failure")
        await ui.pilot.pause()
        assert failed.message is not None
        assert "model.safetensors of tiny/blob failed verification twice: sha256" in failed.message
        assert "nothing was added to the library" in failed.message
        shown = ui.row_text(failed)
        assert "failed" in shown and "failed verification twice" in shown
        assert ui.row(failed).has_class("-failed")
        assert "1 failed" in ui.static_text(ui.downloads, "#downloads-summary")
        assert library_names(hub_settings) == []

        hub.faults.clear()  # the damage stops: retrying now works
        await ui.pilot.press("r")
        await ui.wait_entry(entry.id, lambda e: e.finished, "the retry")
        assert library_names(hub_settings) == [BLOB]

    run_hub_app(hub_settings, scenario, manager=manager)


def test_downloads_go_on_behind_other_screens(hub: HubServer, hub_settings, manager: DownloadManager) -> None:  # type: ignore[no-untyped-def]
    """Started, then finished while the chat is shown; the downloads screen, opened only then, shows them done.
    The one asked for twice runs once; two quantizations of one repo take turns (one folder, one lock)."""
    hub.throttle_bps = 1_000_000

    async def scenario(ui: HubUI) -> None:
        service = ui.app.downloads
        first = service.download(DownloadRequest(BLOB))
        assert service.download(DownloadRequest(BLOB)) == service.get(first.id)  # already under way
        second = service.download(DownloadRequest(GGUF, "Q4_0"))
        third = service.download(DownloadRequest(GGUF, "Q8_0"))
        assert service.get(third.id).state == "queued"  # type: ignore[union-attr]
        await ui.pilot.press("f1")
        await ui.wait_for(lambda: all(e.finished for e in service.entries), "the downloads, behind the chat")
        assert ui.app.current_mode == "chat"
        await ui.pilot.press("f3")
        await ui.pilot.pause()
        assert [e.id for e in service.entries] == [third.id, second.id, first.id]  # newest first
        for entry in service.entries:
            assert "In the library as" in ui.row_text(entry)
        assert "3 done" in ui.static_text(ui.downloads, "#downloads-summary")
        assert sorted(library_names(hub_settings)) == [BLOB, f"{GGUF}:Q4_0", f"{GGUF}:Q8_0"]

        await ui.pilot.press("delete")  # clear the focused (newest) row: its model stays
        await ui.wait_for(lambda: len(service.entries) == 2, "the row to go")
        await ui.pilot.pause()
        assert ui.downloads.row(third.id) is None
        assert sorted(library_names(hub_settings)) == [BLOB, f"{GGUF}:Q4_0", f"{GGUF}:Q8_0"]

    run_hub_app(hub_settings, scenario, manager=manager)


def test_quitting_asks_first_and_the_next_start_offers_to_resume(
    hub: HubServer,
    hub_settings,  # type: ignore[no-untyped-def]
    manager: DownloadManager,
) -> None:
    hub.throttle_bps = 100_000  # ~10 s: still running when the app closes

    async def first_run(ui: HubUI) -> None:
        entry = ui.app.downloads.download(DownloadRequest(BLOB))
        await ui.wait_entry(entry.id, lambda e: e.done_bytes > 0, "bytes")
        await ui.pilot.press("ctrl+q")
        dialog = await ui.wait_for_screen(ConfirmDialog)
        assert dialog.title_text == "Quit with 1 download running?"
        assert "tiny/blob stop now" in dialog.message and "resumes them next time" in dialog.message
        await ui.pilot.press("escape")  # keep downloading
        await ui.pilot.pause()
        assert ui.app.is_running and ui.app.downloads.get(entry.id).active  # type: ignore[union-attr]
        await ui.pilot.press("ctrl+q")
        await ui.wait_for_screen(ConfirmDialog)
        await ui.pilot.press("ctrl+q")  # twice: quit
        await ui.wait_for(lambda: not ui.app.is_running, "the app to close")

    run_hub_app(hub_settings, first_run, manager=manager)
    hub.wait_idle()
    kept = partial_bytes(hub_settings, BLOB)
    assert kept > 0
    hub.throttle_bps = None
    hub.reset_counters()

    async def second_run(ui: HubUI) -> None:
        await ui.pilot.press("f3")
        await ui.pilot.pause()
        (entry,) = ui.app.downloads.entries
        assert (entry.request, entry.state) == (DownloadRequest(BLOB), "cancelled")
        assert "interrupted when Influence closed; r resumes from the bytes on disk" in ui.row_text(entry)
        await ui.pilot.press("r")
        await ui.wait_entry(entry.id, lambda e: e.finished, "the resumed download")
        assert hub.served(BLOB, BLOB_FILE) == blob_size(hub) - kept  # what the first run kept is not fetched again

    run_hub_app(hub_settings, second_run, manager=manager)
    assert not (Path(hub_settings.models_dir) / ".influence-downloads.json").exists()  # nothing left to resume


def test_progress_is_replaceable_and_news_of_an_old_run_is_dropped(settings) -> None:  # type: ignore[no-untyped-def]
    def progress(done: int, elapsed: float = 0.0) -> DownloadProgress:
        files = (FileProgress("model.safetensors", 100, done, "downloading", speed=10.0),)
        return DownloadProgress("a/b", files, "downloading", done, 100, done, 10.0, 1.0, elapsed)

    older, newer = DownloadUpdated(1, 1, progress=progress(10)), DownloadUpdated(1, 1, progress=progress(20))
    assert older.can_replace(newer)
    assert not older.can_replace(DownloadUpdated(2, 1, progress=progress(20)))  # another download
    assert not older.can_replace(DownloadUpdated(1, 2, progress=progress(20)))  # another run
    assert not DownloadUpdated(1, 1, "failed", message="no").can_replace(newer)  # an end is never skipped

    async def main() -> None:
        app = InfluenceApp(settings, load_model=False)
        async with app.run_test() as pilot:
            service = app.downloads
            service.remember = False
            entry = service.track(DownloadRequest("a/b"))
            seen: list[int] = []
            service.changed.subscribe(app.screen, seen.append)
            service.apply(DownloadUpdated(entry.id, 0, progress=progress(10, 0.0)))
            service.apply(DownloadUpdated(entry.id, 0, progress=progress(30, 0.2)))  # within a sample: no point
            service.apply(DownloadUpdated(entry.id, 0, progress=progress(60, 0.6)))
            service.apply(DownloadUpdated(entry.id, 7, "failed", message="an old run"))  # dropped
            await pilot.pause()
            now = service.get(entry.id)
            assert now is not None
            assert (now.state, now.done_bytes, now.total_bytes, now.eta_s) == ("downloading", 60, 100, 1.0)
            assert now.speeds == (10.0, 10.0) and now.message is None
            assert seen == [entry.id] * 3

    asyncio.run(main())
