"""Pictures of the chat screen (120x36 and 80x24), the library screen and every chat and library dialog at
120x36, on the scripted engine and the fixed library: no model, no clock, no tmp paths.

`pytest tests/snapshots --snapshot-update` rewrites them after a deliberate change; look at the report first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from influence_tui.core.config import Settings, load_settings
from tests.tui import scenes


@pytest.fixture
def fixed(isolated_env: Path) -> Iterator[Settings]:
    with scenes.utc():
        yield load_settings()


@pytest.fixture
def with_sessions(fixed: Settings) -> Settings:
    scenes.save_sessions(fixed.sessions_dir)
    return fixed


def test_chat(snap_compare, fixed: Settings) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(scenes.make_app(fixed), terminal_size=(120, 36), run_before=scenes.conversation)


def test_chat_narrow(snap_compare, fixed: Settings) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(scenes.make_app(fixed), terminal_size=(80, 24), run_before=scenes.conversation)


def test_library(snap_compare, fixed: Settings) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(scenes.make_app(fixed), terminal_size=(120, 36), run_before=scenes.library)


@pytest.mark.parametrize(
    "scene",
    ["save_dialog", "model_picker", "code_picker", "remove_dialog", "import_dialog"],
)
def test_dialog(snap_compare, fixed: Settings, scene: str) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(scenes.make_app(fixed), terminal_size=(120, 36), run_before=getattr(scenes, scene))


@pytest.mark.parametrize("scene", ["offer_to_continue", "open_dialog"])
def test_session_dialog(snap_compare, with_sessions: Settings, scene: str) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(scenes.make_app(with_sessions), terminal_size=(120, 36), run_before=getattr(scenes, scene))


SIZES = [(80, 24), (120, 36)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("scene", ["chats_pane", "chats_search"])
def test_chats(snap_compare, with_sessions: Settings, scene: str, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(scenes.make_app(with_sessions), terminal_size=size, run_before=getattr(scenes, scene))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("scene", ["branches", "editing"])
def test_branches(snap_compare, fixed: Settings, scene: str, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    app = scenes.make_app(fixed, replies=scenes.BRANCH_REPLIES)
    assert snap_compare(app, terminal_size=size, run_before=getattr(scenes, scene))
