"""Bad requests get the right status in the right shape, before any stream starts, and the server keeps serving.
Also: the API key, and a server whose model is still loading."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.server.conftest import RecordingRunner, Served, serve

CHAT = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def http(tiny_server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as client:
        yield client


def _openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return dict(error)


def _ollama_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str) and body["error"]
    return str(body["error"])


def _still_serving(http: httpx.Client) -> None:
    reply = http.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2})
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b'{"messages": [', 400, None),  # malformed JSON
        (b"[1, 2]", 400, None),  # not an object
        ({"messages": CHAT, "temperature": "hot"}, 400, "temperature"),
        ({"messages": CHAT, "max_tokens": "5"}, 400, "max_tokens"),
        ({"messages": CHAT, "stream": "yes"}, 400, "stream"),
        ({"messages": "Hello"}, 400, "messages"),
        ({"messages": [{"content": "no role"}]}, 400, "messages.0.role"),
        ({"messages": [{"role": "wizard", "content": "Hi"}]}, 400, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages.0.content.0"),
        ({"model": "tiny-llama"}, 400, "messages"),  # missing messages
        ({"messages": []}, 400, "messages"),
        ({"messages": CHAT, "max_tokens": -1}, 400, "max_tokens"),
        ({"messages": CHAT, "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": CHAT, "max_tokens": 10**9}, 400, "max_tokens"),  # more than the context holds
        ({"messages": CHAT, "max_completion_tokens": 10**6}, 400, "max_completion_tokens"),
        ({"messages": CHAT, "n": 2}, 400, "n"),
        ({"messages": CHAT, "top_p": 1.5}, 400, "top_p"),
        ({"messages": CHAT, "temperature": -1}, 400, "temperature"),
        ({"messages": CHAT, "logprobs": True}, 400, "logprobs"),
        ({"messages": CHAT, "stop": 3}, 400, "stop"),
        ({"messages": [{"role": "user", "content": "word " * 400}]}, 400, "messages"),  # longer than the context
        ({"model": "gpt-4o", "messages": CHAT}, 404, "model"),
    ],
)
def test_bad_chat_requests(http: httpx.Client, body: Any, status: int, param: str | None) -> None:
    for stream in (False, True):  # the same answer whether or not a stream was asked for
        if isinstance(body, bytes):
            response = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        else:
            response = http.post("/v1/chat/completions", json={**body, "stream": body.get("stream", stream)})
        _openai_error(response, status, param)
    _still_serving(http)


def test_error_details(http: httpx.Client) -> None:
    unknown = _openai_error(http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": CHAT}), 404)
    assert unknown["code"] == "model_not_found"
    assert unknown["type"] == "invalid_request_error"
    assert "gpt-4o" in unknown["message"]
    huge = _openai_error(http.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 10**9}), 400)
    assert huge["code"] == "context_length_exceeded"
    assert "256" in huge["message"]
    malformed = _openai_error(http.post("/v1/chat/completions", content=b"{oops"), 400)
    assert "JSON" in malformed["message"]
    extra = http.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2, "frobnicate": {"x": 1}})
    assert extra.status_code == 200  # unknown fields are ignored
    _openai_error(http.get("/v1/nothing-here"), 404)
    _openai_error(http.get("/v1/chat/completions"), 405)


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/completions", {"max_tokens": 3}, 400, "prompt"),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 10**9}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "Hi", "n": 3}, 400, "n"),
        ("/v1/completions", {"prompt": [10**6]}, 400, "prompt"),
        ("/v1/completions", {"prompt": "word " * 400}, 400, "prompt"),
        ("/v1/completions", {"prompt": "Hi", "model": "nope"}, 404, "model"),
        ("/v1/embeddings", {}, 400, "input"),
        ("/v1/embeddings", {"input": ""}, 400, "input"),
        ("/v1/embeddings", {"input": []}, 400, "input"),
        ("/v1/embeddings", {"input": 5}, 400, "input"),
        ("/v1/embeddings", {"input": "Hi", "encoding_format": "hex"}, 400, "encoding_format"),
        ("/v1/embeddings", {"input": "Hi", "dimensions": 100000}, 400, "dimensions"),
        ("/v1/embeddings", {"input": "Hi", "model": "nope"}, 404, "model"),
        ("/v1/embeddings", {"input": [[1, 2], [10**7]]}, 400, "input"),
    ],
)
def test_bad_completion_and_embedding_requests(
    http: httpx.Client, path: str, body: dict[str, Any], status: int, param: str
) -> None:
    _openai_error(http.post(path, json=body), status, param)
    _still_serving(http)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/chat", b"{not json", 400),
        ("/api/chat", {"messages": CHAT}, 400),  # no model
        ("/api/chat", {"model": "llama3", "messages": CHAT}, 404),
        ("/api/chat", {"model": "tiny-llama", "messages": "Hello"}, 400),
        ("/api/chat", {"model": "tiny-llama", "messages": [{"role": "tool", "content": "x"}]}, 400),
        ("/api/chat", {"model": "tiny-llama", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, 400),
        ("/api/chat", {"model": "tiny-llama", "messages": CHAT, "options": {"temperature": "hot"}}, 400),
        ("/api/chat", {"model": "tiny-llama", "messages": CHAT, "options": {"num_predict": 0}}, 400),
        ("/api/generate", {"model": "tiny-llama", "prompt": "Hi", "options": {"top_p": 7}}, 400),
        ("/api/generate", {"model": "tiny-llama", "prompt": "Hi", "suffix": "end"}, 400),
        ("/api/generate", {"model": "mistral", "prompt": "Hi"}, 404),
        ("/api/show", {}, 400),
        ("/api/show", {"model": "llama3"}, 404),
        ("/api/embed", {"model": "tiny-llama"}, 400),
        ("/api/embed", {"model": "nope", "input": "Hi"}, 404),
        ("/api/nothing-here", {}, 404),
    ],
)
def test_bad_ollama_requests(http: httpx.Client, path: str, body: Any, status: int) -> None:
    for stream in (True, False):
        if isinstance(body, bytes):
            response = http.post(path, content=body)
        else:
            response = http.post(path, json={**body, "stream": stream})
        _ollama_error(response, status)
    _still_serving(http)


def test_ollama_client_sees_the_errors(tiny_server: Served) -> None:
    client = ollama.Client(host=tiny_server.url, timeout=30)
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="llama3", messages=CHAT)
    assert caught.value.status_code == 404
    assert "llama3" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        list(client.chat(model="llama3", messages=CHAT, stream=True))
    assert caught.value.status_code == 404


def test_api_key(tiny_runner: tuple[RecordingRunner, Any]) -> None:
    runner, model = tiny_runner
    served = serve(runner, model, api_key="s3cret")
    try:
        with httpx.Client(base_url=served.url, timeout=30) as http:
            _openai_error(http.get("/v1/models"), 401)
            _openai_error(http.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
            _openai_error(http.get("/v1/models", headers={"Authorization": "Basic czNjcmV0"}), 401)
            _openai_error(http.post("/v1/chat/completions", json={"messages": CHAT, "stream": True}), 401)
            assert _ollama_error(http.get("/api/tags"), 401)
            assert _ollama_error(http.post("/api/chat", json={"model": model.name, "messages": CHAT}), 401)
            assert http.get("/health").status_code == 200  # open to health checks
            assert http.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200

        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{served.url}/v1", api_key="s3cret", max_retries=0)
        reply = good.chat.completions.create(model=model.name, messages=CHAT, max_tokens=2)  # type: ignore[arg-type]
        assert reply.choices[0].message.role == "assistant"
        listed = ollama.Client(host=served.url, headers={"Authorization": "Bearer s3cret"}).list()
        assert listed.models[0].model == model.name
    finally:
        served.server.stop()


def test_cors(tiny_runner: tuple[RecordingRunner, Any]) -> None:
    runner, model = tiny_runner
    served = serve(runner, model, api_key="k", cors_origins=["http://localhost:3000"])
    try:
        preflight = httpx.options(
            f"{served.url}/v1/chat/completions",
            headers={
                "Origin": "http://localhost:3000",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
            timeout=10,
        )
        assert preflight.status_code == 200  # answered before the key check
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        models = httpx.get(
            f"{served.url}/v1/models",
            headers={"Origin": "http://localhost:3000", "Authorization": "Bearer k"},
            timeout=10,
        )
        assert models.headers["access-control-allow-origin"] == "http://localhost:3000"
    finally:
        served.server.stop()


def test_loading_model_answers_503_then_serves(tiny_runner: tuple[RecordingRunner, Any]) -> None:
    runner, model = tiny_runner
    gate = threading.Event()

    def load() -> None:
        assert gate.wait(30)

    served = serve(runner, model, load=load)
    try:
        with httpx.Client(base_url=served.url, timeout=30) as http:
            health = http.get("/health")
            assert health.status_code == 503
            assert health.json()["status"] == "loading"
            assert health.json()["model"] == model.name
            busy = _openai_error(http.post("/v1/chat/completions", json={"messages": CHAT}), 503)
            assert "loading" in busy["message"]
            _ollama_error(http.post("/api/chat", json={"model": model.name, "messages": CHAT}), 503)
            assert http.get("/v1/models").status_code == 200  # the model is known before it is loaded
            gate.set()
            for _ in range(200):
                if http.get("/health").json()["status"] == "ok":
                    break
                threading.Event().wait(0.05)
            assert http.get("/health").status_code == 200
            _still_serving(http)
    finally:
        gate.set()
        served.server.stop()


def test_failed_load_is_reported(tiny_runner: tuple[RecordingRunner, Any]) -> None:
    runner, model = tiny_runner
    failures: list[BaseException] = []

    def load() -> None:
        raise RuntimeError("no such file")

    served = serve(runner, model, load=load, on_load_failure=failures.append)
    try:
        for _ in range(200):
            if failures:
                break
            threading.Event().wait(0.02)
        health = httpx.get(f"{served.url}/health", timeout=10)
        assert health.status_code == 500
        assert health.json()["status"] == "error"
        assert "no such file" in health.json()["error"]
        _openai_error(httpx.post(f"{served.url}/v1/chat/completions", json={"messages": CHAT}, timeout=10), 500)
    finally:
        served.server.stop()
