"""The server's model pool: one engine runner per loaded library model, loaded on demand, kept per keep_alive.

A request naming a library model :meth:`ModelPool.acquire`\\ s it: a model not loaded gets its own
:class:`~influence_tui.core.engine.runner.EngineRunner` (its own engine thread and batching) and loads on a
thread while every request for it waits; a failed load answers its error to all of them. Each request holds a
lease on its model until its answer is complete (:class:`LeaseMiddleware` gives them back), so a model with
running or waiting requests is never unloaded; its keep_alive timer starts when the last lease goes. Before a
load the pool makes room within its memory budget (and ``max_loaded_models``), unloading the least recently
used idle models first; a model that cannot fit is refused with a 503.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from influence_tui.core.chat import reply_reserve
from influence_tui.core.errors import EngineBusyError, InfluenceError
from influence_tui.core.memory import OVERHEAD_FRACTION
from influence_tui.core.model_ids import model_id, names_model
from influence_tui.core.sessions import PromptPlan, build_prompt
from influence_tui.core.types import ChatMessage, LoadedModelInfo, LoadOptions, LocalModel, SamplingParams
from influence_tui.core.units import human_size, parse_keep_alive
from influence_tui.server.errors import APIError, from_influence_error

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from influence_tui.core.config import Settings
    from influence_tui.core.engine.embed import Embedder
    from influence_tui.core.engine.loader import LoadedModel
    from influence_tui.core.engine.runner import EngineRunner, TokenStream

log = logging.getLogger("influence.server")

Status = Literal["loading", "ok", "error", "unloaded"]
LEASES_KEY = "influence.leases"
"""The ASGI scope key under which a request's model leases are kept until its answer is complete."""
BUDGET_SHARE = 0.75
"""The default memory budget: this share of the machine's RAM (of the GPU's memory when models load there)."""
_DEFAULT = object()


def default_budget(settings: Settings) -> int:
    """The ``max_loaded_memory`` setting, or :data:`BUDGET_SHARE` of RAM (of VRAM on a CUDA device)."""
    if settings.max_loaded_memory is not None:
        return settings.max_loaded_memory
    from influence_tui.core.memory import machine_memory

    memory = machine_memory(probe_gpu=settings.device in ("auto", "cuda"), device_index=settings.device_index)
    total = memory.vram_total if memory.vram_total and settings.device in ("auto", "cuda") else memory.ram_total
    return int(BUDGET_SHARE * total)


def footprint(model: LocalModel, settings: Settings) -> int:
    """The memory a loaded model is counted for: its weights as on disk, the runtime's share beside them, and
    its prompt cache's bound."""
    return int(model.size_bytes * (1 + OVERHEAD_FRACTION)) + settings.prompt_cache_mib * 2**20


class ServedModel:
    """One model of the pool: its runner, load state, keep_alive, leases, and a private tokenizer for prompts."""

    def __init__(self, model: LocalModel, runner: EngineRunner, *, owned: bool, keep_alive_s: float | None, size: int):
        self.model = model
        self.runner = runner
        self.owned = owned
        """Whether the pool made the runner (and closes it on unload); the started model's runner is lent."""
        self.default_keep_alive_s = keep_alive_s
        self.keep_alive_s = keep_alive_s
        """Seconds to stay loaded once idle (None: forever; 0: unload as soon as idle)."""
        self.size = size
        self.status: Status = "loading"
        self.error: str | None = None
        self.waitable = True
        """False while the started model loads at start: its requests get a 503 instead of waiting."""
        self.leases = 0
        self.last_used = time.monotonic()
        self.idle_since: float | None = None
        """Wall-clock time the last lease was given back (None while in use or never used)."""
        self.loaded = threading.Event()
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()
        self._vocab_size = 0
        self._embedder: Embedder | None = None
        self._embedder_for: LoadedModel | None = None

    @property
    def model_id(self) -> str:
        return model_id(self.model)

    @property
    def name(self) -> str:
        return self.model.name

    def matches(self, requested: str) -> bool:
        return names_model(self.model, requested)

    @property
    def info(self) -> LoadedModelInfo | None:
        return self.runner.info if self.status == "ok" else None

    def busy(self) -> bool:
        report = self.runner.load_report()
        return self.leases > 0 or report["running"] > 0 or report["waiting"] > 0

    def expires_at(self) -> float | None:
        """When it will be unloaded if no request comes (wall clock; None: never)."""
        if self.keep_alive_s is None:
            return None
        start = self.idle_since if self.idle_since is not None and self.leases == 0 else time.time()
        return start + self.keep_alive_s

    def describe(self) -> dict[str, Any]:
        """The model's state for /api/ps, /metrics and ``influence ps``."""
        report = self.runner.load_report() if self.status == "ok" else {"running": 0, "waiting": 0}
        info = self.info
        return {
            "name": self.model.name,
            "id": self.model_id,
            "status": self.status,
            "size": self.size,
            "expires_at": self.expires_at(),
            "keep_alive_s": self.keep_alive_s,
            "running": report["running"],
            "waiting": report["waiting"],
            "leases": self.leases,
            "device": info.device if info else None,
            "context_length": info.context_length if info else None,
        }

    # -- loading (on a thread)

    def finish_loading(self) -> None:
        """The runner has the model: take a private tokenizer for prompts and say ``ok``."""
        tokenizer = self.runner.with_model(lambda loaded: copy.deepcopy(loaded.tokenizer))
        with self._tokenizer_lock:
            self._tokenizer = tokenizer
            self._vocab_size = len(tokenizer)
        self.status = "ok"
        self.error = None
        self.loaded.set()
        described = self.runner.describe()
        if described:
            log.info("%s", described)

    def fail_loading(self, exc: BaseException) -> None:
        self.status = "error"
        self.error = str(exc) or exc.__class__.__name__
        self.loaded.set()
        log.error("could not load %s: %s", self.model.name, self.error)

    def require_ready(self) -> LoadedModelInfo:
        """The loaded model's info, or a 503 while loading (a 500 when loading failed)."""
        info = self.runner.info
        if self.status == "ok" and info is not None:
            return info
        if self.status == "error":
            raise APIError(500, f"the model failed to load: {self.error}")
        if self.status == "unloaded":
            raise APIError(503, f"{self.model.name} was unloaded; send the request again", code="model_unloaded")
        raise APIError(503, f"{self.model.name} is loading; try again in a few seconds", code="model_loading")

    def _forget_tokenizer(self) -> None:
        with self._tokenizer_lock:
            self._tokenizer = None

    # -- prompts (caller's thread)

    def _tokenizer_call(self, fn: Callable[[Any], Any]) -> Any:
        with self._tokenizer_lock:
            if self._tokenizer is None:
                raise APIError(503, f"{self.model.name} is loading; try again in a few seconds", code="model_loading")
            return fn(self._tokenizer)

    def chat_prompt(self, messages: Sequence[ChatMessage], params: SamplingParams, context_length: int) -> PromptPlan:
        """The conversation through the chat template, oldest exchanges left out if it does not fit."""

        def build(tokenizer: Any) -> PromptPlan:
            reserve = reply_reserve(params, context_length)
            return build_prompt(tokenizer, messages, context_length=context_length, reserve_tokens=reserve)

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

    # -- generation and embeddings

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> TokenStream:
        """Queue a generation on the engine; a 503 (with ``Retry-After``) when its queue is full or it is closed."""
        try:
            return self.runner.submit(prompt_ids, params)
        except EngineBusyError as exc:
            retry = str(max(1, round(exc.retry_after)))
            raise APIError(503, str(exc), code="server_busy", headers={"Retry-After": retry}) from None
        except InfluenceError as exc:  # the engine is closed: the server is shutting down
            raise APIError(503, str(exc)) from None

    def embed_texts(self, texts: Sequence[str | Sequence[int]]) -> tuple[list[list[float]], int]:
        """Unit vectors from this language model's hidden states, made on its engine thread (blocking)."""
        self.require_ready()

        def run(loaded: LoadedModel) -> tuple[list[list[float]], int]:
            from influence_tui.core.engine.embed import Embedder

            if self._embedder is None or self._embedder_for is not loaded:
                self._embedder = Embedder.from_loaded(loaded)
                self._embedder_for = loaded
            return embed_with(self._embedder, texts)

        try:
            return self.runner.with_model(run)
        except InfluenceError as exc:
            raise from_influence_error(exc) from None


def embed_with(embedder: Embedder, inputs: Sequence[str | Sequence[int]]) -> tuple[list[list[float]], int]:
    tokenizer = embedder.tokenizer
    texts = [item if isinstance(item, str) else str(tokenizer.decode(list(item))) for item in inputs]
    if not texts:
        return [], 0
    return embedder.embed(texts), embedder.count_tokens(texts)


class ModelPool:
    """The loaded models of one server (see the module docstring). ``runner_factory`` makes the runner of a model
    loaded on demand (default: one from the serve settings); tests pass their own."""

    def __init__(
        self,
        settings: Settings,
        *,
        runner_factory: Callable[[LocalModel], EngineRunner] | None = None,
        budget_bytes: int | None = None,
    ) -> None:
        self.settings = settings
        self.keep_alive_s = parse_keep_alive(settings.keep_alive)
        """The keep_alive of a request that gives none (the ``keep_alive`` setting)."""
        self.budget = budget_bytes if budget_bytes is not None else default_budget(settings)
        self.max_models = settings.max_loaded_models
        self._factory = runner_factory or self._default_runner
        self._entries: list[ServedModel] = []
        self._cond = threading.Condition()
        self._closed = False
        self._runner_hooks: list[Callable[[ServedModel], None]] = []
        self._reaper = threading.Thread(target=self._reap, name="influence-keep-alive", daemon=True)
        self._reaper.start()

    def _default_runner(self, model: LocalModel) -> EngineRunner:
        from influence_tui.core.engine.runner import EngineRunner

        s = self.settings
        return EngineRunner(
            name=f"influence-engine-{model_id(model)}",
            max_batch=s.parallel,
            queue_limit=s.queue_limit,
            prefill_chunk=s.prefill_chunk,
            prompt_cache_mib=s.prompt_cache_mib,
        )

    def add_runner_hook(self, hook: Callable[[ServedModel], None]) -> None:
        """Call ``hook(entry)`` for every model's runner, those already made and each new one (metrics observers)."""
        with self._cond:
            self._runner_hooks.append(hook)
            entries = list(self._entries)
        for entry in entries:
            hook(entry)

    def add_started(self, model: LocalModel, runner: EngineRunner, *, keep_alive_s: float | None) -> ServedModel:
        """The model the server started with, on a runner it was given (loaded already or loading)."""
        entry = ServedModel(model, runner, owned=False, keep_alive_s=keep_alive_s, size=footprint(model, self.settings))
        entry.waitable = False
        with self._cond:
            self._entries.append(entry)
        return entry

    # -- lookups

    def find(self, requested: str) -> ServedModel | None:
        """The model of the pool that ``requested`` names (loaded, loading or unloaded), or None."""
        with self._cond:
            return next((e for e in self._entries if e.status != "error" and e.matches(requested)), None)

    def entries(self) -> list[ServedModel]:
        with self._cond:
            return list(self._entries)

    def loaded_models(self) -> list[dict[str, Any]]:
        """Every model loaded or loading, with its state (name, id, size, expires_at, running, waiting...)."""
        return [e.describe() for e in self.entries() if e.status in ("loading", "ok")]

    def used_bytes(self) -> int:
        with self._cond:
            return sum(e.size for e in self._entries if e.status in ("loading", "ok"))

    # -- acquiring and giving back

    def acquire(self, model: LocalModel, keep_alive: object = _DEFAULT) -> ServedModel:
        """A lease on ``model``'s entry, its load started if it is not loaded (returns at once: wait with
        :meth:`wait_ready`). ``keep_alive`` (seconds, None forever) replaces the model's for when it is idle."""
        with self._cond:
            if self._closed:
                raise APIError(503, "the server is shutting down")
            entry = next(
                (e for e in self._entries if e.model.path == model.path and e.model.weight_files == model.weight_files),
                None,
            )
            if entry is None or entry.status == "unloaded" or (entry.status == "error" and entry.owned):
                entry = self._start_load(model, entry)
            entry.leases += 1
            entry.idle_since = None
            entry.last_used = time.monotonic()
            if keep_alive is not _DEFAULT:
                entry.keep_alive_s = keep_alive  # type: ignore[assignment]
            elif entry.keep_alive_s != entry.default_keep_alive_s:
                entry.keep_alive_s = entry.default_keep_alive_s
            self._cond.notify_all()
            return entry

    def wait_ready(self, entry: ServedModel) -> LoadedModelInfo:
        """Block until ``entry`` has loaded (blocking: call in a thread); its info, or the load's error."""
        if entry.waitable:
            entry.loaded.wait()
        return entry.require_ready()

    def release(self, entry: ServedModel) -> None:
        """A request for ``entry`` is complete: when it was the last, the keep_alive timer starts."""
        with self._cond:
            entry.leases = max(0, entry.leases - 1)
            if entry.leases == 0:
                entry.idle_since = time.time()
                entry.last_used = time.monotonic()
            self._cond.notify_all()

    def _start_load(self, model: LocalModel, previous: ServedModel | None) -> ServedModel:
        """Under the lock: make room for ``model``, then load it on a thread (a new runner unless the previous
        entry's runner was lent to the pool)."""
        size = footprint(model, self.settings)
        self._make_room(model, size)
        if previous is not None and not previous.owned:
            entry, runner = previous, previous.runner
            entry.status, entry.error, entry.waitable, entry.size = "loading", None, True, size
            entry.loaded.clear()
        else:
            if previous is not None:
                self._entries.remove(previous)
            runner = self._factory(model)
            entry = ServedModel(model, runner, owned=True, keep_alive_s=self.keep_alive_s, size=size)
            self._entries.append(entry)
            for hook in self._runner_hooks:
                hook(entry)
        options = LoadOptions.from_settings(self.settings)

        def load() -> None:
            log.info("loading %s (%s counted of a %s budget) …", model.name, human_size(size), human_size(self.budget))
            try:
                entry.runner.load(model, options)
                entry.finish_loading()
            except BaseException as exc:
                entry.fail_loading(exc)

        threading.Thread(target=load, name=f"influence-load-{model_id(model)}", daemon=True).start()
        return entry

    def _make_room(self, model: LocalModel, size: int) -> None:
        """Under the lock: unload idle models, least recently used first, until ``model`` fits; a 503 if it can't."""
        if size > self.budget:
            raise APIError(
                503,
                f"{model.name} needs about {human_size(size)}, more than the server's whole memory budget of "
                f"{human_size(self.budget)} (set max_loaded_memory / `influence serve --memory-budget`)",
                code="model_too_large",
            )
        loaded = [e for e in self._entries if e.status in ("loading", "ok")]
        used = sum(e.size for e in loaded)
        count = len(loaded)
        for victim in sorted((e for e in loaded if e.status == "ok" and not e.busy()), key=lambda e: e.last_used):
            if used + size <= self.budget and (not self.max_models or count < self.max_models):
                break
            log.info("unloading %s to make room for %s", victim.model.name, model.name)
            self._unload(victim)
            used -= victim.size
            count -= 1
        if used + size > self.budget or (self.max_models and count >= self.max_models):
            busy = ", ".join(e.model.name for e in self._entries if e.status in ("loading", "ok"))
            raise APIError(
                503,
                f"no room to load {model.name} (about {human_size(size)}): {human_size(used)} of the "
                f"{human_size(self.budget)} budget is held by models in use ({busy}); try again when they are idle",
                code="server_busy",
                headers={"Retry-After": "5"},
            )

    def _unload(self, entry: ServedModel) -> None:
        """Under the lock: mark ``entry`` unloaded and free it on its engine thread (after its queued work)."""
        entry.status = "unloaded"
        entry._forget_tokenizer()
        entry.loaded.clear()
        runner = entry.runner

        def free() -> None:
            try:
                if entry.owned:
                    runner.close()
                else:
                    runner.unload()
            except InfluenceError:
                pass  # closed already (the server is stopping)

        threading.Thread(target=free, name="influence-unload", daemon=True).start()

    def unload_when_idle(self, entry: ServedModel) -> None:
        """keep_alive 0 for ``entry``: it is unloaded once its requests are done."""
        with self._cond:
            entry.keep_alive_s = 0.0
            self._cond.notify_all()

    # -- keep_alive

    def _reap(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.time()
                wait: float | None = None
                for entry in list(self._entries):
                    if entry.status != "ok" or entry.keep_alive_s is None or entry.leases:
                        continue
                    expires = entry.expires_at()
                    if expires is None:
                        continue
                    if expires <= now and not entry.busy():
                        log.info("unloading %s (keep_alive %.0f s passed)", entry.model.name, entry.keep_alive_s)
                        self._unload(entry)
                    else:
                        left = max(0.05, expires - now) if expires > now else 0.1  # busy in the runner still
                        wait = left if wait is None else min(wait, left)
                self._cond.wait(timeout=wait)

    def close(self) -> None:
        """Stop the keep_alive thread and close the runners the pool made (the lent one stays its owner's)."""
        with self._cond:
            self._closed = True
            owned = [e for e in self._entries if e.owned]
            self._cond.notify_all()
        for entry in owned:
            entry.runner.close()
        self._reaper.join(5)


class LeaseMiddleware:
    """Gives back a request's model leases once its answer is complete (streamed or not, or its client gone)."""

    def __init__(self, app: ASGIApp, pool: ModelPool) -> None:
        self.app = app
        self.pool = pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        leases: list[ServedModel] = []
        scope[LEASES_KEY] = leases
        try:
            await self.app(scope, receive, send)
        finally:
            for entry in leases:
                self.pool.release(entry)
