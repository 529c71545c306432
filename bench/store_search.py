"""Full-text search of the chat store on a big history: 10,000 chats / 200,000 messages by default.

Builds a throwaway store (the real schema, written through the real ``autosave``, in batches) from a fixed
vocabulary with a few rare words, then times :meth:`ChatStore.search` (what the conversations pane runs on
every key typed) for a rare word, a common word, two words and a prefix, and :meth:`ChatStore.list` (the pane's
listing). Prints the median and the worst of each over ``--runs`` runs; the target is a search under 50 ms:

    .venv/bin/python bench/store_search.py [--chats 10000] [--messages 20] [--runs 7]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from influence_tui.core.sessions import ChatSession
from influence_tui.core.store import ChatStore
from influence_tui.core.types import ChatMessage

COMMON = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "you",
    "that",
    "for",
    "on",
    "with",
    "as",
    "this",
    "be",
    "are",
    "file",
    "python",
    "code",
    "list",
    "function",
    "value",
    "model",
    "data",
    "line",
    "read",
    "write",
    "error",
    "test",
    "run",
    "use",
    "time",
    "when",
    "which",
    "what",
    "how",
    "can",
    "will",
    "would",
    "should",
    "could",
]
TOPICS = ["paris", "rust", "haiku", "kernel", "tensor", "sqlite", "gardening", "recipe", "violin", "marathon"]
RARE = "zanzibar"
"""In one message of every 1,000 chats: a search that finds a few."""


def build(path: Path, chats: int, per_chat: int, seed: int = 1) -> float:
    rng = random.Random(seed)
    store = ChatStore(path).open()
    started = time.perf_counter()
    conn = store._conn  # one transaction for the lot: building is not what is measured
    assert conn is not None
    conn.execute("BEGIN")
    for number in range(chats):
        day = 1 + number % 28
        when = f"2025-{1 + number % 12:02d}-{day:02d}T{number % 24:02d}:{number % 60:02d}:00+00:00"
        session = ChatSession(id=f"chat{number:06d}", created_at=when, model="TinyLlama", updated_at=when)
        topic = TOPICS[number % len(TOPICS)]
        for index in range(per_chat):
            words = rng.choices(COMMON, k=rng.randint(8, 60))
            words.insert(rng.randrange(len(words)), topic)
            if number % 1000 == 0 and index == per_chat // 2:
                words.append(RARE)
            role = "user" if index % 2 == 0 else "assistant"
            session.messages.append(ChatMessage(role, " ".join(words), when))
        session.title = session.messages[0].content[:60]
        store._save(conn, session)
    conn.execute("COMMIT")
    built = time.perf_counter() - started
    store.close()
    return built


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float, object]:
    times = []
    result: object = None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=20, help="messages per chat")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chats.db"
        built = build(path, args.chats, args.messages)
        size = path.stat().st_size + sum(p.stat().st_size for p in Path(tmp).glob("chats.db-*"))
        total = args.chats * args.messages
        print(f"store: {args.chats:,} chats, {total:,} messages, {size / 2**20:.0f} MiB, built in {built:.1f} s")
        store = ChatStore(path).open()
        store.search("warm up")
        worst = 0.0
        for label, query in (
            ("rare word", RARE),
            ("topic word", "violin"),
            ("common word", "python"),
            ("two words", "sqlite error"),
            ("prefix", "garden"),
        ):
            median, high, result = timed(lambda q=query: store.search(q, limit=500), args.runs)  # type: ignore[misc]
            worst = max(worst, median)
            found = len(result) if isinstance(result, tuple) else 0
            print(f"search {label:<12} {query!r:<16} {median:7.1f} ms median, {high:7.1f} ms worst, {found} chats")
        median, high, _ = timed(lambda: store.list(limit=500), args.runs)
        print(f"list   newest 500                    {median:7.1f} ms median, {high:7.1f} ms worst")
        store.close()
        print(f"slowest search median: {worst:.1f} ms (target < 50 ms): {'ok' if worst < 50 else 'TOO SLOW'}")
        return 0 if worst < 50 else 1


if __name__ == "__main__":
    raise SystemExit(main())
