"""`influence serve --detach`, `influence ps` and `influence serve --stop`, with the server a real background
process on the tiny model; the records of servers; the warning for a server open to the network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from influence_tui.cli import main
from influence_tui.server import registry
from tests.test_import_hygiene import loaded_after


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ps(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(["ps", "--json"]) == 0
    rows: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return rows


def test_detach_ps_and_stop(tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    code = main(["serve", "--model", str(tiny_llama), "--port", str(port), "--device", "cpu", "--detach"])
    out, err = capsys.readouterr()
    url = f"http://127.0.0.1:{port}"
    assert code == 0, err
    assert out.strip() == url
    (row,) = _ps(capsys)
    pid = int(str(row["pid"]))
    try:
        assert row["url"] == url
        assert row["model"] == "tiny-llama"
        assert row["status"] == "ok"
        assert row["detached"] is True
        assert float(str(row["uptime_s"])) >= 0
        log = Path(str(row["log"]))
        assert log.is_file()
        assert registry.record_path(pid).is_file()

        reply = httpx.post(
            f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
        )
        assert reply.status_code == 200
        assert reply.json()["usage"]["completion_tokens"] > 0

        capsys.readouterr()
        assert main(["ps"]) == 0
        table = capsys.readouterr().out
        assert str(pid) in table and "tiny-llama" in table and "ready" in table

        assert main(["serve", "--stop"]) == 0
        assert "stopped" in capsys.readouterr().out
        assert registry.process_start_time(pid) is None  # gone (or a zombie this test process has not reaped)
        assert not registry.record_path(pid).exists()
        assert _ps(capsys) == []
        assert "POST /v1/chat/completions 200" in log.read_text()  # one line per request, in the log
        assert "tokens" in log.read_text()
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, 9)


def test_detach_shows_the_log_when_the_server_dies(tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", "--model", str(tiny_llama), "--port", str(port), "--detach"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err  # the log's tail
    assert "exited" in err and "before it was ready" in err
    assert _ps(capsys) == []


def test_ps_drops_records_of_servers_that_are_gone(capsys: pytest.CaptureFixture[str]) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = registry.servers_dir()
    folder.mkdir(parents=True)
    base = {
        "url": "http://127.0.0.1:9",
        "host": "127.0.0.1",
        "port": 9,
        "model": "m",
        "started_at": time.time(),
        "log": None,
        "detached": True,
        "api_key": False,
    }
    (folder / f"{gone.pid}.json").write_text(json.dumps({**base, "pid": gone.pid, "process_started": time.time()}))
    # our own pid, but a process start time that is not ours: the pid was reused
    (folder / f"{os.getpid()}.json").write_text(json.dumps({**base, "pid": os.getpid(), "process_started": 1.0}))
    (folder / "123456789.json").write_text("{not json")
    assert _ps(capsys) == []
    assert list(folder.iterdir()) == []
    assert main(["ps"]) == 0
    assert "No Influence server is running" in capsys.readouterr().out
    assert main(["serve", "--stop"]) == 0
    assert "No Influence server is running" in capsys.readouterr().err


def test_a_running_server_that_does_not_answer_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    record = registry.write_record(
        url=f"http://127.0.0.1:{_free_port()}",
        host="127.0.0.1",
        port=1,
        model="m",
        log=None,
        detached=False,
        api_key=False,
    )
    (row,) = _ps(capsys)
    assert row["pid"] == os.getpid() == record.pid
    assert row["status"] == "not answering"
    registry.remove_record(record.pid)


def test_warning_for_a_server_open_to_the_network(
    tiny_llama: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from influence_tui.cli import server_cmds

    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(server_cmds, "_serve", lambda *args: calls.append(args) or 0)
    assert main(["serve", "--model", str(tiny_llama), "--host", "0.0.0.0"]) == 0
    assert "warning: binding 0.0.0.0 without --api-key" in capsys.readouterr().err
    assert main(["deploy", "--model", str(tiny_llama), "--host", "0.0.0.0", "--api-key", "k", "--cors", "*"]) == 0
    assert "warning" not in capsys.readouterr().err
    _settings, _model, api_key, cors, _upstreams = calls[-1]
    assert api_key == "k" and cors == ["*"]
    monkeypatch.setenv("INFLUENCE_API_KEY", "from-env")
    assert main(["serve", "--model", str(tiny_llama), "--host", "::"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert calls[-1][2] == "from-env"
    assert main(["serve", "--model", "no-such-model"]) == 1
    assert "no-such-model" in capsys.readouterr().err


def test_addresses() -> None:
    assert registry.is_loopback("127.0.0.1") and registry.is_loopback("localhost") and registry.is_loopback("::1")
    assert not registry.is_loopback("0.0.0.0") and not registry.is_loopback("192.168.1.5")
    assert registry.bind_warning("127.0.0.1", None) is None
    assert registry.bind_warning("0.0.0.0", "key") is None
    assert registry.bind_warning("0.0.0.0", None)
    assert registry.client_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert registry.client_url("::", 8080) == "http://[::1]:8080"
    assert registry.client_url("fe80::1", 1) == "http://[fe80::1]:1"
    assert registry.client_url("localhost", 1) == "http://localhost:1"


def test_the_cli_and_the_core_import_no_web_stack() -> None:
    web = ("fastapi", "uvicorn", "starlette", "torch")
    assert loaded_after("import influence_tui.cli", web) == []
    assert loaded_after("import influence_tui.server.registry", web) == []
    assert loaded_after("import influence_tui.core.engine.runner, influence_tui.core.chat", web) == []


def test_serve_exits_when_the_model_cannot_load(tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    code = main(["serve", "--model", str(tiny_bert), "--port", str(port), "--device", "cpu"])  # an encoder: no chat
    err = capsys.readouterr().err
    assert code == 1
    assert "could not load tiny-bert" in err
    assert "cannot generate text" in err
    assert _ps(capsys) == []  # its record is gone with it


def test_serve_refuses_an_unloadable_model_before_starting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    assert main(["serve", "--model", str(folder), "--detach"]) == 1
    assert "pickle" in capsys.readouterr().err
    assert not registry.servers_dir().exists() or not list(registry.servers_dir().iterdir())
