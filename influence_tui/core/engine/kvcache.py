"""The KV cache the generation loop uses, and the prompt cache that keeps it across requests.

:func:`new_cache` gives a model its empty cache: a native model's own
(:class:`~influence_tui.core.engine.models.cache.KVCache`: buffers grown in chunks, written in place), or
transformers' public ``DynamicCache`` for a model that transformers runs. Only ours is ever cropped (what
``DynamicCache.crop``'s argument means changed between transformers versions): a transformers cache is reused
only when the new prompt continues everything in it.

:class:`PromptCache` keeps the cache of the last few sequences (``slots``) with the token ids in it. The next
request that starts with the same tokens (the next turn of a chat, a client continuing its conversation)
reuses the cached prefix and prefills only the new tokens.

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def new_cache(model: Any) -> Any:
    """An empty KV cache for ``model``: its own (``model.new_cache()``, the native models) or transformers'
    ``DynamicCache``, sized from its config (sliding-window layers included)."""
    make = getattr(model, "new_cache", None)
    if callable(make):
        return make()
    from transformers.cache_utils import DynamicCache

    config = getattr(model, "config", None)
    return DynamicCache(config=config) if config is not None else DynamicCache()


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class CachedSequence:
    """A KV cache and the token ids whose keys and values it holds, in order."""

    cache: Any
    tokens: list[int] = field(default_factory=list)


class PromptCache:
    """The KV caches of the last ``slots`` sequences, reused when a new prompt starts like one of them.

    :meth:`take` hands out the slot with the longest common prefix (cropped to it) or a fresh cache;
    :meth:`give_back` returns it with the tokens now in it. Only the engine thread uses it.
    """

    def __init__(self, slots: int = 2) -> None:
        self.slots = max(0, slots)
        self._entries: list[CachedSequence] = []
        self.last_reused = 0
        """Prompt tokens the last :meth:`take` found cached."""

    def take(self, model: Any, prompt: Sequence[int]) -> tuple[CachedSequence, int]:
        """A cache for ``prompt`` and how many of its leading tokens are already in it (always fewer than
        ``len(prompt)``: the last prompt token is run again to get the next token's logits)."""
        best, best_len = None, 0
        for entry in self._entries:
            n = min(common_prefix(entry.tokens, prompt), len(prompt) - 1)
            if n > best_len:
                best, best_len = entry, n
        croppable = getattr(best.cache, "crops_to_length", False) if best is not None else False
        if best is None or best_len == 0 or (best.cache.get_seq_length() > best_len and not croppable):
            self.last_reused = 0
            if len(self._entries) >= self.slots and self._entries:
                self._entries.pop(0)  # least recently used
            return CachedSequence(new_cache(model)), 0
        self._entries.remove(best)
        if best.cache.get_seq_length() > best_len:
            best.cache.crop(best_len)
        best.tokens = best.tokens[:best_len]
        self.last_reused = best_len
        return best, best_len

    def give_back(self, entry: CachedSequence) -> None:
        """Keep ``entry`` (most recently used last); its ``tokens`` must match what its cache holds."""
        if self.slots == 0:
            return
        if entry.cache.get_seq_length() != len(entry.tokens):
            return  # out of step (an error mid-step): never reuse it
        self._entries.append(entry)
        while len(self._entries) > self.slots:
            self._entries.pop(0)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
