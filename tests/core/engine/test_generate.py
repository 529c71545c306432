"""The generation loop: greedy parity with ``model.generate``, stop strings, EOS, cancellation, context limits,
stats, and text streaming that never splits a character.

Three kinds of model: a scripted stand-in (the next token is the next one of a script, so the text is known
exactly), the random tiny llama (fast, real transformers code), and the demo model (slow marker).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from influence_tui.core.engine.generate import IncrementalDetokenizer, StopStringFilter, generate_stream
from influence_tui.core.errors import InfluenceError
from influence_tui.core.types import GenerationStats, SamplingParams, TokenEvent
from tests.models import build_tokenizer

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=32)
EMOJI_CJK = "😀你好"


def byte_level_ids(tokenizer: Any, text: str) -> list[int]:
    """One token per UTF-8 byte, through the GPT-2 byte-to-unicode table that byte-level BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    ids = tokenizer.convert_tokens_to_ids([table[b] for b in text.encode("utf-8")])
    assert None not in ids and tokenizer.unk_token_id not in ids
    return list(ids)


def stream_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push(i) for i in ids]
    pieces.append(detok.flush())
    return pieces


def run(*args: Any, **kwargs: Any) -> tuple[list[TokenEvent], GenerationStats]:
    events = list(generate_stream(*args, **kwargs))
    stats = events[-1].stats
    assert stats is not None
    assert all(e.stats is None for e in events[:-1])
    return events, stats


def text_of(events: list[TokenEvent]) -> str:
    return "".join(e.text for e in events)


def token_ids(events: list[TokenEvent]) -> list[int]:
    return [e.token_id for e in events if e.token_id is not None]


class ScriptedModel(torch.nn.Module):
    """A causal LM stand-in: whatever the input, step n's logits put the n-th token of the script on top."""

    def __init__(self, script: Sequence[int], vocab_size: int, fail_at: int | None = None) -> None:
        super().__init__()
        self.script = list(script)
        self.vocab_size = vocab_size
        self.fail_at = fail_at
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.calls: list[dict[str, Any]] = []

    def forward(
        self,
        input_ids: torch.Tensor,
        past_key_values: Any = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = True,
        logits_to_keep: int = 0,
    ) -> SimpleNamespace:
        step = len(self.calls)
        self.calls.append(
            {
                "input_ids": input_ids.tolist(),
                "positions": None if position_ids is None else position_ids.tolist(),
                "cache": past_key_values,
                "logits_to_keep": logits_to_keep,
            }
        )
        if step == self.fail_at:
            raise RuntimeError("boom")
        logits = torch.zeros(1, 1, self.vocab_size)
        logits[0, 0, self.script[step]] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=f"cache-{step}")


@pytest.fixture(scope="module")
def byte_tokenizer() -> Any:
    return build_tokenizer()


def scripted(tokenizer: Any, text: str, *, then: Sequence[int] = ()) -> ScriptedModel:
    return ScriptedModel([*byte_level_ids(tokenizer, text), *then], len(tokenizer))


# ------------------------------------------------------------------------------------------ detokenization


def test_emoji_and_cjk_byte_tokens_stream_without_broken_characters(byte_tokenizer: Any) -> None:
    ids = byte_level_ids(byte_tokenizer, EMOJI_CJK)
    assert len(ids) == 10  # 4 + 3 + 3 bytes, one token each
    pieces = stream_pieces(byte_tokenizer, ids)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == byte_tokenizer.decode(ids) == EMOJI_CJK
    assert [p for p in pieces if p] == ["😀", "你", "好"]  # each character as soon as its last byte arrives


def test_mixed_text_streams_to_exactly_what_decode_gives(byte_tokenizer: Any) -> None:
    text = "Emoji 😀 and CJK 你好世界 and accents café naïve. The capital of France is Paris!"
    ids = byte_tokenizer.encode(text, add_special_tokens=False)
    pieces = stream_pieces(byte_tokenizer, ids)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == byte_tokenizer.decode(ids, skip_special_tokens=True) == text


def test_special_tokens_are_skipped_in_the_stream(byte_tokenizer: Any) -> None:
    start = byte_tokenizer.convert_tokens_to_ids("<|im_start|>")
    ids = [start, *byte_tokenizer.encode("Hi there", add_special_tokens=False)]
    assert "".join(stream_pieces(byte_tokenizer, ids)) == "Hi there"


def test_an_incomplete_character_at_the_end_is_flushed_as_decode_shows_it(byte_tokenizer: Any) -> None:
    ids = byte_level_ids(byte_tokenizer, "ok 😀")[:-2]  # the emoji cut after two of its four bytes
    detok = IncrementalDetokenizer(byte_tokenizer)
    streamed = "".join(detok.push(i) for i in ids)
    assert streamed == "ok "
    assert streamed + detok.flush() == byte_tokenizer.decode(ids)


def sentencepiece_tokenizer() -> Any:
    """A Llama-2 style tokenizer: ▁ for spaces, <0xNN> byte fallback, the first leading space stripped."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in ("▁Hello", "▁world", "▁", ",", "▁the", "re"):
        vocab[piece] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_sentencepiece_leading_spaces_and_byte_fallback_stream_right() -> None:
    tokenizer = sentencepiece_tokenizer()
    v = tokenizer.get_vocab()
    emoji = [v[f"<0x{b:02X}>"] for b in "😀".encode()]
    ids = [v["▁Hello"], v[","], v["▁world"], v["▁"], *emoji, v["▁the"], v["re"], v["</s>"]]
    pieces = stream_pieces(tokenizer, ids)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True) == "Hello, world 😀 there"
    assert pieces[:3] == ["Hello", ",", " world"]  # one token at a time would lose the space before "world"


# ------------------------------------------------------------------------------------------ stop strings


def filtered(stops: Sequence[str], pieces: Sequence[str]) -> tuple[list[str], StopStringFilter]:
    f = StopStringFilter(stops)
    out = [f.feed(p) for p in pieces]
    return out, f


def test_stop_filter_holds_back_a_possible_stop_and_cuts_before_it() -> None:
    out, f = filtered(["</s>"], ["Hel", "lo <", "/s", "> more"])
    assert out == ["Hel", "lo ", "", ""]
    assert f.stopped and f.flush() == ""


def test_stop_filter_releases_held_text_that_was_not_a_stop() -> None:
    out, f = filtered(["</s>", "User:"], ["a <", "b Us", "e", "r", " 42"])
    assert "".join(out) + f.flush() == "a <b User 42"
    assert not f.stopped
    out, f = filtered(["\nUser:"], ["x\nUs"])
    assert out == ["x"] and f.flush() == "\nUs"


def test_stop_filter_picks_the_earliest_of_several_stops() -> None:
    out, f = filtered(["World", "lo W"], ["Hello World"])
    assert out == ["Hel"] and f.stopped


def test_a_stop_string_split_across_tokens_is_never_emitted(byte_tokenizer: Any) -> None:
    model = scripted(byte_tokenizer, "The answer: 42\nUser: more text")
    params = SamplingParams(temperature=0.0, repeat_penalty=1.0, stop=("\nUser:",))
    events, stats = run(model, byte_tokenizer, [5, 6], params, eos_token_ids=(), context_length=256)
    assert text_of(events) == "The answer: 42"
    assert all("\n" not in e.text for e in events)  # not even the stop's first character
    assert stats.finish_reason == "stop"
    assert stats.generated_tokens == len("The answer: 42\nUser:")


def test_held_back_text_is_emitted_when_generation_ends_otherwise(byte_tokenizer: Any) -> None:
    eos = byte_tokenizer.eos_token_id
    model = scripted(byte_tokenizer, "abc\nUs", then=[eos])
    params = SamplingParams(temperature=0.0, repeat_penalty=1.0, stop=("\nUser:",))
    events, stats = run(model, byte_tokenizer, [5], params, eos_token_ids={eos}, context_length=256)
    assert text_of(events) == "abc\nUs"
    assert events[-1].text == "\nUs"
    assert stats.finish_reason == "stop"


# ------------------------------------------------------------------------------------------ the loop, scripted


def test_utf8_tokens_stream_through_the_loop_without_broken_pieces(byte_tokenizer: Any) -> None:
    eos = byte_tokenizer.eos_token_id
    model = scripted(byte_tokenizer, f"Hi {EMOJI_CJK}!", then=[eos, 7, 7])
    events, stats = run(model, byte_tokenizer, [5, 6, 7], GREEDY, eos_token_ids={eos}, context_length=256)
    assert all("\ufffd" not in e.text for e in events)
    assert text_of(events) == f"Hi {EMOJI_CJK}!"
    assert eos not in token_ids(events)  # EOS ends the stream and is not emitted
    assert stats.finish_reason == "stop"
    assert stats.generated_tokens == len(f"Hi {EMOJI_CJK}!".encode()) + 1  # EOS was generated


def test_prefill_once_then_one_token_per_step_on_the_cache(byte_tokenizer: Any) -> None:
    model = scripted(byte_tokenizer, "abcd")
    params = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=4)
    run(model, byte_tokenizer, [5, 6, 7], params, eos_token_ids=(), context_length=256)
    prefill, *steps = model.calls
    assert prefill["input_ids"] == [[5, 6, 7]] and prefill["logits_to_keep"] == 1
    assert prefill["cache"].get_seq_length() == 0 and prefill["positions"] == [[0, 1, 2]]  # a fresh, empty cache
    assert len(steps) == 3  # the 4th token is sampled but never fed back
    script = model.script
    for n, step in enumerate(steps):
        assert step["input_ids"] == [[script[n]]]
        assert step["positions"] == [[3 + n]]
        assert step["cache"] == f"cache-{n}"  # the cache the previous call returned


def test_errors_in_the_model_propagate(byte_tokenizer: Any) -> None:
    model = ScriptedModel([10] * 8, len(byte_tokenizer), fail_at=3)
    with pytest.raises(RuntimeError, match="boom"):
        list(generate_stream(model, byte_tokenizer, [5], GREEDY, eos_token_ids=(), context_length=256))


def test_inference_mode_does_not_leak_into_the_consumer(byte_tokenizer: Any) -> None:
    model = scripted(byte_tokenizer, "abc")
    params = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=3)
    for _event in generate_stream(model, byte_tokenizer, [5], params, eos_token_ids=(), context_length=256):
        assert not torch.is_inference_mode_enabled()


def test_an_empty_prompt_is_refused(byte_tokenizer: Any) -> None:
    model = scripted(byte_tokenizer, "abc")
    with pytest.raises(InfluenceError, match="empty"):
        list(generate_stream(model, byte_tokenizer, [], GREEDY, eos_token_ids=(), context_length=256))


# ------------------------------------------------------------------------------------------ the tiny llama


@pytest.fixture(scope="module")
def tiny(tiny_llama_template: Path) -> tuple[Any, Any, list[int]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_template).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_template)
    messages = [{"role": "user", "content": "Hello, how are you today?"}]
    prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
    return model, tokenizer, prompt


def peer_greedy(model: Any, prompt: list[int], n: int) -> list[int]:
    """transformers' own greedy decoding, EOS ignored so both run the full ``n`` tokens."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            repetition_penalty=1.0,
            max_new_tokens=n,
            eos_token_id=[],
            pad_token_id=0,
        )
    return list(out[0, len(prompt) :].tolist())


def test_greedy_matches_model_generate_on_the_tiny_model(tiny: tuple[Any, Any, list[int]]) -> None:
    model, tokenizer, prompt = tiny
    events, stats = run(model, tokenizer, prompt, GREEDY, eos_token_ids=(), context_length=256)
    ours = token_ids(events)
    assert len(ours) == 32
    assert ours == peer_greedy(model, prompt, 32)
    assert len(set(ours)) > 3  # the random model does not just repeat one token
    assert text_of(events) == tokenizer.decode(ours, skip_special_tokens=True)
    assert stats.finish_reason == "length"


def test_eos_stops_generation_and_is_not_emitted(tiny: tuple[Any, Any, list[int]]) -> None:
    model, tokenizer, prompt = tiny
    greedy = peer_greedy(model, prompt, 32)
    eos = greedy[5]  # pretend the 6th greedy token is an end-of-sequence token
    first = greedy.index(eos)
    events, stats = run(model, tokenizer, prompt, GREEDY, eos_token_ids={eos, 999_999}, context_length=256)
    assert token_ids(events) == greedy[:first]
    assert stats.finish_reason == "stop"
    assert stats.generated_tokens == first + 1


def test_max_tokens_ends_with_length(tiny: tuple[Any, Any, list[int]]) -> None:
    model, tokenizer, prompt = tiny
    params = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=4)
    events, stats = run(model, tokenizer, prompt, params, eos_token_ids=(), context_length=256)
    assert len(token_ids(events)) == 4
    assert (stats.finish_reason, stats.generated_tokens) == ("length", 4)


def test_output_is_clamped_to_the_context(tiny: tuple[Any, Any, list[int]]) -> None:
    model, tokenizer, prompt = tiny
    params = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=100)
    events, stats = run(model, tokenizer, prompt, params, eos_token_ids=(), context_length=len(prompt) + 5)
    assert len(token_ids(events)) == 5
    assert (stats.finish_reason, stats.prompt_tokens + stats.generated_tokens) == ("length", len(prompt) + 5)


@pytest.mark.parametrize("overflow", [0, 10])
def test_a_prompt_that_fills_the_context_is_an_influence_error(tiny: tuple[Any, Any, list[int]], overflow: int) -> None:
    model, tokenizer, prompt = tiny
    with pytest.raises(InfluenceError, match=rf"{len(prompt)} tokens.*context holds {len(prompt) - overflow}"):
        next(generate_stream(model, tokenizer, prompt, GREEDY, eos_token_ids=(), context_length=len(prompt) - overflow))


def test_cancelling_from_another_thread_stops_within_one_token(tiny: tuple[Any, Any, list[int]]) -> None:
    model, tokenizer, prompt = tiny
    stop = threading.Event()
    params = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=200)
    stream = generate_stream(model, tokenizer, prompt, params, eos_token_ids=(), context_length=256, stop_event=stop)
    received = [next(stream) for _ in range(3)]
    canceller = threading.Thread(target=stop.set)
    canceller.start()
    canceller.join()
    rest = list(stream)
    assert len(rest) == 1  # no further token: only the final event
    stats = rest[0].stats
    assert stats is not None and stats.finish_reason == "cancelled"
    assert stats.generated_tokens == len(token_ids(received)) == 3


def test_a_request_cancelled_before_it_starts_generates_nothing(tiny: tuple[Any, Any, list[int]]) -> None:
    model, tokenizer, prompt = tiny
    stop = threading.Event()
    stop.set()
    events, stats = run(model, tokenizer, prompt, GREEDY, eos_token_ids=(), context_length=256, stop_event=stop)
    assert len(events) == 1
    assert (stats.finish_reason, stats.generated_tokens) == ("cancelled", 0)


def test_stats_are_sensible(tiny: tuple[Any, Any, list[int]]) -> None:
    model, tokenizer, prompt = tiny
    params = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=16)
    events, stats = run(model, tokenizer, prompt, params, eos_token_ids=(), context_length=256)
    assert len(events) == 17  # one per token, then the final one
    assert stats.prompt_tokens == len(prompt)
    assert stats.generated_tokens == 16
    assert 0 < stats.time_to_first_token_s <= stats.total_s
    assert stats.decode_tokens_per_s > 0 and stats.prompt_tokens_per_s > 0
    decode_s = stats.total_s - stats.time_to_first_token_s
    assert stats.decode_tokens_per_s == pytest.approx(15 / decode_s, rel=0.2)
    assert stats.load_s == 0.0


def sample_ids(tiny: tuple[Any, Any, list[int]], seed: int) -> list[int]:
    model, tokenizer, prompt = tiny
    params = SamplingParams(temperature=1.5, top_p=0.95, top_k=50, repeat_penalty=1.1, max_tokens=24, seed=seed)
    events, _ = run(model, tokenizer, prompt, params, eos_token_ids=(), context_length=256)
    return token_ids(events)


def test_sampling_with_a_seed_is_reproducible(tiny: tuple[Any, Any, list[int]]) -> None:
    assert sample_ids(tiny, 1) == sample_ids(tiny, 1)
    assert sample_ids(tiny, 1) != sample_ids(tiny, 2)


# ------------------------------------------------------------------------------------------ the demo model


@pytest.fixture(scope="module")
def demo(demo_gguf: Path) -> Iterator[tuple[Any, Any]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_gguf.parent, gguf_file=demo_gguf.name)
    model = AutoModelForCausalLM.from_pretrained(demo_gguf.parent, gguf_file=demo_gguf.name).eval()
    yield model, tokenizer


def chat_prompt(tokenizer: Any, question: str) -> list[int]:
    messages = [{"role": "user", "content": question}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])


@pytest.mark.slow
def test_greedy_matches_model_generate_on_the_demo_model(demo: tuple[Any, Any]) -> None:
    model, tokenizer = demo
    prompt = chat_prompt(tokenizer, "Write a short poem about the sea.")
    events, _ = run(model, tokenizer, prompt, GREEDY, eos_token_ids=(), context_length=8192)
    assert token_ids(events) == peer_greedy(model, prompt, 32)


@pytest.mark.slow
def test_the_demo_model_knows_the_capital_of_france(demo: tuple[Any, Any]) -> None:
    model, tokenizer = demo
    prompt = chat_prompt(tokenizer, "What is the capital of France?")
    params = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=24)
    events, stats = run(model, tokenizer, prompt, params, eos_token_ids={tokenizer.eos_token_id}, context_length=8192)
    assert "Paris" in text_of(events)
    assert stats.finish_reason == "stop"  # it answers and ends with EOS well within 24 tokens
    assert "<|im_end|>" not in text_of(events)


@pytest.mark.slow
def test_demo_tokenizer_streams_emoji_and_cjk_whole(demo: tuple[Any, Any]) -> None:
    _, tokenizer = demo
    for ids in (
        byte_level_ids(tokenizer, EMOJI_CJK),
        tokenizer.encode("Café 😀 naïve — 你好世界 ✓ done", add_special_tokens=False),
    ):
        pieces = stream_pieces(tokenizer, ids)
        assert all("\ufffd" not in p for p in pieces)
        assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
