"""The generation loop: prefill the prompt, then decode one token at a time on the KV cache.

A :class:`Generation` is one request's loop as steps: the prompt's prefill (in chunks, where a setting asks),
then decode steps, each returning one :class:`TokenEvent` per sampled token and, at the end, a final event
carrying :class:`GenerationStats`. :func:`generate_stream` drives one alone (the CLI, the self-check); the
engine's scheduler (:mod:`~influence_tui.core.engine.runner`) drives several, their decode steps batched by
:func:`decode_together`. Around it, two small helpers turn token ids into text that is safe to show as it
streams:

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
from typing import TYPE_CHECKING, Any, Literal

import torch

from influence_tui.core.engine.kvcache import CachedSequence, PromptCache, new_cache
from influence_tui.core.engine.sampling import make_generator, sample_next
from influence_tui.core.errors import InfluenceError
from influence_tui.core.types import FinishReason, GenerationStats, SamplingParams, TokenEvent

if TYPE_CHECKING:
    from influence_tui.core.engine.constrain import TokenConstraint

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


GenerationState = Literal["prefill", "decode", "done"]


class Generation:
    """One request's generation as steps the caller drives: the prompt's prefill (whole, or in chunks of
    ``prefill_chunk`` tokens), then one decode step at a time, alone (:meth:`decode_alone`) or in a batch with
    other requests (:func:`decode_together`). Each step returns the events it produced; the last one carries
    the stats (see :func:`generate_stream` for what ends a generation and what the stats count).

    Driving it: while not :attr:`done`, call :meth:`check_cancelled` (a set stop event ends it there), then
    :meth:`prefill_step` while :attr:`prefilling`, else a decode step. Always :meth:`close` it (it gives the KV
    cache back to the prompt cache; a finished generation has done so already). Everything that decides a
    token (the chunks of the prompt, the sampling generator, the stop strings) belongs to this request alone,
    so its text does not depend on what else runs beside it.

    A prompt that is empty or leaves no room for a reply raises :class:`InfluenceError` from the constructor.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        eos_token_ids: Collection[int],
        context_length: int,
        stop_event: threading.Event | None = None,
        prompt_cache: PromptCache | None = None,
        prefill_chunk: int = 0,
    ) -> None:
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
        self.model = model
        self.params = params
        self.prompt = prompt
        self.prefill_chunk = max(0, prefill_chunk)
        self.stop_event = stop_event
        self._budget = max(0, min(params.max_tokens, context_length - n_prompt))
        self._eos = frozenset(int(i) for i in eos_token_ids)
        self._prompt_cache = prompt_cache
        self._detok = IncrementalDetokenizer(tokenizer)
        self._stops = StopStringFilter(params.stop)
        self._context = list(prompt) if params.repeat_penalty != 1.0 else []
        self._start = time.perf_counter()
        self._first_token_at = self._start
        self._prefill_s = 0.0
        self.generated = 0
        self.reused = 0
        self.state: GenerationState = "prefill"
        self.token = -1
        """The last sampled token: the input of the next decode step (it is not in the cache yet)."""
        self.position = 0
        """The position :attr:`token` is written at."""
        self._given_back = True
        self._final: list[TokenEvent] = []
        if self._budget == 0:
            self._final = self._finish("length")
            return
        if self._stopped():
            self._final = self._finish("cancelled")
            return
        self.device = _model_device(model)
        self._extra = _forward_kwargs(model)
        self._generator = make_generator(params.seed, self.device) if params.temperature > 0 else None
        self._constraint: TokenConstraint | None = None
        if params.grammar is not None:
            from influence_tui.core.engine.constrain import TokenConstraint

            self._constraint = TokenConstraint(tokenizer, params.grammar, self._eos)
        if prompt_cache is not None:
            self.entry, self.reused = prompt_cache.take(model, prompt)
            self._given_back = False
        else:
            self.entry = CachedSequence(new_cache(model))
        self._prefilled = self.reused
        self.entry.tokens = prompt[: self.reused]

    # ------------------------------------------------------------------------------------------ state

    @property
    def done(self) -> bool:
        return self.state == "done"

    @property
    def prefilling(self) -> bool:
        return self.state == "prefill"

    @property
    def cache(self) -> Any:
        return self.entry.cache

    @property
    def prefilled(self) -> int:
        """Prompt tokens in the cache so far (reused ones included)."""
        return self._prefilled

    def _stopped(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    def initial_events(self) -> list[TokenEvent]:
        """The final event of a generation that ended in the constructor (nothing to generate, or cancelled
        before it started); empty otherwise."""
        events, self._final = self._final, []
        return events

    def check_cancelled(self) -> list[TokenEvent]:
        """End the generation (finish ``"cancelled"``) if its stop event is set; call it before each step."""
        if self.state != "done" and self._stopped():
            return self._finish("cancelled")
        return []

    # ------------------------------------------------------------------------------------------ steps

    def prefill_step(self) -> list[TokenEvent]:
        """Run the next chunk of the prompt (all of it with ``prefill_chunk`` 0); after the last chunk, sample
        the first token. Returns that token's event (and the final one if it ends the generation), or nothing
        while chunks remain."""
        assert self.state == "prefill"
        n_prompt = len(self.prompt)
        begin = self._prefilled
        end = n_prompt if not self.prefill_chunk else min(n_prompt, begin + self.prefill_chunk)
        with torch.inference_mode():
            input_ids = torch.tensor([self.prompt[begin:end]], dtype=torch.long, device=self.device)
            positions = torch.arange(begin, end, dtype=torch.long, device=self.device).unsqueeze(0)
            out = self.model(
                input_ids=input_ids,
                past_key_values=self.entry.cache,
                position_ids=positions,
                use_cache=True,
                **self._extra,
            )
            if out.past_key_values is None:
                raise RuntimeError(f"{type(self.model).__name__} returned no KV cache: it cannot decode incrementally")
            self.entry.cache = out.past_key_values
            self.entry.tokens = self.prompt[:end]
            self._prefilled = end
            if end < n_prompt:
                return []
            picked = self._pick(out.logits[0, -1])
            del out
        self._first_token_at = time.perf_counter()
        self._prefill_s = self._first_token_at - self._start
        self.position = n_prompt
        return self._emit(*picked)

    def decode_alone(self) -> list[TokenEvent]:
        """One decode step through the model's own call (batch of one)."""
        assert self.state == "decode"
        with torch.inference_mode():
            step_ids = torch.full((1, 1), self.token, dtype=torch.long, device=self.device)
            step_positions = torch.full((1, 1), self.position, dtype=torch.long, device=self.device)
            out = self.model(
                input_ids=step_ids,
                past_key_values=self.entry.cache,
                position_ids=step_positions,
                use_cache=True,
                **self._extra,
            )
            self.entry.cache = out.past_key_values
            return self.accept(out.logits[0, -1])

    def accept(self, logits: torch.Tensor) -> list[TokenEvent]:
        """The logits ``[vocab]`` of the step that wrote :attr:`token` into the cache: sample the next token."""
        self.entry.tokens.append(self.token)
        self.position += 1
        return self._emit(*self._pick(logits))

    def _pick(self, logits: torch.Tensor) -> tuple[int, float | None, tuple[tuple[int, float], ...]]:
        """The next token from one position's logits: the grammar's mask (if any), then the sampler. With it,
        when the request asked for them, the token's log probability and the most likely tokens': the model's
        own, before any of that."""
        n = self.params.logprobs
        if n is not None:
            logp = torch.log_softmax(logits.float(), dim=-1)
        constraint = self._constraint
        token = sample_next(
            constraint.mask(logits) if constraint is not None else logits, self.params, self._context, self._generator
        )
        if constraint is not None:
            constraint.consume(token)
        if n is None:
            return token, None, ()
        top: tuple[tuple[int, float], ...] = ()
        if n > 0:
            values, ids = torch.topk(logp, min(n, logp.shape[-1]))
            top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
        return token, float(logp[token]), top

    def _emit(
        self, token: int, logprob: float | None = None, top: tuple[tuple[int, float], ...] = ()
    ) -> list[TokenEvent]:
        self.generated += 1
        if token in self._eos:
            return self._finish("stop")
        piece = self._stops.feed(self._detok.push(token))
        events = [TokenEvent(piece, token_id=token, logprob=logprob, top_logprobs=top)]
        if self._stops.stopped or (self._constraint is not None and self._constraint.finished):
            return events + self._finish("stop")
        if self.generated >= self._budget:
            return events + self._finish("length")
        if self.params.repeat_penalty != 1.0:
            self._context.append(token)
        self.token = token
        self.state = "decode"
        return events

    def _finish(self, finish: FinishReason) -> list[TokenEvent]:
        end = time.perf_counter()
        self.state = "done"
        self.close()
        tail = ""
        if not self._stops.stopped:
            tail = self._stops.feed(self._detok.flush())
            if self._stops.stopped:
                finish = "stop"
            else:
                tail += self._stops.flush()
        decode_s = end - self._first_token_at
        generated, n_prompt = self.generated, len(self.prompt)
        stats = GenerationStats(
            prompt_tokens=n_prompt,
            generated_tokens=generated,
            time_to_first_token_s=self._prefill_s,
            decode_tokens_per_s=(generated - 1) / decode_s if generated > 1 and decode_s > 0 else 0.0,
            total_s=end - self._start,
            finish_reason=finish,
            prompt_tokens_per_s=(n_prompt - self.reused) / self._prefill_s if self._prefill_s > 0 else 0.0,
            cached_prompt_tokens=self.reused,
        )
        return [TokenEvent(tail, stats=stats)]

    def close(self) -> None:
        """Give the KV cache back to the prompt cache (once; a cache out of step after an error is dropped)."""
        if not self._given_back and self._prompt_cache is not None:
            self._given_back = True
            self._prompt_cache.give_back(self.entry)


def decode_together(generations: Sequence[Generation]) -> list[list[TokenEvent]]:
    """One decode step for each of ``generations`` (all decoding, on one model): a single
    :meth:`~influence_tui.core.engine.models.base.CausalLM.decode_batch` call for two or more on a native
    model, one call each otherwise. Returns each generation's events, in order."""
    if not generations:
        return []
    model = generations[0].model
    batch = getattr(model, "decode_batch", None)
    if len(generations) == 1 or not callable(batch):
        return [g.decode_alone() for g in generations]
    device = generations[0].device
    with torch.inference_mode():
        tokens = torch.tensor([g.token for g in generations], dtype=torch.long, device=device)
        positions = torch.tensor([g.position for g in generations], dtype=torch.long, device=device)
        logits = batch(tokens, [g.cache for g in generations], positions)
        return [g.accept(logits[i]) for i, g in enumerate(generations)]


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
    prefill_chunk: int = 0,
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
    this sequence is handed back for the next request, also when the consumer stops early. ``prefill_chunk``
    (above 0) prefills a long prompt that many tokens at a time.

    This is one :class:`Generation` driven alone; the engine's scheduler drives several at once.
    """
    generation = Generation(
        model,
        tokenizer,
        prompt_ids,
        params,
        eos_token_ids=eos_token_ids,
        context_length=context_length,
        stop_event=stop_event,
        prompt_cache=prompt_cache,
        prefill_chunk=prefill_chunk,
    )
    try:
        yield from generation.initial_events()
        while not generation.done:
            events = generation.check_cancelled()
            if not events:
                events = generation.prefill_step() if generation.prefilling else generation.decode_alone()
            yield from events
    finally:
        generation.close()
