"""Every library model on demand: a request naming a model of the library loads it beside the started one, it
stays per keep_alive, and the memory budget refuses what cannot fit (official ollama and openai clients)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from influence_tui.core.config import Settings
from tests.server.conftest import RecordingRunner, Served, serve

GREEDY = {"temperature": 0, "num_predict": 4}


@pytest.fixture
def two_models(
    tiny_runner: tuple[RecordingRunner, object], tiny_llama_template: Path, tmp_path: Path
) -> Iterator[Served]:
    """The tiny llama started; the library holds a second copy of it as ``tiny-two``."""
    runner, model = tiny_runner
    models_dir = tmp_path / "models"
    shutil.copytree(tiny_llama_template, models_dir / "tiny-two")
    settings = replace(Settings(), models_dir=models_dir, device="cpu", dtype="float32")
    served = serve(runner, model, settings)  # type: ignore[arg-type]
    yield served
    served.server.stop()


def _loaded(url: str) -> list[str]:
    return [m["name"] for m in httpx.get(f"{url}/api/ps", timeout=10).json()["models"]]


def test_a_library_model_loads_on_demand_and_keep_alive_zero_unloads_it(two_models: Served) -> None:
    client = ollama.Client(host=two_models.url, timeout=120)
    assert _loaded(two_models.url) == [two_models.model.name]
    listed = [m.model for m in client.list().models]
    assert listed[:1] == [two_models.model.name] and "tiny-two" in listed

    reply = client.chat(model="tiny-two", messages=[{"role": "user", "content": "Hi"}], options=GREEDY)
    assert reply.model == "tiny-two" and reply.done
    assert sorted(_loaded(two_models.url)) == sorted([two_models.model.name, "tiny-two"])
    alone = client.chat(model=two_models.model.name, messages=[{"role": "user", "content": "Hi"}], options=GREEDY)
    assert reply.message.content == alone.message.content  # the same weights give the same greedy text

    unload = client.generate(model="tiny-two", prompt="", keep_alive=0)
    assert unload.done_reason == "unload"
    deadline = time.monotonic() + 10
    while "tiny-two" in _loaded(two_models.url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _loaded(two_models.url) == [two_models.model.name]


def test_a_short_keep_alive_expires_and_openai_requests_load_too(two_models: Served) -> None:
    client = openai.OpenAI(base_url=f"{two_models.url}/v1", api_key="unused", max_retries=0)
    loaded = ollama.Client(host=two_models.url, timeout=120).generate(model="tiny-two", prompt="", keep_alive="1s")
    assert loaded.done_reason == "load"
    (entry,) = [
        m for m in httpx.get(f"{two_models.url}/api/ps", timeout=10).json()["models"] if m["name"] == "tiny-two"
    ]
    assert entry["expires_at"] != "9999-12-31T23:59:59Z"
    deadline = time.monotonic() + 15
    while "tiny-two" in _loaded(two_models.url) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "tiny-two" not in _loaded(two_models.url)

    answer = client.chat.completions.create(
        model="tiny-two", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0
    )
    assert answer.model == "tiny-two"
    assert "tiny-two" in _loaded(two_models.url)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.code == "model_not_found"


def test_a_model_past_the_memory_budget_gets_503(
    tiny_runner: tuple[RecordingRunner, object], tiny_llama_template: Path, tmp_path: Path
) -> None:
    runner, model = tiny_runner
    models_dir = tmp_path / "models"
    shutil.copytree(tiny_llama_template, models_dir / "tiny-two")
    settings = replace(Settings(), models_dir=models_dir, max_loaded_memory=1024)
    served = serve(runner, model, settings)  # type: ignore[arg-type]
    try:
        answer = httpx.post(
            f"{served.url}/api/chat",
            json={"model": "tiny-two", "messages": [{"role": "user", "content": "Hi"}], "stream": False},
            timeout=30,
        )
        assert answer.status_code == 503, answer.text
        assert "budget" in answer.json()["error"]
        assert _loaded(served.url) == [served.model.name]  # the started model still serves
    finally:
        served.server.stop()
