"""Pictures of the hub search, the quantization dialog and the downloads screen at 120x36 (and the hub search
at 80x24), on fixed data (tests/tui/hub_data.py): no network, no clock, no machine probing, no tmp paths.

`pytest tests/snapshots --snapshot-update` rewrites them after a deliberate change; look at the report first.
"""

from __future__ import annotations

from collections.abc import Iterator
from unittest import mock

import pytest

from influence_tui.core.config import Settings, load_settings
from influence_tui.core.errors import HubUnreachableError
from influence_tui.core.hub import HubClient
from influence_tui.tui.app import InfluenceApp
from tests.fakes import FixedLibrary, ScriptedRunner
from tests.tui.hub_data import MODELS_DIR, fixed_hub, open_downloads, open_hub, open_quant_dialog


@pytest.fixture
def fixed_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("INFLUENCE_MODELS_DIR", MODELS_DIR)
    with fixed_hub():
        yield load_settings()


def make_app(settings: Settings) -> InfluenceApp:
    return InfluenceApp(settings, runner_factory=ScriptedRunner, library=FixedLibrary(settings), load_model=False)


def test_hub_search(snap_compare, fixed_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(make_app(fixed_settings), terminal_size=(120, 36), run_before=open_hub)


def test_hub_search_narrow(snap_compare, fixed_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(make_app(fixed_settings), terminal_size=(80, 24), run_before=open_hub)


def test_hub_unreachable(snap_compare, fixed_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    def unreachable(self: HubClient, *args: object, **kw: object) -> list[object]:
        raise HubUnreachableError(
            "cannot reach the Hub at https://huggingface.co: name or service not known",
            hint="check the network connection; a mirror can be set with --mirror URL or INFLUENCE_MIRROR",
        )

    with mock.patch.object(HubClient, "search", unreachable):  # inside fixed_hub(), undone before it
        assert snap_compare(make_app(fixed_settings), terminal_size=(120, 36), run_before=open_hub)


def test_quant_dialog(snap_compare, fixed_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(make_app(fixed_settings), terminal_size=(120, 36), run_before=open_quant_dialog)


def test_downloads(snap_compare, fixed_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(make_app(fixed_settings), terminal_size=(120, 36), run_before=open_downloads)
