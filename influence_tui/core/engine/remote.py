"""A remote engine (OpenAI / Ollama wire) behind the same interface as the local runner: a TokenStream out.

:class:`RemoteEngine` serves one :class:`~influence_tui.core.remotes.RemoteModel`. :meth:`~RemoteEngine.load`
asks the remote about the model (it must serve it; its context length when it says) and returns a
:class:`~influence_tui.core.types.LoadedModelInfo` like a local load. :meth:`~RemoteEngine.start_chat` fits the
conversation into that context (token counts estimated here: the remote applies its own chat template) and
returns a :class:`RemoteTokenStream`, read like the local engine's: text events, then one final event with
:class:`~influence_tui.core.types.GenerationStats` (the remote's ``usage`` and timings where it gives them,
time to first token and tokens/s measured here otherwise). Its stop event ends the stream at once and closes
the connection, so the remote stops too. An error is raised where the stream is read: a
:class:`~influence_tui.core.errors.RemoteError` whose ``partial_text`` is what had arrived.

Importing this module imports httpx, not torch.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path

from influence_tui.core.engine.remote_http import OpenReply, RemoteClient
from influence_tui.core.engine.remote_wire import takes_extras
from influence_tui.core.engine.runner import TokenStream
from influence_tui.core.errors import RemoteError
from influence_tui.core.remotes import RemoteModel
from influence_tui.core.sessions import PromptPlan, build_prompt, reply_reserve
from influence_tui.core.types import ChatMessage, GenerationStats, LoadedModelInfo, SamplingParams, TokenEvent

OLLAMA_DEFAULT_CONTEXT = 8192
"""The ``num_ctx`` asked of an Ollama model whose Modelfile sets none: its own default (2048 or 4096) would cut
the front of a long chat silently; more would make it allocate a KV cache for the model's full context."""

POLL_S = 0.05
"""How often a reader waiting for the next chunk checks the stop event (the remote may be silent for long)."""

EXTRAS = ("top_k", "min_p", "repeat_penalty")


def estimate_tokens(text: str) -> int:
    """A token count for text we cannot tokenize (the remote's tokenizer): a UTF-8 byte count over 3, on the
    high side of real tokenizers for English (about 4 bytes a token) and about right for CJK (3 bytes a
    character, about a token each)."""
    return math.ceil(len(text.encode("utf-8")) / 3)


class _EstimatingTokenizer:
    """Just enough of a tokenizer for :func:`~influence_tui.core.sessions.build_prompt` to fit a conversation
    by estimated counts: ``role: content`` lines (a few tokens of template per message), ids all 0."""

    chat_template = "role: content"

    def apply_chat_template(
        self, conversation: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True, tokenize: bool = False
    ) -> str:
        return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in conversation)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [0] * estimate_tokens(text)


@dataclass
class _Progress:
    """What the reader thread has seen so far (read by the consumer to word a cancel or a failure)."""

    parts: list[str]
    started: float
    first_at: float | None = None
    last_at: float | None = None
    pieces: int = 0
    finish: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    remote_rate: float | None = None


class RemoteTokenStream(TokenStream):
    """A :class:`TokenStream` fed by a thread that reads the remote's answer.

    Differences from the local engine's, none visible to a reader: :meth:`wait_open` blocks until the remote
    has answered (raising its error), for servers that want the status before they start a stream; and the
    stop event is checked while waiting, so a cancel ends the stream at once even when the remote is silent.
    """

    def __init__(
        self,
        open_stream: Callable[[], AbstractContextManager[OpenReply]],
        prompt_estimate: int,
        stop_event: threading.Event,
    ) -> None:
        super().__init__(stop_event)
        self._queue: queue.SimpleQueue[TokenEvent | BaseException | None] = queue.SimpleQueue()
        self._open_stream = open_stream
        self._prompt_estimate = prompt_estimate
        self._progress = _Progress([], time.perf_counter())
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._done = False
        self._reply: OpenReply | None = None
        self._thread = threading.Thread(target=self._read, name="influence-remote-stream", daemon=True)
        self._thread.start()

    # -- the reader thread

    def _read(self) -> None:
        progress = self._progress
        try:
            with self._open_stream() as reply:
                self._reply = reply
                self._opened.set()
                for chunk in reply.chunks:
                    if self.stop_event.is_set():
                        break  # leaving the block closes the connection: the remote stops generating
                    now = time.perf_counter()
                    if chunk.text:
                        progress.first_at = progress.first_at or now
                        progress.last_at = now
                        progress.pieces += 1
                        progress.parts.append(chunk.text)
                        self._queue.put(TokenEvent(chunk.text))
                    progress.finish = chunk.finish_reason or progress.finish
                    progress.prompt_tokens = chunk.prompt_tokens or progress.prompt_tokens
                    progress.completion_tokens = chunk.completion_tokens or progress.completion_tokens
                    progress.remote_rate = chunk.decode_tokens_per_s or progress.remote_rate
        except BaseException as exc:
            if self.stop_event.is_set():  # the reader cut the connection (a cancel): not a failure
                self._queue.put(None)
                return
            if isinstance(exc, RemoteError):
                exc.partial_text = "".join(progress.parts)
                if exc.interrupted and not progress.parts and progress.finish is None:
                    exc.hint = "/retry asks again"
            self._open_error = exc
            self._opened.set()
            self._queue.put(exc)
            return
        self._queue.put(None)

    def _stats(self, finish: str) -> GenerationStats:
        p = self._progress
        end = p.last_at or time.perf_counter()
        generated = p.completion_tokens if p.completion_tokens is not None else p.pieces
        ttft = (p.first_at - p.started) if p.first_at else end - p.started
        span = (p.last_at - p.first_at) if p.first_at and p.last_at else 0.0
        rate = p.remote_rate or ((generated - 1) / span if generated > 1 and span > 0 else 0.0)
        prompt = p.prompt_tokens if p.prompt_tokens is not None else self._prompt_estimate
        return GenerationStats(
            prompt_tokens=prompt,
            generated_tokens=generated,
            time_to_first_token_s=ttft,
            decode_tokens_per_s=rate,
            total_s=time.perf_counter() - p.started,
            finish_reason="length" if finish == "length" else "cancelled" if finish == "cancelled" else "stop",
            prompt_tokens_per_s=prompt / ttft if ttft > 0 else 0.0,
        )

    # -- the reader's side

    def wait_open(self, timeout: float | None = None) -> None:
        """Block until the remote has accepted the request (raise its error if it refused it)."""
        self._opened.wait(timeout)
        if self._open_error is not None and not self._progress.parts:
            raise self._open_error

    def __next__(self) -> TokenEvent:
        if self._done:
            raise StopIteration
        while True:
            if self.stop_event.is_set():
                reply = self._reply
                if reply is not None:
                    reply.abort()  # wakes the reader thread, which closes the connection
                return self._final(self._stats("cancelled"))
            try:
                item = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if item is None:
                return self._final(self._stats(self._progress.finish or "stop"))
            return item

    def _final(self, stats: GenerationStats) -> TokenEvent:
        self._done = True
        self.stats = stats
        return TokenEvent("", stats=stats)

    @property
    def finished(self) -> bool:
        return self._done

    def __exit__(self, *exc_info: object) -> None:
        if not self._done:
            self.cancel()


class RemoteEngine:
    """One remote model behind the runner's interface (``load``, ``info``, ``describe``, ``close``) plus
    :meth:`start_chat` and :meth:`start_completion`, which give token streams."""

    remote_engine = True
    """Marks an engine whose chats leave this machine (front ends say so)."""

    def __init__(self, model: RemoteModel, client: RemoteClient | None = None) -> None:
        self.model = model
        self.client = client or RemoteClient(model.remote)
        self._info: LoadedModelInfo | None = None
        self._num_ctx: int | None = None
        self._extras = takes_extras(model.remote, model.owned_by)

    def load(self) -> LoadedModelInfo:
        """Ask the remote about the model (blocking: a network request). Errors are :class:`RemoteError`s."""
        started = time.perf_counter()
        details = self.client.model_details(self.model.model_id)
        remote = self.model.remote
        context = details.context_length or self.model.context_length or 0
        if remote.kind == "ollama":
            self._num_ctx = (
                remote.num_ctx or details.num_ctx or min(context or OLLAMA_DEFAULT_CONTEXT, OLLAMA_DEFAULT_CONTEXT)
            )
            context = self._num_ctx
        owned_by = details.owned_by or self.model.owned_by
        self._extras = takes_extras(remote, owned_by)
        self.model = replace(self.model, context_length=context or None, owned_by=owned_by)
        self._info = LoadedModelInfo(
            name=self.model.name,
            path=Path(remote.name),
            device=f"remote {remote.host}",
            dtype=f"{remote.kind} API",
            load_s=time.perf_counter() - started,
            context_length=context,
            parameters=0,
            architecture=self.model.family or "",
            has_chat_template=True,
            quantization=details.quantization or self.model.quantization or "",
        )
        return self._info

    @property
    def info(self) -> LoadedModelInfo | None:
        return self._info

    def describe(self) -> str | None:
        info = self._info
        if info is None:
            return None
        context = f"context {info.context_length}" if info.context_length else "context unknown"
        return (
            f"Connected to {info.name} at {self.model.remote.api_base} ({self.model.remote.kind} API, {context}) in "
            f"{info.load_s:.1f} s; messages are sent to {self.model.host}"
        )

    def ignored_params(self, params: SamplingParams) -> tuple[str, ...]:
        """The sampling parameters set to something this remote will not get (it takes no extra fields)."""
        if self._extras:
            return ()
        changed = {
            "top_k": params.top_k is not None,
            "min_p": params.min_p is not None,
            "repeat_penalty": params.repeat_penalty != 1.0,
        }
        return tuple(name for name in EXTRAS if changed[name])

    def _note(self, params: SamplingParams) -> str | None:
        ignored = self.ignored_params(params)
        if not ignored:
            return None
        return (
            f"{self.model.remote.name} is an OpenAI-compatible API not known to take {', '.join(ignored)}: they are not "
            f"sent and its own defaults apply (extras = true in [remotes.{self.model.remote.name}] sends them)"
        )

    def plan(
        self, messages: Sequence[ChatMessage], system_prompt: str | None, params: SamplingParams
    ) -> tuple[PromptPlan, list[dict[str, str]]]:
        """The conversation to send, fitted to the remote's context by estimated counts (left as it is when
        the context is unknown), and the plan saying what was left out."""
        context = self._info.context_length if self._info else 0
        fit_to = context or 1 << 40
        plan = build_prompt(
            _EstimatingTokenizer(),
            messages,
            system_prompt=system_prompt,
            context_length=fit_to,
            reserve_tokens=reply_reserve(params, context) if context else 0,
        )
        dropped = set(plan.dropped_indexes)
        conversation = [{"role": "system", "content": system_prompt}] if system_prompt else []
        conversation += [{"role": m.role, "content": m.content} for i, m in enumerate(messages) if i not in dropped]
        warning = self._note(params)
        if warning:
            plan = replace(plan, warning=warning)
        return plan, conversation

    def start_chat(
        self,
        messages: Sequence[ChatMessage],
        system_prompt: str | None,
        params: SamplingParams,
        stop_event: threading.Event | None = None,
    ) -> tuple[PromptPlan, RemoteTokenStream]:
        """Fit and send the conversation; returns at once with the plan and the reply's stream."""
        if self._info is None:
            raise RemoteError(f"{self.model.name} is not connected yet", hint="choose the model first", reason="config")
        plan, conversation = self.plan(messages, system_prompt, params)
        max_tokens = params.max_tokens
        if self._info.context_length:
            max_tokens = max(1, min(max_tokens, self._info.context_length - plan.prompt_tokens))
        sent = replace(params, max_tokens=max_tokens)

        def open_stream() -> AbstractContextManager[OpenReply]:
            return self.client.stream_chat(
                self.model.model_id, conversation, sent, extras=self._extras, num_ctx=self._num_ctx
            )

        return plan, RemoteTokenStream(open_stream, plan.prompt_tokens, stop_event or threading.Event())

    def start_completion(
        self, prompt: str, params: SamplingParams, stop_event: threading.Event | None = None
    ) -> RemoteTokenStream:
        """Continue ``prompt`` as it is (no chat template) on the remote."""

        def open_stream() -> AbstractContextManager[OpenReply]:
            return self.client.stream_completion(
                self.model.model_id, prompt, params, extras=self._extras, num_ctx=self._num_ctx
            )

        return RemoteTokenStream(open_stream, estimate_tokens(prompt), stop_event or threading.Event())

    def estimate_tokens(self, conversation: Sequence[Mapping[str, str]]) -> int:
        """The estimated size of a conversation, for a context meter."""
        return estimate_tokens(_EstimatingTokenizer().apply_chat_template(conversation))

    def close(self, timeout: float | None = None) -> None:
        self.client.close()

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
