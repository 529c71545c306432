"""What the routes share: the runner, the model it serves, readiness, prompt building and embeddings.

The engine thread owns the model: generation goes through :meth:`EngineRunner.submit`, embeddings through
:meth:`EngineRunner.with_model` / :meth:`EngineRunner.run`, so they queue with everything else. Prompts are
built on the caller's thread (a worker thread of the event loop) with a private copy of the tokenizer, so a
new request's prompt is ready while another request generates.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from influence_tui import __version__
from influence_tui.core.config import Settings
from influence_tui.core.errors import InfluenceError, ModelNotFoundError
from influence_tui.core.library import Library
from influence_tui.core.model_ids import model_id, names_model, resolve_model
from influence_tui.core.sessions import PromptPlan
from influence_tui.core.types import ChatMessage, LoadedModelInfo, LocalModel, SamplingParams
from influence_tui.core.units import parse_keep_alive
from influence_tui.server.clock import utc_iso
from influence_tui.server.errors import APIError, from_influence_error
from influence_tui.server.models import LEASES_KEY, ModelPool, ServedModel, embed_with

if TYPE_CHECKING:
    from starlette.requests import Request

    from influence_tui.core.engine.embed import Embedder
    from influence_tui.core.engine.runner import EngineRunner, TokenStream
    from influence_tui.server.gateway import Gateway

log = logging.getLogger("influence.server")

Status = Literal["loading", "ok", "error"]

SHUTTING_DOWN = "the server is shutting down: it takes no new requests (try another server, or again once it is back)"


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int
    model: str
    """The name of the model that made them."""
    load_s: float = 0.0
    """Seconds spent loading an embedding model for this request (0 when it was loaded already)."""


class ServerState:
    """One per app: the model pool (:mod:`~influence_tui.server.models`), the library, the upstreams, the key.
    ``model`` / ``runner`` are the model the server started with (known before it is loaded) and its runner."""

    def __init__(
        self,
        runner: EngineRunner,
        model: LocalModel,
        *,
        settings: Settings,
        library: Library | None = None,
        api_key: str | None = None,
        gateway: Gateway | None = None,
        pool: ModelPool | None = None,
    ) -> None:
        self.gateway = gateway
        """The upstream remotes served beside the model (``influence serve --upstream``), or None."""
        self.settings = settings
        self.library = library if library is not None else Library(settings)
        self.pool = pool if pool is not None else ModelPool(settings)
        # The started model stays loaded forever (as a model Ollama is told to keep) unless the keep_alive setting
        # was given; a request's own keep_alive still applies to it, and the memory budget may unload it when idle.
        keep = parse_keep_alive(settings.keep_alive) if settings.source("keep_alive") != "default" else None
        self.started = self.pool.add_started(model, runner, keep_alive_s=keep)
        self.api_key = api_key or None
        self.started_at = time.time()
        self._started = time.monotonic()
        self.status: Status = "loading"
        """How loading the started model went: /health's status."""
        self.error: str | None = None
        self.url: str | None = None
        """Where the server listens, once known (for /health and ``influence ps``)."""
        self.stopping = False
        """Set once the server is shutting down (:mod:`~influence_tui.server.lifecycle`): no new requests."""
        # Read and written on the started runner's engine thread only (inside runner jobs).
        self._other_embedder: tuple[Path, Embedder] | None = None

    @property
    def runner(self) -> EngineRunner:
        """The started model's runner."""
        return self.started.runner

    @property
    def model(self) -> LocalModel:
        """The model the server started with."""
        return self.started.model

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
                self.started.fail_loading(exc)
                if on_failure is not None:
                    on_failure(exc)

        thread = threading.Thread(target=run, name="influence-server-load", daemon=True)
        thread.start()
        return thread

    def finish_loading(self) -> None:
        """The runner has the started model: take a private tokenizer for prompts and say ``ok``."""
        self.started.finish_loading()
        self.status = "ok"
        self.error = None

    def require_ready(self) -> LoadedModelInfo:
        """The started model's info, or a 503 while loading (a 500 when loading failed)."""
        return self.started.require_ready()

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self._started

    def health(self) -> dict[str, Any]:
        info = self.runner.info if self.status == "ok" else None
        return {
            "status": "stopping" if self.stopping else self.status,
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
            "models": [
                {**m, "expires_at": None if m["expires_at"] is None else utc_iso(m["expires_at"])}
                for m in self.pool.loaded_models()
            ],
            "memory_budget": self.pool.budget,
        }

    # ------------------------------------------------------------------ names

    @property
    def model_id(self) -> str:
        """The started model's id in listings and answers (:func:`model_id`)."""
        return model_id(self.model)

    def matches(self, requested: str) -> bool:
        """Whether a request's ``model`` names the started model (:func:`~influence_tui.core.model_ids.model_names`)."""
        return names_model(self.model, requested)

    def resolve(self, requested: str | None, *, required: bool = False) -> LocalModel:
        """The library model a request names (blocking: may scan the library): a model of the pool, or of the
        library by id, name or ``demo`` (:func:`~influence_tui.core.model_ids.resolve_model`); nothing named: the
        started model (a 400 when ``required``); a 404 in the route's shape for anything else."""
        if requested is None or not requested.strip():
            if required:
                raise APIError(400, "model is required", param="model")
            return self.model
        entry = self.pool.find(requested)
        if entry is not None:
            return entry.model
        try:
            return resolve_model(self.library, requested)
        except ModelNotFoundError:
            raise APIError(
                404, f"model {requested.strip()!r} not found", param="model", code="model_not_found"
            ) from None

    def served_name(self, requested: str | None, *, required: bool = False) -> str:
        """The id of the model a request's ``model`` names (:meth:`resolve`)."""
        return model_id(self.resolve(requested, required=required))

    async def acquire(
        self, request: Request, requested: str | None, *, required: bool = False, keep_alive: object = None
    ) -> ServedModel:
        """The pool's entry for the model a request names, loaded (waiting while it loads), leased to the
        request until its answer is complete. ``keep_alive``: an Ollama request's (None: the model's own)."""
        import anyio.to_thread

        entry = self.pool.find(requested) if requested and requested.strip() else self.started
        model = (
            entry.model
            if entry is not None
            else await anyio.to_thread.run_sync(lambda: self.resolve(requested, required=required))
        )
        if required and not (requested and requested.strip()):
            raise APIError(400, "model is required", param="model")
        if self.stopping:
            raise APIError(503, SHUTTING_DOWN, code="server_shutting_down")
        served = self.pool.acquire(model, *([] if keep_alive is None else [keep_alive_seconds(keep_alive)]))
        leases: list[ServedModel] | None = request.scope.get(LEASES_KEY)
        if leases is not None:
            leases.append(served)
        try:
            await anyio.to_thread.run_sync(self.pool.wait_ready, served)
        finally:
            if leases is None:
                self.pool.release(served)
        return served

    @property
    def digest(self) -> str:
        """A stable id for the started model (of its name, path and size, not of the file contents)."""
        return model_digest(self.model)

    # ------------------------------------------------------------------ the started model's prompts and engine

    def chat_prompt(self, messages: Sequence[ChatMessage], params: SamplingParams, context_length: int) -> PromptPlan:
        return self.started.chat_prompt(messages, params, context_length)

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return self.started.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[int]) -> str:
        return self.started.decode(ids)

    def check_token_ids(self, ids: Sequence[int], param: str) -> None:
        self.started.check_token_ids(ids, param)

    def chat_template(self) -> str | None:
        return self.started.chat_template()

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> TokenStream:
        """Queue a generation on the started model (:meth:`ServedModel.submit`)."""
        return self.started.submit(prompt_ids, params)

    # ------------------------------------------------------------------ embeddings (blocking: call in a thread)

    async def embedding_target(
        self, request: Request, requested: str | None, *, keep_alive: object = None
    ) -> ServedModel | LocalModel:
        """What embeds for a request: a language model of the pool (loaded on demand, as for generation), or a
        library model that is not a language model (an embedding model), loaded beside it. Paths are not
        accepted from requests: a client chooses among the library's models only."""
        import anyio.to_thread

        if not requested or not requested.strip() or self.pool.find(requested) is not None:
            return await self.acquire(request, requested, keep_alive=keep_alive)
        model = await anyio.to_thread.run_sync(lambda: self.resolve(requested))
        if model.format.startswith("gguf") or any(a.endswith("ForCausalLM") for a in model.architectures):
            return await self.acquire(request, requested, keep_alive=keep_alive)
        return model

    def embed(self, target: ServedModel | LocalModel, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        """Unit vectors for ``inputs`` (texts, or token ids of the embedding model), made on an engine thread."""
        if isinstance(target, ServedModel):
            vectors, tokens = target.embed_texts(inputs)
            return Embeddings(vectors, tokens, target.model.name, 0.0)

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
            vectors, tokens = embed_with(embedder, inputs)
            return vectors, tokens, load_s

        try:
            vectors, tokens, load_s = self.runner.run(with_other)
        except InfluenceError as exc:
            raise from_influence_error(exc) from None
        return Embeddings(vectors, tokens, target.name, load_s)


def keep_alive_seconds(value: object) -> float | None:
    """An Ollama request's ``keep_alive`` in seconds (None: forever), or a 400 naming the field."""
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise APIError(400, f"keep_alive {value!r} {exc}", param="keep_alive") from None


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
