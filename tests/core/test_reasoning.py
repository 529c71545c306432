"""The <think> splitter: whole replies, streamed pieces, and any split giving what the whole text gives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from influence_tui.core.reasoning import ReasoningSplitter, prompt_opens_thinking, split_reasoning


@pytest.mark.parametrize(
    ("text", "started", "expected"),
    [
        ("<think>\nTwo and two.\n</think>\n\nFour.", False, ("Two and two.", "Four.")),
        ("  <think>plan</think>answer", False, ("plan", "answer")),
        ("Just an answer.", False, ("", "Just an answer.")),
        ("Okay, 2+2.\n</think>\n\n4", True, ("Okay, 2+2.", "4")),
        ("<think>never closed", False, ("never closed", "")),
        ("<think>a</think>b <think>c</think>", False, ("a", "b <think>c</think>")),
        ("answer </think> later", False, ("", "answer </think> later")),
        ("<thin", False, ("", "<thin")),
        ("<think>\n\n</think>\n\nHi", False, ("", "Hi")),
        ("", True, ("", "")),
    ],
)
def test_split_reasoning(text: str, started: bool, expected: tuple[str, str]) -> None:
    assert split_reasoning(text, started=started) == expected


def test_streamed_tags_split_across_pieces() -> None:
    splitter = ReasoningSplitter()
    pieces = ["<", "thi", "nk>", "Let me", " see", "  </", "thi", "nk", ">", "\n", "\nThe", " answer"]
    out = [splitter.feed(p) for p in pieces]
    out.append(splitter.flush())
    thinking = "".join(t for t, _ in out)
    content = "".join(c for _, c in out)
    assert (thinking, content) == ("Let me see", "The answer")
    # nothing that might be a tag is shown early: the "<" and "</" pieces gave nothing yet
    assert out[0] == ("", "")
    assert out[6] == ("", "")


def test_thinking_shows_as_it_comes() -> None:
    splitter = ReasoningSplitter(started=True)
    assert splitter.in_thinking
    assert splitter.feed("First step") == ("First step", "")
    assert splitter.feed(", second.") == (", second.", "")
    assert splitter.feed("</think>Done") == ("", "Done")
    assert not splitter.in_thinking


def test_prompt_opens_thinking() -> None:
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n")


_ALPHABET = st.sampled_from(["<think>", "</think>", "<", "</", "think", ">", " ", "\n", "a", "b", "<thi", "nk>"])


@settings(max_examples=300, deadline=None)
@given(
    text=st.lists(_ALPHABET, max_size=14).map("".join),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    started=st.booleans(),
)
def test_any_split_gives_the_whole_result(text: str, cuts: list[int], started: bool) -> None:
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    splitter = ReasoningSplitter(started=started)
    out = [splitter.feed(p) for p in pieces]
    out.append(splitter.flush())
    streamed = ("".join(t for t, _ in out), "".join(c for _, c in out))
    assert streamed == split_reasoning(text, started=started)
