"""``GET /metrics``: Prometheus text from a registry of the app's own, fed by the engine as requests end; and
two conversations served alternately both skip their history (``cached_tokens`` in the answers and the
metrics), answering as cold requests do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from influence_tui.core.config import Settings
from influence_tui.core.engine.runner import EngineRunner
from influence_tui.core.model_ids import model_id
from influence_tui.core.types import GenerationStats, LoadOptions
from influence_tui.server.app import create_app
from influence_tui.server.metrics import ServerMetrics
from tests.server.conftest import Served, ServerThread, local_model


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by name and labels."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _scrape(url: str, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=")
    return _samples(reply.text)


class _Idle:
    """Just enough of a runner for the live gauges."""

    def __init__(self) -> None:
        self.observers: list[Any] = []

    def load_report(self) -> dict[str, int]:
        return {"running": 2, "waiting": 3, "max_batch": 8}

    def step_rate(self) -> float:
        return 41.5

    def prompt_cache_report(self) -> dict[str, int]:
        return {"entries": 4, "bytes": 1024, "max_bytes": 4096}

    def add_observer(self, observer: Any) -> None:
        self.observers.append(observer)


def _stats(**changes: Any) -> GenerationStats:
    base: dict[str, Any] = {
        "prompt_tokens": 10,
        "generated_tokens": 5,
        "time_to_first_token_s": 0.2,
        "decode_tokens_per_s": 20.0,
        "total_s": 0.5,
        "finish_reason": "stop",
        "cached_prompt_tokens": 0,
    }
    return GenerationStats(**{**base, **changes})


def test_counters_histograms_and_live_gauges_by_model() -> None:
    runner = _Idle()
    metrics = ServerMetrics(lambda: {"m": runner})  # type: ignore[dict-item]
    metrics.watch(runner, "m")  # type: ignore[arg-type]
    metrics.watch(runner, "m")  # type: ignore[arg-type]  # once only
    assert len(runner.observers) == 1
    (observe,) = runner.observers
    observe(_stats())
    observe(_stats(cached_prompt_tokens=7, finish_reason="length"))
    observe(_stats(generated_tokens=0, total_s=0.0, finish_reason="cancelled"))
    found = _samples(metrics.render().decode())
    m = (("model", "m"),)
    assert found[("influence:prompt_tokens_total", m)] == 30
    assert found[("influence:generation_tokens_total", m)] == 10
    assert found[("influence:request_success_total", (("finished_reason", "stop"), ("model", "m")))] == 1
    assert found[("influence:request_success_total", (("finished_reason", "length"), ("model", "m")))] == 1
    assert found[("influence:request_success_total", (("finished_reason", "abort"), ("model", "m")))] == 1
    assert found[("influence:prompt_cache_hits_total", m)] == 1
    assert found[("influence:prompt_cache_hit_tokens_total", m)] == 7
    assert found[("influence:time_to_first_token_seconds_count", m)] == 2  # not the one that generated nothing
    assert found[("influence:time_to_first_token_seconds_sum", m)] == pytest.approx(0.4)
    assert found[("influence:time_to_first_token_seconds_bucket", (("le", "0.25"), ("model", "m")))] == 2
    assert found[("influence:e2e_request_latency_seconds_count", m)] == 2
    assert found[("influence:requests_running", m)] == 2
    assert found[("influence:requests_waiting", m)] == 3
    assert found[("influence:decode_tokens_per_second", m)] == 41.5
    assert found[("influence:prompt_cache_usage_bytes", m)] == 1024
    assert found[("influence:prompt_cache_max_bytes", m)] == 4096
    assert found[("influence:prompt_cache_entries", m)] == 4
    assert found[("influence:models_loaded", ())] == 1
    other = ServerMetrics(dict)  # a second registry: no clash with the first one's names
    assert _samples(other.render().decode())[("influence:models_loaded", ())] == 0


@pytest.fixture(scope="module")
def cached_server(tiny_llama_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The tiny llama in float32 (a warm request, its history computed one decode step at a time, then gives the
    bits of a cold one that prefills it; with packed weights the two products may differ in the last bits)."""
    model = local_model(tiny_llama_template)
    runner = EngineRunner(prompt_cache_mib=64)
    cache_dir = tmp_path_factory.mktemp("cache")
    runner.load(model, LoadOptions(device="cpu", dtype="float32", quantize="none", cache_dir=cache_dir))
    server = ServerThread(create_app(runner, model, settings=Settings(), api_key="sesame")).start()
    yield Served(server, runner, model, Settings())  # type: ignore[arg-type]
    server.stop()
    runner.close()


def _clear(loaded: Any) -> None:
    loaded.prompt_cache.clear()


def test_two_conversations_alternating_both_skip_their_history(cached_server: Served) -> None:
    url, runner = cached_server.url, cached_server.runner
    name = model_id(cached_server.model)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sesame", max_retries=0, timeout=60)
    auth = {"Authorization": "Bearer sesame"}
    assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401  # behind the key like the other routes
    before = _scrape(url, **auth)
    label = (("model", name),)

    def ask(messages: list[dict[str, str]]) -> Any:
        return client.chat.completions.create(model=name, messages=messages, max_tokens=12, temperature=0)  # type: ignore[arg-type]

    a: list[dict[str, str]] = [{"role": "user", "content": "Tell me a long story about the sea and its ships."}]
    b: list[dict[str, str]] = [{"role": "user", "content": "Explain how to bake bread with flour, water and salt."}]
    runner.with_model(_clear)
    replies: list[Any] = []
    for turn, follow in enumerate(("And then what happened?", "Why is that so?", "Tell me more.")):
        for conversation in (a, b):
            reply = ask(conversation)
            replies.append((list(conversation), reply))
            conversation += [
                {"role": "assistant", "content": reply.choices[0].message.content or ""},
                {"role": "user", "content": follow},
            ]
            cached = reply.usage.prompt_tokens_details.cached_tokens
            if turn == 0:
                assert cached < 30  # the first turns share only the template's start
            else:
                previous = replies[-3][1]  # this conversation's turn before: its whole prompt is cached
                assert cached >= previous.usage.prompt_tokens, (turn, cached)
    after = _scrape(url, **auth)
    assert after[("influence:prompt_cache_entries", label)] >= 2
    assert after[("influence:prompt_cache_usage_bytes", label)] > 0
    hits = after[("influence:prompt_cache_hit_tokens_total", label)] - before.get(
        ("influence:prompt_cache_hit_tokens_total", label), 0
    )
    assert hits == sum(r.usage.prompt_tokens_details.cached_tokens for _, r in replies)
    prompts = after[("influence:prompt_tokens_total", label)] - before.get(("influence:prompt_tokens_total", label), 0)
    assert prompts == sum(r.usage.prompt_tokens for _, r in replies)
    ttft = after[("influence:time_to_first_token_seconds_count", label)]
    assert ttft - before.get(("influence:time_to_first_token_seconds_count", label), 0) == len(replies)
    assert after[("influence:requests_running", label)] == 0 and after[("influence:models_loaded", ())] == 1
    # every answer is the one a cold server gives
    for messages, reply in replies:
        runner.with_model(_clear)
        cold = ask(messages)
        assert cold.usage.prompt_tokens_details.cached_tokens == 0
        assert cold.choices[0].message.content == reply.choices[0].message.content
