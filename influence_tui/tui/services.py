"""The services the app creates once and every screen shares: settings, library, remotes, session store, engines.

Screens reach them with :func:`services_of`, so a screen works in any app that has a ``services`` attribute
(the real :class:`~influence_tui.tui.app.InfluenceApp`, or a test harness). The engine runner is created on
first use: creating it starts its thread, and the first model load (in a worker, after the first paint) is
what imports torch. A remote model gets a :class:`~influence_tui.core.engine.remote.RemoteEngine` instead (no
torch); :attr:`Services.chat_engine` is the engine of the model chosen last, whichever kind it is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from influence_tui.core.config import Settings
from influence_tui.core.library import Library
from influence_tui.core.remote_catalog import RemoteCatalog
from influence_tui.core.remotes import RemoteModel
from influence_tui.core.store import ChatStore
from influence_tui.core.types import LoadedModelInfo, LoadOptions, LocalModel

if TYPE_CHECKING:
    from textual.dom import DOMNode

    from influence_tui.core.chat import ChatEngine
    from influence_tui.core.engine.remote import RemoteEngine
    from influence_tui.core.engine.runner import EngineRunner

AnyModel = LocalModel | RemoteModel
"""A model of the library: on this machine, or a remote's (``MODEL@REMOTE``)."""

RunnerFactory = Callable[[], "EngineRunner"]


def default_runner() -> EngineRunner:
    from influence_tui.core.engine.runner import EngineRunner

    return EngineRunner()


EnginePhase = Literal["idle", "loading", "ready", "failed"]


@dataclass(frozen=True)
class EngineState:
    """What the engine holds now, as the status bar shows it."""

    phase: EnginePhase = "idle"
    model: AnyModel | None = None
    """The model loaded, being loaded, or that failed to load."""
    info: LoadedModelInfo | None = None
    """Set when ``phase`` is ready."""
    error: str | None = None
    """Why the last load failed."""

    @property
    def ready(self) -> bool:
        return self.phase == "ready" and self.info is not None

    @property
    def remote(self) -> RemoteModel | None:
        """The remote model chatted with (its chats leave this machine), or None for a local one."""
        return self.model if isinstance(self.model, RemoteModel) else None


class Services:
    """Created once by the app; shared by its screens."""

    def __init__(
        self,
        settings: Settings,
        *,
        runner_factory: RunnerFactory | None = None,
        library: Library | None = None,
        store: ChatStore | None = None,
        remotes: RemoteCatalog | None = None,
    ) -> None:
        self.settings = settings
        self.library = library if library is not None else Library(settings)
        self.store = store if store is not None else ChatStore.for_sessions_dir(settings.sessions_dir)
        """The chats (SQLite; opened on first use, off the UI thread)."""
        self.remotes = remotes if remotes is not None else RemoteCatalog()
        """The configured remotes and a cached listing of their models (the library and the model picker)."""
        self._runner_factory = runner_factory or default_runner
        self._runner: EngineRunner | None = None
        self._remote_engines: dict[str, RemoteEngine] = {}
        self._chat_engine: ChatEngine | None = None
        self._lock = threading.Lock()

    @property
    def runner(self) -> EngineRunner:
        """The engine runner, started on first use (from any thread)."""
        with self._lock:
            if self._runner is None:
                self._runner = self._runner_factory()
            return self._runner

    @property
    def runner_started(self) -> bool:
        return self._runner is not None

    def remote_engine(self, model: RemoteModel) -> RemoteEngine:
        """The engine of a remote model (one per model, kept while the app runs; no connection is made here)."""
        from influence_tui.core.engine.remote import RemoteEngine

        with self._lock:
            engine = self._remote_engines.get(model.name)
            if engine is None or engine.model.remote != model.remote:
                engine = self._remote_engines[model.name] = RemoteEngine(model)
            return engine

    def load(self, model: AnyModel, on_status: Callable[[str], None] | None = None) -> LoadedModelInfo:
        """Load a local model on the engine thread, or ask a remote about its model (blocking: call it from a
        worker). The engine that answered becomes :attr:`chat_engine`."""
        engine: ChatEngine
        if isinstance(model, RemoteModel):
            remote = self.remote_engine(model)
            info = remote.load()
            engine = remote
        else:
            runner = self.runner
            info = runner.load(model, LoadOptions.from_settings(self.settings), on_status=on_status)
            engine = runner
        with self._lock:
            self._chat_engine = engine
        return info

    @property
    def chat_engine(self) -> ChatEngine:
        """The engine of the model loaded last: the local runner or a remote engine."""
        with self._lock:
            engine = self._chat_engine
        return engine if engine is not None else self.runner

    def close(self) -> None:
        """Stop the engine thread (cancelling a reply in progress), free the model, close remote connections."""
        with self._lock:
            runner, self._runner = self._runner, None
            remotes, self._remote_engines = list(self._remote_engines.values()), {}
            self._chat_engine = None
        for remote in remotes:
            remote.close()
        self.store.close()
        if runner is not None:
            runner.close(timeout=5.0)


def services_of(node: DOMNode) -> Services:
    """The services of the app ``node`` runs in."""
    services = getattr(node.app, "services", None)
    if not isinstance(services, Services):
        raise RuntimeError(f"{type(node.app).__name__} has no services; run this screen inside InfluenceApp")
    return services
