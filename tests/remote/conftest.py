"""Fixtures for the remote-engine tests: a real llama.cpp server (llama-cpp-python's OpenAI-compatible one) with
the demo model and an API key, started once per session on a free 127.0.0.1 port and killed at the end; a remote
named ``llama`` pointing at it; and our own servers (tests/server) as remotes for the Ollama wire."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from influence_tui.core.remotes import Remote, save_remote
from tests.hub.conftest import unused_port
from tests.server.conftest import tiny_runner, tiny_server

__all__ = ["tiny_runner", "tiny_server", "unused_port"]

LLAMA_KEY = "llama-test-key-4f1c9a"
LLAMA_KEY_ENV = "LLAMA_TEST_KEY"
DEMO_ID = "demo"
"""The model's id on the llama server (``--model_alias``)."""


@dataclass
class LlamaServer:
    url: str
    """``http://127.0.0.1:PORT`` (its OpenAI API is under /v1)."""
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


def start_llama_server(model: Path, log: Path, *, n_ctx: int = 2048) -> LlamaServer:
    """``python -m llama_cpp.server`` on a free port; returns once /v1/models answers (with the key)."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        DEMO_ID,
        "--api_key",
        LLAMA_KEY,
        "--interrupt_requests",
        "False",  # by default a new request cuts the stream in progress
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(_threads()),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFLUENCE_", "HF_"))}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the llama.cpp server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            answer = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {LLAMA_KEY}"}, timeout=1.0)
            if answer.status_code == 200:
                return LlamaServer(url, process, log)
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the llama.cpp server did not answer within 120 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _threads() -> int:
    """Half the cores (1 to 4): llama.cpp's threads spin while they wait, so taking every core starves the test
    process that reads the stream (and a machine shared with other jobs) and makes each token slower, not faster."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def llama_server(demo_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """One llama.cpp server for the whole session (about 1 s to start with the 94 MiB demo model)."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is in the dev extra: make install")
    server = start_llama_server(demo_gguf, tmp_path_factory.mktemp("llama") / "server.log")
    yield server
    server.kill()


@pytest.fixture
def llama(llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> Remote:
    """The remote ``llama`` (kind openai, key from $LLAMA_TEST_KEY, set) saved in the test's config file."""
    monkeypatch.setenv(LLAMA_KEY_ENV, LLAMA_KEY)
    remote = Remote(name="llama", url=f"{llama_server.url}/v1", kind="openai", api_key_env=LLAMA_KEY_ENV)
    save_remote(remote)
    return remote
