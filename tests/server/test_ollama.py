"""The Ollama API with the official client (and raw HTTP for NDJSON) against uvicorn on the tiny llama."""

from __future__ import annotations

import json
import math

import httpx
import ollama
import pytest

from tests.server.conftest import Served

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 10}
DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


@pytest.fixture
def client(tiny_server: Served) -> ollama.Client:
    return ollama.Client(host=tiny_server.url, timeout=60)


def test_list_show_ps_version_root(client: ollama.Client, tiny_server: Served) -> None:
    name = tiny_server.model.name
    listed, *others = client.list().models  # the served model first, then the rest of the library
    assert listed.model == name
    assert name not in [m.model for m in others]
    assert listed.size == tiny_server.model.size_bytes
    assert listed.details is not None and listed.details.family == "llama"
    assert listed.digest is not None and len(listed.digest) == 64

    shown = client.show(f"{name}:latest")  # clients add the default tag
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 256
    assert shown.template is not None and "<|im_start|>" in shown.template
    assert shown.parameters is not None and "temperature" in shown.parameters
    assert shown.details is not None and shown.details.format == "safetensors"
    by_name = httpx.post(f"{tiny_server.url}/api/show", json={"name": name}, timeout=10)
    assert by_name.status_code == 200

    (running,) = client.ps().models
    assert running.model == name
    assert running.context_length == 256

    assert httpx.get(f"{tiny_server.url}/api/version", timeout=10).json()["version"]
    root = httpx.get(tiny_server.url, timeout=10)
    assert root.text == "Ollama is running"


def test_chat_stream_and_not(client: ollama.Client, tiny_server: Served) -> None:
    name = tiny_server.model.name
    whole = client.chat(model=name, messages=MESSAGES, options=GREEDY)
    assert whole.done is True
    assert whole.done_reason in ("stop", "length")
    assert whole.message.role == "assistant"
    assert whole.prompt_eval_count is not None and whole.prompt_eval_count > 0
    assert whole.eval_count is not None and 0 < whole.eval_count <= 10
    parts = list(client.chat(model=name, messages=MESSAGES, options=GREEDY, stream=True))
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].done_reason == whole.done_reason
    assert parts[-1].eval_count == whole.eval_count


def test_generate_stream_and_not(client: ollama.Client, tiny_server: Served) -> None:
    name = tiny_server.model.name
    whole = client.generate(model=name, prompt="The capital of France is", options=GREEDY)
    assert whole.done is True
    assert whole.context is not None and len(whole.context) > (whole.prompt_eval_count or 0)
    parts = list(client.generate(model=name, prompt="The capital of France is", options=GREEDY, stream=True))
    assert "".join(p.response or "" for p in parts) == whole.response
    raw = client.generate(model=name, prompt="The capital of France is", options=GREEDY, raw=True)
    assert raw.prompt_eval_count is not None and raw.prompt_eval_count < (whole.prompt_eval_count or 0)
    system = client.generate(model=name, prompt="Hi", system="Be brief.", options=GREEDY)
    assert (system.prompt_eval_count or 0) > 5
    follow = client.generate(model=name, prompt="And Italy?", context=whole.context, options=GREEDY)
    assert (follow.prompt_eval_count or 0) > len(whole.context)


def test_ndjson_final_object(tiny_server: Served) -> None:
    body = {"model": tiny_server.model.name, "messages": MESSAGES, "options": {"num_predict": 5, "temperature": 0}}
    response = httpx.post(f"{tiny_server.url}/api/chat", json=body, timeout=60)  # streams by default
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    *tokens, final = lines
    assert all(line["done"] is False for line in tokens)
    assert final["done"] is True
    assert final["done_reason"] in ("stop", "length")
    assert final["message"] == {"role": "assistant", "content": ""}
    for key in (*DURATIONS, "prompt_eval_count", "eval_count"):
        assert isinstance(final[key], int), key
    assert final["eval_count"] <= 5
    # nanoseconds: the whole request took more than a microsecond and far less than a minute
    assert 1_000 < final["total_duration"] < 60 * 10**9
    assert final["prompt_eval_duration"] + final["eval_duration"] <= final["total_duration"]
    assert final["created_at"].endswith("Z")

    generated = httpx.post(
        f"{tiny_server.url}/api/generate",
        json={"model": tiny_server.model.name, "prompt": "Hi", "stream": False, "options": {"num_predict": 3}},
        timeout=60,
    ).json()
    assert generated["done"] is True
    assert all(isinstance(generated[key], int) for key in DURATIONS)


def test_nothing_to_generate_loads_the_model(tiny_server: Served) -> None:
    name = tiny_server.model.name
    loaded = httpx.post(f"{tiny_server.url}/api/generate", json={"model": name}, timeout=10).json()
    assert loaded["done"] is True and loaded["done_reason"] == "load"
    chat = httpx.post(f"{tiny_server.url}/api/chat", json={"model": name, "messages": []}, timeout=10).json()
    assert chat["done_reason"] == "load"


def test_options_are_mapped(client: ollama.Client, tiny_server: Served) -> None:
    name = tiny_server.model.name
    free = client.chat(model=name, messages=MESSAGES, options={"temperature": 0, "num_predict": 20})
    text = free.message.content or ""
    stop = text[3:5]
    stopped = client.chat(model=name, messages=MESSAGES, options={"temperature": 0, "num_predict": 20, "stop": [stop]})
    assert stopped.message.content == text[: text.index(stop)]
    options = {"temperature": 1.2, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.3, "seed": 3}
    first = client.chat(model=name, messages=MESSAGES, options={**options, "num_predict": 8})
    again = client.chat(model=name, messages=MESSAGES, options={**options, "num_predict": 8})
    assert first.message.content == again.message.content
    # num_ctx smaller than the model's: the reply stops where that context is full
    small = client.chat(model=name, messages=MESSAGES, options={"temperature": 0, "num_predict": -1, "num_ctx": 64})
    assert (small.prompt_eval_count or 0) + (small.eval_count or 0) <= 64


def test_embed_and_embeddings(client: ollama.Client, tiny_server: Served) -> None:
    name = tiny_server.model.name
    result = client.embed(model=name, input=["The capital of France is Paris.", "Hello"])
    assert len(result.embeddings) == 2
    assert all(len(vector) == 64 for vector in result.embeddings)
    assert math.isclose(math.sqrt(sum(x * x for x in result.embeddings[0])), 1.0, rel_tol=1e-4)
    assert result.prompt_eval_count is not None and result.prompt_eval_count > 0
    single = client.embed(model=name, input="The capital of France is Paris.")
    assert single.embeddings[0] == pytest.approx(result.embeddings[0], abs=1e-5)
    legacy = client.embeddings(model=name, prompt="The capital of France is Paris.")
    assert list(legacy.embedding) == pytest.approx(result.embeddings[0], abs=1e-5)
    bert = client.embed(model="tiny-bert", input="Hello")
    assert len(bert.embeddings[0]) == 32
    short = client.embed(model=name, input="Hello", dimensions=16)
    assert len(short.embeddings[0]) == 16
