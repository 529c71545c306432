"""The native models' KV cache: per-layer buffers grown in chunks, written in place, read as views.

Each :class:`LayerCache` keeps keys and values in buffers ``[batch, kv_heads, capacity, head_dim]`` grown by
:data:`CHUNK` positions when full, so a decode step copies one position per layer and never concatenates.
``keys`` / ``values`` are views of the first ``length`` positions; :meth:`KVCache.crop` only moves the length.

Sliding-window layers keep every position too (their attention reads the last ``window`` of them), so a cache
can be cropped back to any prefix, as :class:`~influence_tui.core.engine.kvcache.PromptCache` does; with
``trim_sliding=True`` they keep only about ``window + CHUNK`` positions (bounded memory for long chats), and a
crop to before what they still hold is a :class:`ValueError`.

The interface is the one the native models and the generation loop use: ``update(keys, values, layer)``
returns the layer's whole keys and values (transformers' caches answer the same call), ``get_seq_length()``,
``crop(max_length)``, ``prefix_copy(max_length)``, ``nbytes``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

CHUNK = 256
"""Positions a layer's buffer grows by when it is full."""


class LayerCache:
    """One layer's keys and values (see the module docstring)."""

    __slots__ = ("_keys", "_values", "keys", "length", "start", "trim", "values", "window")

    def __init__(self, window: int | None = None, *, trim: bool = False) -> None:
        self.window = window
        """The layer's sliding window (None: it attends to every position)."""
        self.trim = trim and window is not None
        self.start = 0
        """Position of the first kept entry (above 0 only in a trimmed sliding layer)."""
        self.length = 0
        """Positions seen, ``start`` included: what ``get_seq_length`` reports."""
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``keys`` / ``values`` ``[B, KV, T, D]``; return every kept position's keys and values."""
        t = keys.shape[2]
        k, v = self.reserve(t, keys)
        end = k.shape[2]
        k.narrow(2, end - t, t).copy_(keys)
        v.narrow(2, end - t, t).copy_(values)
        return k, v

    def reserve(self, t: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Room for ``t`` more positions (new buffers shaped and typed after ``like`` ``[B, KV, *, D]``): the
        length moves on, and every kept position's keys and values are returned, the ``t`` new ones last, for
        the caller to write (a batched decode step writes every row's in one kernel call)."""
        if self._keys is None or self._values is None:
            capacity = -(-t // CHUNK) * CHUNK
            shape = (like.shape[0], like.shape[1], capacity, like.shape[3])
            self._keys = like.new_empty(shape)
            self._values = like.new_empty(shape)
        end = self.length - self.start + t
        if end > self._keys.shape[2]:
            self._make_room(end)
            end = self.length - self.start + t
        k_buf, v_buf = self._keys, self._values
        assert k_buf is not None and v_buf is not None
        self.length += t
        self.keys = k = k_buf.narrow(2, 0, end)
        self.values = v = v_buf.narrow(2, 0, end)
        return k, v

    def _make_room(self, needed: int) -> None:
        assert self._keys is not None and self._values is not None
        used = self.length - self.start
        if self.trim and self.window is not None:
            drop = max(0, used - (self.window - 1))  # keep the window - 1 positions the next query still sees
            if drop and needed - drop <= self._keys.shape[2]:
                for buf in (self._keys, self._values):
                    buf[:, :, : used - drop].copy_(buf[:, :, drop:used].clone())
                self.start += drop
                return
        capacity = -(-needed // CHUNK) * CHUNK
        for name in ("_keys", "_values"):
            old: torch.Tensor = getattr(self, name)
            new = old.new_empty((*old.shape[:2], capacity, old.shape[3]))
            new[:, :, :used].copy_(old[:, :, :used])
            setattr(self, name, new)

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` positions."""
        if max_length >= self.length:
            return
        if max_length <= 0:
            self.start = 0
        elif self.start and max_length - ((self.window or 1) - 1) < self.start:
            raise ValueError(
                f"this sliding-window layer keeps positions from {self.start} on; it cannot be cropped to {max_length}"
            )
        self.length = max(0, max_length)
        kept = self.length - self.start
        if self._keys is not None and self._values is not None:
            self.keys = self._keys[:, :, :kept]
            self.values = self._values[:, :, :kept]

    def prefix_copy(self, max_length: int) -> LayerCache:
        """A new layer cache holding a copy of the first ``max_length`` positions (this one is left as it is;
        the same :class:`ValueError` as :meth:`crop` where a trimmed sliding layer no longer holds them)."""
        other = LayerCache(self.window, trim=self.trim)
        length = min(max(0, max_length), self.length)
        if length == 0 or self._keys is None or self._values is None:
            return other
        if self.start and length - ((self.window or 1) - 1) < self.start:
            raise ValueError(
                f"this sliding-window layer keeps positions from {self.start} on; it cannot copy the first {length}"
            )
        kept = length - self.start
        capacity = max(1, -(-kept // CHUNK)) * CHUNK
        with torch.inference_mode(self._keys.is_inference()):  # the same kind of tensor as the buffers copied
            keys = self._keys.new_empty((*self._keys.shape[:2], capacity, self._keys.shape[3]))
            values = self._values.new_empty((*self._values.shape[:2], capacity, self._values.shape[3]))
            keys[:, :, :kept].copy_(self._keys[:, :, :kept])
            values[:, :, :kept].copy_(self._values[:, :, :kept])
        other._keys, other._values = keys, values
        other.start, other.length = self.start, length
        other.keys, other.values = keys[:, :, :kept], values[:, :, :kept]
        return other

    @property
    def nbytes(self) -> int:
        if self._keys is None:
            return 0
        return 2 * self._keys.numel() * self._keys.element_size()


class KVCache:
    """The KV cache of one native model's layers (see the module docstring)."""

    crops_to_length = True
    """``crop(n)`` keeps the first ``n`` positions (the prompt cache crops only caches that say so)."""

    def __init__(self, windows: Sequence[int | None], *, trim_sliding: bool = False) -> None:
        self.layers = [LayerCache(w, trim=trim_sliding) for w in windows]

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer: int, *_args: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layers[layer].update(keys, values)

    def get_seq_length(self, layer: int = 0) -> int:
        return self.layers[layer].length if self.layers else 0

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` positions of every layer (a negative value counts from the end, as in
        transformers' caches)."""
        if max_length < 0:
            max_length = max(0, self.get_seq_length() + max_length)
        for layer in self.layers:
            layer.crop(max_length)

    def reset(self) -> None:
        """Empty every layer (the buffers are kept for the next sequence)."""
        for layer in self.layers:
            layer.crop(0)

    def prefix_copy(self, max_length: int) -> KVCache:
        """A new cache with a copy of the first ``max_length`` positions of every layer (this one is kept as it
        is: the prompt cache hands out a shared prefix this way without losing the sequence it came from)."""
        other = KVCache([])
        other.layers = [layer.prefix_copy(max_length) for layer in self.layers]
        return other

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def __len__(self) -> int:
        return len(self.layers)


class RowCaches:
    """The caches of a batch of sequences, one per row of a decode step (:meth:`CausalLM.decode_batch`).

    Each row's keys and values go to its own :class:`KVCache` (ragged lengths: every sequence has its own past),
    and attention runs per row over that cache; only the products with the weights see the whole batch.
    """

    __slots__ = ("caches", "past")

    def __init__(self, caches: Sequence[KVCache]) -> None:
        self.caches = list(caches)
        self.past = [cache.get_seq_length() for cache in self.caches]
        """Each row's cached positions before this step."""

    def update_row(
        self, row: int, keys: torch.Tensor, values: torch.Tensor, layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append row ``row``'s ``keys`` / ``values`` ``[1, KV, T, D]`` to its cache; return all of that row's."""
        return self.caches[row].update(keys, values, layer)

    def reserve(self, layer: int, like: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Room for one new position in layer ``layer`` of every row's cache (:meth:`LayerCache.reserve`;
        ``like`` is ``[1, KV, *, D]``): each row's keys and values, the new position last and not yet written."""
        keys, values = [], []
        for cache in self.caches:
            k, v = cache.layers[layer].reserve(1, like)
            keys.append(k)
            values.append(v)
        return keys, values

    def __len__(self) -> int:
        return len(self.caches)
