"""What the routes share: the runner, the model it serves, readiness, prompt building and embeddings.

The engine thread owns the model: generation goes through :meth:`EngineRunner.submit`, embeddings through
:meth:`EngineRunner.with_model` / :meth:`EngineRunner.run`, so they queue with everything else. Prompts are
built on the caller's thread (a worker thread of the event loop) with a private copy of the tokenizer, so a
new request's prompt is ready while another request generates.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from influence_tui import __version__
from influence_tui.core.chat import reply_reserve
from influence_tui.core.config import Settings
from influence_tui.core.errors import EngineBusyError, InfluenceError, ModelNotFoundError
from influence_tui.core.library import Library
from influence_tui.core.sessions import PromptPlan, build_prompt
from influence_tui.core.types import ChatMessage, LoadedModelInfo, LocalModel, SamplingParams
from influence_tui.server.errors import APIError, from_influence_error

if TYPE_CHECKING:
    from influence_tui.core.engine.embed import Embedder
    from influence_tui.core.engine.loader import LoadedModel
    from influence_tui.core.engine.runner import EngineRunner, TokenStream
    from influence_tui.server.gateway import Gateway

log = logging.getLogger("influence.server")

Status = Literal["loading", "ok", "error"]


def utc_iso(timestamp: float | None = None) -> str:
    """RFC 3339 in UTC with a ``Z``, as Ollama writes times."""
    moment = datetime.now(timezone.utc) if timestamp is None else datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def strip_tag(name: str) -> str:
    """``name:latest`` -> ``name`` (Ollama clients add the default tag to names they are given)."""
    return name[: -len(":latest")] if name.endswith(":latest") else name


_DEMO_SUFFIX = " (demo)"


def model_id(model: LocalModel) -> str:
    """The id a client uses for a library model, as Ollama and OpenAI-style servers spell them: lowercase, no
    spaces or brackets, ``name:tag`` with a GGUF's quantization as the tag (the demo model is
    ``smollm2-135m-instruct:q4_1``; a folder's ``qwen:Q4_K_M`` is ``qwen:q4_k_m``; a safetensors model keeps its
    name, lowercased: ``huggingfacetb/smollm2-135m-instruct``)."""
    name = model.name.strip()
    if model.source == "demo" and name.endswith(_DEMO_SUFFIX):
        name = name[: -len(_DEMO_SUFFIX)]
    name = re.sub(r"[()\[\]{}]", "", re.sub(r"\s+", "-", name)).lower()
    if ":" not in name and model.quantization and model.format.startswith("gguf"):
        name = f"{name}:{model.quantization.lower()}"
    return name


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int
    model: str
    """The name of the model that made them."""
    load_s: float = 0.0
    """Seconds spent loading an embedding model for this request (0 when it was loaded already)."""


class ServerState:
    """One per app. ``model`` is the library model the runner serves (known before it is loaded)."""

    def __init__(
        self,
        runner: EngineRunner,
        model: LocalModel,
        *,
        settings: Settings,
        library: Library | None = None,
        api_key: str | None = None,
        gateway: Gateway | None = None,
    ) -> None:
        self.runner = runner
        self.gateway = gateway
        """The upstream remotes served beside the model (``influence serve --upstream``), or None."""
        self.model = model
        self.settings = settings
        self.library = library if library is not None else Library(settings)
        self.api_key = api_key or None
        self.started_at = time.time()
        self._started = time.monotonic()
        self.status: Status = "loading"
        self.error: str | None = None
        self.url: str | None = None
        """Where the server listens, once known (for /health and ``influence ps``)."""
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()
        self._vocab_size = 0
        # Read and written on the engine thread only (inside runner jobs).
        self._lm_embedder: Embedder | None = None
        self._lm_embedder_for: LoadedModel | None = None
        self._other_embedder: tuple[Path, Embedder] | None = None

    # ------------------------------------------------------------------ loading

    def start_loading(
        self, load: Callable[[], object], on_failure: Callable[[BaseException], None] | None = None
    ) -> threading.Thread:
        """Run ``load`` (which loads :attr:`model` on the runner) on a thread; /health says ``loading`` until it
        is done, then ``ok`` (or ``error``, and ``on_failure`` is called)."""

        def run() -> None:
            try:
                load()
                self.finish_loading()
            except BaseException as exc:
                self.status = "error"
                self.error = str(exc)
                log.error("could not load %s: %s", self.model.name, exc)
                if on_failure is not None:
                    on_failure(exc)

        thread = threading.Thread(target=run, name="influence-server-load", daemon=True)
        thread.start()
        return thread

    def finish_loading(self) -> None:
        """The runner has the model: take a private tokenizer for prompts and say ``ok``."""
        tokenizer = self.runner.with_model(lambda loaded: copy.deepcopy(loaded.tokenizer))
        with self._tokenizer_lock:
            self._tokenizer = tokenizer
            self._vocab_size = len(tokenizer)
        self.status = "ok"
        self.error = None
        described = self.runner.describe()
        if described:
            log.info("%s", described)

    def require_ready(self) -> LoadedModelInfo:
        """The loaded model's info, or a 503 while loading (a 500 when loading failed)."""
        info = self.runner.info
        if self.status == "ok" and info is not None:
            return info
        if self.status == "error":
            raise APIError(500, f"the model failed to load: {self.error}")
        raise APIError(503, f"{self.model.name} is loading; try again in a few seconds", code="model_loading")

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self._started

    def health(self) -> dict[str, Any]:
        info = self.runner.info if self.status == "ok" else None
        return {
            "status": self.status,
            "model": self.model.name,
            "uptime_s": round(self.uptime_s, 3),
            "started_at": utc_iso(self.started_at),
            "loaded": self.runner.describe() if info else None,
            "device": info.device if info else None,
            "dtype": info.dtype if info else None,
            "context_length": info.context_length if info else None,
            "error": self.error,
            "pid": os.getpid(),
            "url": self.url,
            "version": __version__,
            "api_key_required": self.api_key is not None,
            "requests": self.runner.load_report(),
        }

    # ------------------------------------------------------------------ names

    @property
    def model_id(self) -> str:
        """The served model's id in listings and answers (:func:`model_id`)."""
        return model_id(self.model)

    def matches(self, requested: str) -> bool:
        """Whether a request's ``model`` names the served model: its id (with or without its tag), its library
        name (any case; the demo's ``SmolLM2-135M-Instruct (demo)`` too), either with ``:latest`` or not, its
        path, or ``demo`` for the demo model."""
        wanted = strip_tag(requested.strip()).lower()
        ident = self.model_id
        names = {self.model.name.lower(), str(self.model.path).lower(), ident, ident.partition(":")[0]}
        if self.model.source == "demo":
            names.add("demo")
        return wanted in names

    def served_name(self, requested: str | None, *, required: bool = False) -> str:
        """The served model's id for a request's ``model``; 404 for another model (400 if required and missing)."""
        if requested is None or not requested.strip():
            if required:
                raise APIError(400, "model is required", param="model")
            return self.model_id
        if self.matches(requested):
            return self.model_id
        raise APIError(
            404,
            f"model {requested!r} is not served here; this server serves {self.model_id!r} "
            "(restart `influence serve --model NAME` for another)",
            param="model",
            code="model_not_found",
        )

    @property
    def digest(self) -> str:
        """A stable id for the served model (of its name, path and size, not of the file contents)."""
        return model_digest(self.model)

    # ------------------------------------------------------------------ prompts (caller's thread)

    def _tokenizer_call(self, fn: Callable[[Any], Any]) -> Any:
        with self._tokenizer_lock:
            if self._tokenizer is None:
                raise APIError(503, f"{self.model.name} is loading; try again in a few seconds", code="model_loading")
            return fn(self._tokenizer)

    def chat_prompt(self, messages: Sequence[ChatMessage], params: SamplingParams, context_length: int) -> PromptPlan:
        """The conversation through the chat template, oldest exchanges left out if it does not fit."""

        def build(tokenizer: Any) -> PromptPlan:
            return build_prompt(
                tokenizer,
                messages,
                context_length=context_length,
                reserve_tokens=reply_reserve(params, context_length),
            )

        try:
            plan: PromptPlan = self._tokenizer_call(build)
        except InfluenceError as exc:
            code = "context_length_exceeded" if "too long" in exc.message else None
            raise APIError(400, str(exc), param="messages", code=code) from None
        if plan.dropped:
            log.info("%s", plan.dropped_notice)
        return plan

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        ids: list[int] = self._tokenizer_call(
            lambda tok: [int(i) for i in tok.encode(text, add_special_tokens=add_special_tokens)]
        )
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text: str = self._tokenizer_call(lambda tok: str(tok.decode(list(ids), skip_special_tokens=True)))
        return text

    def check_token_ids(self, ids: Sequence[int], param: str) -> None:
        bad = [i for i in ids if not 0 <= i < self._vocab_size]
        if bad:
            raise APIError(
                400, f"token id {bad[0]} is outside the model's vocabulary (0 to {self._vocab_size - 1})", param=param
            )

    def chat_template(self) -> str | None:
        template = self._tokenizer_call(lambda tok: getattr(tok, "chat_template", None))
        return template if isinstance(template, str) else None

    # ------------------------------------------------------------------ generation

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> TokenStream:
        """Queue a generation on the engine; a 503 (with ``Retry-After``) when its queue is full or it is closed."""
        try:
            return self.runner.submit(prompt_ids, params)
        except EngineBusyError as exc:
            retry = str(max(1, round(exc.retry_after)))
            raise APIError(503, str(exc), code="server_busy", headers={"Retry-After": retry}) from None
        except InfluenceError as exc:  # the engine is closed: the server is shutting down
            raise APIError(503, str(exc)) from None

    # ------------------------------------------------------------------ embeddings (blocking: call in a thread)

    def embedding_model(self, requested: str | None) -> LocalModel | None:
        """None for the served model; another model of the library by its name; a 404 for anything else.
        Paths are not accepted from requests: a client chooses among the library's models only."""
        if requested is None or not requested.strip() or self.matches(requested):
            return None
        try:
            model = self.library.get(strip_tag(requested.strip()))
        except ModelNotFoundError:
            raise APIError(
                404,
                f"model {requested!r} is not served here and is not in the library "
                f"(this server serves {self.model.name!r}; `influence list` shows the library)",
                param="model",
                code="model_not_found",
            ) from None
        if model.path == self.model.path and model.weight_files == self.model.weight_files:
            return None
        return model

    def embed(self, target: LocalModel | None, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        """Unit vectors for ``inputs`` (texts, or token ids of the embedding model), made on the engine thread."""
        if target is None:
            self.require_ready()

            def with_served(loaded: LoadedModel) -> tuple[list[list[float]], int, float]:
                from influence_tui.core.engine.embed import Embedder

                if self._lm_embedder is None or self._lm_embedder_for is not loaded:
                    self._lm_embedder = Embedder.from_loaded(loaded)
                    self._lm_embedder_for = loaded
                vectors, tokens = _embed_with(self._lm_embedder, inputs)
                return vectors, tokens, 0.0

            try:
                vectors, tokens, load_s = self.runner.with_model(with_served)
            except InfluenceError as exc:
                raise from_influence_error(exc) from None
            return Embeddings(vectors, tokens, self.model.name, load_s)

        def with_other() -> tuple[list[list[float]], int, float]:
            from influence_tui.core.engine.embed import Embedder

            load_s = 0.0
            cached = self._other_embedder
            if cached is not None and cached[0] == target.path:
                embedder = cached[1]
            else:
                if cached is not None:  # one extra embedding model at a time
                    self._other_embedder = None
                    cached[1].unload()
                embedder = Embedder.load(
                    target,
                    device=self.settings.device,
                    device_index=self.settings.device_index,
                    dtype=self.settings.dtype,
                )
                load_s = embedder.load_s
                log.info("loaded %s for embeddings in %.1f s", target.name, load_s)
                self._other_embedder = (target.path, embedder)
            vectors, tokens = _embed_with(embedder, inputs)
            return vectors, tokens, load_s

        try:
            vectors, tokens, load_s = self.runner.run(with_other)
        except InfluenceError as exc:
            raise from_influence_error(exc) from None
        return Embeddings(vectors, tokens, target.name, load_s)


def _embed_with(embedder: Embedder, inputs: Sequence[str | Sequence[int]]) -> tuple[list[list[float]], int]:
    tokenizer = embedder.tokenizer
    texts = [item if isinstance(item, str) else str(tokenizer.decode(list(item))) for item in inputs]
    if not texts:
        return [], 0
    return embedder.embed(texts), embedder.count_tokens(texts)


def model_digest(model: LocalModel) -> str:
    key = f"{model.name}\0{model.path}\0{model.size_bytes}".encode()
    return hashlib.sha256(key).hexdigest()


def model_modified(model: LocalModel) -> float:
    """When the model's weights were last written (the folder's time when there are none)."""
    for path in (*model.weight_files, model.path):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return time.time()
