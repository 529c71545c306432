"""Reasoning models' ``<think>…</think>`` block split out of a reply, whole or as it streams.

Qwen3, DeepSeek-R1 distills and their kin open their reply with a thinking block. Some templates write the
opening ``<think>`` into the prompt itself (the reply then starts inside the block): pass ``started=True``
for those (:func:`prompt_opens_thinking` tells from the rendered prompt). Only a block at the very start of
the reply is thinking; a ``<think>`` later on is content. Whitespace just inside the tags and right after the
closing tag is dropped. Feeding a text to :class:`ReasoningSplitter` in any pieces gives what
:func:`split_reasoning` gives for the whole text.
"""

from __future__ import annotations

from typing import Literal

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

_State = Literal["start", "think_lead", "think", "content_lead", "content"]


def prompt_opens_thinking(prompt: str) -> bool:
    """True when a rendered prompt ends inside an open thinking block (the reply starts as thinking)."""
    return prompt.rstrip().endswith(OPEN_TAG)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper beginning of ``tag`` (a tag split across pieces)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ReasoningSplitter:
    """Splits a streamed reply into (thinking, content) pieces. Text that could still be part of a tag, or
    whitespace that may turn out to end the thinking block, is held back until the next piece or
    :meth:`flush`."""

    def __init__(self, *, started: bool = False) -> None:
        self._state: _State = "think_lead" if started else "start"
        self._buffer = ""

    @property
    def in_thinking(self) -> bool:
        """True while the reply is inside its thinking block (or may be: still deciding at the start)."""
        return self._state in ("start", "think_lead", "think")

    def feed(self, piece: str) -> tuple[str, str]:
        """(thinking piece, content piece) that ``piece`` completes; either may be empty."""
        self._buffer += piece
        thinking: list[str] = []
        content: list[str] = []
        while True:
            buf = self._buffer
            if self._state == "start":
                head = buf.lstrip()
                if not head or (len(head) < len(OPEN_TAG) and OPEN_TAG.startswith(head)):
                    break
                if head.startswith(OPEN_TAG):
                    self._buffer = head[len(OPEN_TAG) :]
                    self._state = "think_lead"
                else:
                    self._state = "content"
            elif self._state == "think_lead":
                self._buffer = buf.lstrip()
                if not self._buffer:
                    break
                self._state = "think"
            elif self._state == "think":
                end = buf.find(CLOSE_TAG)
                if end >= 0:
                    thinking.append(buf[:end].rstrip())
                    self._buffer = buf[end + len(CLOSE_TAG) :]
                    self._state = "content_lead"
                    continue
                held = _partial_suffix(buf, CLOSE_TAG)
                ready = buf[: len(buf) - held]
                kept = ready.rstrip()
                thinking.append(kept)
                self._buffer = buf[len(kept) :]
                break
            elif self._state == "content_lead":
                self._buffer = buf.lstrip()
                if not self._buffer:
                    break
                self._state = "content"
            else:
                content.append(buf)
                self._buffer = ""
                break
        return "".join(thinking), "".join(content)

    def flush(self) -> tuple[str, str]:
        """Whatever was held back, at the end of the reply (an unclosed thinking block stays thinking)."""
        buf, self._buffer = self._buffer, ""
        if self._state == "start":
            self._state = "content"
            return "", buf
        if self._state in ("think_lead", "think"):
            return buf.rstrip(), ""
        if self._state == "content":
            return "", buf
        return "", ""


def split_reasoning(text: str, *, started: bool = False) -> tuple[str, str]:
    """(thinking, content) of a whole reply; ``started`` as for :class:`ReasoningSplitter`."""
    splitter = ReasoningSplitter(started=started)
    thinking, content = splitter.feed(text)
    rest_thinking, rest_content = splitter.flush()
    return thinking + rest_thinking, content + rest_content
