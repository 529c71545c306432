"""The KV caches and the prompt cache across requests: crops and prefix copies, which cache a model gets, the prompt cache's LRU bound in MiB; and through ``generate_stream``,
the engine runner and the server, a follow-up request reuses the cached prefix and answers exactly as a cold
one (greedy), also after a cancelled, abandoned or failed request."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers.cache_utils import DynamicCache

from influence_tui.core.engine.generate import generate_stream
from influence_tui.core.engine.kvcache import CachedSequence, PromptCache, common_prefix, new_cache
from influence_tui.core.engine.models.cache import KVCache
from influence_tui.core.types import ChatMessage, GenerationStats, LoadOptions, SamplingParams, TokenEvent

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=12)


# ------------------------------------------------------------------------------------------ caches


@pytest.fixture(scope="module")
def long_llama() -> Any:
    """A random 2-layer llama with room for 1024 positions (the tiny llama folder holds 256)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _random_ids(n: int, seed: int = 0, vocab: int = 128) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _run(model: Any, cache: Any, ids: Sequence[int], start: int) -> torch.Tensor:
    """Feed ``ids`` at positions ``start...`` in one call: logits ``[len(ids), vocab]``."""
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([list(ids)]),
            past_key_values=cache,
            position_ids=torch.arange(start, start + len(ids)).unsqueeze(0),
            use_cache=True,
        )
    return out.logits[0]  # type: ignore[no-any-return]


def _decode(model: Any, cache: Any, ids: Sequence[int], start: int) -> torch.Tensor:
    """Feed ``ids`` one position per call, as decoding does."""
    return torch.cat([_run(model, cache, [token], start + i) for i, token in enumerate(ids)])


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return float((a - b).abs().max()) <= rel * max(1.0, float(b.abs().max()))


def test_a_transformers_cache_is_reused_only_when_nothing_needs_cropping(long_llama: Any) -> None:
    """What ``DynamicCache.crop``'s argument means changed between transformers versions: never call it."""
    ids = _random_ids(60)
    cache = PromptCache()
    entry, reused = cache.take(long_llama, ids[:40])
    assert reused == 0 and type(entry.cache) is DynamicCache
    _run(long_llama, entry.cache, ids[:40], 0)
    entry.tokens = ids[:40]
    cache.give_back(entry)
    again, reused = cache.take(long_llama, ids[:50])  # continues all 40: reused as it is
    assert again is entry and reused == 40
    continued = _run(long_llama, again.cache, ids[40:50], 40)
    assert _close(continued, _run(long_llama, new_cache(long_llama), ids[:50], 0)[40:], 1e-4)
    again.tokens = ids[:50]
    cache.give_back(again)
    other, reused = cache.take(long_llama, [*ids[:30], 7, 7])  # would need a crop to 30: a fresh cache
    assert reused == 0 and other is not again and other.cache.get_seq_length() == 0


def test_new_cache_is_the_models_own_or_transformers() -> None:
    native = SimpleNamespace(new_cache=lambda: KVCache([None, 4]))
    assert isinstance(new_cache(native), KVCache)
    from transformers import MistralConfig

    sliding = MistralConfig(num_hidden_layers=2, sliding_window=4096)
    assert type(new_cache(SimpleNamespace(config=sliding))) is DynamicCache
    assert type(new_cache(object())) is DynamicCache  # no config: transformers' own


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0


# ------------------------------------------------------------------------------------------ PromptCache

PLAIN_MODEL = SimpleNamespace(new_cache=lambda: KVCache([None]))  # a model with its own (native) cache


def _serve(cache: PromptCache, prompt: list[int], extra: int = 0) -> int:
    """One request: take a cache for ``prompt``, fill it with the prompt (and ``extra`` generated tokens) as
    the generation loop does, give it back; the number of prompt tokens found cached."""
    entry, reused = cache.take(PLAIN_MODEL, prompt)
    assert entry.cache.get_seq_length() == reused == cache.last_reused
    assert entry.tokens == prompt[:reused]
    generated = [1000 + i for i in range(extra)]
    new = len(prompt) - reused + extra
    if new:
        entry.cache.update(torch.zeros(1, 1, new, 2), torch.zeros(1, 1, new, 2), 0)
    entry.tokens = [*prompt, *generated]
    cache.give_back(entry)
    return reused


def test_a_prompt_that_continues_a_cached_sequence_reuses_it() -> None:
    cache = PromptCache()
    assert _serve(cache, [1, 2, 3, 4], extra=2) == 0
    assert len(cache) == 1
    assert _serve(cache, [1, 2, 3, 4, 1000, 1001, 7, 8]) == 6  # prompt and reply of the first request
    assert len(cache) == 1  # the longer sequence replaces the one it continues
    assert _serve(cache, [1, 2, 3, 4, 1000, 1001, 7, 8]) == 7  # the same prompt: its last token runs again
    assert _serve(cache, [1, 2, 3, 4, 1000, 1001, 5]) == 6  # most of it shared: cropped to it (a regenerated reply)
    assert len(cache) == 1
    assert _serve(cache, [1, 2, 9]) == 2  # a short shared prefix (a system prompt): a copy of it...
    assert len(cache) == 2
    assert _serve(cache, [1, 2, 3, 4, 1000, 1001, 5, 6]) == 7  # ... and the other conversation keeps its own
    assert _serve(cache, [5, 6, 7]) == 0
    assert len(cache) == 3
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0 and _serve(cache, [1, 2, 9]) == 0


ENTRY = KVCache([None]).nbytes or 2 * 256 * 2 * 4  # one entry of PLAIN_MODEL: one chunk of keys and values
"""Bytes of a PLAIN_MODEL entry under 256 positions (its buffers grow by 256)."""


def _mib(entries: float) -> float:
    return entries * ENTRY / (1024 * 1024)


def test_the_least_recently_used_entry_goes_first_past_the_bound() -> None:
    cache = PromptCache(max_mib=_mib(2))
    a, b, c, d = [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3], [4, 4, 4, 4]
    for prompt in (a, b, c):  # a is dropped for c
        assert _serve(cache, prompt) == 0
    assert len(cache) == 2 and cache.nbytes == 2 * ENTRY
    assert _serve(cache, [*b, 5]) == 4  # b is now the most recently used
    assert _serve(cache, d) == 0  # so c is dropped for d
    assert _serve(cache, [*a, 5]) == 0
    assert _serve(cache, [*c, 5]) == 0
    assert len(cache) == 2
    assert [e.tokens[0] for e in cache.entries] == [1, 3]
    assert _serve(cache, list(range(10, 310))) == 0  # 300 positions: two chunks, the whole bound
    assert len(cache) == 1 and cache.nbytes == 2 * ENTRY
    cache.resize(_mib(1))  # a smaller bound drops what no longer fits at once
    assert len(cache) == 0 and cache.nbytes == 0


def test_no_room_keeps_nothing_and_an_entry_out_of_step_is_dropped() -> None:
    none = PromptCache(max_mib=0)
    assert _serve(none, [1, 2, 3]) == 0 and len(none) == 0
    assert _serve(none, [1, 2, 3, 4]) == 0
    cache = PromptCache()
    entry, _ = cache.take(PLAIN_MODEL, [1, 2, 3])
    entry.cache.update(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2), 0)  # one position more than tokens
    entry.tokens = [1, 2, 3]
    cache.give_back(entry)
    assert len(cache) == 0
    other = PromptCache()
    other.give_back(CachedSequence(SimpleNamespace(get_seq_length=lambda: 2), [1, 2]))  # not a cache it can crop
    assert len(other) == 1
    entry, reused = other.take(PLAIN_MODEL, [1, 9, 3])  # a crop to 1 would be needed: a fresh cache instead
    assert reused == 0 and isinstance(entry.cache, KVCache)


def test_a_prefix_copy_holds_the_same_keys_and_values_and_grows_on_its_own() -> None:
    cache = KVCache([None, None])
    for layer in range(2):
        cache.update(torch.arange(40.0).view(1, 1, 20, 2), torch.arange(40.0).view(1, 1, 20, 2) + layer, layer)
    part = cache.prefix_copy(5)
    assert part.get_seq_length() == 5 and cache.get_seq_length() == 20
    for mine, theirs in zip(part.layers, cache.layers, strict=True):
        assert mine.keys is not None and mine.values is not None
        assert theirs.keys is not None and theirs.values is not None
        assert torch.equal(mine.keys, theirs.keys[:, :, :5]) and torch.equal(mine.values, theirs.values[:, :, :5])
    part.update(torch.full((1, 1, 1, 2), -1.0), torch.full((1, 1, 1, 2), -1.0), 0)
    original = cache.layers[0].keys
    assert original is not None and float(original[0, 0, 5, 0]) == 10.0  # the original is untouched
    assert part.get_seq_length(0) == 6
    trimmed = KVCache([4], trim_sliding=True)
    trimmed.update(torch.zeros(1, 1, 300, 2), torch.zeros(1, 1, 300, 2), 0)
    trimmed.update(torch.zeros(1, 1, 300, 2), torch.zeros(1, 1, 300, 2), 0)  # drops all but the last window
    with pytest.raises(ValueError, match="cannot copy"):
        trimmed.prefix_copy(10)


# ------------------------------------------------------------------------------------------ generate_stream


@pytest.fixture(scope="module")
def tiny(tiny_llama_template: Path) -> tuple[Any, Any]:
    """The tiny llama on the native runtime (whose cache the prompt cache crops), transformers' tokenizer."""
    from transformers import AutoTokenizer

    from influence_tui.core.engine.weights import load_native

    return load_native(tiny_llama_template, gguf=False), AutoTokenizer.from_pretrained(tiny_llama_template)


def _generate(
    tiny: tuple[Any, Any],
    prompt: list[int],
    prompt_cache: PromptCache | None = None,
    params: SamplingParams = GREEDY,
    model: Any = None,
) -> tuple[list[int], GenerationStats]:
    base, tokenizer = tiny
    events = list(
        generate_stream(
            model if model is not None else base,
            tokenizer,
            prompt,
            params,
            eos_token_ids=[tokenizer.convert_tokens_to_ids("<|im_end|>")],
            context_length=256,
            prompt_cache=prompt_cache,
        )
    )
    stats = events[-1].stats
    assert stats is not None
    return [e.token_id for e in events if e.token_id is not None], stats


def _chat(tokenizer: Any, *turns: str) -> list[int]:
    roles = ["user", "assistant"]
    messages = [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def _in_cache(prompt: list[int], emitted: list[int], finish: str) -> list[int]:
    """The tokens a finished request leaves in its cache: the prompt and every emitted token the model was run
    on (the last sampled token is run only when a next step follows: after an EOS it was)."""
    return [*prompt, *(emitted if finish == "stop" else emitted[:-1])]


def _follow_up(tokenizer: Any) -> list[int]:
    return list(tokenizer.encode("<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n"))


def test_a_follow_up_reuses_the_cache_and_answers_as_a_cold_request(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    cache = PromptCache()
    first = _chat(tokenizer, "Hello, how are you today?")
    emitted, stats = _generate(tiny, first, cache)
    assert stats.cached_prompt_tokens == 0 and cache.last_reused == 0
    assert emitted
    second = [*first, *emitted, *_follow_up(tokenizer)]
    warm, warm_stats = _generate(tiny, second, cache)
    cold, cold_stats = _generate(tiny, second)
    assert warm == cold
    expected = len(_in_cache(first, emitted, stats.finish_reason))
    assert warm_stats.cached_prompt_tokens == cache.last_reused == expected
    assert expected > len(first)
    assert cold_stats.cached_prompt_tokens == 0
    assert warm_stats.prompt_tokens == cold_stats.prompt_tokens == len(second)
    assert warm_stats.generated_tokens == cold_stats.generated_tokens
    # the very same prompt again: everything but its last token is cached
    again, again_stats = _generate(tiny, second, cache)
    assert again == cold and again_stats.cached_prompt_tokens == len(second) - 1


def test_a_different_prompt_reuses_only_the_common_prefix(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    cache = PromptCache()
    first = _chat(tokenizer, "The capital of France is Paris.")
    _generate(tiny, first, cache)
    other = _chat(tokenizer, "def add(a, b): return a + b")
    warm, stats = _generate(tiny, other, cache)
    assert stats.cached_prompt_tokens == common_prefix(first, other) > 0  # "<|im_start|>user\n"
    assert warm == _generate(tiny, other)[0]
    raw = tokenizer.encode("Local models run on your own machine.")
    assert raw[0] != other[0]
    warm_raw, raw_stats = _generate(tiny, raw, cache)
    assert raw_stats.cached_prompt_tokens == 0
    assert warm_raw == _generate(tiny, raw)[0]


def test_the_bound_through_generate(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    cache = PromptCache()
    prompts = [tokenizer.encode(text) for text in ("Hello there", "café naïve", "def add(a, b):")]
    assert len({p[0] for p in prompts}) == 3
    runs = [_generate(tiny, prompts[0], cache)]
    one = cache.entries[0].nbytes
    assert one > 0
    cache.resize(2.5 * one / (1024 * 1024))  # room for two of these
    runs += [_generate(tiny, p, cache) for p in prompts[1:]]
    assert len(cache) == 2 and cache.nbytes == 2 * one
    follow = [[*p, *ids, *_follow_up(tokenizer)] for p, (ids, _) in zip(prompts, runs, strict=True)]
    assert _generate(tiny, follow[0], cache)[1].cached_prompt_tokens == 0  # dropped for the third
    assert _generate(tiny, follow[2], cache)[1].cached_prompt_tokens > len(prompts[2])


def test_two_conversations_alternating_both_skip_their_history(tiny: tuple[Any, Any]) -> None:
    """A and B share the start of the chat template; each next turn still finds its own whole history."""
    _, tokenizer = tiny
    cache = PromptCache()
    a = _chat(tokenizer, "Tell me a long story about the sea and the ships that sail on it.")
    b = _chat(tokenizer, "Tell me how to bake bread at home with flour, water, salt and yeast.")
    shared = common_prefix(a, b)
    assert shared > 0
    a_ids, a_stats = _generate(tiny, a, cache)
    b_ids, b_stats = _generate(tiny, b, cache)
    assert a_stats.cached_prompt_tokens == 0 and b_stats.cached_prompt_tokens == shared
    for turn in range(2):
        a = [*a, *a_ids, *_follow_up(tokenizer)]
        a_ids, a_stats = _generate(tiny, a, cache)
        b = [*b, *b_ids, *_follow_up(tokenizer)]
        b_ids, b_stats = _generate(tiny, b, cache)
        assert a_stats.cached_prompt_tokens >= len(a) - len(_follow_up(tokenizer)) - 1, turn
        assert b_stats.cached_prompt_tokens >= len(b) - len(_follow_up(tokenizer)) - 1, turn
        assert a_ids == _generate(tiny, a)[0] and b_ids == _generate(tiny, b)[0]  # as cold requests answer
    assert len(cache) == 2  # one entry per conversation: each turn's replaced the one it continues


@pytest.mark.parametrize("how", ["stop_event", "close", "del"])
def test_a_cancelled_or_abandoned_request_leaves_a_usable_cache(tiny: tuple[Any, Any], how: str) -> None:
    model, tokenizer = tiny
    cache = PromptCache()
    first = _chat(tokenizer, "Tell me about local models.")
    stop = threading.Event()
    params = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=40)
    stream: Iterator[TokenEvent] = generate_stream(
        model, tokenizer, first, params, eos_token_ids=[], context_length=256, stop_event=stop, prompt_cache=cache
    )
    emitted = [next(stream).token_id for _ in range(4)]
    if how == "stop_event":
        stop.set()
        rest = list(stream)
        assert rest[-1].stats is not None and rest[-1].stats.finish_reason == "cancelled"
        emitted += [e.token_id for e in rest if e.token_id is not None]
    elif how == "close":
        stream.close()  # type: ignore[attr-defined]
    else:
        del stream
    assert len(cache) == 1  # handed back, in step with its tokens
    tokens = [t for t in emitted if t is not None]
    assert len(tokens) in (4, 5)
    second = [*first, *tokens, *_follow_up(tokenizer)]
    warm, stats = _generate(tiny, second, cache)
    assert stats.cached_prompt_tokens == len(first) + len(tokens) - 1
    assert warm == _generate(tiny, second)[0]


class FailingModel(torch.nn.Module):
    """The tiny model that raises on one call, before or after running it (the cache then holds a position its
    token list does not)."""

    def __init__(self, model: Any, fail_at: int, after: bool) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.new_cache = model.new_cache
        self.fail_at = fail_at
        self.after = after
        self.calls = 0

    def forward(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_at and not self.after:
            raise RuntimeError("boom before")
        out = self.model(**kwargs)
        if self.calls == self.fail_at:
            raise RuntimeError("boom after")
        return out


@pytest.mark.parametrize("after", [False, True])
def test_an_error_mid_request_never_leaves_a_wrong_cache(tiny: tuple[Any, Any], after: bool) -> None:
    model, tokenizer = tiny
    cache = PromptCache()
    first = _chat(tokenizer, "Hello, how are you today?")
    failing = FailingModel(model, fail_at=4, after=after)
    with pytest.raises(RuntimeError, match="boom"):
        _generate(tiny, first, cache, model=failing)
    # before the call the cache and its tokens agree and are kept; after it they disagree and are dropped
    assert len(cache) == (0 if after else 1)
    second = [*first, *_generate(tiny, first)[0][:2], *_follow_up(tokenizer)]
    warm, stats = _generate(tiny, second, cache)
    assert warm == _generate(tiny, second)[0]
    assert stats.cached_prompt_tokens == (0 if after else len(first) + 2)


# ------------------------------------------------------------------------------------------ runner and server


def _prompt_cache(loaded: Any) -> PromptCache:
    cache = loaded.prompt_cache
    assert isinstance(cache, PromptCache)
    return cache


def _last_reused(loaded: Any) -> int:
    return _prompt_cache(loaded).last_reused


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_two_chat_turns_through_the_runner(tiny_llama: Path, tmp_path: Path, quantize: str) -> None:
    from influence_tui.core.engine.runner import EngineRunner
    from influence_tui.core.library import inspect_path

    (local,) = inspect_path(tiny_llama)
    params = SamplingParams(temperature=0.0, max_tokens=10)
    with EngineRunner() as engine:
        engine.load(local, LoadOptions(device="cpu", dtype="float32", quantize=quantize, cache_dir=tmp_path / "cache"))
        turn = [ChatMessage("user", "Hello, how are you today?")]
        first_prompt = engine.apply_chat_template(turn)
        first = engine.submit(first_prompt, params)
        reply = first.text()
        assert first.stats is not None and first.stats.cached_prompt_tokens == 0
        turn += [ChatMessage("assistant", reply), ChatMessage("user", "And then?")]
        prompt = engine.apply_chat_template(turn)
        second = engine.submit(prompt, params)
        warm = second.text()
        assert second.stats is not None
        assert second.stats.cached_prompt_tokens >= len(first_prompt)
        assert engine.with_model(_last_reused) == second.stats.cached_prompt_tokens
        engine.with_model(lambda m: _prompt_cache(m).clear())
        cold = engine.submit(prompt, params)
        assert cold.text() == warm
        assert cold.stats is not None and cold.stats.cached_prompt_tokens == 0


@pytest.mark.slow
def test_a_continued_conversation_through_the_server(tiny_llama_template: Path) -> None:
    import openai

    from tests.server.conftest import RecordingRunner, local_model, serve

    model = local_model(tiny_llama_template)
    question = {"role": "user", "content": "What is the capital of France?"}

    def ask(served: Any, messages: list[dict[str, str]]) -> Any:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=60)
        return client.chat.completions.create(model=model.name, messages=messages, max_tokens=12, temperature=0)  # type: ignore[arg-type]

    def start() -> Any:
        runner = RecordingRunner()
        runner.load(model, LoadOptions(device="cpu", dtype="float32"))
        return serve(runner, model)

    warm_server = start()
    try:
        first = ask(warm_server, [question])
        conversation = [question, {"role": "assistant", "content": first.choices[0].message.content or ""}]
        conversation.append({"role": "user", "content": "And of Italy?"})
        warm = ask(warm_server, conversation)
        reused = warm_server.runner.with_model(_last_reused)
    finally:
        warm_server.server.stop()
        warm_server.runner.close()
    cold_server = start()
    try:
        cold = ask(cold_server, conversation)
    finally:
        cold_server.server.stop()
        cold_server.runner.close()

    assert warm.choices[0].message.content == cold.choices[0].message.content
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = warm.usage.prompt_tokens_details.cached_tokens
    assert cached == reused >= first.usage.prompt_tokens
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert warm.usage.prompt_tokens == cold.usage.prompt_tokens
