"""Fewer, larger steps per token: the fused kernels the native decoders are built from.

At batch 1 a small model's decode step is a few hundred tiny torch ops, and their dispatch costs as much as
the matrix products. The native attention and MLP (:mod:`~influence_tui.core.engine.models.attention`) call:

* :func:`qkv_rope`: the head split of one packed ``q|k|v`` product and the rotary embedding in one kernel;
* :func:`attend_decode`: attention of one new position over the cache in one kernel (SDPA for prompts), and
  :func:`attend_rows` for a batch of sequences, each over its own cache (ragged lengths), in one call;
* :func:`silu_mul`: ``silu(gate) * up`` of one packed ``gate|up`` product in one kernel;
* :func:`rms_norm`: the norm in one kernel.

Every kernel has a pure-torch twin (``*_reference``), used where the extension is unavailable (another device,
another dtype, no compiler) and by the tests to check the kernels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from influence_tui.core.engine.quant.kernels import load_kernels

# ------------------------------------------------------------------------------------------ the ops


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    ext = load_kernels()
    if ext is not None and x.device.type == "cpu" and x.dtype == torch.float32:
        return ext.rms_norm(x, weight, eps)  # type: ignore[no-any-return]
    return rms_norm_reference(x, weight, eps)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    return weight * (x.to(torch.float32) * torch.rsqrt(variance + eps))


def qkv_rope(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, heads: int, kv_heads: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, T, (H + 2 KV) * D]`` -> q ``[B, H, T, D]``, k and v ``[B, KV, T, D]``, rotary embedding applied."""
    ext = load_kernels()
    if ext is not None and qkv.device.type == "cpu" and qkv.dtype == torch.float32:
        q, k, v = ext.qkv_rope(qkv, cos, sin, heads, kv_heads, dim)
        return q, k, v
    return qkv_rope_reference(qkv, cos, sin, heads=heads, kv_heads=kv_heads, dim=dim)


def qkv_rope_reference(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, heads: int, kv_heads: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, t, _ = qkv.shape
    q, k, v = torch.split(qkv, [heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    q = q.view(b, t, heads, dim).transpose(1, 2)
    k = k.view(b, t, kv_heads, dim).transpose(1, 2)
    v = v.view(b, t, kv_heads, dim).transpose(1, 2).contiguous()
    c, s = cos.unsqueeze(1).to(qkv.dtype), sin.unsqueeze(1).to(qkv.dtype)

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    return (q * c + rotate_half(q) * s), (k * c + rotate_half(k) * s), v


def attend_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One new position attending over the whole cache: q ``[B, H, 1, D]``, k/v ``[B, KV, L, D]`` ->
    ``[B, 1, H * D]``."""
    ext = load_kernels()
    if ext is not None and q.device.type == "cpu" and q.dtype == torch.float32 and k.stride(-1) == 1:
        return ext.attend_decode(q, k, v, scale)  # type: ignore[no-any-return]
    return attend_decode_reference(q, k, v, scale)


def attend_decode_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    b, heads, _, dim = q.shape
    out = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=heads != k.shape[1])
    return out.transpose(1, 2).reshape(b, 1, heads * dim)


def attend_rows(
    q: torch.Tensor, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], scale: float
) -> torch.Tensor:
    """One new position per sequence, each over its own cache: q ``[B, H, 1, D]``, ``keys[i]`` / ``values[i]``
    ``[1, KV, L_i, D]`` (lengths may differ) -> ``[B, 1, H * D]``. Row ``i`` is exactly what
    :func:`attend_decode` gives sequence ``i`` alone: the kernel computes each (sequence, head) by itself."""
    ext = load_kernels()
    if (
        ext is not None
        and q.device.type == "cpu"
        and q.dtype == torch.float32
        and all(k.dtype == torch.float32 and k.stride(-1) == 1 for k in keys)
    ):
        return ext.attend_rows(q, list(keys), list(values), scale)  # type: ignore[no-any-return]
    return attend_rows_reference(q, keys, values, scale)


def append_rows(
    keys: torch.Tensor, values: torch.Tensor, key_views: Sequence[torch.Tensor], value_views: Sequence[torch.Tensor]
) -> None:
    """Write row ``i`` of ``keys`` / ``values`` ``[B, KV, 1, D]`` at the last position of ``key_views[i]`` /
    ``value_views[i]`` (``[1, KV, L_i, D]`` views of each sequence's cache), in one call for the batch."""
    ext = load_kernels()
    if ext is not None and keys.device.type == "cpu" and keys.dtype == torch.float32:
        ext.append_rows(keys, values, list(key_views), list(value_views))
        return
    for i, (k, v) in enumerate(zip(key_views, value_views, strict=True)):
        k[:, :, -1:].copy_(keys[i : i + 1])
        v[:, :, -1:].copy_(values[i : i + 1])


def attend_rows_reference(
    q: torch.Tensor, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], scale: float
) -> torch.Tensor:
    pairs = zip(keys, values, strict=True)
    return torch.cat([attend_decode_reference(q[i : i + 1], k, v, scale) for i, (k, v) in enumerate(pairs)])


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    ext = load_kernels()
    if ext is not None and gate_up.device.type == "cpu" and gate_up.dtype == torch.float32:
        return ext.silu_mul(gate_up)  # type: ignore[no-any-return]
    return silu_mul_reference(gate_up)


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
