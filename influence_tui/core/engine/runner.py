"""One long-lived thread owns the loaded model and every torch call; front ends submit work and get token streams.

The TUI's workers and the server's handlers call :class:`EngineRunner` from their own threads. Loading,
unloading and generating run on the engine thread, one job at a time, in the order they were submitted: a
second request waits its turn and never shares the KV cache of another. A request's tokens reach its
:class:`TokenStream` through a queue; an error on the engine thread is re-raised where the stream is read.

Prompt building (chat template, token counts) does not wait for a generation in progress: it runs on the
caller's thread, on a private copy of the tokenizer guarded by a lock (a fast tokenizer must not be used from
two threads at once).

Importing this module imports neither torch nor transformers; the engine thread imports them when it first
needs them.
"""

from __future__ import annotations

import copy
import inspect
import queue
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from influence_tui.core.errors import InfluenceError
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
    from influence_tui.core.engine.loader import LoadedModel

T = TypeVar("T")


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


# ------------------------------------------------------------------------------------------ token streams


@dataclass(frozen=True)
class _Failure:
    error: BaseException


class _End:
    """The generator finished without a final event (only a broken generate function does that)."""


_END = _End()

_StreamItem = TokenEvent | _Failure | _End


class TokenStream:
    """The events of one request, in order, ending with the event that carries the stats.

    Iterate it from any one thread. An error raised on the engine thread is raised here. :meth:`cancel` (or
    leaving a ``with`` block early) sets the request's stop event: the stream then ends soon with a final
    event whose finish reason is ``"cancelled"``.
    """

    def __init__(self, stop_event: threading.Event) -> None:
        self.stop_event = stop_event
        self._items: queue.SimpleQueue[_StreamItem] = queue.SimpleQueue()
        self._finished = False
        self.stats: GenerationStats | None = None
        """Set once the final event has been read."""

    # engine side
    def _put(self, item: _StreamItem) -> None:
        self._items.put(item)

    # consumer side
    def __iter__(self) -> Iterator[TokenEvent]:
        return self

    def __next__(self) -> TokenEvent:
        if self._finished:
            raise StopIteration
        item = self._items.get()
        if isinstance(item, _Failure):
            self._finished = True
            raise item.error
        if isinstance(item, _End):
            self._finished = True
            raise StopIteration
        if item.stats is not None:
            self._finished = True
            self.stats = item.stats
        return item

    @property
    def finished(self) -> bool:
        return self._finished

    def cancel(self) -> None:
        """Ask the engine to stop this request (a request still waiting its turn never starts)."""
        self.stop_event.set()

    def text(self) -> str:
        """Read the rest of the stream and return its text (stats are in :attr:`stats` afterwards)."""
        return "".join(event.text for event in self)

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._finished:
            self.cancel()


# ------------------------------------------------------------------------------------------ jobs


class _Job(Protocol):
    def run(self) -> None: ...

    def fail(self, error: BaseException) -> None: ...


class _CallJob:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
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
    def __init__(
        self, runner: EngineRunner, prompt_ids: list[int], params: SamplingParams, stream: TokenStream
    ) -> None:
        self.runner = runner
        self.prompt_ids = prompt_ids
        self.params = params
        self.stream = stream

    def run(self) -> None:
        self.runner._generate(self)

    def fail(self, error: BaseException) -> None:
        self.stream._put(_Failure(error))


_SHUTDOWN = object()


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
    """The engine thread and its job queue. Create one per process; :meth:`close` it at exit.

    ``generate_fn`` and ``load_fn`` default to the real :func:`~influence_tui.core.engine.generate.generate_stream`
    and :func:`~influence_tui.core.engine.loader.load_model`; tests pass scripted ones.
    """

    def __init__(
        self,
        generate_fn: GenerateFn | None = None,
        *,
        load_fn: LoadFn | None = None,
        name: str = "influence-engine",
    ) -> None:
        self._generate_fn = generate_fn
        self._load_fn = load_fn
        self._jobs: queue.Queue[_Job | object] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._current_stop: threading.Event | None = None
        self._loaded: LoadedModel | None = None
        """Read and written on the engine thread only."""
        self._info: LoadedModelInfo | None = None
        self._prompt_tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- the engine thread

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _SHUTDOWN:
                break
            assert isinstance(job, _CallJob | _GenerateJob)
            job.run()
        self._unload()

    def _generate(self, job: _GenerateJob) -> None:
        stream = job.stream
        if stream.stop_event.is_set():
            stream._put(_cancelled_event(len(job.prompt_ids)))
            return
        loaded = self._loaded
        if loaded is None or not loaded.loaded:
            stream._put(_Failure(InfluenceError("no model is loaded", hint="load a model before generating")))
            return
        generate_fn = self._generate_fn
        if generate_fn is None:
            from influence_tui.core.engine.generate import generate_stream

            generate_fn = self._generate_fn = generate_stream
        with self._lock:
            self._current_stop = stream.stop_event
        try:
            extra: dict[str, Any] = {}
            prompt_cache = getattr(loaded, "prompt_cache", None)
            if prompt_cache is not None and _takes_prompt_cache(generate_fn):
                extra["prompt_cache"] = prompt_cache
            events = generate_fn(
                loaded.model,
                loaded.tokenizer,
                job.prompt_ids,
                job.params,
                eos_token_ids=loaded.info.eos_token_ids,
                context_length=loaded.info.context_length,
                stop_event=stream.stop_event,
                **extra,
            )
            for event in events:
                stream._put(event)
                if event.stats is not None:
                    return
            stream._put(_END)
        except Exception as exc:
            stream._put(_Failure(self._user_error(exc, loaded)))
        finally:
            with self._lock:
                self._current_stop = None

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

    def _put(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise InfluenceError("the engine is closed")
            self._jobs.put(job)

    def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the engine thread, after the work already queued, and return its result (blocking)."""
        if threading.current_thread() is self._thread:
            return fn()
        job = _CallJob(fn)
        self._put(job)
        result: T = job.future.result()
        return result

    def with_model(self, fn: Callable[[LoadedModel], T]) -> T:
        """Run ``fn(loaded_model)`` on the engine thread (for work that needs the model itself, e.g. embeddings)."""

        def call() -> T:
            loaded = self._loaded
            if loaded is None:
                raise InfluenceError("no model is loaded", hint="load a model first")
            return fn(loaded)

        return self.run(call)

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
        """Queue a generation; returns at once. Read the returned stream for its tokens."""
        stream = TokenStream(stop_event if stop_event is not None else threading.Event())
        self._put(_GenerateJob(self, [int(i) for i in prompt_ids], params, stream))
        return stream

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
        """Cancel the request running, fail the queued ones, unload the model and stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending: list[_Job] = []
            while True:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _CallJob | _GenerateJob):
                    pending.append(item)
            running = self._current_stop
            self._jobs.put(_SHUTDOWN)
        for job in pending:
            job.fail(InfluenceError("the engine was closed before this request ran"))
        if running is not None:
            running.set()
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
