"""One long-lived thread owns the loaded model and every torch call; front ends submit work and get token streams.

The TUI's workers and the server's handlers call :class:`EngineRunner` from their own threads. Loading,
unloading and generating run on the engine thread. A request's tokens reach its :class:`TokenStream` through a
queue; an error on the engine thread is re-raised where the stream is read.

**The scheduler.** Up to ``max_batch`` requests generate together (1 by default: one after another, as a
single-user front end wants; ``influence serve --parallel N`` sets it). Between two decode steps the engine
admits waiting requests in the order they came, prefills their prompts (``prefill_chunk`` tokens a step for a
long one, so the others keep streaming), and runs one decode step for every running request at once: the
weights are read once for the whole batch (:func:`~influence_tui.core.engine.generate.decode_together`). Each
request keeps its own sampling parameters, seed, stop strings, token budget and KV cache, and its text is the
text it gets alone. A request whose stop event is set (cancelled, its client gone) leaves at the next step, or
before it starts. Beyond ``queue_limit`` waiting requests, :meth:`EngineRunner.submit` raises
:class:`~influence_tui.core.errors.EngineBusyError`. Work run with :meth:`EngineRunner.run` (loading,
unloading) waits for the requests before it and holds back those after it; :meth:`EngineRunner.with_model`
work runs between two steps.

Prompt building (chat template, token counts) does not wait for a generation in progress: it runs on the
caller's thread, on a private copy of the tokenizer guarded by a lock (a fast tokenizer must not be used from
two threads at once).

Importing this module imports neither torch nor transformers; the engine thread imports them when it first
needs them.
"""

from __future__ import annotations

import copy
import inspect
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from influence_tui.core.engine import heap
from influence_tui.core.engine.token_stream import NO_FINAL_EVENT, EngineFailure, StreamItem, TokenStream
from influence_tui.core.errors import EngineBusyError, InfluenceError
from influence_tui.core.prompts import render_prompt
from influence_tui.core.types import (
    ChatMessage,
    GenerationStats,
    LoadedModelInfo,
    LoadOptions,
    LocalModel,
    SamplingParams,
    TokenEvent,
)

if TYPE_CHECKING:
    from influence_tui.core.engine.generate import Generation
    from influence_tui.core.engine.loader import LoadedModel

T = TypeVar("T")

__all__ = ["EngineRunner", "GenerateFn", "LoadFn", "TokenStream"]


class GenerateFn(Protocol):
    """The shape of :func:`influence_tui.core.engine.generate.generate_stream` (injectable for tests)."""

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
        prompt_cache: Any = None,
    ) -> Iterator[TokenEvent]: ...


class LoadFn(Protocol):
    """The shape of :func:`influence_tui.core.engine.loader.load_model`."""

    def __call__(
        self,
        local_model: LocalModel,
        *,
        device: str,
        device_index: int,
        dtype: str,
        quantize: str = "auto",
        cache_dir: Path | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> LoadedModel: ...


# ------------------------------------------------------------------------------------------ jobs


class _Job(Protocol):
    def fail(self, error: BaseException) -> None: ...


class _CallJob:
    def __init__(self, fn: Callable[[], Any], *, barrier: bool = True) -> None:
        self.fn = fn
        self.barrier = barrier
        """Whether it waits for the requests queued before it to finish (and holds back those after it)."""
        self.future: Future[Any] = Future()

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            self.future.set_result(self.fn())
        except BaseException as exc:
            self.future.set_exception(exc)

    def fail(self, error: BaseException) -> None:
        if self.future.set_running_or_notify_cancel():
            self.future.set_exception(error)


class _GenerateJob:
    def __init__(self, prompt_ids: list[int], params: SamplingParams, stream: TokenStream) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.stream = stream

    def fail(self, error: BaseException) -> None:
        self.stream._put(EngineFailure(error))


class _Running:
    """A request the engine is stepping: a real :class:`Generation`, or the events of an injected generate
    function (stepped one event at a time, never batched)."""

    __slots__ = ("events", "generation", "job", "loaded")

    def __init__(
        self,
        job: _GenerateJob,
        loaded: LoadedModel,
        *,
        generation: Generation | None = None,
        events: Iterator[TokenEvent] | None = None,
    ) -> None:
        self.job = job
        self.loaded = loaded
        self.generation = generation
        self.events = events

    @property
    def stream(self) -> TokenStream:
        return self.job.stream


# ------------------------------------------------------------------------------------------ the runner


def _takes_prompt_cache(fn: Any) -> bool:
    """Whether a generate function accepts ``prompt_cache`` (the real one does, and so does a wrapper that
    passes ``**kwargs`` on to it; scripted test ones may not)."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "prompt_cache" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


class EngineRunner:
    """The engine thread, its queue and its scheduler (see the module docstring). Create one per process;
    :meth:`close` it at exit.

    ``generate_fn`` defaults to the real generation loop, batched; tests pass a scripted function (its requests
    are stepped one event at a time, never batched). ``load_fn`` defaults to
    :func:`~influence_tui.core.engine.loader.load_model`. ``max_batch`` requests generate at once,
    ``queue_limit`` more may wait (None: any number), and ``prefill_chunk`` (above 0) prefills long prompts that
    many tokens per step. ``prompt_cache_mib`` bounds each loaded model's prompt cache (the KV caches of recent
    conversations; None keeps the loader's default).
    """

    def __init__(
        self,
        generate_fn: GenerateFn | None = None,
        *,
        load_fn: LoadFn | None = None,
        name: str = "influence-engine",
        max_batch: int = 1,
        queue_limit: int | None = None,
        prefill_chunk: int = 0,
        prompt_cache_mib: float | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._generate_fn = generate_fn
        self._load_fn = load_fn
        self.max_batch = max_batch
        self.queue_limit = queue_limit
        self.prefill_chunk = max(0, prefill_chunk)
        self.prompt_cache_mib = prompt_cache_mib
        """The bound of a loaded model's prompt cache (None: the loader's default)."""
        self._observers: list[Callable[[GenerationStats], None]] = []
        self._step_rate = 0.0
        """Tokens per second of the last decode step (engine thread writes, anyone reads)."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: deque[_CallJob | _GenerateJob] = deque()
        """Work not started yet, in the order it came (guarded by the lock)."""
        self._waiting = 0
        """Generation requests in :attr:`_pending`."""
        self._running_stops: set[threading.Event] = set()
        """The stop events of the requests generating now (guarded by the lock)."""
        self._closed = False
        self._running: list[_Running] = []
        """Engine thread only."""
        self._mean_request_s = 1.0
        """A moving average of how long a request generates (for ``Retry-After``)."""
        self._loaded: LoadedModel | None = None
        """Read and written on the engine thread only."""
        self._info: LoadedModelInfo | None = None
        self._prompt_tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- the engine thread

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._pending and not self._running and not self._closed:
                        self._wake.wait()
                    if self._closed and not self._running:
                        break
                    calls, admitted, skipped = self._take_work()
                for job in skipped:
                    self._end(job, [_cancelled_event(len(job.prompt_ids))])
                for call in calls:
                    call.run()
                for job in admitted:
                    self._start(job)
                if self._running:
                    self._step()
                    if not self._running and not self._pending:
                        heap.trim()  # idle: the freed caches' pages go back to the system
        finally:
            self._unload()

    def _take_work(self) -> tuple[list[_CallJob], list[_GenerateJob], list[_GenerateJob]]:
        """Under the lock: the calls to run now, the requests to start (as many as the batch has room for, in
        order) and the waiting requests cancelled meanwhile. Nothing moves ahead of a barrier call, which runs
        once everything before it has finished."""
        calls: list[_CallJob] = []
        admitted: list[_GenerateJob] = []
        skipped: list[_GenerateJob] = []
        room = self.max_batch - len(self._running)
        kept: deque[_CallJob | _GenerateJob] = deque()
        pending = self._pending
        while pending:
            job = pending.popleft()
            if isinstance(job, _GenerateJob):
                if job.stream.stop_event.is_set():
                    skipped.append(job)
                elif len(admitted) < room:
                    admitted.append(job)
                    self._running_stops.add(job.stream.stop_event)
                else:
                    kept.append(job)
                    continue
                self._waiting -= 1
            elif not job.barrier:
                calls.append(job)
            elif not kept and not admitted and not self._running:
                calls.append(job)
                break
            else:
                kept.append(job)
                break
        kept.extend(pending)
        self._pending = kept
        return calls, admitted, skipped

    def _start(self, job: _GenerateJob) -> None:
        """Begin ``job``: its first events (a final one, if it ends at once) go out, and it joins the batch."""
        stream = job.stream
        loaded = self._loaded
        if loaded is None or not loaded.loaded:
            self._end(job, [EngineFailure(InfluenceError("no model is loaded", hint="load a model before generating"))])
            return
        prompt_cache = getattr(loaded, "prompt_cache", None)
        try:
            if self._generate_fn is None:
                from influence_tui.core.engine.generate import Generation

                generation = Generation(
                    loaded.model,
                    loaded.tokenizer,
                    job.prompt_ids,
                    job.params,
                    eos_token_ids=loaded.info.eos_token_ids,
                    context_length=loaded.info.context_length,
                    stop_event=stream.stop_event,
                    prompt_cache=prompt_cache,
                    prefill_chunk=self.prefill_chunk,
                )
                running = _Running(job, loaded, generation=generation)
                first: list[StreamItem] = list(generation.initial_events())
            else:
                extra: dict[str, Any] = {}
                if prompt_cache is not None and _takes_prompt_cache(self._generate_fn):
                    extra["prompt_cache"] = prompt_cache
                events = self._generate_fn(
                    loaded.model,
                    loaded.tokenizer,
                    job.prompt_ids,
                    job.params,
                    eos_token_ids=loaded.info.eos_token_ids,
                    context_length=loaded.info.context_length,
                    stop_event=stream.stop_event,
                    **extra,
                )
                running = _Running(job, loaded, events=iter(events))
                first = []
        except Exception as exc:
            self._end(job, [EngineFailure(self._user_error(exc, loaded))])
            return
        if first:
            self._end(job, first)
            return
        self._running.append(running)

    def _step(self) -> None:
        """One round: cancelled requests leave, prompts are prefilled (one chunk each, about ``prefill_chunk``
        tokens in all), then every decoding request gets one token, in one batched call."""
        finished: list[tuple[_Running, list[StreamItem]]] = []
        decoding: list[_Running] = []
        prefilled = 0
        for running in self._running:
            generation = running.generation
            if generation is None:
                finished.extend(self._step_script(running))
                continue
            try:
                events: list[StreamItem] = list(generation.check_cancelled())
                if not events and generation.prefilling:
                    if self.prefill_chunk and prefilled >= self.prefill_chunk:
                        continue  # this round's prefill budget is spent: its next chunk comes next round
                    before = generation.prefilled
                    events = list(generation.prefill_step())
                    prefilled += generation.prefilled - before
                elif not events:
                    decoding.append(running)
                    continue
            except Exception as exc:
                generation.close()
                events = [EngineFailure(self._user_error(exc, running.loaded))]
            if events:
                self._deliver(running, events, finished)
        if decoding:
            self._decode(decoding, finished)
        for running, items in finished:
            self._running.remove(running)
            self._end(running.job, items)

    def _decode(self, decoding: list[_Running], finished: list[tuple[_Running, list[StreamItem]]]) -> None:
        from influence_tui.core.engine.generate import decode_together

        generations = [r.generation for r in decoding if r.generation is not None]
        began = time.perf_counter()
        try:
            results = decode_together(generations)
            self._step_rate = len(generations) / max(time.perf_counter() - began, 1e-9)
        except Exception as exc:
            for running in decoding:
                if running.generation is not None:
                    running.generation.close()
                finished.append((running, [EngineFailure(self._user_error(exc, running.loaded))]))
            return
        for running, events in zip(decoding, results, strict=True):
            self._deliver(running, list(events), finished)

    def _step_script(self, running: _Running) -> list[tuple[_Running, list[StreamItem]]]:
        assert running.events is not None
        try:
            event = next(running.events)
        except StopIteration:
            return [(running, [NO_FINAL_EVENT])]
        except Exception as exc:
            return [(running, [EngineFailure(self._user_error(exc, running.loaded))])]
        if event.stats is not None:
            return [(running, [event])]
        running.stream._put(event)
        return []

    @staticmethod
    def _deliver(
        running: _Running, events: list[StreamItem], finished: list[tuple[_Running, list[StreamItem]]]
    ) -> None:
        """Hand a step's events to the stream; the last one of a finished request waits for :meth:`_end`."""
        last = events[-1]
        if isinstance(last, EngineFailure) or (isinstance(last, TokenEvent) and last.stats is not None):
            finished.append((running, events))
            return
        for item in events:
            running.stream._put(item)

    def _end(self, job: _GenerateJob, items: Sequence[StreamItem]) -> None:
        """The last items of a request: it no longer counts as running, then its stream ends."""
        with self._lock:
            self._running_stops.discard(job.stream.stop_event)
        for item in items:
            if isinstance(item, TokenEvent) and item.stats is not None:
                if item.stats.total_s > 0:
                    self._mean_request_s = 0.8 * self._mean_request_s + 0.2 * item.stats.total_s
                self._tell_observers(item.stats)
            job.stream._put(item)

    def _tell_observers(self, stats: GenerationStats) -> None:
        for observer in list(self._observers):
            try:
                observer(stats)
            except Exception:  # an observer (metrics) must never break a request
                continue

    @staticmethod
    def _user_error(exc: Exception, loaded: LoadedModel) -> BaseException:
        from influence_tui.core.engine import loader

        if isinstance(exc, InfluenceError) or not loader.is_out_of_memory(exc):
            return exc
        loader.release_memory(loaded.torch_device)
        error = InfluenceError(
            f"ran out of memory generating with {loaded.info.name} on {loaded.info.device}",
            hint="use a shorter prompt or fewer max tokens, a smaller model or a smaller dtype",
        )
        error.__cause__ = exc
        return error

    def _load(
        self, local_model: LocalModel, options: LoadOptions, on_status: Callable[[str], None] | None
    ) -> LoadedModelInfo:
        from influence_tui.core.engine import loader

        torch_device = loader.resolve_device(options.device, options.device_index)
        torch_dtype = loader.resolve_dtype(options.dtype, torch_device)
        current = self._loaded
        if current is not None and current.is_same(local_model, torch_device, torch_dtype, options.quantize):
            return current.info
        self._unload()  # before loading the next one: never two models in memory at once
        load_fn = self._load_fn or loader.load_model
        loaded = load_fn(local_model, **options.as_kwargs(), on_status=on_status)
        if self.prompt_cache_mib is not None and loaded.prompt_cache is not None:
            loaded.prompt_cache.resize(self.prompt_cache_mib)
        prompt_tokenizer = copy.deepcopy(loaded.tokenizer)
        with self._tokenizer_lock:
            self._prompt_tokenizer = prompt_tokenizer
        self._loaded = loaded
        self._info = loaded.info
        return loaded.info

    def _unload(self) -> None:
        current, self._loaded = self._loaded, None
        self._info = None
        with self._tokenizer_lock:
            self._prompt_tokenizer = None
        if current is not None:
            current.unload()

    # -- calling into the engine thread

    def _put(self, job: _CallJob | _GenerateJob) -> None:
        with self._lock:
            if self._closed:
                raise InfluenceError("the engine is closed")
            if isinstance(job, _GenerateJob):
                if self.queue_limit is not None and self._waiting >= self.queue_limit:
                    raise EngineBusyError(
                        f"the engine is busy: {len(self._running_stops)} requests are generating and "
                        f"{self._waiting} are waiting",
                        hint="try again in a moment",
                        retry_after=self._retry_after(),
                    )
                self._waiting += 1
            self._pending.append(job)
            self._wake.notify()

    def _retry_after(self) -> float:
        """Seconds until a waiting slot is likely to free: a request's mean time, per round of the batch."""
        rounds = (self._waiting + 1) / self.max_batch
        return float(min(60, max(1, math.ceil(self._mean_request_s * rounds))))

    def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the engine thread once the work queued before it has finished (requests queued after
        it wait for it), and return its result (blocking)."""
        return self._call(fn, barrier=True)

    def _call(self, fn: Callable[[], T], *, barrier: bool) -> T:
        if threading.current_thread() is self._thread:
            return fn()
        job = _CallJob(fn, barrier=barrier)
        self._put(job)
        result: T = job.future.result()
        return result

    def with_model(self, fn: Callable[[LoadedModel], T]) -> T:
        """Run ``fn(loaded_model)`` on the engine thread between two decode steps, without waiting for the
        requests generating (for work that needs the model itself, e.g. embeddings). ``fn`` must not unload
        the model or touch a running request's cache."""

        def call() -> T:
            loaded = self._loaded
            if loaded is None:
                raise InfluenceError("no model is loaded", hint="load a model first")
            return fn(loaded)

        return self._call(call, barrier=False)

    def load(
        self,
        local_model: LocalModel,
        options: LoadOptions | None = None,
        *,
        on_status: Callable[[str], None] | None = None,
    ) -> LoadedModelInfo:
        """Load ``local_model`` on the engine thread (blocking) as ``options`` say (default: every option
        ``auto``). The model already loaded is unloaded first, unless it is the same model on the same device
        in the same dtype and quantization: then this does nothing. ``on_status`` gets one-time notes (building
        kernels, a fallback to transformers)."""
        chosen = options or LoadOptions()
        return self.run(lambda: self._load(local_model, chosen, on_status))

    def unload(self) -> None:
        """Free the loaded model (after the requests already queued)."""
        self.run(self._unload)

    @property
    def info(self) -> LoadedModelInfo | None:
        """What is loaded now, or None."""
        return self._info

    def describe(self) -> str | None:
        """``Loaded NAME on DEVICE (DTYPE) in N s``, or None when nothing is loaded."""
        info = self._info
        if info is None:
            return None
        from influence_tui.core.engine.loader import describe_info

        return describe_info(info)

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, stop_event: threading.Event | None = None
    ) -> TokenStream:
        """Queue a generation; returns at once. Read the returned stream for its tokens. Raises
        :class:`~influence_tui.core.errors.EngineBusyError` when ``queue_limit`` requests already wait."""
        stream = TokenStream(stop_event if stop_event is not None else threading.Event())
        self._put(_GenerateJob([int(i) for i in prompt_ids], params, stream))
        return stream

    def load_report(self) -> dict[str, int]:
        """How many requests generate now and how many wait (a snapshot, from any thread)."""
        with self._lock:
            return {"running": len(self._running_stops), "waiting": self._waiting, "max_batch": self.max_batch}

    def step_rate(self) -> float:
        """Tokens per second of the last decode step (every request of the batch counted); 0 while none runs."""
        with self._lock:
            running = bool(self._running_stops)
        return self._step_rate if running else 0.0

    def prompt_cache_report(self) -> dict[str, int]:
        """The loaded model's prompt cache: ``entries``, ``bytes`` they hold and ``max_bytes`` (zeros when no
        model is loaded; a snapshot, from any thread)."""
        loaded = self._loaded
        cache = getattr(loaded, "prompt_cache", None) if loaded is not None else None
        if cache is None:
            return {"entries": 0, "bytes": 0, "max_bytes": 0}
        return {"entries": len(cache), "bytes": int(cache.nbytes), "max_bytes": int(cache.max_bytes)}

    def add_observer(self, observer: Callable[[GenerationStats], None]) -> None:
        """Call ``observer(stats)`` on the engine thread as each request ends (cancelled ones too); it must be
        quick and never block (metrics counters). An observer that raises is ignored."""
        self._observers.append(observer)

    def cancel_all(self) -> int:
        """End every request, running or waiting, as if its client had cancelled it (a server shutting down):
        each stream ends soon with finish reason ``"cancelled"``. New requests are still taken. Returns how many
        were asked to stop."""
        with self._lock:
            stops = set(self._running_stops)
            stops.update(job.stream.stop_event for job in self._pending if isinstance(job, _GenerateJob))
            self._wake.notify()
        for stop in stops:
            stop.set()
        return len(stops)

    # -- the tokenizer, for building prompts

    def _with_tokenizer(self, fn: Callable[[Any], T]) -> T:
        with self._tokenizer_lock:
            tokenizer = self._prompt_tokenizer
            if tokenizer is None:
                raise InfluenceError("no model is loaded", hint="load a model first")
            return fn(tokenizer)

    def apply_chat_template(
        self, messages: Sequence[ChatMessage | Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> list[int]:
        """The prompt token ids for a conversation (:func:`~influence_tui.core.prompts.render_prompt`: the
        model's chat template, or a plain transcript for a model without one)."""
        conversation = [
            {"role": m.role, "content": m.content} if isinstance(m, ChatMessage) else dict(m) for m in messages
        ]

        return self._with_tokenizer(
            lambda tokenizer: render_prompt(tokenizer, conversation, add_generation_prompt=add_generation_prompt)[1]
        )

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return self._with_tokenizer(
            lambda tok: [int(i) for i in tok.encode(text, add_special_tokens=add_special_tokens)]
        )

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self._with_tokenizer(lambda tok: str(tok.decode(list(ids), skip_special_tokens=skip_special_tokens)))

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    # -- shutting down

    def close(self, timeout: float | None = 30.0) -> None:
        """Cancel the requests running, fail the queued ones, unload the model and stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending)
            self._pending.clear()
            self._waiting = 0
            running = list(self._running_stops)
            self._wake.notify()
        for job in pending:
            job.fail(InfluenceError("the engine was closed before this request ran"))
        for stop in running:
            stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> EngineRunner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _cancelled_event(prompt_tokens: int) -> TokenEvent:
    return TokenEvent(
        text="",
        stats=GenerationStats(
            prompt_tokens=prompt_tokens,
            generated_tokens=0,
            time_to_first_token_s=0.0,
            decode_tokens_per_s=0.0,
            total_s=0.0,
            finish_reason="cancelled",
        ),
    )
