"""Self-attention and gated MLPs of the native decoders, on the fused kernels where the layout allows.

:class:`Attention` computes one joined ``q|k|v`` product, the per-head q/k norms where the family has them
(Qwen3, Gemma 3: before the rotary embedding), the rotary embedding and the head split (one kernel when every
dimension rotates, torch for partial rotary), writes k and v into the cache, then attends: a single new
position on the decode kernel over the cache (its last ``window`` positions for a sliding layer), a prompt
with ``scaled_dot_product_attention`` (causal, or an explicit mask after a cached prefix or within a window),
and eager attention where scores are soft-capped (Gemma 2). In a batched decode step (the cache is a
:class:`~.cache.RowCaches`) the products see every row at once, and the rows attend in one kernel call, each
over its own cache (ragged lengths) with exactly the numbers it gets alone. :class:`GatedMLP` is ``down(act(gate) * up)`` with one joined ``gate|up`` product.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from influence_tui.core.engine.models.cache import RowCaches
from influence_tui.core.engine.quant.fused import append_rows, attend_decode, attend_rows, qkv_rope, silu_mul

_GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new", "gelu_fast")
LONG_ATTENTION = 1 << 21
"""From this many multiply-adds per decode step (heads x positions x head_dim) on, SDPA is faster than the
decode kernel (measured on a 2-core AVX-512 machine, 9 heads of 64: the kernel 72 us to SDPA's 97 at 2,000
positions, 805 to 533 at 8,000)."""


class Attention(nn.Module):
    """One layer's attention (see the module docstring)."""

    def __init__(
        self,
        index: int,
        qkv: nn.Module,
        o_proj: nn.Module,
        *,
        heads: int,
        kv_heads: int,
        head_dim: int,
        rotary_dim: int,
        scale: float,
        window: int | None = None,
        softcap: float | None = None,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.index = index
        self.qkv_proj = qkv
        self.o_proj = o_proj
        self.q_norm = q_norm
        self.k_norm = k_norm
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.rotary_dim = rotary_dim
        self.scale = scale
        self.window = window
        self.softcap = softcap
        self.split = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
        # The hot path calls the submodules' forward directly (nn.Module.__call__ costs microseconds a call,
        # hundreds of calls a token); no hooks are ever put on these modules.
        self._qkv_proj = qkv.forward
        self._o_proj = o_proj.forward

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: Any, past: int) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self._qkv_proj(x)
        if self.q_norm is not None and self.k_norm is not None:
            q, k, v = torch.split(qkv, list(self.split), dim=-1)
            q = self.q_norm(q.reshape(b, t, self.heads, self.head_dim)).reshape(b, t, -1)
            k = self.k_norm(k.reshape(b, t, self.kv_heads, self.head_dim)).reshape(b, t, -1)
            qkv = torch.cat((q, k, v), dim=-1)
        if self.rotary_dim == self.head_dim:
            q, k, v = qkv_rope(qkv, cos, sin, heads=self.heads, kv_heads=self.kv_heads, dim=self.head_dim)
        else:
            q, k, v = _partial_rope(
                qkv, cos, sin, heads=self.heads, kv_heads=self.kv_heads, dim=self.head_dim, rot=self.rotary_dim
            )
        if isinstance(cache, RowCaches):
            out = self._attend_rows(q, k, v, cache)
        else:
            k, v = cache.update(k, v, self.index)
            out = self._decode(q, k, v) if t == 1 and self.softcap is None else self._attend(q, k, v, past)
        return self._o_proj(out)  # type: ignore[no-any-return]

    def _attend_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, caches: RowCaches) -> torch.Tensor:
        """Each row of a batch over its own cache, with the numbers it gets alone (never its neighbours'):
        ``[B, 1, H * D]``. One new position a row (a decode step) is one kernel call for every row whose
        cache is below :data:`LONG_ATTENTION`; the rest make the calls they make alone."""
        b = q.shape[0]
        if q.shape[2] != 1 or self.softcap is not None:
            rows = [caches.update_row(r, k[r : r + 1], v[r : r + 1], self.index) for r in range(b)]
            return torch.cat([self._attend(q[r : r + 1], *rows[r], caches.past[r]) for r in range(b)])
        keys, values = caches.reserve(self.index, k[:1])
        append_rows(k, v, keys, values)
        seen_k, seen_v = keys, values
        if self.window is not None:
            windowed = [self._window(k_row, v_row) for k_row, v_row in zip(keys, values, strict=True)]
            seen_k, seen_v = [w[0] for w in windowed], [w[1] for w in windowed]
        if not self._long(max(seen_k, key=lambda k_row: k_row.shape[2])):
            return attend_rows(q, seen_k, seen_v, self.scale)
        return torch.cat([self._decode(q[r : r + 1], keys[r], values[r]) for r in range(b)])

    def _window(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values a new position sees: the last ``window`` of a sliding layer's."""
        s, window = k.shape[2], self.window
        if window is not None and s > window:
            return k.narrow(2, s - window, window), v.narrow(2, s - window, window)
        return k, v

    def _long(self, k: torch.Tensor) -> bool:
        return self.heads * k.shape[2] * self.head_dim >= LONG_ATTENTION

    def _decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One new position over the cache: the decode kernel, or from :data:`LONG_ATTENTION` on one SDPA call
        with each kv head's group of query heads as its queries (its blocked products then read less)."""
        k, v = self._window(k, v)
        if not self._long(k):
            return attend_decode(q, k, v, self.scale)
        b = q.shape[0]
        grouped = q.view(b, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
        out = F.scaled_dot_product_attention(grouped, k, v, scale=self.scale)
        return out.view(b, 1, self.heads * self.head_dim)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int) -> torch.Tensor:
        b, h, t, d = q.shape
        s = k.shape[2]
        mask = _mask(t, s, past, self.window, q.device)
        if self.softcap is not None:
            out = _softcapped(q, k, v, mask=mask, scale=self.scale, cap=self.softcap)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.scale, enable_gqa=h != k.shape[1]
            )
        return out.transpose(1, 2).reshape(b, t, h * d)


def _mask(t: int, s: int, past: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """Which keys each of the ``t`` queries sees (True: attend); None where plain causal attention is right.

    Query ``i`` is at position ``past + i``; the ``s`` keys are the last ``s`` positions, ending at ``past + t``.
    """
    if s == t and (window is None or t <= window):
        return None
    if t == 1 and (window is None or s <= window):
        return None  # one query sees every key: no mask, and is_causal with one query is the same
    q_pos = torch.arange(past, past + t, device=device).unsqueeze(-1)
    k_pos = torch.arange(past + t - s, past + t, device=device).unsqueeze(0)
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= k_pos > q_pos - window
    return allowed


def _softcapped(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None, scale: float, cap: float
) -> torch.Tensor:
    """Eager attention with soft-capped scores (Gemma 2), as transformers computes it."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    scores = torch.tanh(scores / cap) * cap
    t, s = q.shape[2], k.shape[2]
    if mask is None and t > 1:
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _partial_rope(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, heads: int, kv_heads: int, dim: int, rot: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rotary embedding on the first ``rot`` dimensions of each head (transformers' partial rotary)."""
    b, t, _ = qkv.shape
    q, k, v = torch.split(qkv, [heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    q = q.reshape(b, t, heads, dim).transpose(1, 2)
    k = k.reshape(b, t, kv_heads, dim).transpose(1, 2)
    v = v.reshape(b, t, kv_heads, dim).transpose(1, 2).contiguous()
    c, s = cos.unsqueeze(1).to(qkv.dtype), sin.unsqueeze(1).to(qkv.dtype)

    def rope(x: torch.Tensor) -> torch.Tensor:
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        return torch.cat((x_rot * c + _rotate_half(x_rot) * s, x_pass), dim=-1)

    return rope(q), rope(k), v


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` with ``gate|up`` one product; silu on the kernel in float32."""

    def __init__(self, gate_up: nn.Module, down: nn.Module, activation: str = "silu") -> None:
        super().__init__()
        if activation not in ("silu", *_GELU_TANH):
            raise ValueError(f"activation {activation!r}")
        self.gate_up_proj = gate_up
        self.down_proj = down
        self.silu = activation == "silu"
        self._gate_up_proj = gate_up.forward  # called directly, as in Attention
        self._down_proj = down.forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self._gate_up_proj(x)
        if self.silu:
            hidden = silu_mul(gate_up)
        else:
            gate, up = gate_up.chunk(2, dim=-1)
            hidden = F.gelu(gate, approximate="tanh") * up
        return self._down_proj(hidden)  # type: ignore[no-any-return]


def supported_activation(name: str) -> bool:
    return name in ("silu", *_GELU_TANH)
