"""Shutting down gracefully: a real uvicorn (the server ``influence serve`` runs) told to stop while a client
streams, in a thread and as a real ``influence serve`` process sent SIGTERM; and ``influence ps`` asking each
server what runs inside it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from influence_tui.cli import main
from influence_tui.core.config import Settings
from influence_tui.core.types import LoadOptions, LocalModel
from influence_tui.server import registry
from influence_tui.server.app import create_app
from tests.server.conftest import RecordingRunner, ServerThread, local_model

LONG = 200
DELAY = 0.02
"""Seconds added to each token: a LONG reply then takes seconds, longer than the grace periods here."""


@pytest.fixture(scope="module")
def slow(tiny_llama_template: Path) -> Iterator[tuple[RecordingRunner, LocalModel, str]]:
    """The tiny llama on a runner that can be slowed down, and a prompt whose greedy reply runs to LONG tokens."""
    model = local_model(tiny_llama_template)
    runner = RecordingRunner()
    runner.load(model, LoadOptions(device="cpu", dtype="float32"))
    served = ServerThread(create_app(runner, model, settings=Settings())).start()
    prompt = None
    with httpx.Client(base_url=served.url, timeout=60) as http:
        for topic in ("Paris", "Rome", "code", "tea", "cats", "rain", "jazz", "chess"):
            asked = {"messages": [{"role": "user", "content": f"Tell me everything about {topic}."}], "temperature": 0}
            reply = http.post("/v1/chat/completions", json={**asked, "max_tokens": LONG}).json()
            if reply["choices"][0]["finish_reason"] == "length":
                prompt = f"Tell me everything about {topic}."
                break
    served.stop()
    if prompt is None:
        pytest.fail("no prompt reaches max_tokens with the tiny model")
    yield runner, model, prompt
    runner.close()


def _graceful(runner: RecordingRunner, model: LocalModel, grace_s: float, **app_kwargs: Any) -> ServerThread:
    return ServerThread(create_app(runner, model, settings=Settings(), **app_kwargs), grace_s=grace_s).start()


def _idle(runner: RecordingRunner) -> bool:
    report = runner.load_report()
    return report["running"] == 0 and report["waiting"] == 0


def test_a_stream_running_at_shutdown_ends_with_abort_after_the_grace(
    slow: tuple[RecordingRunner, LocalModel, str],
) -> None:
    runner, model, prompt = slow
    runner.delay = DELAY
    served = _graceful(runner, model, grace_s=0.6)
    try:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=30)
        chunks = iter(
            client.chat.completions.create(
                model=model.name,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=LONG,
                temperature=0,
                stream=True,
            )
        )
        first = next(chunks)
        assert first.choices[0].finish_reason is None
        told = time.monotonic()
        served.server.handle_exit(signal.SIGTERM, None)  # what the signal handler does

        health = httpx.get(f"{served.url}/health", timeout=5)
        assert health.status_code == 503 and health.json()["status"] == "stopping"
        refused = httpx.post(
            f"{served.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]}, timeout=5
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "server_shutting_down"
        assert "shutting down" in refused.json()["error"]["message"]
        refused = httpx.post(f"{served.url}/api/generate", json={"model": "tiny-llama", "prompt": "Hi"}, timeout=5)
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
        assert httpx.get(f"{served.url}/metrics", timeout=5).status_code == 200

        rest = list(chunks)
        ended = time.monotonic() - told
        finishes = [str(c.choices[0].finish_reason) for c in rest if c.choices]  # "abort" is vLLM's, not in the types
        assert finishes[-1] == "abort" and finishes.count("abort") == 1
        assert ended >= 0.6  # it ran on for the grace period...
        assert ended < 0.6 + 5  # ... and no longer (the reply alone would take LONG * DELAY = 4 s more)
        served.thread.join(15)
        assert not served.thread.is_alive()
        assert _idle(runner)
        assert served.server.aborted == 1  # type: ignore[attr-defined]
    finally:
        runner.delay = 0.0
        if served.thread.is_alive():
            served.stop()


def test_a_request_that_finishes_within_the_grace_is_answered_whole(
    slow: tuple[RecordingRunner, LocalModel, str],
) -> None:
    runner, model, prompt = slow
    runner.delay = DELAY
    served = _graceful(runner, model, grace_s=10)
    try:
        client = ollama.Client(host=served.url, timeout=30)
        parts = iter(
            client.chat(
                model="tiny-llama",
                messages=[{"role": "user", "content": prompt}],
                options={"temperature": 0, "num_predict": 20},
                stream=True,
            )
        )
        next(parts)
        served.server.handle_exit(signal.SIGTERM, None)
        rest = list(parts)
        assert rest[-1].done and rest[-1].done_reason == "length"  # 20 tokens: well within 10 s
        served.thread.join(15)
        assert not served.thread.is_alive() and _idle(runner)
        assert served.server.aborted == 0  # type: ignore[attr-defined]
    finally:
        runner.delay = 0.0
        if served.thread.is_alive():
            served.stop()


def test_ollama_streams_end_with_done_reason_abort_and_a_second_signal_cuts_the_grace(
    slow: tuple[RecordingRunner, LocalModel, str],
) -> None:
    runner, model, prompt = slow
    runner.delay = DELAY
    served = _graceful(runner, model, grace_s=60)
    try:
        client = ollama.Client(host=served.url, timeout=30)
        parts = iter(
            client.generate(
                model="tiny-llama", prompt=prompt, options={"temperature": 0, "num_predict": LONG}, stream=True
            )
        )
        next(parts)
        told = time.monotonic()
        served.server.handle_exit(signal.SIGTERM, None)
        time.sleep(0.2)
        served.server.handle_exit(signal.SIGINT, None)  # Ctrl+C again: no more waiting
        rest = list(parts)
        assert rest[-1].done and rest[-1].done_reason == "abort"
        assert time.monotonic() - told < 5
        served.thread.join(15)
        assert not served.thread.is_alive() and _idle(runner)
    finally:
        runner.delay = 0.0
        if served.thread.is_alive():
            served.stop()


def test_ps_shows_what_runs_inside(
    slow: tuple[RecordingRunner, LocalModel, str], capsys: pytest.CaptureFixture[str]
) -> None:
    runner, model, prompt = slow
    runner.delay = DELAY
    served = _graceful(runner, model, grace_s=0)
    record = registry.write_record(
        url=served.url, host="127.0.0.1", port=0, model=model.name, log=None, detached=False, api_key=False
    )
    try:
        streams = []
        for _ in range(2):  # the runner generates one at a time: one runs, one waits
            stream = httpx.stream(
                "POST",
                f"{served.url}/v1/chat/completions",
                json={"messages": [{"role": "user", "content": prompt}], "max_tokens": LONG, "stream": True},
                timeout=30,
            )
            streams.append(stream)
            threading.Thread(target=lambda s=stream: s.__enter__().read(), daemon=True).start()
        deadline = time.monotonic() + 10
        while runner.load_report() != {"running": 1, "waiting": 1, "max_batch": 1}:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        capsys.readouterr()
        assert main(["ps", "--json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)
        assert row["pid"] == os.getpid() and row["status"] == "ok"
        assert row["running"] == 1 and row["waiting"] == 1
        assert row["models_loaded"] == [model.name]
        assert main(["ps"]) == 0
        table = capsys.readouterr().out
        assert "RUNNING" in table and "WAITING" in table and model.name in table
    finally:
        registry.remove_record(record.pid)
        runner.delay = 0.0
        served.server.handle_exit(signal.SIGTERM, None)  # no grace: both end now
        served.thread.join(15)
    assert _idle(runner)


def test_sigterm_stops_a_real_server_process(
    slow: tuple[RecordingRunner, LocalModel, str], tiny_llama_template: Path, tmp_path: Path
) -> None:
    """``influence serve`` as its own process: SIGTERM mid-stream, the stream ends "abort", the process exits 0
    and removes its record."""
    from tests.server.test_cli_serve import _free_port

    prompt = slow[2]
    port = _free_port()
    command = [sys.executable, "-m", "influence_tui", "serve", "--model", str(tiny_llama_template)]
    command += ["--port", str(port)]
    command += ["--device", "cpu", "--grace", "0", "--parallel", "1"]
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "the server never became ready"
            try:
                if httpx.get(f"{url}/health", timeout=1).json().get("status") == "ok":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert registry.record_path(process.pid).is_file()
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": LONG, "stream": True, "temperature": 0}
        finish = None
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as reply:
            signalled = False
            for line in reply.iter_lines():
                if not line.startswith("data: {"):
                    continue
                choices = json.loads(line[len("data: ") :]).get("choices") or [{}]
                finish = choices[0].get("finish_reason") or finish
                if not signalled:
                    process.send_signal(signal.SIGTERM)
                    signalled = True
        assert process.wait(30) == 0
        output = (tmp_path / "serve.log").read_text()
        assert finish == "abort", output  # a LONG reply takes far longer than the signal to arrive
        assert "Server stopped. (1 request(s) aborted" in output
        assert not registry.record_path(process.pid).exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()
