"""The real demo model behind the server: the answers the README promises, through both official clients."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import ollama
import openai
import pytest

from influence_tui.core.types import LoadOptions
from tests.server.conftest import RecordingRunner, Served, serve

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def demo_server(demo_loaded: Any) -> Iterator[Served]:
    """The session's demo model (loaded once for the whole test run) in a runner of this module's own."""
    runner = RecordingRunner(load_fn=lambda local_model, **kwargs: replace(demo_loaded))  # closing unloads the copy
    runner.load(demo_loaded.local_model, LoadOptions(device="cpu"))
    served = serve(runner, demo_loaded.local_model)
    yield served
    served.server.stop()
    runner.close()


def test_openai_client_greedy_answer(demo_server: Served) -> None:
    client = openai.OpenAI(base_url=f"{demo_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.model == "smollm2-135m-instruct:q4_1"  # the served id; the old name is still accepted
    for name in (demo_server.model.name, "smollm2-135m-instruct", "SmolLM2-135M-Instruct:Q4_1"):
        again = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": QUESTION}], max_tokens=1, temperature=0
        )
        assert again.model == "smollm2-135m-instruct:q4_1"
    assert [m.id for m in client.models.list().data] == ["smollm2-135m-instruct:q4_1"]


def test_ollama_client_streams_the_answer(demo_server: Served) -> None:
    client = ollama.Client(host=demo_server.url, timeout=120)
    parts = list(
        client.chat(
            model=demo_server.model.name,
            messages=[{"role": "user", "content": QUESTION}],
            options={"temperature": 0, "num_predict": 24},
            stream=True,
        )
    )
    assert "Paris" in "".join(p.message.content or "" for p in parts)
    final = parts[-1]
    assert final.done and final.eval_count and final.eval_duration and final.prompt_eval_duration
    assert final.eval_duration > 0 and final.total_duration and final.total_duration >= final.eval_duration
