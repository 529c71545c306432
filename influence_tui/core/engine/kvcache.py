"""The KV cache the generation loop uses, and the prompt cache that keeps it across requests.

:class:`GrowingCache` is transformers' ``DynamicCache`` with layers that write into preallocated buffers
(grown in chunks of :data:`CHUNK` positions) instead of concatenating a new tensor every step: a decode step
copies one position per layer, not the whole cache, and ``crop`` is a view. Models whose config asks for
sliding-window or other special layers get transformers' own cache (:func:`new_cache`).

:class:`PromptCache` keeps the cache of the last few sequences (``slots``) with the token ids in it. The next
request that starts with the same tokens (the next turn of a chat, a client continuing its conversation)
reuses the cached prefix and prefills only the new tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

CHUNK = 256
"""Positions a layer's buffer grows by when it is full."""


class GrowingLayer(DynamicLayer):  # type: ignore[misc]
    """A cache layer over a buffer ``[batch, heads, capacity, head_dim]``; ``keys`` / ``values`` are views of
    its first ``length`` positions."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._key_buffer = key_states.new_empty((*key_states.shape[:2], 0, key_states.shape[3]))
        self._value_buffer = value_states.new_empty((*value_states.shape[:2], 0, value_states.shape[3]))
        self.keys = self._key_buffer
        self.values = self._value_buffer
        self.is_initialized = True

    def _grow(self, needed: int) -> None:
        capacity = self._key_buffer.shape[2]
        if needed <= capacity:
            return
        new_capacity = -(-needed // CHUNK) * CHUNK
        length = self.keys.shape[2]
        for name in ("_key_buffer", "_value_buffer"):
            old: torch.Tensor = getattr(self, name)
            new = old.new_empty((*old.shape[:2], new_capacity, old.shape[3]))
            new[:, :, :length].copy_(old[:, :, :length])
            setattr(self, name, new)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.keys.shape[2]
        end = start + key_states.shape[2]
        self._grow(end)
        self._key_buffer[:, :, start:end].copy_(key_states)
        self._value_buffer[:, :, start:end].copy_(value_states)
        self.keys = self._key_buffer[:, :, :end]
        self.values = self._value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return int(self.keys.shape[2])

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` positions (transformers' convention: a negative count)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of positions to remove")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        keep = max(0, self.keys.shape[2] + tokens_to_remove)
        self.keys = self._key_buffer[:, :, :keep]
        self.values = self._value_buffer[:, :, :keep]

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None  # type: ignore[assignment]
        super().reset()

    @property
    def nbytes(self) -> int:
        if not self.is_initialized:
            return 0
        return 2 * self._key_buffer.numel() * self._key_buffer.element_size()


class GrowingCache(DynamicCache):  # type: ignore[misc]
    """A ``DynamicCache`` made of :class:`GrowingLayer`\\ s."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)

    def crop(self, max_length: int) -> None:
        for layer in self.layers:
            length = layer.get_seq_length()
            if length > max_length:
                layer.crop(max_length - length)

    @property
    def nbytes(self) -> int:
        return sum(getattr(layer, "nbytes", 0) for layer in self.layers)


def plain_attention(config: Any) -> bool:
    """Whether every layer of the model attends over the whole sequence (no sliding window, no linear or
    chunked attention), so :class:`GrowingCache` fits it."""
    scopes = [config, getattr(config, "text_config", None)]
    for scope in scopes:
        if scope is None:
            continue
        layer_types = getattr(scope, "layer_types", None)
        if layer_types and any(t != "full_attention" for t in layer_types):
            return False
        if getattr(scope, "sliding_window", None) and getattr(scope, "use_sliding_window", True):
            return False
    return True


def new_cache(model: Any) -> Cache:
    """An empty KV cache for ``model``: :class:`GrowingCache` where it fits, else transformers' own."""
    config = getattr(model, "config", None)
    if config is not None and plain_attention(config):
        return GrowingCache()
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

    cache: Cache
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
        if best is None or not isinstance(best.cache, GrowingCache | DynamicCache) or best_len == 0:
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
