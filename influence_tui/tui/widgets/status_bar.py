"""One line under the chat: the model and where it runs, how full its context is, and the last reply's speed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.reactive import reactive
from textual.widgets import Static

from influence_tui.core.types import GenerationStats
from influence_tui.tui.services import EngineState

WARN_FRACTION = 0.75
"""The meter warns once the conversation fills this much of the room a prompt has (context minus the reply's)."""

METER_CELLS = 8

ContextLevel = Literal["ok", "warn", "full"]


@dataclass(frozen=True)
class ContextUse:
    """How much of the model's context the conversation takes."""

    used: int
    """Tokens of the conversation so far (the last prompt and its reply)."""
    length: int
    """The model's context length (0: unknown, as for a remote model that does not say)."""
    reserve: int
    """Tokens kept free for the next reply (see :func:`influence_tui.core.chat.reply_reserve`)."""
    left_out: int = 0
    """Exchanges the last prompt had to leave out."""

    @property
    def budget(self) -> int:
        """Room for the prompt: the context minus what is kept for the reply."""
        return max(1, self.length - self.reserve)

    @property
    def level(self) -> ContextLevel:
        if self.length <= 0:
            return "full" if self.left_out else "ok"
        if self.left_out or self.used >= self.budget:
            return "full"
        if self.used >= WARN_FRACTION * self.budget:
            return "warn"
        return "ok"


def meter(fraction: float, cells: int = METER_CELLS) -> str:
    filled = min(cells, max(0, round(fraction * cells)))
    if fraction > 0 and filled == 0:
        filled = 1
    return "▰" * filled + "▱" * (cells - filled)


def token_count(n: int) -> str:
    """``812``, ``8,192``, ``32k``, ``128k``."""
    return f"{n:,}" if n < 10_000 else f"{n / 1000:.0f}k"


def speed_text(stats: GenerationStats | None, *, compact: bool = False) -> str:
    """``TTFT 0.12 s · 42.0 tok/s`` (compact: ``42.0 tok/s``)."""
    if stats is None or not stats.generated_tokens:
        return ""
    rate = f"{stats.decode_tokens_per_s:.1f} tok/s" if stats.generated_tokens > 1 else ""
    if compact:
        return rate
    ttft = f"TTFT {stats.time_to_first_token_s:.2f} s"
    return f"{ttft} · {rate}" if rate else ttft


class StatusBar(Horizontal):
    """Set :attr:`engine`, :attr:`context`, :attr:`stats` and :attr:`busy`; the bar redraws itself."""

    engine: reactive[EngineState] = reactive(EngineState, init=False)
    context: reactive[ContextUse | None] = reactive(None, init=False)
    stats: reactive[GenerationStats | None] = reactive(None, init=False)
    busy: reactive[bool] = reactive(False, init=False)
    compact: reactive[bool] = reactive(False, init=False)
    """Narrow terminals: no meter cells, no time to first token."""

    def compose(self) -> ComposeResult:
        yield Static(id="status-model")
        yield Static(id="status-device")
        yield Static(id="status-context")
        yield Static(id="status-speed")

    def on_mount(self) -> None:
        self._show_engine()
        self._show_context()
        self._show_speed()

    def watch_engine(self) -> None:
        self._show_engine()
        self._show_context()

    def watch_context(self) -> None:
        self._show_context()

    def watch_stats(self) -> None:
        self._show_speed()

    def watch_busy(self) -> None:
        self._show_speed()

    def watch_compact(self) -> None:
        self._show_engine()
        self._show_context()
        self._show_speed()

    def _show_engine(self) -> None:
        state = self.engine
        for phase in ("idle", "loading", "ready", "failed"):
            self.set_class(state.phase == phase, f"-{phase}")
        name = state.info.name if state.info else state.model.name if state.model else ""
        if state.phase == "ready":
            model = f"● {name}"
        elif state.phase == "loading":
            model = f"◌ loading {name}…"
        elif state.phase == "failed":
            model = f"✕ {name or 'no model'}: not loaded"
        else:
            model = "○ no model (ctrl+l picks one)"
        self.query_one("#status-model", Static).update(Content(model))
        device = self.query_one("#status-device", Static)
        info = state.info
        remote = state.remote
        device.set_class(remote is not None, "-remote")
        if remote is not None:
            # Said plainly: the conversation is sent to another machine.
            where = f"↗ {remote.host}" if self.compact else f"↗ remote {remote.host} · leaves this machine"
            device.update(Content(where))
            device.display = True
            return
        weights = (info.quantization.replace(" kept ", " ") if info.quantization else info.dtype) if info else ""
        device.update(Content(f"{info.device} · {weights}" if info else ""))
        device.display = state.info is not None

    def _show_context(self) -> None:
        widget = self.query_one("#status-context", Static)
        use = self.context
        info = self.engine.info
        if use is None and info is None:
            widget.display = False
            return
        widget.display = True
        length = use.length if use else info.context_length if info else 0
        used = use.used if use else 0
        level = use.level if use else "ok"
        fraction = used / use.budget if use else 0.0
        mark = {"ok": "", "warn": " ⚠", "full": " ⚠ full"}[level]
        if length <= 0:  # a remote that does not say: no meter, no warnings
            widget.update(Content(f"ctx {token_count(used)}/?{mark}"))
        else:
            cells = "" if self.compact else f"{meter(fraction)} "
            widget.update(Content(f"ctx {cells}{token_count(used)}/{token_count(length)}{mark}"))
        for name in ("ok", "warn", "full"):
            widget.set_class(level == name, f"-{name}")

    def _show_speed(self) -> None:
        text = "generating…" if self.busy else speed_text(self.stats, compact=self.compact)
        widget = self.query_one("#status-speed", Static)
        widget.update(Content(text))
        widget.display = bool(text)
