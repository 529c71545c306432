"""`influence serve --upstream`: what goes to an upstream and what comes back, against a scripted upstream.

The client's key is for the gateway only; the upstream gets its own. The upstream's refusals come back with
their status (a 429 with its Retry-After), its models beside the local one in both APIs' lists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import httpx
import openai
import pytest

from influence_tui.core.config import Settings
from influence_tui.core.engine.runner import EngineRunner
from influence_tui.core.remotes import Remote
from influence_tui.core.types import LocalModel
from tests.remote.scripted import END, ScriptedServer, Seen, Step, chunked_head, delta, response, sse
from tests.server.conftest import RecordingRunner, Served, serve

UPSTREAM_KEY = "upstream-key-77"
CLIENT_KEY = "gateway-key-11"
MODELS = {"data": [{"id": "big", "owned_by": "vllm", "max_model_len": 32768}, {"id": "busy", "owned_by": "vllm"}]}


def script(seen: Seen) -> Iterable[Step]:
    if seen.path == "/v1/models":
        return response(200, MODELS)
    if seen.body and seen.body.get("model") == "busy":
        return response(429, {"error": {"message": "queue full"}}, headers={"Retry-After": "9"})
    usage = {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2}}
    return [chunked_head(), sse(delta("Bonjour")), sse(delta(" !", "stop")), sse(usage), sse(b"[DONE]"), END]


@pytest.fixture
def gateway(
    tiny_runner: tuple[RecordingRunner, LocalModel], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Served, ScriptedServer]]:
    upstream = ScriptedServer(script)
    monkeypatch.setenv("UP_KEY", UPSTREAM_KEY)
    remote = Remote(name="gpu", url=f"{upstream.url}/v1", kind="openai", api_key_env="UP_KEY")
    runner, model = tiny_runner
    served = serve(runner, model, Settings(), api_key=CLIENT_KEY, upstreams=[remote])
    yield served, upstream
    served.server.stop()
    upstream.stop()


def test_the_upstream_gets_its_own_key_and_never_the_clients(gateway: tuple[Served, ScriptedServer]) -> None:
    served, upstream = gateway
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    ids = [m.id for m in client.models.list()]
    # the served model first, the library's other models (loaded on demand) after it, the upstream's last
    assert ids[0] == served.model.name and ids[-2:] == ["big@gpu", "busy@gpu"]
    assert "smollm2-135m-instruct:q4_1" in ids[1:-2]
    reply = client.chat.completions.create(
        model="big@gpu", messages=[{"role": "user", "content": "Salut"}], temperature=0, max_tokens=5
    )
    assert reply.choices[0].message.content == "Bonjour !"
    assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (11, 2)
    headers = [seen.headers.get("authorization") for seen in upstream.seen]
    assert headers and all(h == f"Bearer {UPSTREAM_KEY}" for h in headers)
    sent = upstream.seen[-1].body
    assert sent["model"] == "big" and sent["max_tokens"] == 5 and sent["temperature"] == 0


def test_upstream_refusals_keep_their_status(gateway: tuple[Served, ScriptedServer]) -> None:
    served, _upstream = gateway
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    body = {"model": "busy@gpu", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    answer = httpx.post(f"{served.url}/v1/chat/completions", json=body, headers=auth, timeout=30)
    assert answer.status_code == 429 and answer.headers["retry-after"] == "9"
    assert "queue full" in answer.json()["error"]["message"]
    answer = httpx.post(f"{served.url}/api/chat", json={**body, "model": "busy@gpu"}, headers=auth, timeout=30)
    assert answer.status_code == 429 and "queue full" in answer.json()["error"]
    answer = httpx.post(
        f"{served.url}/v1/chat/completions", json={**body, "model": "gone@gpu"}, headers=auth, timeout=30
    )
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"


def test_ollama_routes_list_and_stream_the_upstream(gateway: tuple[Served, ScriptedServer]) -> None:
    served, _upstream = gateway
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    tags = httpx.get(f"{served.url}/api/tags", headers=auth, timeout=30).json()
    names = [m["name"] for m in tags["models"]]
    assert names[0] == served.model.name and names[-2:] == ["big@gpu", "busy@gpu"]
    body = {"model": "big@gpu:latest", "messages": [{"role": "user", "content": "Salut"}]}
    with httpx.stream("POST", f"{served.url}/api/chat", json=body, headers=auth, timeout=30) as answer:
        assert answer.status_code == 200
        lines = [line for line in answer.iter_lines() if line]
    parts = [json.loads(line) for line in lines]
    assert "".join(p["message"]["content"] for p in parts) == "Bonjour !"
    assert parts[-1]["done"] is True and parts[-1]["eval_count"] == 2 and parts[-1]["prompt_eval_count"] == 11
    show = httpx.post(f"{served.url}/api/show", json={"model": "big@gpu"}, headers=auth, timeout=30).json()
    assert "num_ctx 32768" in show["parameters"]


def test_the_local_model_is_served_as_before(gateway: tuple[Served, ScriptedServer]) -> None:
    served, upstream = gateway
    before = len(upstream.seen)
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    reply = client.chat.completions.create(
        model=served.model.name, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert len(upstream.seen) == before
    assert isinstance(served.runner, EngineRunner)
