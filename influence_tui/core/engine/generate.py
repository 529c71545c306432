"""The generation loop: prefill the prompt once, then decode one token at a time on the KV cache.

:func:`generate_stream` is what the engine's runner thread calls; it yields one :class:`TokenEvent` per sampled
token, then a final event carrying :class:`GenerationStats`. Around it, two small helpers turn token ids into
text that is safe to show as it streams:

* :class:`IncrementalDetokenizer` decodes a short window of recent tokens and emits only the new suffix, once it
  no longer ends in an incomplete character (a multi-byte UTF-8 character split over byte tokens never shows as
  U+FFFD; SentencePiece's leading spaces come out right).
* :class:`StopStringFilter` holds back text that could be the start of a stop string, so a stop string is never
  emitted, even when the model produces it across several tokens.

torch is driven under ``torch.inference_mode()`` around each model call only: the mode is thread-local and must
not leak into the consumer's code between two yields.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import torch

from influence_tui.core.engine.kvcache import CachedSequence, PromptCache, new_cache
from influence_tui.core.engine.sampling import make_generator, sample_next
from influence_tui.core.errors import InfluenceError
from influence_tui.core.types import FinishReason, GenerationStats, SamplingParams, TokenEvent

_REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Token ids in, text pieces out, such that the pieces joined equal ``tokenizer.decode(ids)``.

    Decoding one token at a time is wrong twice over: a byte token alone is not a character, and SentencePiece
    tokenizers drop the leading space of the first token they decode. So each step decodes the tokens already
    emitted in the previous piece (for context) plus the new ones, and emits the part after the context once it
    does not end in U+FFFD (an incomplete character). Each step decodes a handful of tokens, never the whole
    sequence.
    """

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True, max_pending: int = 16) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._max_pending = max_pending
        """Past this many held tokens, text is emitted even if it ends in U+FFFD: it will never complete."""
        self.ids: list[int] = []
        self._prefix_offset = 0
        """Start of the context window: the tokens of the previous piece."""
        self._read_offset = 0
        """Start of the tokens not yet emitted as text."""
        self._emitted: list[str] = []

    def _decode(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        text: str = self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)
        return text

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (often ``""`` while a character is still incomplete)."""
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self.ids[self._prefix_offset :])
        pending = len(self.ids) - self._read_offset
        if len(new_text) <= len(prefix_text) and pending < self._max_pending:
            return ""  # only special tokens so far, or text the tokenizer has not finished
        if new_text.endswith(_REPLACEMENT_CHAR) and pending < self._max_pending:
            return ""
        piece = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.ids)
        self._emitted.append(piece)
        return piece

    def flush(self) -> str:
        """At the end: the text still held back (an incomplete character decodes to U+FFFD, as in ``decode``)."""
        if self._read_offset == len(self.ids):
            return ""
        prefix_text = self._decode(self.ids[self._prefix_offset : self._read_offset])
        piece = self._decode(self.ids[self._prefix_offset :])[len(prefix_text) :]
        self._prefix_offset = self._read_offset = len(self.ids)
        self._emitted.append(piece)
        return piece

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return "".join(self._emitted)


class StopStringFilter:
    """Holds back text that could be the start of a stop string; reports where a stop string begins."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add text; return what is safe to emit. After a stop string, :attr:`stopped` is set and the text before
        it is returned (the stop string and anything after it never are)."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        held = self._held + text
        cut = min((i for i in (held.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return held[:cut]
        keep = self._partial_stop_length(held)
        self._held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep]

    def _partial_stop_length(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """At the end without a stop string: the held text is ordinary text after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held


def _forward_kwargs(model: Any) -> dict[str, Any]:
    """Extra arguments the model's forward accepts: compute logits for the last position only."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device  # type: ignore[no-any-return]


def generate_stream(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    eos_token_ids: Collection[int],
    context_length: int,
    stop_event: threading.Event | None = None,
    prompt_cache: PromptCache | None = None,
) -> Iterator[TokenEvent]:
    """Generate from ``prompt_ids``: one event per sampled token (its text may be ``""`` while held back),
    then a final event with the stats and any held-back text.

    Stops on a token in ``eos_token_ids`` (not emitted), before a stop string in ``params.stop`` (never
    emitted), after ``params.max_tokens`` tokens or when prompt and output fill ``context_length`` (finish
    ``"length"``), or within one token of ``stop_event`` being set (finish ``"cancelled"``). A prompt that
    leaves no room for a reply is an :class:`InfluenceError`. Errors from the model propagate.

    ``generated_tokens`` in the stats counts every token the model produced, an EOS included; the prompt and
    those tokens never exceed ``context_length``.

    With a ``prompt_cache``, the KV cache of a earlier sequence that starts like this prompt is reused: only
    the tokens after the shared prefix are prefilled (``cached_prompt_tokens`` in the stats), and the cache of
    this sequence is handed back for the next request, also when the consumer stops early.
    """
    prompt = [int(i) for i in prompt_ids]
    n_prompt = len(prompt)
    if n_prompt == 0:
        raise InfluenceError("The prompt is empty: there is nothing to continue.")
    if n_prompt >= context_length:
        raise InfluenceError(
            f"The prompt is {n_prompt} tokens but the model's context holds {context_length}: "
            "there is no room left for a reply.",
            hint="shorten the conversation, start a new chat, or load the model with a longer context",
        )
    budget = max(0, min(params.max_tokens, context_length - n_prompt))
    eos = frozenset(int(i) for i in eos_token_ids)
    stopped = stop_event.is_set if stop_event is not None else lambda: False

    start = time.perf_counter()
    first_token_at = start
    prefill_s = 0.0
    generated = 0
    finish: FinishReason = "length"
    detok = IncrementalDetokenizer(tokenizer)
    stops = StopStringFilter(params.stop)
    context = list(prompt) if params.repeat_penalty != 1.0 else []

    reused = 0
    if budget > 0 and not stopped():
        device = _model_device(model)
        extra = _forward_kwargs(model)
        generator = make_generator(params.seed, device) if params.temperature > 0 else None
        if prompt_cache is not None:
            entry, reused = prompt_cache.take(model, prompt)
        else:
            entry = CachedSequence(new_cache(model))
        try:
            with torch.inference_mode():
                input_ids = torch.tensor([prompt[reused:]], dtype=torch.long, device=device)
                positions = torch.arange(reused, n_prompt, dtype=torch.long, device=device).unsqueeze(0)
                out = model(
                    input_ids=input_ids, past_key_values=entry.cache, position_ids=positions, use_cache=True, **extra
                )
                if out.past_key_values is None:
                    raise RuntimeError(f"{type(model).__name__} returned no KV cache: it cannot decode incrementally")
                entry.cache = out.past_key_values
                entry.tokens = list(prompt)
                token = sample_next(out.logits[0, -1], params, context, generator)
                del out
                step_ids = torch.empty((1, 1), dtype=torch.long, device=device)
                step_positions = torch.empty((1, 1), dtype=torch.long, device=device)
            first_token_at = time.perf_counter()
            prefill_s = first_token_at - start
            position = n_prompt
            while True:
                generated += 1
                if token in eos:
                    finish = "stop"
                    break
                piece = stops.feed(detok.push(token))
                yield TokenEvent(piece, token_id=token)
                if stops.stopped:
                    finish = "stop"
                    break
                if generated >= budget:
                    finish = "length"
                    break
                if stopped():
                    finish = "cancelled"
                    break
                if params.repeat_penalty != 1.0:
                    context.append(token)
                with torch.inference_mode():
                    step_ids.fill_(token)
                    step_positions.fill_(position)
                    out = model(
                        input_ids=step_ids,
                        past_key_values=entry.cache,
                        position_ids=step_positions,
                        use_cache=True,
                        **extra,
                    )
                    entry.cache = out.past_key_values
                    entry.tokens.append(token)
                    token = sample_next(out.logits[0, -1], params, context, generator)
                    del out
                position += 1
        finally:
            if prompt_cache is not None:
                prompt_cache.give_back(entry)
    elif budget > 0:
        finish = "cancelled"

    end = time.perf_counter()
    tail = ""
    if not stops.stopped:
        tail = stops.feed(detok.flush())
        if stops.stopped:
            finish = "stop"
        else:
            tail += stops.flush()
    decode_s = end - first_token_at
    stats = GenerationStats(
        prompt_tokens=n_prompt,
        generated_tokens=generated,
        time_to_first_token_s=prefill_s,
        decode_tokens_per_s=(generated - 1) / decode_s if generated > 1 and decode_s > 0 else 0.0,
        total_s=end - start,
        finish_reason=finish,
        prompt_tokens_per_s=(n_prompt - reused) / prefill_s if prefill_s > 0 else 0.0,
        cached_prompt_tokens=reused,
    )
    yield TokenEvent(tail, stats=stats)
