"""Against a real engine no one here wrote: llama-cpp-python's OpenAI-compatible server with the demo model and an
API key. Listing, a greedy chat that answers Paris (CLI), streaming with its usage, cancel, a wrong key, the
upstream killed mid-stream, and `influence serve --upstream` with the official openai and ollama clients."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest

from influence_tui.cli import main
from influence_tui.core.config import Settings
from influence_tui.core.engine.remote import RemoteEngine
from influence_tui.core.errors import RemoteError
from influence_tui.core.remotes import Remote, RemoteModel
from influence_tui.core.sessions import load_session
from influence_tui.core.types import ChatMessage, LocalModel, SamplingParams
from tests.remote.conftest import DEMO_ID, LLAMA_KEY_ENV, start_llama_server
from tests.server.conftest import RecordingRunner, Served, serve

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
SYSTEM = "You are a helpful assistant."
"""The demo model (135M parameters) answers Paris with a system prompt; without one llama.cpp's Q4_1 kernels
take it down another greedy path ("L'Étoile, la Cité…") than the native engine does, a tiny model's fragility."""
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, repeat_penalty=1.0)


def engine_for(remote: Remote) -> RemoteEngine:
    engine = RemoteEngine(RemoteModel(remote, DEMO_ID))
    engine.load()
    return engine


def test_the_remote_lists_its_model(llama: Remote, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--remote", "--json"]) == 0
    (model,) = json.loads(capsys.readouterr().out)
    assert model["name"] == f"{DEMO_ID}@llama" and model["source"] == "remote" and model["kind"] == "openai"
    assert model["host"] == llama.host
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "(demo)" in out and f"{DEMO_ID}@llama" in out and f"remote {llama.host}" in out


def test_generate_answers_paris_through_the_remote(llama: Remote, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["generate", QUESTION, "--model", f"{DEMO_ID}@llama", "--system", SYSTEM, "--temperature", "0"]
    argv += ["--max-tokens", "16", "-v"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "Paris" in out
    assert f"messages are sent to {llama.host}" in err and "generated" in err and "finished: stop" in err


def test_chat_keeps_the_remote_model_in_the_saved_session(
    llama: Remote, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import io

    saved = tmp_path / "chat.json"
    monkeypatch.setattr("sys.stdin", io.StringIO(f"/set temperature 0\n/set max_tokens 16\n{QUESTION}\n"))
    argv = ["chat", "--model", f"{DEMO_ID}@llama", "--system", SYSTEM, "--save-on-exit", str(saved)]
    assert main(argv) == 0
    assert "Paris" in capsys.readouterr().out
    session = load_session(saved)
    assert session.model == f"{DEMO_ID}@llama" and "Paris" in session.messages[-1].content
    # reopened without --model: the chat continues with the remote model it was held with
    monkeypatch.setattr("sys.stdin", io.StringIO("/retry\n"))
    assert main(["chat", "--session", str(saved), "--temperature", "0", "--max-tokens", "16"]) == 0
    out, err = capsys.readouterr()
    assert f"Connecting to {DEMO_ID}@llama" in err and "Paris" in out


def test_a_stream_comes_in_pieces_with_the_remotes_usage(llama: Remote) -> None:
    engine = engine_for(llama)
    info = engine.info
    assert info is not None and info.name == f"{DEMO_ID}@llama" and info.device == f"remote {llama.host}"
    _plan, stream = engine.start_chat([ChatMessage("user", QUESTION)], SYSTEM, GREEDY)
    events = list(stream)
    texts = [e.text for e in events if e.text]
    assert len(texts) > 2 and "Paris" in "".join(texts)
    stats = stream.stats
    assert stats is not None and stats.finish_reason in ("stop", "length")
    assert stats.prompt_tokens > 10 and stats.generated_tokens >= len(texts) - 1  # usage, not a count of pieces
    assert stats.time_to_first_token_s > 0 and stats.decode_tokens_per_s > 0


def test_cancel_stops_the_remote_so_the_next_request_runs_at_once(llama: Remote) -> None:
    engine = engine_for(llama)
    stop = threading.Event()
    story = SamplingParams(temperature=0.8, max_tokens=400, seed=1)
    _plan, stream = engine.start_chat([ChatMessage("user", "Tell me a very long story.")], None, story, stop)
    first = [next(stream).text for _ in range(3)]
    assert all(first)
    stop.set()  # what Esc does in the TUI
    started = time.monotonic()
    rest = list(stream)
    assert time.monotonic() - started < 1.0
    assert stream.stats is not None and stream.stats.finish_reason == "cancelled"
    assert rest[-1].stats is stream.stats
    # the server runs one request at a time (--interrupt_requests False): this one answers promptly only
    # because the cancelled one was stopped when its connection closed, not after 400 tokens
    started = time.monotonic()
    _plan, again = engine.start_chat([ChatMessage("user", QUESTION)], SYSTEM, GREEDY)
    assert "Paris" in again.text()
    assert time.monotonic() - started < 20


def test_a_wrong_key_is_a_401_saying_which_variable(
    llama: Remote, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(LLAMA_KEY_ENV, "wrong-key-123")
    with pytest.raises(RemoteError) as caught:
        engine_for(llama)
    assert (
        caught.value.reason == "auth"
        and caught.value.status == 401
        and f"${LLAMA_KEY_ENV}" in (caught.value.hint or "")
    )
    assert main(["generate", "hi", "--model", f"{DEMO_ID}@llama"]) == 1
    _out, err = capsys.readouterr()
    assert "refused the API key" in err and "wrong-key-123" not in err
    assert main(["remote", "test", "llama"]) == 1


def test_the_upstream_killed_mid_stream_keeps_the_text(
    demo_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doomed = start_llama_server(demo_gguf, tmp_path / "doomed.log")
    try:
        monkeypatch.setenv(LLAMA_KEY_ENV, "llama-test-key-4f1c9a")
        remote = Remote(name="doomed", url=f"{doomed.url}/v1", kind="openai", api_key_env=LLAMA_KEY_ENV)
        engine = engine_for(remote)
        story = SamplingParams(temperature=0.8, max_tokens=400, seed=2)
        _plan, stream = engine.start_chat([ChatMessage("user", "Tell me a very long story.")], None, story)
        seen = [next(stream).text for _ in range(4)]
        doomed.kill()
        started = time.monotonic()
        with pytest.raises(RemoteError) as caught:
            for event in stream:
                seen.append(event.text)
        assert time.monotonic() - started < 5
        error = caught.value
        assert error.interrupted and error.partial_text.startswith("".join(seen[:4]))
        assert "kept" in (error.hint or "")
    finally:
        doomed.kill()


# ------------------------------------------------------------------------------------------ the gateway


@pytest.fixture
def gateway(llama: Remote, tiny_runner: tuple[RecordingRunner, LocalModel]) -> Iterator[Served]:
    runner, model = tiny_runner
    served = serve(runner, model, Settings(), upstreams=[llama])
    yield served
    served.server.stop()


def test_the_gateway_serves_the_remote_to_the_openai_client(gateway: Served) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert ids[0] == gateway.model.name and ids[-1] == f"{DEMO_ID}@llama"
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(
        model=f"{DEMO_ID}@llama",
        messages=messages,
        temperature=0,
        max_tokens=16,  # type: ignore[arg-type]
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.usage is not None and reply.usage.prompt_tokens > 10
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=f"{DEMO_ID}@llama",
            messages=messages,
            temperature=0,
            max_tokens=16,
            stream=True,  # type: ignore[arg-type]
        )
        if chunk.choices
    ]
    assert len([p for p in pieces if p]) > 2 and "Paris" in "".join(pieces)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope@llama", messages=messages)  # type: ignore[arg-type]


def test_the_gateway_serves_the_remote_to_the_ollama_client(gateway: Served) -> None:
    client = ollama.Client(host=gateway.url)
    names = [m.model for m in client.list().models]
    assert f"{DEMO_ID}@llama" in names
    parts = client.chat(
        model=f"{DEMO_ID}@llama",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        stream=True,
        options={"temperature": 0, "num_predict": 16},
    )
    chunks = list(parts)
    assert "Paris" in "".join(c.message.content or "" for c in chunks)
    assert chunks[-1].done and (chunks[-1].eval_count or 0) > 0
    answer = client.generate(
        model=f"{DEMO_ID}@llama", prompt=QUESTION, system=SYSTEM, options={"temperature": 0, "num_predict": 16}
    )
    assert "Paris" in answer.response
