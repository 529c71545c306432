"""The KV cache the generation loop uses, and the prompt cache that keeps it across requests.

:func:`new_cache` gives a model its empty cache: a native model's own
(:class:`~influence_tui.core.engine.models.cache.KVCache`: buffers grown in chunks, written in place), or
transformers' public ``DynamicCache`` for a model that transformers runs. Only ours is ever cropped (what
``DynamicCache.crop``'s argument means changed between transformers versions): a transformers cache is reused
only when the new prompt continues everything in it.

:class:`PromptCache` keeps the caches of recent sequences, several conversations' worth, with the token ids in
them, within a bound in MiB (least recently used dropped first). The next request that starts with the same
tokens as one of them (the next turn of a chat, any of several clients continuing its conversation) reuses the
cached prefix and prefills only the new tokens.

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


MIB = 1024 * 1024
DEFAULT_PROMPT_CACHE_MIB = 64
"""What a :class:`PromptCache` keeps unless told otherwise (the TUI's and the CLI's; ``influence serve`` takes
the ``prompt_cache_mib`` setting, 256 by default)."""


def cache_nbytes(cache: Any) -> int:
    """Bytes of keys and values ``cache`` holds: its ``nbytes`` (ours), or the sum over a transformers cache's
    layer tensors."""
    nbytes = getattr(cache, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    total = 0
    for layer in getattr(cache, "layers", None) or ():
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if tensor is not None and hasattr(tensor, "element_size"):
                total += int(tensor.numel()) * int(tensor.element_size())
    return total


@dataclass
class CachedSequence:
    """A KV cache and the token ids whose keys and values it holds, in order."""

    cache: Any
    tokens: list[int] = field(default_factory=list)
    nbytes: int = 0
    """What its cache held when it was given back (what it counts against the prompt cache's bound)."""


class PromptCache:
    """The KV caches of recent sequences (several conversations), least recently used dropped first once they
    hold more than ``max_mib`` MiB together; reused when a new prompt starts like one of them.

    :meth:`take` finds the entry with the longest common prefix across all of them. An entry the prompt
    continues whole is handed out as it is. One that shares only part of itself: when the shared part is at
    least half of it (the same conversation, ending otherwise: a regenerated reply, an edited turn) it is
    cropped to it and handed out; when less (another conversation with the same system prompt) a copy of the
    prefix is handed out and the entry stays for its own conversation (a cache that cannot copy is cropped; one
    that cannot be cropped, transformers', is reused only when the prompt continues it whole). An entry handed
    out is no longer in the cache, so no two requests ever write the same one; :meth:`give_back` returns it
    with the tokens now in it, and drops the entries it continues (it serves their prompts too). Only the
    engine thread uses it; :attr:`nbytes` and ``len()`` may be read from any thread.
    """

    def __init__(self, max_mib: float = DEFAULT_PROMPT_CACHE_MIB) -> None:
        self._entries: list[CachedSequence] = []
        """Least recently used first."""
        self.nbytes = 0
        """What the kept entries hold together."""
        self.last_reused = 0
        """Prompt tokens the last :meth:`take` found cached."""
        self.max_bytes = 0
        self.resize(max_mib)

    def resize(self, max_mib: float) -> None:
        """Keep at most ``max_mib`` MiB from now on (0: keep nothing); the oldest entries beyond it go now."""
        self.max_bytes = int(max(0.0, max_mib) * MIB)
        self._evict()

    def take(self, model: Any, prompt: Sequence[int]) -> tuple[CachedSequence, int]:
        """A cache for ``prompt`` and how many of its leading tokens are already in it (always fewer than
        ``len(prompt)``: the last prompt token is run again to get the next token's logits)."""
        best, best_len = None, 0
        for entry in self._entries:
            n = min(common_prefix(entry.tokens, prompt), len(prompt) - 1)
            if n > best_len:
                best, best_len = entry, n
        self.last_reused = 0
        if best is None or best_len == 0:
            return CachedSequence(new_cache(model)), 0
        length = best.cache.get_seq_length()
        if length > best_len:
            handed = self._part_of(best, best_len)
            if handed is None:
                return CachedSequence(new_cache(model)), 0
        else:
            self._remove(best)
            handed = best
        handed.tokens = handed.tokens[:best_len]
        self.last_reused = best_len
        return handed, best_len

    def _part_of(self, entry: CachedSequence, length: int) -> CachedSequence | None:
        """The first ``length`` positions of ``entry`` to hand out: a copy (the entry stays) when they are less
        than half of it and its cache can copy, else the entry cropped; None when neither can be done."""
        held = entry.cache.get_seq_length()
        copy = getattr(entry.cache, "prefix_copy", None)
        if 2 * length < held and callable(copy):
            try:
                part = CachedSequence(copy(length), entry.tokens[:length])
            except ValueError:  # a trimmed sliding layer no longer holds the prefix
                return None
            self._entries.remove(entry)
            self._entries.append(entry)  # it was used: the most recent now
            return part
        if not getattr(entry.cache, "crops_to_length", False):
            return None
        try:
            entry.cache.crop(length)
        except ValueError:
            return None
        self._remove(entry)
        return entry

    def give_back(self, entry: CachedSequence) -> None:
        """Keep ``entry`` (the most recently used); its ``tokens`` must match what its cache holds."""
        if self.max_bytes == 0:
            return
        if entry.cache.get_seq_length() != len(entry.tokens):
            return  # out of step (an error mid-step): never reuse it
        entry.nbytes = cache_nbytes(entry.cache)
        if getattr(entry.cache, "crops_to_length", False):
            # it holds every sequence it continues: those are not needed any more
            for old in [e for e in self._entries if common_prefix(e.tokens, entry.tokens) == len(e.tokens)]:
                self._remove(old)
        self._entries.append(entry)
        self.nbytes += entry.nbytes
        self._evict()

    def _remove(self, entry: CachedSequence) -> None:
        self._entries.remove(entry)
        self.nbytes -= entry.nbytes

    def _evict(self) -> None:
        while self._entries and self.nbytes > self.max_bytes:
            self._remove(self._entries[0])

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> list[CachedSequence]:
        """The kept entries, least recently used first (a copy of the list)."""
        return list(self._entries)
