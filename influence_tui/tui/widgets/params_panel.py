"""The sampling parameters and the system prompt, editable from the keyboard.

The panel holds no state of its own: the screen sets :attr:`ParamsPanel.params` and
:attr:`ParamsPanel.system_prompt` from the chat session, and an edit comes back up as
:class:`ParamsPanel.Changed` for the screen to apply to the session (which validates it, exactly as ``/set``
does). A value the session refuses is put back the way it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.validation import ValidationResult, Validator
from textual.widgets import Input, Label, Static

from influence_tui.core.config import parse_value
from influence_tui.core.errors import ConfigError
from influence_tui.core.sessions import format_param, param_doc
from influence_tui.core.types import SamplingParams

PANEL_PARAMS: tuple[str, ...] = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens", "seed")
"""The parameters the panel shows, in order (``/set`` reaches the rest: stop, repeat_last_n)."""

SYSTEM = "system"
"""The name :class:`ParamsPanel.Changed` carries for the system prompt."""


class ParamValidator(Validator):
    """Checks a typed value with the same rules as the settings and ``/set``, for instant feedback."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def validate(self, value: str) -> ValidationResult:
        try:
            parse_value(self.name, value, self.name)
        except ConfigError as exc:
            return self.failure(str(exc))
        return self.success()


class ParamsPanel(VerticalScroll):
    """Label and input per parameter. Enter (or leaving the field) applies a value; Esc puts it back."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "revert", "Revert", id="params.revert", show=False),
    ]

    params: reactive[SamplingParams] = reactive(SamplingParams, init=False)
    system_prompt: reactive[str | None] = reactive(None, init=False)

    @dataclass
    class Changed(Message):
        """The user entered a new value for ``name`` (a parameter, or ``"system"``)."""

        name: str
        value: str

    def compose(self) -> ComposeResult:
        yield Static("Parameters", classes="params-title")
        for name in PANEL_PARAMS:
            with Horizontal(classes="param-row"):
                yield Label(name, classes="param-label")
                field = Input(
                    format_param(self.params, name),
                    id=f"param-{name}",
                    validators=[ParamValidator(name)],
                    validate_on=["changed"],
                    compact=True,
                    classes="param-input",
                )
                field.tooltip = param_doc(name)
                yield field
        yield Label("system prompt", classes="param-label -system")
        yield Input(
            self.system_prompt or "",
            id=f"param-{SYSTEM}",
            placeholder="none",
            compact=True,
            classes="param-input -system",
        )
        yield Static("Enter applies · Esc reverts", classes="params-hint")

    def shown(self, name: str) -> str:
        """The value the session holds for ``name``, as the panel writes it."""
        if name == SYSTEM:
            return self.system_prompt or ""
        return format_param(self.params, name)

    def input_for(self, name: str) -> Input:
        return self.query_one(f"#param-{name}", Input)

    def watch_params(self) -> None:
        for name in PANEL_PARAMS:
            self._show(name)

    def watch_system_prompt(self) -> None:
        self._show(SYSTEM)

    def _show(self, name: str) -> None:
        if not self.is_mounted:
            return
        field = self.input_for(name)
        if field.value != self.shown(name):
            field.value = self.shown(name)
        field.remove_class("-invalid")

    def revert(self, name: str) -> None:
        """Show the session's value again (after it refused an edit)."""
        self._show(name)

    def _name_of(self, field: Input) -> str | None:
        return field.id.removeprefix("param-") if field.id and field.id.startswith("param-") else None

    def _apply(self, field: Input) -> None:
        name = self._name_of(field)
        if name is not None and field.value.strip() != self.shown(name).strip():
            self.post_message(self.Changed(name, field.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._apply(event.input)

    def on_input_blurred(self, event: Input.Blurred) -> None:
        event.stop()
        self._apply(event.input)

    def action_revert(self) -> None:
        focused = self.screen.focused
        if isinstance(focused, Input):
            name = self._name_of(focused)
            if name is not None:
                self._show(name)
