"""The engine thread: one request at a time, each with its own complete stream; cancel, errors, loading, close.

Most tests drive the runner with a scripted generate function (the real model is loaded, the tokens are not
sampled), so what is checked is the runner's queueing and error handling; the last tests use the real
``generate_stream``.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Collection, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from influence_tui.core.engine.runner import EngineRunner, TokenStream
from influence_tui.core.errors import InfluenceError
from influence_tui.core.library import inspect_path
from influence_tui.core.types import ChatMessage, GenerationStats, LoadOptions, LocalModel, SamplingParams, TokenEvent
from tests.models import build_tiny_llama

PARAMS = SamplingParams(temperature=0.0, max_tokens=8)


def _local(path: Path) -> LocalModel:
    (model,) = inspect_path(path)
    return model


def _stats(prompt: int, generated: int, reason: str = "stop") -> GenerationStats:
    return GenerationStats(
        prompt_tokens=prompt,
        generated_tokens=generated,
        time_to_first_token_s=0.0,
        decode_tokens_per_s=0.0,
        total_s=0.0,
        finish_reason=reason,  # type: ignore[arg-type]
    )


class Script:
    """A generate function that emits ``<prompt>:<i>`` pieces, logging each step, honouring the stop event."""

    def __init__(
        self, tokens: int = 5, delay: float = 0.005, fail_at: int | None = None, error: Exception | None = None
    ):
        self.tokens = tokens
        self.delay = delay
        self.fail_at = fail_at
        self.error = error or ValueError("boom")
        self.log: list[tuple[str, int]] = []
        self.calls: list[dict[str, Any]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(
        self,
        model: Any,
        tokenizer: Any,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        eos_token_ids: Collection[int],
        context_length: int,
        stop_event: threading.Event | None = None,
    ) -> Iterator[TokenEvent]:
        name = str(prompt_ids[0])
        self.calls.append({"eos": tuple(eos_token_ids), "context": context_length, "model": model})
        self.started.set()
        self.release.wait(10)
        n = 0
        while self.tokens < 0 or n < self.tokens:
            if stop_event is not None and stop_event.is_set():
                yield TokenEvent("", stats=_stats(len(prompt_ids), n, "cancelled"))
                return
            if self.fail_at is not None and n == self.fail_at:
                raise self.error
            self.log.append((name, n))
            yield TokenEvent(f"{name}:{n} ", token_id=n)
            n += 1
            time.sleep(self.delay)
        yield TokenEvent("", stats=_stats(len(prompt_ids), n))


@pytest.fixture
def runner(tiny_llama: Path) -> Iterator[EngineRunner]:
    engine = EngineRunner()
    engine.load(_local(tiny_llama), LoadOptions(dtype="float32"))
    yield engine
    engine.close()


def _with_script(runner: EngineRunner, script: Script) -> EngineRunner:
    runner._generate_fn = script
    return runner


# ------------------------------------------------------------------------------------------ streams


def test_a_stream_carries_every_event_then_the_stats(runner: EngineRunner) -> None:
    script = Script(tokens=4)
    _with_script(runner, script)
    stream = runner.submit([7, 1, 2], PARAMS)
    events = list(stream)
    assert [e.text for e in events] == ["7:0 ", "7:1 ", "7:2 ", "7:3 ", ""]
    assert events[-1].done
    assert stream.finished
    assert stream.stats == _stats(3, 4)
    assert list(stream) == []  # a finished stream stays finished
    info = runner.info
    assert info is not None
    assert script.calls[0]["eos"] == info.eos_token_ids
    assert script.calls[0]["context"] == info.context_length == 256


def test_concurrent_requests_are_served_one_after_another(runner: EngineRunner) -> None:
    script = Script(tokens=6, delay=0.01)
    _with_script(runner, script)
    texts: dict[str, str] = {}

    def consume(first: int) -> None:
        texts[str(first)] = runner.submit([first, 5], PARAMS).text()

    threads = [threading.Thread(target=consume, args=(first,)) for first in (100, 200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert texts == {name: "".join(f"{name}:{i} " for i in range(6)) for name in ("100", "200")}
    order = [name for name, _ in script.log]
    first = order[0]
    assert order == [first] * 6 + [({"100", "200"} - {first}).pop()] * 6  # never interleaved


def test_a_second_request_waits_for_the_first(runner: EngineRunner) -> None:
    script = Script(tokens=3)
    script.release.clear()
    _with_script(runner, script)
    first = runner.submit([1], PARAMS)
    second = runner.submit([2], PARAMS)
    assert script.started.wait(5)
    time.sleep(0.05)
    assert len(script.calls) == 1  # the second has not started while the first is held
    script.release.set()
    assert first.text() == "1:0 1:1 1:2 "
    assert second.text() == "2:0 2:1 2:2 "


def test_cancel_with_the_stop_event(runner: EngineRunner) -> None:
    _with_script(runner, Script(tokens=-1, delay=0.001))  # would run forever
    stop = threading.Event()
    stream = runner.submit([3], PARAMS, stop_event=stop)
    received = [next(stream) for _ in range(3)]
    assert [e.text for e in received] == ["3:0 ", "3:1 ", "3:2 "]
    stop.set()
    rest = list(stream)
    assert rest[-1].stats is not None
    assert rest[-1].stats.finish_reason == "cancelled"
    # The engine is free again.
    _with_script(runner, Script(tokens=1))
    assert runner.submit([4], PARAMS).text() == "4:0 "


def test_leaving_a_with_block_cancels_and_a_cancelled_request_never_starts(runner: EngineRunner) -> None:
    script = Script(tokens=-1, delay=0.001)
    _with_script(runner, script)
    with runner.submit([5], PARAMS) as stream:
        next(stream)
    waiting_stop = threading.Event()
    waiting_stop.set()
    skipped = runner.submit([6], PARAMS, stop_event=waiting_stop)
    (final,) = list(skipped)
    assert final.stats is not None
    assert final.stats.finish_reason == "cancelled"
    assert final.stats.prompt_tokens == 1
    assert len(script.calls) == 1  # only the first request ever reached generate
    assert {name for name, _ in script.log} == {"5"}


def test_an_error_in_generate_reaches_the_consumer(runner: EngineRunner) -> None:
    _with_script(runner, Script(tokens=5, fail_at=2, error=ValueError("boom")))
    stream = runner.submit([8], PARAMS)
    received: list[str] = []
    with pytest.raises(ValueError, match="boom"):
        for event in stream:
            received.append(event.text)
    assert received == ["8:0 ", "8:1 "]
    assert list(stream) == []
    # The engine thread survived and serves the next request.
    _with_script(runner, Script(tokens=2))
    assert runner.submit([9], PARAMS).text() == "9:0 9:1 "


def test_an_influence_error_keeps_its_kind_and_message(runner: EngineRunner) -> None:
    _with_script(runner, Script(fail_at=0, error=InfluenceError("prompt too long", hint="shorten it")))
    with pytest.raises(InfluenceError, match="prompt too long"):
        runner.submit([1], PARAMS).text()


def test_out_of_memory_while_generating_is_a_user_error(runner: EngineRunner) -> None:
    import torch

    _with_script(runner, Script(fail_at=1, error=torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(InfluenceError, match="ran out of memory") as caught:
        runner.submit([1], PARAMS).text()
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)


def test_a_generator_that_ends_without_stats_still_ends_the_stream(runner: EngineRunner) -> None:
    def short(*args: Any, **kwargs: Any) -> Iterator[TokenEvent]:
        yield TokenEvent("a")

    runner._generate_fn = short
    stream = runner.submit([1], PARAMS)
    assert stream.text() == "a"
    assert stream.stats is None


def test_submit_without_a_model() -> None:
    with EngineRunner(Script()) as engine:
        assert engine.info is None
        assert engine.describe() is None
        with pytest.raises(InfluenceError, match="no model is loaded"):
            engine.submit([1], PARAMS).text()
        with pytest.raises(InfluenceError, match="no model is loaded"):
            engine.apply_chat_template([ChatMessage("user", "hi")])


# ------------------------------------------------------------------------------------------ loading


def test_loading_another_model_releases_the_first(runner: EngineRunner, tmp_path: Path) -> None:
    first_ref = runner.with_model(lambda loaded: weakref.ref(loaded.model))
    first_info = runner.info
    assert first_info is not None
    assert runner.describe() == f"Loaded tiny-llama on cpu (float32; native runtime) in {first_info.load_s:.1f} s"

    other = _local(build_tiny_llama(tmp_path / "other", seed=1))
    info = runner.load(other, LoadOptions(dtype="float32"))

    gc.collect()
    assert first_ref() is None
    assert info.name == "other"
    assert runner.info == info


def test_loading_the_same_model_again_is_a_no_op(tiny_llama: Path) -> None:
    from influence_tui.core.engine.loader import load_model

    loads: list[str] = []

    def counting_load(local_model: LocalModel, **kwargs: Any) -> Any:
        loads.append(kwargs["dtype"])
        return load_model(local_model, **kwargs)

    with EngineRunner(load_fn=counting_load) as engine:
        local = _local(tiny_llama)
        info = engine.load(local, LoadOptions(device="cpu", dtype="float32"))
        assert engine.load(local, LoadOptions(device="auto", dtype="float32")) is info  # auto is cpu here
        assert loads == ["float32"]
        engine.load(local, LoadOptions(device="cpu", dtype="bfloat16"))  # another dtype: loaded again
        assert loads == ["float32", "bfloat16"]


def test_a_failed_load_leaves_nothing_loaded(runner: EngineRunner, tmp_path: Path) -> None:
    from influence_tui.core.errors import ModelFormatError

    broken = build_tiny_llama(tmp_path / "broken")
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelFormatError, match="no tokenizer"):
        runner.load(_local(broken))
    assert runner.info is None


def test_unload(runner: EngineRunner) -> None:
    ref = runner.with_model(lambda loaded: weakref.ref(loaded.model))
    runner.unload()
    gc.collect()
    assert ref() is None
    assert runner.info is None
    with pytest.raises(InfluenceError, match="no model is loaded"):
        runner.with_model(lambda loaded: loaded)


# ------------------------------------------------------------------------------------------ prompts


def test_chat_template_and_token_counts(runner: EngineRunner, tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    messages = [ChatMessage("system", "be brief"), {"role": "user", "content": "Hello, how are you today?"}]
    ids = runner.apply_chat_template(messages)
    expected = tokenizer.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hello, how are you today?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert ids == tokenizer.encode(expected, add_special_tokens=False)
    assert runner.decode(ids, skip_special_tokens=False) == expected
    assert runner.count_tokens("Hello, how are you today?") == len(runner.encode("Hello, how are you today?")) > 0
    without = runner.apply_chat_template(messages, add_generation_prompt=False)
    assert ids[: len(without)] == without
    assert len(ids) > len(without)


def test_prompt_building_does_not_wait_for_a_generation(runner: EngineRunner) -> None:
    script = Script(tokens=1)
    script.release.clear()  # the engine thread is busy until released
    _with_script(runner, script)
    stream = runner.submit([1], PARAMS)
    assert script.started.wait(5)
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(runner.count_tokens("Hello")))
    worker.start()
    worker.join(5)
    assert result and result[0] > 0
    script.release.set()
    assert stream.text() == "1:0 "


# ------------------------------------------------------------------------------------------ closing


def test_close_cancels_the_running_request_and_fails_the_queued_ones(tiny_llama: Path) -> None:
    script = Script(tokens=-1, delay=0.001)
    engine = EngineRunner(script)
    engine.load(_local(tiny_llama))
    running = engine.submit([1], PARAMS)
    queued = engine.submit([2], PARAMS)
    next(running)
    engine.close()
    assert engine.closed
    events = list(running)
    assert events[-1].stats is not None
    assert events[-1].stats.finish_reason == "cancelled"
    with pytest.raises(InfluenceError, match="closed before this request ran"):
        queued.text()
    with pytest.raises(InfluenceError, match="the engine is closed"):
        engine.submit([3], PARAMS)
    assert not engine._thread.is_alive()
    assert engine.info is None
    engine.close()  # twice is fine


def test_importing_the_runner_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, influence_tui.core.engine.runner; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ------------------------------------------------------------------------------------------ real generation


def _real_generate_available() -> bool:
    try:
        from influence_tui.core.engine.generate import generate_stream  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _real_generate_available(), reason="generate.py is not in the tree yet")
def test_real_generation_with_the_tiny_model(tiny_llama: Path) -> None:
    with EngineRunner() as engine:
        engine.load(_local(tiny_llama), LoadOptions(dtype="float32"))
        prompt = engine.apply_chat_template([ChatMessage("user", "Hello!")])
        first = engine.submit(prompt, PARAMS)
        events = list(first)
        assert isinstance(first, TokenStream)
        stats = events[-1].stats
        assert stats is not None
        assert stats.prompt_tokens == len(prompt)
        assert 1 <= stats.generated_tokens <= PARAMS.max_tokens
        assert stats.finish_reason in ("stop", "length")
        assert all(e.stats is None for e in events[:-1])
        # Greedy decoding is deterministic, and two requests do not disturb each other.
        second = engine.submit(prompt, PARAMS)
        assert second.text() == "".join(e.text for e in events)


@pytest.mark.slow
@pytest.mark.skipif(not _real_generate_available(), reason="generate.py is not in the tree yet")
def test_real_chat_with_the_demo_model(demo_loaded: Any) -> None:
    # A runner over the session's demo model: its own LoadedModel sharing the weights, so closing the runner
    # unloads only that handle.
    with EngineRunner(load_fn=lambda local_model, **kwargs: replace(demo_loaded)) as engine:
        engine.load(demo_loaded.local_model, LoadOptions(device="cpu"))
        prompt = engine.apply_chat_template([ChatMessage("user", "What is the capital of France?")])
        stream = engine.submit(prompt, SamplingParams(temperature=0.0, max_tokens=24))
        text = stream.text()
    assert "Paris" in text
    assert stream.stats is not None
    assert stream.stats.generated_tokens > 0
    assert demo_loaded.loaded
