"""The pure pieces of the chat screen: Markdown parts, code blocks, completion, the context meter, figures."""

from __future__ import annotations

import pytest

from influence_tui.core.types import GenerationStats
from influence_tui.tui.screens.chat import flush_interval
from influence_tui.tui.widgets.message_view import MarkdownSplitter, code_blocks, split_markdown, stats_line
from influence_tui.tui.widgets.prompt_input import command_matches, complete_command
from influence_tui.tui.widgets.status_bar import ContextUse, meter, speed_text, token_count

DOC = (
    "Intro paragraph.\n\n"
    "```python\nx = 1\n\n\ny = 2\n```\n\n"
    "1. Step one\n\n   more about step one\n\n2. Step two\n\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n\n"
    "Closing words.\n"
) * 8


def test_parts_join_back_and_never_cut_a_fence_or_an_item() -> None:
    parts = split_markdown(DOC, size=60)
    assert "".join(parts) == DOC
    assert len(parts) > 5
    for part in parts:
        assert part.count("```") % 2 == 0  # whole fences only
        assert not part.startswith((" ", "\t"))  # an indented continuation stays with its item
    assert split_markdown("short") == ["short"]
    assert split_markdown("") == [""]


@pytest.mark.parametrize("step", [1, 3, 7, 50])
def test_parts_are_the_same_fed_piece_by_piece(step: int) -> None:
    splitter = MarkdownSplitter(60)
    parts: list[str] = []
    for start in range(0, len(DOC), step):
        for number, piece in splitter.feed(DOC[start : start + step]):
            if number == len(parts):
                parts.append("")
            parts[number] += piece
    assert parts == split_markdown(DOC, size=60)


def test_code_blocks() -> None:
    blocks = code_blocks("a\n\n```python\nprint(1)\n```\n\n    indented\n\n~~~\nplain\n~~~\n")
    assert [(b.language, b.code) for b in blocks] == [("python", "print(1)\n"), ("", "indented\n"), ("", "plain\n")]
    assert blocks[0].first_line == "print(1)"
    assert code_blocks("no code") == []


def test_command_completion() -> None:
    assert command_matches("/s") == ["save", "sessions", "set", "stats", "system"]
    assert command_matches("/set temperature") == []
    assert command_matches("hello") == []
    assert complete_command("/cl") == "/clear "
    assert complete_command("/se") is None  # sessions, set: nothing more in common
    assert complete_command("/sta") == "/stats "
    assert complete_command("/x") is None


def test_the_meter_and_the_figures() -> None:
    assert ContextUse(used=100, length=2048, reserve=512).level == "ok"
    assert ContextUse(used=1200, length=2048, reserve=512).level == "warn"
    assert ContextUse(used=1600, length=2048, reserve=512).level == "full"
    assert ContextUse(used=10, length=2048, reserve=512, left_out=1).level == "full"
    assert meter(0.0) == "▱" * 8
    assert meter(0.01) == "▰" + "▱" * 7
    assert meter(1.5) == "▰" * 8
    assert token_count(812) == "812" and token_count(8192) == "8,192" and token_count(32768) == "33k"
    stats = GenerationStats(10, 42, 0.123, 31.49, 1.5, "stop")
    assert speed_text(stats) == "TTFT 0.12 s · 31.5 tok/s"
    assert speed_text(stats, compact=True) == "31.5 tok/s"
    assert speed_text(None) == ""
    assert stats_line(stats) == "42 tokens · 0.12 s to first token · 31.5 tok/s"
    assert stats_line(GenerationStats(10, 3, 0.1, 5.0, 1.0, "cancelled")).endswith("· stopped")
    assert stats_line(GenerationStats(10, 3, 0.1, 5.0, 1.0, "length")).endswith("· cut at max_tokens")
    assert stats_line(None, stopped=True) == "stopped"


def test_updates_slow_down_as_a_reply_grows() -> None:
    assert flush_interval(10) == flush_interval(500) == pytest.approx(1 / 30)
    assert flush_interval(2000) == pytest.approx(2 * flush_interval(1000))
    assert flush_interval(100_000) == 0.25
