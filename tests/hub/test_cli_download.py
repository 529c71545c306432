"""`influence download` and `influence verify` end to end, including a download killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from influence_tui.cli import main
from influence_tui.core.downloads import staging_dir
from tests.hub.conftest import BLOB, GATED, GGUF, LLAMA, TOKEN, visible
from tests.hub.hubserver import HubServer


def listed(capsys: pytest.CaptureFixture[str]) -> list[dict]:  # type: ignore[type-arg]
    assert main(["list", "--json"]) == 0
    return [m for m in json.loads(capsys.readouterr().out) if m["source"] == "models-dir"]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HF_HUB_OFFLINE", None)
    return env


@pytest.mark.slow
def test_download_then_list_and_load(hub: HubServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["download", LLAMA]) == 0
    out, err = capsys.readouterr()
    assert "Downloaded tiny/llama-sharded:" in out and "files verified" in out
    assert "Chat with it: influence chat --model tiny/llama-sharded" in out
    assert f"{LLAMA} (revision main, commit " in err
    (model,) = listed(capsys)
    assert (model["name"], model["complete"], model["loadable"], model["problems"]) == (LLAMA, True, True, [])
    assert model["format"] == "safetensors-sharded" and len(model["weight_files"]) >= 2

    from influence_tui.core.config import load_settings
    from influence_tui.core.engine.loader import load_model
    from influence_tui.core.library import Library

    loaded = load_model(Library(load_settings()).get(LLAMA), device="cpu", dtype="float32")
    try:
        assert loaded.model is not None and loaded.info.architecture == "llama"
        assert loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    finally:
        loaded.unload()

    assert main(["download", LLAMA]) == 0
    assert "is already downloaded and verified" in capsys.readouterr().out


def test_download_gguf_quant_and_verify(hub: HubServer, capsys: pytest.CaptureFixture[str], models_dir: Path) -> None:
    assert main(["download", GGUF]) == 1
    assert "choose one with --quant" in capsys.readouterr().err
    assert main(["download", GGUF, "--quant", "Q4_0"]) == 0
    out = capsys.readouterr().out
    assert "Chat with it: influence chat --model tiny/gguf" in out
    assert main(["verify", GGUF]) == 0
    assert "all 1 files match" in capsys.readouterr().out

    gguf = models_dir / "tiny__gguf" / "tiny-Q4_0.gguf"
    data = bytearray(gguf.read_bytes())
    data[-10] ^= 0xFF
    gguf.write_bytes(bytes(data))
    assert main(["verify", GGUF]) == 1
    out, err = capsys.readouterr()
    assert "BAD   tiny-Q4_0.gguf: sha256 is" in out and "1 of 1 files" in err
    assert main(["verify", "--json", GGUF]) == 1
    assert json.loads(capsys.readouterr().out)["files"][0]["ok"] is False


def test_download_to_output_dir_names_the_chat_command(
    hub: HubServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "elsewhere"
    assert main(["download", BLOB, "--output", str(out_dir), "--parallel", "1"]) == 0
    out = capsys.readouterr().out
    assert f"Model folder: {out_dir / 'tiny__blob'}" in out
    assert f"influence --models-dir {out_dir} chat --model tiny/blob" in out
    assert listed(capsys) == []  # not in the models dir


def test_gated_repo_cli_message_then_token(hub: HubServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["download", GATED]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "tiny/gated is gated: accept its license at" in err and "set HF_TOKEN (or pass --token)" in err
    assert main(["download", GATED, "--token", TOKEN]) == 0
    capsys.readouterr()
    assert [m["name"] for m in listed(capsys)] == [GATED]


def test_missing_repo_or_revision_is_one_line(hub: HubServer, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, text in (
        (["download", "tiny/missing"], "no model repo 'tiny/missing'"),
        (["download", BLOB, "--revision", "nope"], "tiny/blob has no revision 'nope'"),
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("influence: error: ") and text in err and err.count("\n") == 0


def test_no_network_fails_fast_and_lists_nothing(
    hub: HubServer, capsys: pytest.CaptureFixture[str], unused_port: int, models_dir: Path
) -> None:
    started = time.monotonic()
    assert main(["download", LLAMA, "--mirror", f"http://127.0.0.1:{unused_port}"]) == 1
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err.strip()
    assert f"cannot reach the Hub at http://127.0.0.1:{unused_port}: connection refused" in err
    assert "--mirror" in err and err.count("\n") == 0
    assert visible(models_dir) == [] and listed(capsys) == []
    started = time.monotonic()
    assert main(["search", "llama", "--mirror", f"http://127.0.0.1:{unused_port}"]) == 1
    assert time.monotonic() - started < 5 and "cannot reach the Hub" in capsys.readouterr().err


def test_kill_9_then_the_same_command_fetches_only_the_missing_bytes(
    hub: HubServer, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = hub.repos[LLAMA].revisions["main"].files
    hub.throttle_bps = 100_000  # per connection: the transfer takes seconds
    command = [sys.executable, "-m", "influence_tui", "download", LLAMA]
    proc = subprocess.Popen(command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while hub.served(LLAMA) < 150_000:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    staging = staging_dir(models_dir / "tiny__llama-sharded")
    on_disk: dict[str, int] = {}
    for path, served in files.items():
        done = staging / path
        parts = list(staging.glob(f"{path}.*.part")) if staging.is_dir() else []
        on_disk[path] = done.stat().st_size if done.is_file() else parts[0].stat().st_size if parts else 0
        assert on_disk[path] <= served.size
    partial = {p: n for p, n in on_disk.items() if 0 < n < files[p].size}
    assert partial, on_disk  # killed in the middle of at least one file
    assert visible(models_dir) == [] and listed(capsys) == []

    hub.throttle_bps = None
    hub.reset_counters()
    done = subprocess.run(command, check=False, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "files verified" in done.stdout
    for path, kept in on_disk.items():
        if path.endswith((".safetensors", ".json", ".jinja")):
            # every byte already on disk was kept: only the rest came over the network (planning reads the
            # small safetensors index once more to learn the shards)
            planning = files[path].size if path == "model.safetensors.index.json" else 0
            assert hub.served(LLAMA, path) == files[path].size - kept + planning, path
        else:
            assert hub.served(LLAMA, path) == 0, path
    resumed = [r for r in hub.requests if r.path in partial]
    assert {r.range for r in resumed} == {f"bytes={n}-" for n in partial.values()}
    (model,) = listed(capsys)
    assert model["name"] == LLAMA and model["loadable"]
