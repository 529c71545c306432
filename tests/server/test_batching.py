"""``influence serve --parallel``: a real uvicorn and the official ``openai`` client against an engine that
batches. Eight clients at once each get the text they get alone (streamed or not) while their decode steps
run together; a full queue answers 503 with ``Retry-After``; the served model's id follows the conventions."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from influence_tui.core.config import Settings
from influence_tui.core.engine.runner import EngineRunner
from influence_tui.core.model_ids import model_id
from influence_tui.core.types import LoadOptions, LocalModel
from influence_tui.server.app import create_app
from tests.server.conftest import ServerThread, local_model

QUESTIONS = [f"Tell me about {topic}." for topic in ("Paris", "Rome", "code", "tea", "cats", "rain", "jazz", "chess")]


class Batched:
    def __init__(self, runner: EngineRunner, model: LocalModel, server: ServerThread) -> None:
        self.runner = runner
        self.model = model
        self.server = server
        self.batch_sizes: list[int] = []

    @property
    def url(self) -> str:
        return self.server.url


def _start(model: LocalModel, cache_dir: Path, **runner_kwargs: Any) -> tuple[EngineRunner, ServerThread]:
    runner = EngineRunner(**runner_kwargs)
    runner.load(model, LoadOptions(device="cpu", dtype="float32", quantize="int8", cache_dir=cache_dir))
    return runner, ServerThread(create_app(runner, model, settings=Settings())).start()


@pytest.fixture(scope="module")
def batched(tiny_llama_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Batched]:
    """The tiny llama (int8 packed weights) served with up to 8 requests decoding together; every batched
    decode step's size is recorded."""
    model = local_model(tiny_llama_template)
    runner, server = _start(model, tmp_path_factory.mktemp("cache"), max_batch=8, queue_limit=32)
    served = Batched(runner, model, server)

    def record(loaded: Any) -> None:
        decode_batch = loaded.model.decode_batch

        def counted(tokens: Any, caches: Any, positions: Any) -> Any:
            served.batch_sizes.append(int(tokens.shape[0]))
            return decode_batch(tokens, caches, positions)

        loaded.model.decode_batch = counted

    runner.with_model(record)
    yield served
    server.stop()
    runner.close()


def _clear_prompt_cache(loaded: Any) -> None:
    loaded.prompt_cache.clear()


def test_eight_clients_at_once_get_their_solo_texts(batched: Batched) -> None:
    name = model_id(batched.model)
    sync = openai.OpenAI(base_url=f"{batched.url}/v1", api_key="unused", max_retries=0, timeout=60)
    alone = []
    for question in QUESTIONS:
        batched.runner.with_model(_clear_prompt_cache)
        reply = sync.chat.completions.create(
            model=name, messages=[{"role": "user", "content": question}], max_tokens=32, temperature=0
        )
        alone.append(reply.choices[0].message.content)
    assert len(set(alone)) > 4
    batched.batch_sizes.clear()
    batched.runner.with_model(_clear_prompt_cache)

    async def one(client: openai.AsyncOpenAI, question: str, stream: bool) -> str:
        messages: Any = [{"role": "user", "content": question}]
        if not stream:
            reply = await client.chat.completions.create(model=name, messages=messages, max_tokens=32, temperature=0)
            return reply.choices[0].message.content or ""
        parts = []
        chunks = await client.chat.completions.create(
            model=name, messages=messages, max_tokens=32, temperature=0, stream=True
        )
        async for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        return "".join(parts)

    async def all_at_once() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{batched.url}/v1", api_key="unused", max_retries=0) as client:
            return await asyncio.gather(*(one(client, q, stream=i % 2 == 0) for i, q in enumerate(QUESTIONS)))

    together = asyncio.run(all_at_once())
    assert together == alone
    assert max(batched.batch_sizes) >= 4  # they did decode together


def test_the_load_shows_in_health(batched: Batched) -> None:
    health = httpx.get(f"{batched.url}/health", timeout=10).json()
    assert health["requests"] == {"running": 0, "waiting": 0, "max_batch": 8}


def test_model_ids_follow_the_conventions(batched: Batched, demo_gguf: Path) -> None:
    from influence_tui.core.library import DEMO_NAME, gguf_model

    assert model_id(batched.model) == "tiny-llama"
    demo = gguf_model(DEMO_NAME, demo_gguf, "demo", [demo_gguf])
    assert model_id(demo) == "smollm2-135m-instruct:q4_1"
    models = openai.OpenAI(base_url=f"{batched.url}/v1", api_key="unused", max_retries=0).models.list()
    assert models.data[0].id == "tiny-llama"
    assert "smollm2-135m-instruct:q4_1" in [m.id for m in models.data[1:]]  # the library's demo, not loaded


def test_a_full_queue_answers_503_with_retry_after(tiny_llama_template: Path, tmp_path: Path) -> None:
    model = local_model(tiny_llama_template)
    runner, server = _start(model, tmp_path / "cache", max_batch=1, queue_limit=1)
    release = threading.Event()
    try:
        holder = threading.Thread(target=lambda: runner.run(lambda: release.wait(30)))
        holder.start()  # the engine is busy with other work: requests wait
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
        first: list[httpx.Response] = []
        waiting = threading.Thread(
            target=lambda: first.append(httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60))
        )
        waiting.start()
        deadline = time.monotonic() + 10
        while runner.load_report()["waiting"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=10)
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "Hi"}])
        assert caught.value.status_code == 503
        assert int(caught.value.response.headers["retry-after"]) >= 1
        assert caught.value.code == "server_busy"
        release.set()
        waiting.join(30)
        assert first and first[0].status_code == 200
    finally:
        release.set()
        server.stop()
        runner.close()
