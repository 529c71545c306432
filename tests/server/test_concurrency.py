"""Many clients at once, and clients that leave: requests queue on the engine thread, each stream keeps its own
tokens, and a client that disconnects stops its generation so the next request starts at once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from influence_tui.core.engine.runner import TokenStream
from tests.server.conftest import RecordingRunner, Served

TOPICS = ["Paris", "Rome", "code", "emoji", "the weather", "local models", "cats", "tea"]
LONG = 200
"""max_tokens of the generations a client leaves: with the slowed engine they would run for seconds."""
DELAY = 0.02
"""Seconds added to each token while a test needs generations slow enough to leave in the middle."""


@pytest.fixture(scope="module")
def long_prompt(tiny_server: Served) -> str:
    """A prompt whose greedy reply does not end before LONG tokens (the tiny model is random)."""
    with httpx.Client(base_url=tiny_server.url, timeout=60) as http:
        for topic in TOPICS:
            prompt = f"Tell me everything about {topic}."
            reply = http.post("/v1/chat/completions", json=_chat(prompt, max_tokens=LONG)).json()
            if reply["choices"][0]["finish_reason"] == "length":
                return prompt
    pytest.fail("no prompt reaches max_tokens with the tiny model")


@pytest.fixture
def slow_engine(tiny_server: Served, long_prompt: str) -> Iterator[RecordingRunner]:
    runner = tiny_server.runner
    runner.delay = DELAY
    yield runner
    runner.delay = 0.0


def _chat(prompt: str, **extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": prompt}], "temperature": 0, **extra}


def _submitted(runner: RecordingRunner, index: int, timeout: float = 20.0) -> TokenStream:
    """The ``index``-th stream the engine was given, once the server has submitted it (a client may time out
    before a busy server gets that far; the server still submits and must cancel it)."""
    deadline = time.monotonic() + timeout
    while len(runner.streams) <= index:
        assert time.monotonic() < deadline, "the request never reached the engine"
        time.sleep(0.01)
    return runner.streams[index]


def _wait_finished(stream: TokenStream, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not stream.finished:
        assert time.monotonic() < deadline, "the stream never ended"
        time.sleep(0.01)


def test_eight_concurrent_streams_each_get_their_own_text(tiny_server: Served) -> None:
    name = tiny_server.model.name
    prompts = [f"Tell me about {topic}." for topic in TOPICS]
    sync = openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key="unused", max_retries=0)
    alone = [
        sync.chat.completions.create(model=name, messages=_chat(p)["messages"], max_tokens=24, temperature=0)  # type: ignore[arg-type]
        .choices[0]
        .message.content
        for p in prompts
    ]
    assert len(set(alone)) > 4  # different prompts, different replies: a mix-up would show

    async def one(client: openai.AsyncOpenAI, prompt: str) -> str:
        stream = await client.chat.completions.create(
            model=name,
            messages=_chat(prompt)["messages"],  # type: ignore[arg-type]
            max_tokens=24,
            temperature=0,
            stream=True,
        )
        parts: list[str] = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        return "".join(parts)

    runner = tiny_server.runner
    before = len(runner.streams)
    gate = threading.Event()
    # Keep the engine busy until all eight requests are queued on it, so they really are in flight together.
    blocker = threading.Thread(target=runner.run, args=(lambda: gate.wait(30),), daemon=True)
    blocker.start()

    async def all_at_once() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{tiny_server.url}/v1", api_key="unused", max_retries=0) as client:
            replies = asyncio.gather(*(one(client, p) for p in prompts))
            deadline = time.monotonic() + 30
            while len(runner.streams) < before + 8:
                assert time.monotonic() < deadline, "the eight requests never reached the engine"
                await asyncio.sleep(0.01)
            gate.set()
            return list(await replies)

    try:
        texts = asyncio.run(all_at_once())
    finally:
        gate.set()
        blocker.join(10)
    assert texts == alone
    streams = runner.streams[before:]
    assert len(streams) == 8
    assert all(s.stats is not None and s.stats.finish_reason in ("stop", "length") for s in streams)


def test_a_client_that_leaves_frees_the_engine(
    tiny_server: Served, slow_engine: RecordingRunner, long_prompt: str
) -> None:
    prompt = long_prompt
    with httpx.Client(base_url=tiny_server.url, timeout=60) as http:
        first = len(slow_engine.streams)
        with http.stream("POST", "/v1/chat/completions", json=_chat(prompt, max_tokens=LONG, stream=True)) as response:
            lines = response.iter_lines()
            seen = 0
            for line in lines:
                if line.startswith("data: ") and '"content":"' in line and '"role"' not in line:
                    seen += 1
                    if seen == 2:
                        break  # leave mid-stream: the connection closes with the response
        left = time.monotonic()
        abandoned = slow_engine.streams[first]

        second_start = time.monotonic()
        with http.stream("POST", "/v1/chat/completions", json=_chat("Hello", max_tokens=3, stream=True)) as response:
            first_token_s = None
            for line in response.iter_lines():
                if '"content":"' in line and '"role"' not in line and first_token_s is None:
                    first_token_s = time.monotonic() - second_start
        _wait_finished(abandoned)

    stats = abandoned.stats
    assert stats is not None
    assert stats.finish_reason == "cancelled"
    # it stopped within a few tokens of the client leaving, not after LONG
    assert stats.generated_tokens < LONG // 4
    assert first_token_s is not None
    # the next request did not wait for the abandoned one: far less than its remaining tokens would take
    assert first_token_s < (LONG - stats.generated_tokens) * DELAY / 4
    assert time.monotonic() - left < LONG * DELAY


def test_a_queued_request_whose_client_left_never_runs(
    tiny_server: Served, slow_engine: RecordingRunner, long_prompt: str
) -> None:
    prompt = long_prompt
    with httpx.Client(base_url=tiny_server.url, timeout=60) as http:
        first = len(slow_engine.streams)
        with http.stream("POST", "/v1/chat/completions", json=_chat(prompt, max_tokens=LONG, stream=True)) as running:
            running_lines = running.iter_lines()
            next(running_lines)  # the role chunk: the request is on the engine
            queued_body = _chat("Hi", max_tokens=LONG, stream=True)
            with (
                httpx.Client(base_url=tiny_server.url, timeout=60) as other,
                other.stream("POST", "/v1/chat/completions", json=queued_body) as queued,
            ):
                assert next(queued.iter_lines()).startswith("data: ")  # answered at once, still queued
                # the queued client has left; now the running one leaves too
        running_stream, queued_stream = slow_engine.streams[first], slow_engine.streams[first + 1]
        _wait_finished(running_stream)
        _wait_finished(queued_stream)
    assert queued_stream.stats is not None
    assert queued_stream.stats.finish_reason == "cancelled"
    assert queued_stream.stats.generated_tokens == 0
    assert running_stream.stats is not None and running_stream.stats.generated_tokens < LONG // 2


def test_a_client_that_times_out_cancels_an_answer_that_is_not_streamed(
    tiny_server: Served, slow_engine: RecordingRunner, long_prompt: str
) -> None:
    prompt = long_prompt
    first = len(slow_engine.streams)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{tiny_server.url}/v1/chat/completions", json=_chat(prompt, max_tokens=LONG), timeout=0.5)
    abandoned = _submitted(slow_engine, first)
    _wait_finished(abandoned)
    assert abandoned.stats is not None
    assert abandoned.stats.finish_reason == "cancelled"
    assert abandoned.stats.generated_tokens < LONG // 2

    # the same for Ollama's routes
    first = len(slow_engine.streams)
    body = {"model": tiny_server.model.name, "prompt": prompt, "stream": False, "options": {"num_predict": LONG}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{tiny_server.url}/api/generate", json=body, timeout=0.5)
    abandoned = _submitted(slow_engine, first)
    _wait_finished(abandoned)
    assert abandoned.stats is not None and abandoned.stats.finish_reason == "cancelled"
