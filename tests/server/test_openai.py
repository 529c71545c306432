"""The OpenAI API with the official client (and raw HTTP for the wire format) against uvicorn on the tiny llama."""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import httpx
import openai
import pytest

from tests.server.conftest import Served

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(tiny_server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def _sse_events(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of an SSE answer, checking each event is one ``data:`` line and a blank line."""
    body = response.text
    assert body.endswith("\n\n")
    events = body[:-2].split("\n\n")
    payloads = []
    for event in events:
        assert event.startswith("data: "), event
        assert "\n" not in event
        payloads.append(event[len("data: ") :])
    return payloads


def test_models_list(client: openai.OpenAI, tiny_server: Served) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]  # the served model first, then the rest of the library
    assert ids[0] == tiny_server.model.name and ids.count(tiny_server.model.name) == 1
    assert models.data[0].model_extra and models.data[0].model_extra["loaded"] is True
    assert all(m.model_extra and m.model_extra["loaded"] is False for m in models.data[1:])
    assert models.data[0].owned_by == "influence"
    assert client.models.retrieve(tiny_server.model.name).id == tiny_server.model.name


def test_chat_completion_and_its_stream_agree(client: openai.OpenAI, tiny_server: Served) -> None:
    name = tiny_server.model.name
    reply = client.chat.completions.create(model=name, messages=CHAT, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    choice = reply.choices[0]
    assert reply.object == "chat.completion"
    assert reply.model == name
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model=name,
            messages=CHAT,  # type: ignore[arg-type]
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the same reply, streamed
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_sse_wire_format(tiny_server: Served) -> None:
    body = {"messages": CHAT, "max_tokens": 6, "temperature": 0, "stream": True}
    with httpx.Client(base_url=tiny_server.url, timeout=60) as http:
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = _sse_events(response)
        assert payloads[-1] == "[DONE]"
        chunks = [json.loads(p) for p in payloads[:-1]]
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["id"].startswith("chatcmpl-")
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
        finished = [c for c in chunks if c["choices"][0]["finish_reason"] is not None]
        assert len(finished) == 1
        assert finished[0] is chunks[-1]
        assert finished[0]["choices"][0]["delta"] == {}
        assert "usage" not in chunks[0]  # only with stream_options.include_usage

        # the same routes without /v1
        response = http.post("/chat/completions", json=body)
        assert _sse_events(response)[-1] == "[DONE]"
        assert http.get("/models").json()["data"][0]["id"] == tiny_server.model.name


def test_sampling_parameters_and_stop(client: openai.OpenAI, tiny_server: Served) -> None:
    name = tiny_server.model.name
    free = client.chat.completions.create(model=name, messages=CHAT, max_tokens=20, temperature=0)  # type: ignore[arg-type]
    text = free.choices[0].message.content or ""
    assert len(text) > 3
    stop = text[2:4]
    stopped = client.chat.completions.create(model=name, messages=CHAT, max_tokens=20, temperature=0, stop=[stop])  # type: ignore[arg-type]
    assert stopped.choices[0].message.content == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"

    def sampled(seed: int) -> str:
        reply = client.chat.completions.create(
            model=name,
            messages=CHAT,  # type: ignore[arg-type]
            max_completion_tokens=10,
            temperature=1.5,
            top_p=0.95,
            seed=seed,
            extra_body={"top_k": 50, "min_p": 0.01, "repeat_penalty": 1.2},
        )
        return reply.choices[0].message.content or ""

    assert sampled(7) == sampled(7)
    one = client.chat.completions.create(model=name, messages=CHAT, max_completion_tokens=1, temperature=0)  # type: ignore[arg-type]
    assert one.usage is not None and one.usage.completion_tokens == 1
    assert one.choices[0].finish_reason in ("length", "stop")


def test_chat_message_forms(client: openai.OpenAI, tiny_server: Served) -> None:
    messages: Any = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "And you?"},
    ]
    reply = client.chat.completions.create(model=tiny_server.model.name, messages=messages, max_tokens=4, temperature=0)
    assert reply.usage is not None and reply.usage.prompt_tokens > 20


def test_completions(client: openai.OpenAI, tiny_server: Served) -> None:
    name = tiny_server.model.name
    done = client.completions.create(model=name, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert done.object == "text_completion"
    assert done.choices[0].finish_reason in ("stop", "length")
    assert done.usage is not None and done.usage.prompt_tokens > 0
    streamed = list(
        client.completions.create(
            model=name, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text
    assert [c.choices[0].finish_reason for c in streamed if c.choices[0].finish_reason] == [
        done.choices[0].finish_reason
    ]

    echoed = client.completions.create(model=name, prompt="Hello", max_tokens=3, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith("Hello")
    several = client.completions.create(model=name, prompt=["Hello", "The capital"], max_tokens=3, temperature=0)
    assert [c.index for c in several.choices] == [0, 1]
    tokens = client.completions.create(model=name, prompt=[1, 334, 201], max_tokens=3, temperature=0)
    assert tokens.usage is not None and tokens.usage.prompt_tokens == 3


def test_embeddings_float_and_base64(client: openai.OpenAI, tiny_server: Served) -> None:
    name = tiny_server.model.name
    texts = ["The capital of France is Paris.", "Hello, how are you today?"]
    as_floats = client.embeddings.create(model=name, input=texts, encoding_format="float")
    by_default = client.embeddings.create(model=name, input=texts)  # the client asks for base64 and decodes it
    assert [d.index for d in as_floats.data] == [0, 1]
    assert as_floats.model == name
    assert as_floats.usage.prompt_tokens > 0
    for floats, decoded in zip(as_floats.data, by_default.data, strict=True):
        assert len(floats.embedding) == 64
        assert math.isclose(math.sqrt(sum(x * x for x in floats.embedding)), 1.0, rel_tol=1e-4)
        assert decoded.embedding == pytest.approx(floats.embedding, abs=1e-6)
    assert as_floats.data[0].embedding != as_floats.data[1].embedding

    raw = httpx.post(
        f"{tiny_server.url}/v1/embeddings", json={"input": "Paris", "encoding_format": "base64"}, timeout=60
    ).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert len(struct.unpack(f"<{len(packed) // 4}f", packed)) == 64

    short = client.embeddings.create(model=name, input="Paris", encoding_format="float", dimensions=8)
    assert len(short.data[0].embedding) == 8
    assert math.isclose(math.sqrt(sum(x * x for x in short.data[0].embedding)), 1.0, rel_tol=1e-4)


def test_embeddings_from_an_embedding_model_in_the_library(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="tiny-bert", input=["Hello there", "Paris"], encoding_format="float")
    assert result.model == "tiny-bert"
    assert len(result.data[0].embedding) == 32  # the BERT's width, not the llama's
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-embedder", input="Paris")


def test_health(tiny_server: Served) -> None:
    health = httpx.get(f"{tiny_server.url}/health", timeout=10).json()
    assert health["status"] == "ok"
    assert health["model"] == tiny_server.model.name
    assert health["uptime_s"] >= 0
    assert health["context_length"] == 256
