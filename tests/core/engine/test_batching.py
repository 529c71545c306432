"""Many requests at once on the engine thread: the batched decode step, the scheduler, and the same answers.

``CausalLM.decode_batch`` must give each row exactly the logits the row's sequence gets alone (packed weights:
bit for bit), and the runner with ``max_batch`` above 1 must give every request the text it gets alone (greedy,
and seeded sampling), with requests joining, leaving and being cancelled around it. The queue limit and the
prefill chunks are checked through the runner too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from influence_tui.core.engine.runner import EngineRunner, TokenStream
from influence_tui.core.errors import EngineBusyError
from influence_tui.core.library import inspect_path
from influence_tui.core.types import LoadOptions, LocalModel, SamplingParams

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=24)
SEEDED = SamplingParams(temperature=0.9, top_p=0.95, top_k=40, repeat_penalty=1.1, max_tokens=24, seed=1234)
PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "Dear Sir or Madam,",
    "In 1492, Columbus",
    "Roses are red,",
    "Water boils at",
    "My favourite food is",
    "Q: What is two plus two?\nA:",
    "Local models are",
]


def _local(path: Path) -> LocalModel:
    (model,) = inspect_path(path)
    return model


@pytest.fixture(scope="module")
def packed_llama(tiny_llama_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The tiny llama with int8 packed weights (the kernels' integer products), loaded once."""
    from influence_tui.core.engine.loader import load_model

    cache = tmp_path_factory.mktemp("batching-cache")
    loaded = load_model(_local(tiny_llama_template), device="cpu", dtype="float32", quantize="int8", cache_dir=cache)
    yield loaded
    loaded.unload()


def _runner(loaded: Any, **kwargs: Any) -> EngineRunner:
    """A runner over ``loaded`` (a handle of its own, sharing the weights, with an empty prompt cache)."""
    from influence_tui.core.engine.kvcache import PromptCache

    engine = EngineRunner(load_fn=lambda local_model, **_: replace(loaded, prompt_cache=PromptCache()), **kwargs)
    engine.load(loaded.local_model, LoadOptions(device="cpu"))
    return engine


def _clear_prompt_cache(loaded: Any) -> None:
    loaded.prompt_cache.clear()


def _prompt(engine: EngineRunner, text: str) -> list[int]:
    return engine.encode(text)


# ------------------------------------------------------------------------------------------ decode_batch


def _alone(model: Any, prompt: list[int], steps: list[int]) -> list[torch.Tensor]:
    """Logits of each step when the sequence runs by itself (prefill, then one token per call)."""
    cache = model.new_cache()
    with torch.inference_mode():
        model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        out = []
        for i, token in enumerate(steps):
            position = torch.tensor([[len(prompt) + i]])
            step = model(
                input_ids=torch.tensor([[token]]),
                past_key_values=cache,
                position_ids=position,
                use_cache=True,
                logits_to_keep=1,
            )
            out.append(step.logits[0, -1].clone())
    return out


@pytest.mark.parametrize("packed", [True, False])
def test_decode_batch_rows_equal_each_sequence_alone(
    packed: bool, packed_llama: Any, tiny_llama_template: Path, tmp_path: Path
) -> None:
    from influence_tui.core.engine.loader import load_model

    if packed:
        model = packed_llama.model
    else:
        model = load_model(_local(tiny_llama_template), device="cpu", dtype="float32", cache_dir=tmp_path).model
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (3, 17, 9, 30, 1)]
    steps = [torch.randint(0, vocab, (4,), generator=gen).tolist() for _ in prompts]
    expected = [_alone(model, p, s) for p, s in zip(prompts, steps, strict=True)]

    caches = [model.new_cache() for _ in prompts]
    with torch.inference_mode():
        for prompt, cache in zip(prompts, caches, strict=True):
            model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        for i in range(4):
            tokens = torch.tensor([s[i] for s in steps])
            positions = torch.tensor([len(p) + i for p in prompts])
            logits = model.decode_batch(tokens, caches, positions)
            assert logits.shape == (len(prompts), vocab)
            for row, want in enumerate(expected):
                if packed:  # the kernels compute each row by itself: the same bits
                    assert torch.equal(logits[row], want[i]), (row, i)
                else:  # a float GEMM may round a row differently in a batch than alone
                    torch.testing.assert_close(logits[row], want[i], rtol=1e-4, atol=1e-4)
    assert [c.get_seq_length() for c in caches] == [len(p) + 4 for p in prompts]


@pytest.mark.slow
def test_decode_batch_rows_equal_the_demo_alone_bit_for_bit(demo_loaded: Any) -> None:
    """The demo's caches are long enough here for attention to take SDPA (not the small decode kernel)."""
    model = demo_loaded.model
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 49152, (n,), generator=gen).tolist() for n in (40, 75, 33, 120)]
    steps = [torch.randint(0, 49152, (3,), generator=gen).tolist() for _ in prompts]
    expected = [_alone(model, p, s) for p, s in zip(prompts, steps, strict=True)]
    caches = [model.new_cache() for _ in prompts]
    with torch.inference_mode():
        for prompt, cache in zip(prompts, caches, strict=True):
            model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        for i in range(3):
            tokens = torch.tensor([s[i] for s in steps])
            positions = torch.tensor([len(p) + i for p in prompts])
            logits = model.decode_batch(tokens, caches, positions)
            for row, want in enumerate(expected):
                assert torch.equal(logits[row], want[i]), (row, i)


def test_rows_over_long_and_short_caches_keep_their_bits(packed_llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row whose cache is long attends by SDPA, as it does alone; the others share one kernel call."""
    from influence_tui.core.engine.models import attention

    model = packed_llama.model
    layer = model.layers[0].self_attn
    monkeypatch.setattr(attention, "LONG_ATTENTION", layer.heads * 20 * layer.head_dim)  # from 20 positions on
    gen = torch.Generator().manual_seed(3)
    vocab = model.config.vocab_size
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (4, 25, 12, 40)]
    steps = [torch.randint(0, vocab, (3,), generator=gen).tolist() for _ in prompts]
    expected = [_alone(model, p, s) for p, s in zip(prompts, steps, strict=True)]
    caches = [model.new_cache() for _ in prompts]
    with torch.inference_mode():
        for prompt, cache in zip(prompts, caches, strict=True):
            model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        for i in range(3):
            tokens = torch.tensor([s[i] for s in steps])
            positions = torch.tensor([len(p) + i for p in prompts])
            logits = model.decode_batch(tokens, caches, positions)
            for row, want in enumerate(expected):
                assert torch.equal(logits[row], want[i]), (row, i)


def test_decode_batch_checks_its_arguments(packed_llama: Any) -> None:
    model = packed_llama.model
    with pytest.raises(ValueError, match="2 tokens need 2 caches"):
        model.decode_batch(torch.tensor([1, 2]), [model.new_cache()], torch.tensor([0, 0]))


# ------------------------------------------------------------------------------------------ the scheduler


def _solo(loaded: Any, prompts: list[str], params: SamplingParams) -> list[str]:
    with _runner(loaded) as engine:
        return [engine.submit(_prompt(engine, p), params).text() for p in prompts]


def _stream_all(
    engine: EngineRunner, prompts: list[str], params: SamplingParams, *, stagger: float = 0.0
) -> tuple[list[str], list[TokenStream]]:
    """Submit every prompt (``stagger`` seconds apart, each read on its own thread) and return the texts."""
    texts = [""] * len(prompts)
    streams: list[TokenStream] = []

    def read(i: int, stream: TokenStream) -> None:
        texts[i] = stream.text()

    threads = []
    for i, prompt in enumerate(prompts):
        stream = engine.submit(_prompt(engine, prompt), params)
        streams.append(stream)
        thread = threading.Thread(target=read, args=(i, stream))
        thread.start()
        threads.append(thread)
        if stagger:
            time.sleep(stagger)
    for thread in threads:
        thread.join(60)
    return texts, streams


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_a_batch_gives_every_request_its_solo_text(packed_llama: Any, params: SamplingParams) -> None:
    alone = _solo(packed_llama, PROMPTS, params)
    assert len(set(alone)) > 5  # different prompts, different texts: a mix-up would show
    with _runner(packed_llama, max_batch=8) as engine:
        together, streams = _stream_all(engine, PROMPTS, params, stagger=0.002)  # joining while others decode
    assert together == alone
    assert all(s.stats is not None and s.stats.finish_reason in ("stop", "length") for s in streams)


def test_requests_leave_and_join_and_the_others_keep_their_text(packed_llama: Any) -> None:
    long = replace(GREEDY, max_tokens=60)
    alone = _solo(packed_llama, PROMPTS[:6], long)
    with _runner(packed_llama, max_batch=4) as engine:
        streams = [engine.submit(_prompt(engine, p), long) for p in PROMPTS[:6]]  # two wait for a slot
        leaving = engine.submit(_prompt(engine, "Tell me a long story about cats"), replace(long, max_tokens=200))
        next(leaving)
        leaving.cancel()  # it leaves at the next step; the others are not disturbed
        texts = [s.text() for s in streams]
        rest = list(leaving)
    assert texts == alone
    assert rest[-1].stats is not None and rest[-1].stats.finish_reason == "cancelled"


def test_a_cancelled_request_frees_its_slot_at_once(packed_llama: Any) -> None:
    forever = replace(GREEDY, max_tokens=200)
    with _runner(packed_llama, max_batch=1) as engine:
        first = engine.submit(_prompt(engine, PROMPTS[0]), forever)
        waiting = engine.submit(_prompt(engine, PROMPTS[1]), GREEDY)
        next(first)
        first.cancel()
        assert waiting.text()  # starts as soon as the cancelled one has left
        events = list(first)
    assert events[-1].stats is not None and events[-1].stats.finish_reason == "cancelled"
    assert events[-1].stats.generated_tokens < 200


def test_beyond_the_queue_limit_submit_says_busy(packed_llama: Any) -> None:
    with _runner(packed_llama, max_batch=1, queue_limit=2) as engine:
        release = threading.Event()
        holder = threading.Thread(target=lambda: engine.run(lambda: release.wait(30)))
        holder.start()  # the engine thread is busy: nothing starts
        time.sleep(0.05)
        queued = [engine.submit(_prompt(engine, p), GREEDY) for p in PROMPTS[:2]]
        with pytest.raises(EngineBusyError, match="2 are waiting") as caught:
            engine.submit(_prompt(engine, PROMPTS[2]), GREEDY)
        assert caught.value.retry_after >= 1
        assert engine.load_report() == {"running": 0, "waiting": 2, "max_batch": 1}
        queued[0].cancel()  # a cancelled waiting request leaves the queue without running
        release.set()
        holder.join(10)
        assert queued[1].text()
        (final,) = list(queued[0])
    assert final.stats is not None and final.stats.finish_reason == "cancelled"


def test_long_prompts_are_prefilled_in_chunks_between_decode_steps(
    packed_llama: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[tuple[int, bool]] = []
    original = TokenStream._put

    def put(self: TokenStream, item: Any) -> None:
        log.append((id(self), getattr(item, "stats", None) is not None))
        original(self, item)

    monkeypatch.setattr(TokenStream, "_put", put)
    long_prompt = " ".join(PROMPTS)
    forever = replace(GREEDY, max_tokens=200)
    with _runner(packed_llama, max_batch=2, prefill_chunk=16) as engine:
        ids = _prompt(engine, long_prompt)
        assert len(ids) > 6 * 16
        short = engine.submit(_prompt(engine, PROMPTS[0]), forever)
        next(short)
        before = sum(1 for who, _ in list(log) if who == id(short))
        chunked = engine.submit(ids, replace(GREEDY, max_tokens=4))
        chunked.text()
        short.cancel()
        short.text()
    first_of_chunked = next(i for i, (who, _) in enumerate(log) if who == id(chunked))
    during = sum(1 for who, _ in log[:first_of_chunked] if who == id(short)) - before
    # One chunk of 16 prompt tokens a round, and one token of the short request each round: it keeps streaming.
    assert during >= len(ids) // 16 - 1, during
    assert chunked.stats is not None and chunked.stats.prompt_tokens == len(ids)


def test_a_chunked_prompt_gives_the_same_text_solo_and_batched(packed_llama: Any) -> None:
    prompt = " ".join(PROMPTS)
    with _runner(packed_llama, prefill_chunk=8) as engine:
        alone = engine.submit(_prompt(engine, prompt), GREEDY).text()
    with _runner(packed_llama, max_batch=4, prefill_chunk=8) as engine:
        texts, _ = _stream_all(engine, [prompt, *PROMPTS[:3]], GREEDY)
    assert texts[0] == alone


# ------------------------------------------------------------------------------------------ the demo model


@pytest.mark.slow
@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_the_demo_gives_the_same_answers_in_a_batch_of_eight(demo_loaded: Any, params: SamplingParams) -> None:
    from influence_tui.core.types import ChatMessage

    questions = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "Name three primary colours.",
        "What is 12 times 12?",
        "Say hello in Spanish.",
        "What is a prime number?",
        "Give me a word that rhymes with cat.",
        "Who wrote Hamlet?",
        "What colour is the sky?",
        "Tell me a fun fact about owls.",
    ]
    params = replace(params, max_tokens=32)

    def chat(engine: EngineRunner, question: str) -> list[int]:
        return engine.apply_chat_template([ChatMessage("user", question)])

    with _runner(demo_loaded) as engine:
        alone = []
        for question in questions:
            engine.with_model(_clear_prompt_cache)  # each one cold, as in a fresh server
            alone.append(engine.submit(chat(engine, question), params).text())
    assert "Paris" in alone[0] or params.temperature > 0  # a sampled answer may name it otherwise
    with _runner(demo_loaded, max_batch=8) as engine:
        texts = [""] * len(questions)
        streams = []
        for i, question in enumerate(questions):
            engine.with_model(_clear_prompt_cache)
            stream = engine.submit(chat(engine, question), params)
            streams.append(stream)
            threading.Thread(target=lambda i=i, s=stream: texts.__setitem__(i, s.text())).start()
            time.sleep(0.05)  # the later ones join while the first ones decode
        deadline = time.monotonic() + 120
        while not all(s.finished for s in streams) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert texts == alone
