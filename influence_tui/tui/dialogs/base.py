"""What every dialog shares: a centred frame, its stylesheet, and Esc to cancel."""

from __future__ import annotations

from typing import ClassVar, TypeVar

from textual.binding import Binding, BindingType
from textual.screen import ModalScreen

from influence_tui.tui.paths import stylesheet

ResultT = TypeVar("ResultT")


class Dialog(ModalScreen[ResultT]):
    """A modal dialog; :meth:`action_cancel` (Esc) dismisses it with :attr:`CANCEL_RESULT`."""

    CSS_PATH = stylesheet("dialogs.tcss")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="dialog.cancel"),
    ]

    def cancel_result(self) -> ResultT | None:
        return None

    def action_cancel(self) -> None:
        self.dismiss(self.cancel_result())
