"""Search text for the chat store: the FTS5 query of what the user typed, and the snippet of a message around
its match, with the matched words marked (folded as FTS5's ``remove_diacritics`` folds them)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["Snippet", "fts_query", "make_snippet"]


@dataclass(frozen=True)
class Snippet:
    """A piece of a message around the words searched for."""

    text: str
    spans: tuple[tuple[int, int], ...] = ()
    """(start, end) of each match in :attr:`text`."""


def fts_query(text: str) -> str | None:
    """An FTS5 query matching every word of ``text`` (the last one as a prefix, as it is being typed); None
    when there is no word. Quoting each word keeps FTS5 syntax (``AND``, ``*``, ``"``) out of user text."""
    words = re.findall(r"\w+", text)
    if not words:
        return None
    quoted = [f'"{word}"' for word in words]
    quoted[-1] += "*"
    return " ".join(quoted)


def _fold(text: str) -> str:
    """``text`` lowercased and without accents, character for character (so positions stay the same), as
    FTS5's ``remove_diacritics`` tokenizer compares words."""
    if text.isascii():
        return text.lower()
    folded = []
    for char in text:
        base = "".join(c for c in unicodedata.normalize("NFD", char) if not unicodedata.combining(c))
        lowered = (base or char).lower()
        folded.append(lowered if len(lowered) == 1 else char)
    return "".join(folded)


def _words_pattern(query: str) -> re.Pattern[str] | None:
    """Words starting with one of the words of ``query`` (in folded text), or None when it has none."""
    words = sorted({_fold(w) for w in re.findall(r"\w+", query)}, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\w*") if words else None


def make_snippet(text: str, query: str, *, before: int = 40, width: int = 160) -> Snippet:
    """A line of ``text`` around its first match of the words of ``query``, every match in it marked."""
    line = " ".join(text.split())
    pattern = _words_pattern(query)
    folded = _fold(line)
    first = pattern.search(folded) if pattern is not None else None
    if pattern is None or first is None:
        return Snippet(line[:width] + ("…" if len(line) > width else ""))
    start = max(0, first.start() - before)
    if start:
        space = line.find(" ", start, first.start())
        start = space + 1 if space != -1 else start
    end = min(len(line), start + width)
    if end < len(line):
        space = line.rfind(" ", first.end(), end)
        end = space if space != -1 else end
    prefix = "…" if start else ""
    shown = prefix + line[start:end] + ("…" if end < len(line) else "")
    shift = len(prefix) - start
    spans = tuple((m.start() + shift, m.end() + shift) for m in pattern.finditer(folded, start, end))
    return Snippet(shown, spans)
