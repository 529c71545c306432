"""The Influence app: a thin shell. It owns the services (settings, library, session store, the engine) and
the top-level screens (``MODES``), switches between them, and loads models on the engine's thread.

Each screen lives in its own module under ``screens/`` with its own stylesheet in ``styles/``. To add a
top-level screen, add it to ``MODES`` and give it a binding beside the others (F2 and F3 are kept for the hub
search and the downloads): the binding shows in the footer and, like every binding, in the command palette.
"""

from __future__ import annotations

import os
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable
from functools import partial
from typing import ClassVar

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import get_current_worker

from influence_tui import __version__
from influence_tui.core.config import Settings
from influence_tui.core.errors import InfluenceError
from influence_tui.core.library import Library
from influence_tui.core.remote_catalog import RemoteCatalog
from influence_tui.core.remotes import RemoteModel, resolve_model
from influence_tui.core.store import ChatStore
from influence_tui.tui.download_service import DownloadService, DownloadUpdated
from influence_tui.tui.messages import ChatWithModel, ModelLoaded, ModelLoadFailed, ModelLoading
from influence_tui.tui.paths import stylesheet
from influence_tui.tui.screens.chat import ChatScreen
from influence_tui.tui.screens.downloads import DownloadsScreen
from influence_tui.tui.screens.hub_search import HubSearchScreen
from influence_tui.tui.screens.library import LibraryScreen
from influence_tui.tui.services import AnyModel, EngineState, RunnerFactory, Services
from influence_tui.tui.widgets.mode_bar import Navigation


class InfluenceApp(App[None]):
    """Influence: local models in a full-screen terminal app."""

    TITLE = "Influence"
    SUB_TITLE = f"local LLMs · v{__version__}"
    CSS_PATH = [stylesheet("base.tcss")]
    MODES: ClassVar[dict[str, str | Callable[[], Screen[None]]]] = {
        "chat": ChatScreen,
        "hub": HubSearchScreen,
        "downloads": DownloadsScreen,
        "library": LibraryScreen,
    }
    DEFAULT_MODE = "chat"
    NAVIGATION: ClassVar[Navigation] = (
        ("chat", "f1", "Chat"),
        ("hub", "f2", "Hub"),
        ("downloads", "f3", "Downloads"),
        ("library", "f4", "Library"),
    )
    """(mode, key, label) of each top-level screen: its binding, and its tab in the mode bar on every screen."""
    BINDINGS: ClassVar[list[BindingType]] = [
        *(
            # Shown as tabs at the top rather than in the footer; the command palette lists them too.
            Binding(key, f"switch_mode('{mode}')", label, id=f"app.{mode}", show=False)
            for mode, key, label in NAVIGATION
        ),
        Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True),
    ]

    engine_state: reactive[EngineState] = reactive(EngineState, init=False)
    """What the engine holds; the chat screen's status bar shows it."""

    def __init__(
        self,
        settings: Settings,
        *,
        runner_factory: RunnerFactory | None = None,
        library: Library | None = None,
        store: ChatStore | None = None,
        remotes: RemoteCatalog | None = None,
        load_model: bool = True,
    ) -> None:
        """``runner_factory`` builds the engine runner on first use (tests pass a scripted one);
        ``load_model=False`` starts with no model loaded (the default loads the configured or demo model
        once the first screen has painted)."""
        super().__init__()
        self.services = Services(settings, runner_factory=runner_factory, library=library, store=store, remotes=remotes)
        self.downloads = DownloadService(self, settings, library=self.services.library)
        """Hub downloads: they run in the app, so they go on whichever screen is shown."""
        self._load_at_start = load_model
        self.first_paint_at: float | None = None
        """``time.perf_counter()`` when the first screen had painted."""

    @property
    def settings(self) -> Settings:
        return self.services.settings

    def on_mount(self) -> None:
        self.call_after_refresh(self._first_paint)

    def _first_paint(self) -> None:
        self.first_paint_at = time.perf_counter()
        if self._load_at_start:
            self.load_model(None)

    def on_unmount(self) -> None:
        self.downloads.shutdown()
        self.services.close()

    # ------------------------------------------------------------------------------------------ downloads

    def on_download_updated(self, message: DownloadUpdated) -> None:
        self.downloads.apply(message)

    async def action_quit(self) -> None:
        """Quit; with downloads running, ask first (they stop, and resume from their partial files later)."""
        from influence_tui.tui.dialogs.confirm import ConfirmDialog

        running = self.downloads.running
        if not running or self.screen.id == "confirm-quit":  # Ctrl+Q twice quits
            self.exit()
            return
        names = ", ".join(e.request.label for e in running[:3]) + (" …" if len(running) > 3 else "")
        dialog = ConfirmDialog(
            f"Quit with {len(running)} download{'s' if len(running) != 1 else ''} running?",
            f"{names} stop now. Their partial files stay: the downloads screen (F3) resumes them next time.",
            confirm="Quit",
            cancel="Keep downloading",
        )
        dialog.id = "confirm-quit"
        self.push_screen(dialog, lambda quit_now: self.exit() if quit_now else None)

    # ------------------------------------------------------------------------------------------ the engine

    async def on_chat_with_model(self, message: ChatWithModel) -> None:
        await self.switch_mode("chat")
        self.load_model(message.model)

    def _load_note(self, message: str) -> None:
        """One-time notes from the engine thread while loading (building kernels, preparing a model)."""
        self.call_from_thread(self.notify, message, title="Loading", timeout=8)

    @work(thread=True, exclusive=True, group="engine-load", exit_on_error=False, name="load model")
    def load_model(self, model: AnyModel | None) -> None:
        """Load ``model`` (None: the configured model, else the demo) on the engine thread, or connect to a
        remote model's server."""
        services = self.services
        try:
            if model is None:
                model = resolve_model(services.library, services.settings.model, services.remotes.remotes())
        except InfluenceError as exc:
            self.post_message(ModelLoadFailed(None, str(exc)))
            return
        self.post_message(ModelLoading(model))
        try:
            info = services.load(model, on_status=self._load_note)
        except InfluenceError as exc:
            self.post_message(ModelLoadFailed(model, str(exc)))
            return
        except Exception as exc:  # a bug, or a library error we do not know: keep the app alive
            self.log.error(traceback.format_exc())
            self.post_message(ModelLoadFailed(model, f"{type(exc).__name__}: {exc}"))
            return
        if not get_current_worker().is_cancelled:
            self.post_message(ModelLoaded(model, info))

    def on_model_loading(self, message: ModelLoading) -> None:
        self.engine_state = EngineState("loading", message.model)

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.engine_state = EngineState("ready", message.model, message.info)
        info = message.info
        if isinstance(message.model, RemoteModel):
            remote = message.model.remote
            self.notify(
                f"{info.name}: {remote.kind} API at {remote.api_base}. Your messages are sent to {remote.host}.",
                title="Remote model",
                markup=False,
            )
            return
        weights = info.quantization or info.dtype
        self.notify(f"{info.name} on {info.device} ({weights}), loaded in {info.load_s:.1f} s", markup=False)

    def on_model_load_failed(self, message: ModelLoadFailed) -> None:
        self.engine_state = EngineState("failed", message.model, error=message.error)
        name = message.model.name if message.model else "No model"
        self.notify(
            f"{message.error}\nCtrl+L picks another model; F4 opens the library.",
            title=f"{name} did not load",
            severity="error",
            timeout=15,
            markup=False,
        )

    # ------------------------------------------------------------------------------------------ clipboard

    def copy_to_clipboard(self, text: str) -> None:
        """OSC 52 (most terminals), and inside tmux its paste buffer too (tmux may not pass OSC 52 on)."""
        super().copy_to_clipboard(text)
        if os.environ.get("TMUX"):
            self._tmux_copy(text)

    @work(thread=True, exclusive=True, group="clipboard", exit_on_error=False, name="copy to tmux")
    def _tmux_copy(self, text: str) -> None:
        data = text.encode()
        for command in (["tmux", "load-buffer", "-w", "-"], ["tmux", "load-buffer", "-"]):
            try:
                done = subprocess.run(command, input=data, capture_output=True, timeout=5, check=False)
            except (OSError, subprocess.SubprocessError):
                return
            if done.returncode == 0:
                return

    # ------------------------------------------------------------------------------------------ palette

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """Textual's commands, then every binding of ours the screen offers now (the footer's and the hidden
        ones: those with an id; the widgets' own editing keys stay out)."""
        yield from super().get_system_commands(screen)
        seen: set[str] = set()
        for key, active in screen.active_bindings.items():
            binding = active.binding
            if binding.id is None or not binding.description or not active.enabled or binding.action in seen:
                continue
            if binding.action in ("quit", "command_palette"):
                continue
            seen.add(binding.action)
            shown = binding.key_display or self.get_key_display(binding)
            yield SystemCommand(
                f"{binding.description} ({shown})",
                binding.tooltip or f"{binding.description}: {key}",
                partial(self._run_binding, binding.action, active.node),
            )

    async def _run_binding(self, action: str, node: object) -> None:
        from textual.dom import DOMNode

        await self.run_action(action, node if isinstance(node, DOMNode) else None)
