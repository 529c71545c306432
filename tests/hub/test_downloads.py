"""Downloads against the loopback Hub: file choice, layout, resume, verification, retries, cancel, errors."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from influence_tui.core.downloads import DownloadManager, folder_name, staging_dir, verify_folder
from influence_tui.core.errors import DownloadCancelled, DownloadError, GatedRepoError, HubError
from influence_tui.core.library import Library
from influence_tui.core.manifest import MANIFEST_NAME, read_manifest
from influence_tui.core.types import DownloadProgress
from tests.hub.conftest import BLOB, BLOB_BYTES, GATED, GGUF, LLAMA, TOKEN, visible
from tests.hub.hubserver import HubServer

BLOB_FILE = "model.safetensors"


def blob_size(hub: HubServer) -> int:
    return hub.repos[BLOB].revisions["main"].files[BLOB_FILE].size


def wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def local_models(settings) -> list:  # type: ignore[no-untyped-def, type-arg]
    return [m for m in Library(settings).models() if m.source == "models-dir"]


def test_safetensors_repo_gets_only_what_running_needs(hub: HubServer, manager: DownloadManager, hub_settings) -> None:  # type: ignore[no-untyped-def]
    plan = manager.plan(LLAMA)
    served = hub.repos[LLAMA].revisions["main"].files
    shards = sorted(p for p in served if p.endswith(".safetensors"))
    wanted = {p for p in plan.files for p in [p.repo_path]}
    assert len(shards) >= 2 and set(shards) <= wanted
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"} <= wanted
    assert "generation_config.json" in wanted and "generation_config.json" in served
    assert not wanted & {"pytorch_model.bin", "onnx/model.onnx", "README.md", ".gitattributes"}
    assert plan.folder == hub_settings.models_dir / "tiny__llama-sharded"

    events: list[DownloadProgress] = []
    hub.reset_counters()  # planning read the small safetensors index
    result = manager.download(plan, on_progress=events.append)

    for path in ("pytorch_model.bin", "onnx/model.onnx", "README.md", ".gitattributes"):
        assert hub.served(LLAMA, path) == 0
    assert hub.served(LLAMA) == plan.total_bytes == result.fetched_bytes
    folder = result.folder
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(
        [*wanted, MANIFEST_NAME]
    )
    assert not staging_dir(folder).exists() and visible(folder.parent) == ["tiny__llama-sharded"]
    manifest = read_manifest(folder)
    assert manifest is not None and manifest.repo_id == LLAMA and manifest.commit == plan.commit
    assert {f.path: f.sha256 for f in manifest.files} == {p: served[p].sha256 for p in wanted}
    assert all(c.ok for c in verify_folder(folder))

    (model,) = local_models(hub_settings)
    assert (model.name, model.format, model.complete, model.loadable) == (LLAMA, "safetensors-sharded", True, True)
    assert result.model_name == LLAMA

    last = events[-1]
    assert last.state == "done" and last.done_bytes == last.total_bytes == plan.total_bytes
    assert {f.state for f in last.files} == {"done"}
    assert last.fetched_bytes == plan.total_bytes


def test_gguf_repo_gets_only_the_asked_quantization(hub: HubServer, manager: DownloadManager, hub_settings) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DownloadError, match="offers 3 GGUF quantizations; choose one with --quant") as info:
        manager.plan(GGUF)
    assert "Q4_0" in str(info.value) and "F16" in str(info.value)
    with pytest.raises(DownloadError, match="no GGUF quantization 'Q2_K'"):
        manager.plan(GGUF, quant="Q2_K")

    result = manager.download(manager.plan(GGUF, quant="q8_0"))
    assert hub.served(GGUF) == hub.served(GGUF, "tiny-Q8_0.gguf") > 0
    assert visible(result.folder) == ["tiny-Q8_0.gguf"]
    assert [m.name for m in local_models(hub_settings)] == [GGUF] and result.model_name == GGUF

    # a second quantization (split in two parts) goes beside the first; the manifest lists all three files
    hub.reset_counters()
    result = manager.download(manager.plan(GGUF, quant="F16"))
    assert set(hub.bytes_served) == {(GGUF, "tiny-F16-00001-of-00002.gguf"), (GGUF, "tiny-F16-00002-of-00002.gguf")}
    assert visible(result.folder) == ["tiny-F16-00001-of-00002.gguf", "tiny-F16-00002-of-00002.gguf", "tiny-Q8_0.gguf"]
    models = {m.name: m for m in local_models(hub_settings)}
    assert set(models) == {f"{GGUF}:F16", f"{GGUF}:Q8_0"} and all(m.loadable for m in models.values())
    assert result.model_name == f"{GGUF}:F16"
    manifest = read_manifest(result.folder)
    assert manifest is not None and len(manifest.files) == 3
    assert all(c.ok for c in verify_folder(result.folder))


def test_cut_transfer_resumes_from_the_bytes_on_disk(hub: HubServer, manager: DownloadManager) -> None:
    size = blob_size(hub)
    half = size // 2
    hub.fault(BLOB_FILE, "cut", at=half)
    result = manager.download(manager.plan(BLOB))
    assert hub.served(BLOB, BLOB_FILE) == size  # nothing fetched twice
    ranges = [r.range for r in hub.requests if r.path == BLOB_FILE and r.method == "GET"]
    assert ranges == [None, f"bytes={half}-"]
    assert all(c.ok for c in verify_folder(result.folder))


def test_corrupted_byte_is_caught_and_fetched_again(hub: HubServer, manager: DownloadManager) -> None:
    hub.fault(BLOB_FILE, "corrupt", at=12345)
    result = manager.download(manager.plan(BLOB))
    assert hub.served(BLOB, BLOB_FILE) == 2 * blob_size(hub)
    assert all(c.ok for c in verify_folder(result.folder))


def test_corruption_every_time_never_reaches_the_library(
    hub: HubServer, manager: DownloadManager, hub_settings
) -> None:  # type: ignore[no-untyped-def]
    hub.fault(BLOB_FILE, "corrupt", at=777, times=10)
    plan = manager.plan(BLOB)
    with pytest.raises(DownloadError, match="failed verification twice: sha256"):
        manager.download(plan)
    assert local_models(hub_settings) == [] and not plan.folder.exists()
    staging = staging_dir(plan.folder)
    assert not list(staging.glob(f"{BLOB_FILE}*"))  # the damaged file is deleted


def test_server_errors_and_stalls_are_retried(hub: HubServer, manager: DownloadManager) -> None:
    hub.fault(BLOB_FILE, "status", status=503, times=2)
    hub.fault(BLOB_FILE, "stall", at=300_000, seconds=3.0)
    events: list[DownloadProgress] = []
    started = time.monotonic()
    result = manager.download(manager.plan(BLOB), on_progress=events.append)
    assert time.monotonic() - started < 3.0  # the stall was cut short by the 0.5 s stall timeout
    statuses = [(r.status, r.range) for r in hub.requests if r.path == BLOB_FILE and r.method == "GET"]
    assert statuses == [(503, None), (503, None), (200, None), (206, "bytes=300000-")]
    assert hub.served(BLOB, BLOB_FILE) == blob_size(hub)
    retries = [f.message for e in events for f in e.files if f.state == "retrying" and e.changed == f.path]
    assert any("HTTP 503" in (m or "") for m in retries) and any("no data for 0.5 s" in (m or "") for m in retries)
    assert all(c.ok for c in verify_folder(result.folder))


def test_a_file_that_keeps_failing_gives_up_with_a_clear_error(
    hub: HubServer, manager: DownloadManager, hub_settings
) -> None:  # type: ignore[no-untyped-def]
    hub.fault(BLOB_FILE, "status", status=500, times=100)
    with pytest.raises(DownloadError, match=r"model.safetensors of tiny/blob failed 4 times in a row: HTTP 500"):
        manager.download(manager.plan(BLOB))
    assert local_models(hub_settings) == []


def test_cancel_keeps_partials_hidden_and_the_next_run_resumes(
    hub: HubServer, manager: DownloadManager, hub_settings
) -> None:  # type: ignore[no-untyped-def]
    hub.throttle_bps = 400_000
    plan = manager.plan(BLOB)
    job = manager.start(plan)
    wait_for(lambda: hub.served(BLOB, BLOB_FILE) >= 200_000)
    job.cancel()
    with pytest.raises(DownloadCancelled, match="run the same download again to resume"):
        job.wait(timeout=5)
    assert job.progress().state == "cancelled"
    partials = list(staging_dir(plan.folder).glob(f"{BLOB_FILE}.*.part"))
    assert len(partials) == 1
    on_disk = partials[0].stat().st_size
    assert 0 < on_disk < blob_size(hub)
    assert visible(hub_settings.models_dir) == [] and local_models(hub_settings) == []

    hub.throttle_bps = None
    hub.reset_counters()
    result = manager.download(plan)
    assert hub.served(BLOB, BLOB_FILE) == blob_size(hub) - on_disk
    assert result.fetched_bytes == blob_size(hub) - on_disk
    assert result.reused_bytes == plan.total_bytes - result.fetched_bytes  # the partial and the small files
    assert all(c.ok for c in verify_folder(result.folder))


def test_rerun_is_cached_and_force_fetches_again(hub: HubServer, manager: DownloadManager) -> None:
    plan = manager.plan(BLOB)
    manager.download(plan)
    hub.reset_counters()
    again = manager.download(manager.plan(BLOB))
    assert again.fetched_bytes == 0 and again.reused_bytes == plan.total_bytes
    assert hub.requests == []
    forced = manager.download(manager.plan(BLOB), force=True)
    assert forced.fetched_bytes == plan.total_bytes == hub.served(BLOB)


def test_a_changed_file_is_fetched_again_on_rerun(hub: HubServer, manager: DownloadManager, tmp_path: Path) -> None:
    folder = manager.download(manager.plan(BLOB)).folder
    (folder / "config.json").write_text("{}")  # damaged by hand: its size no longer matches
    hub.reset_counters()
    manager.download(manager.plan(BLOB))
    assert set(hub.bytes_served) == {(BLOB, "config.json")}
    assert all(c.ok for c in verify_folder(folder))


def test_revision(hub: HubServer, manager: DownloadManager) -> None:
    plan = manager.plan(BLOB, revision="v1")
    assert plan.revision == "v1" and plan.commit == hub.repos[BLOB].revisions["v1"].commit
    result = manager.download(plan)
    assert json.loads((result.folder / "config.json").read_text())["revision_label"] == "v1"
    manifest = read_manifest(result.folder)
    assert manifest is not None and (manifest.revision, manifest.commit) == ("v1", plan.commit)
    with pytest.raises(HubError, match="tiny/blob has no revision 'v2'"):
        manager.plan(BLOB, revision="v2")
    with pytest.raises(HubError, match="no model repo 'tiny/none'"):
        manager.plan("tiny/none")


def test_gated_repo_needs_a_token_with_access(hub: HubServer, hub_settings, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        GatedRepoError,
        match=r"tiny/gated is gated: accept its license at http://127\.0\.0\.1:\d+/tiny/gated, then set HF_TOKEN",
    ):
        DownloadManager(hub_settings).plan(GATED)
    assert hub.requests == []

    wrong = DownloadManager(hub_settings, token="hf_no_access")
    with pytest.raises(GatedRepoError, match="this token has no access to it yet"):
        wrong.download(wrong.plan(GATED))
    assert {r.status for r in hub.requests} == {403}

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    from influence_tui.core.config import load_settings

    right = DownloadManager(load_settings())
    result = right.download(right.plan(GATED))
    assert result.model_name == GATED and all(c.ok for c in verify_folder(result.folder))


def test_disk_space_is_checked_before_fetching(
    hub: HubServer, manager: DownloadManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    import influence_tui.core.downloads.job as job  # where the disk is checked

    real = shutil.disk_usage
    monkeypatch.setattr(job.shutil, "disk_usage", lambda p: real(p)._replace(free=BLOB_BYTES // 2))
    with pytest.raises(DownloadError, match=r"not enough disk space .* needs 1 MiB more, 512 KiB is free"):
        manager.download(manager.plan(BLOB))
    assert hub.requests == []


def test_include_adds_named_files_and_output_dir(hub: HubServer, manager: DownloadManager, tmp_path: Path) -> None:
    plan = manager.plan(LLAMA, include=["*.onnx"], output=tmp_path / "elsewhere")
    assert "onnx/model.onnx" in {f.local_path for f in plan.files}
    assert plan.folder == tmp_path / "elsewhere" / folder_name(LLAMA)
    with pytest.raises(DownloadError, match=r"--include '\*\.h5' matches no file"):
        manager.plan(LLAMA, include=["*.h5"])


def test_another_process_downloading_the_same_repo_is_refused(hub: HubServer, hub_settings) -> None:  # type: ignore[no-untyped-def]
    from filelock import FileLock

    manager = DownloadManager(hub_settings, lock_wait_s=0.1)
    plan = manager.plan(BLOB)
    plan.folder.parent.mkdir(parents=True, exist_ok=True)
    with (
        FileLock(str(plan.folder.parent / f".{plan.folder.name}.lock")),
        pytest.raises(DownloadError, match="being downloaded by another process"),
    ):
        manager.download(plan)


def test_parallel_files_and_progress_events_from_threads(hub: HubServer, hub_settings) -> None:  # type: ignore[no-untyped-def]
    hub.throttle_bps = 2_000_000
    manager = DownloadManager(hub_settings, parallel=4)
    plan = manager.plan(LLAMA)
    events: list[DownloadProgress] = []
    threads: set[str] = set()

    def on_progress(p: DownloadProgress) -> None:
        threads.add(threading.current_thread().name)
        events.append(p)

    manager.download(plan, on_progress=on_progress)
    busy = max(sum(f.state == "downloading" for f in e.files) for e in events)
    assert busy >= 2  # files really went in parallel
    assert len(threads) >= 2
    done = [e.done_bytes for e in events]
    assert done[-1] == plan.total_bytes and max(done) == plan.total_bytes
    assert any(e.speed > 0 for e in events) and any(e.eta_s is not None for e in events)


def test_a_complete_file_left_unrecorded_by_a_crash_is_hashed_not_fetched(
    hub: HubServer, manager: DownloadManager, repo_folders: dict[str, Path]
) -> None:
    plan = manager.plan(BLOB)
    staging = staging_dir(plan.folder)
    staging.mkdir(parents=True)
    shutil.copy(repo_folders["blob"] / BLOB_FILE, staging / BLOB_FILE)  # moved into place, then killed
    (staging / f"{BLOB_FILE}.0123456789abcdef.part").write_bytes(b"stale bytes of an older revision")
    result = manager.download(plan)
    assert hub.served(BLOB, BLOB_FILE) == 0 and result.reused_bytes >= blob_size(hub)
    assert all(c.ok for c in verify_folder(result.folder))
    assert not staging.exists()


def test_partial_of_one_quantization_survives_downloading_another(
    hub: HubServer, manager: DownloadManager, hub_settings
) -> None:  # type: ignore[no-untyped-def]
    q8 = "tiny-Q8_0.gguf"
    size = hub.repos[GGUF].revisions["main"].files[q8].size
    hub.throttle_bps = 40_000
    job = manager.start(manager.plan(GGUF, quant="Q8_0"))
    wait_for(lambda: hub.served(GGUF, q8) >= 20_000)
    job.cancel()
    with pytest.raises(DownloadCancelled):
        job.wait(timeout=5)
    hub.throttle_bps = None
    plan = manager.plan(GGUF, quant="Q4_0")
    manager.download(plan)
    (partial,) = staging_dir(plan.folder).glob(f"{q8}.*.part")
    kept = partial.stat().st_size
    assert 0 < kept < size and visible(plan.folder) == ["tiny-Q4_0.gguf"]

    hub.reset_counters()
    manager.download(manager.plan(GGUF, quant="Q8_0"))
    assert hub.served(GGUF, q8) == size - kept and not staging_dir(plan.folder).exists()
    manager.download(manager.plan(GGUF, quant="Q4_0"), force=True)  # --force keeps the other quantization
    manifest = read_manifest(plan.folder)
    assert manifest is not None and [f.path for f in manifest.files] == ["tiny-Q4_0.gguf", q8]
    assert {m.name for m in local_models(hub_settings)} == {f"{GGUF}:Q4_0", f"{GGUF}:Q8_0"}
