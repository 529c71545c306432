"""The services the app creates once and every screen shares: settings, library, session store, engine.

Screens reach them with :func:`services_of`, so a screen works in any app that has a ``services`` attribute
(the real :class:`~influence_tui.tui.app.InfluenceApp`, or a test harness). The engine runner is created on
first use: creating it starts its thread, and the first model load (in a worker, after the first paint) is
what imports torch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from influence_tui.core.config import Settings
from influence_tui.core.library import Library
from influence_tui.core.sessions import SessionStore
from influence_tui.core.types import LoadedModelInfo, LocalModel

if TYPE_CHECKING:
    from textual.dom import DOMNode

    from influence_tui.core.engine.runner import EngineRunner

RunnerFactory = Callable[[], "EngineRunner"]


def default_runner() -> EngineRunner:
    from influence_tui.core.engine.runner import EngineRunner

    return EngineRunner()


EnginePhase = Literal["idle", "loading", "ready", "failed"]


@dataclass(frozen=True)
class EngineState:
    """What the engine holds now, as the status bar shows it."""

    phase: EnginePhase = "idle"
    model: LocalModel | None = None
    """The model loaded, being loaded, or that failed to load."""
    info: LoadedModelInfo | None = None
    """Set when ``phase`` is ready."""
    error: str | None = None
    """Why the last load failed."""

    @property
    def ready(self) -> bool:
        return self.phase == "ready" and self.info is not None


class Services:
    """Created once by the app; shared by its screens."""

    def __init__(
        self,
        settings: Settings,
        *,
        runner_factory: RunnerFactory | None = None,
        library: Library | None = None,
        store: SessionStore | None = None,
    ) -> None:
        self.settings = settings
        self.library = library if library is not None else Library(settings)
        self.store = store if store is not None else SessionStore(settings.sessions_dir)
        self._runner_factory = runner_factory or default_runner
        self._runner: EngineRunner | None = None
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

    def close(self) -> None:
        """Stop the engine thread (cancelling a reply in progress) and free the model."""
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is not None:
            runner.close(timeout=5.0)


def services_of(node: DOMNode) -> Services:
    """The services of the app ``node`` runs in."""
    services = getattr(node.app, "services", None)
    if not isinstance(services, Services):
        raise RuntimeError(f"{type(node.app).__name__} has no services; run this screen inside InfluenceApp")
    return services
