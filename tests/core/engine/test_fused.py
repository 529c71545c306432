"""The fused decoder steps: each kernel against its pure-torch twin."""

from __future__ import annotations

import pytest
import torch

from influence_tui.core.engine.quant import fused
from influence_tui.core.engine.quant.kernels import load_kernels

pytestmark = pytest.mark.skipif(load_kernels() is None, reason="the CPU kernels cannot be built here")


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= tol * max(1.0, float(b.abs().max())))


@pytest.mark.parametrize("shape", [(1, 1, 576), (2, 7, 64), (3, 100)])
def test_rms_norm_matches_torch(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    w = torch.randn(shape[-1])
    assert close(fused.rms_norm(x, w, 1e-5), fused.rms_norm_reference(x, w, 1e-5))


@pytest.mark.parametrize(("b", "t", "heads", "kv_heads", "dim"), [(1, 1, 9, 3, 64), (2, 5, 4, 2, 16), (1, 3, 4, 4, 8)])
def test_qkv_rope_matches_torch(b: int, t: int, heads: int, kv_heads: int, dim: int) -> None:
    qkv = torch.randn(b, t, (heads + 2 * kv_heads) * dim)
    angles = torch.randn(b, t, dim // 2)
    cos = torch.cat((angles.cos(), angles.cos()), dim=-1)
    sin = torch.cat((angles.sin(), angles.sin()), dim=-1)
    got = fused.qkv_rope(qkv, cos, sin, heads=heads, kv_heads=kv_heads, dim=dim)
    want = fused.qkv_rope_reference(qkv, cos, sin, heads=heads, kv_heads=kv_heads, dim=dim)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and close(g, w)


@pytest.mark.parametrize(("heads", "kv_heads", "length"), [(9, 3, 1), (9, 3, 77), (4, 4, 300)])
def test_attend_decode_matches_torch_on_a_cache_view(heads: int, kv_heads: int, length: int) -> None:
    dim = 64
    buffer_k = torch.randn(1, kv_heads, 512, dim)
    buffer_v = torch.randn(1, kv_heads, 512, dim)
    k, v = buffer_k[:, :, :length], buffer_v[:, :, :length]  # strided views, as the growing cache hands out
    q = torch.randn(1, heads, 1, dim)
    assert close(fused.attend_decode(q, k, v, dim**-0.5), fused.attend_decode_reference(q, k, v, dim**-0.5))


def test_attend_rows_gives_each_row_its_bits_alone_over_ragged_caches() -> None:
    dim = 64
    lengths = [1, 77, 5, 300, 16, 33]
    buffers = [(torch.randn(1, 3, 512, dim), torch.randn(1, 3, 512, dim)) for _ in lengths]
    keys = [k[:, :, :n] for (k, _), n in zip(buffers, lengths, strict=True)]
    values = [v[:, :, :n] for (_, v), n in zip(buffers, lengths, strict=True)]
    q = torch.randn(len(lengths), 9, 1, dim)
    out = fused.attend_rows(q, keys, values, dim**-0.5)
    assert out.shape == (len(lengths), 1, 9 * dim)
    for i in range(len(lengths)):
        alone = fused.attend_decode(q[i : i + 1], keys[i], values[i], dim**-0.5)
        assert torch.equal(out[i : i + 1], alone), i
        assert close(alone, fused.attend_decode_reference(q[i : i + 1], keys[i], values[i], dim**-0.5))
    assert close(out, fused.attend_rows_reference(q, keys, values, dim**-0.5))


def test_attend_rows_checks_its_arguments() -> None:
    q = torch.randn(2, 4, 1, 16)
    k = torch.randn(1, 2, 5, 16)
    with pytest.raises(RuntimeError, match="one k and one v per row"):
        fused.attend_rows(q, [k], [k], 0.25)
    with pytest.raises(RuntimeError, match=r"\[1, KV, L, D\]"):
        fused.attend_rows(q, [k, torch.randn(1, 2, 5, 8)], [k, torch.randn(1, 2, 5, 8)], 0.25)
    with pytest.raises(RuntimeError, match="empty cache"):
        fused.attend_rows(q, [k, k[:, :, :0]], [k, k[:, :, :0]], 0.25)


def test_append_rows_writes_each_rows_last_position() -> None:
    buffers = [torch.zeros(1, 2, 8, 16) for _ in range(3)]
    lengths = [1, 5, 8]
    views = [b[:, :, :n] for b, n in zip(buffers, lengths, strict=True)]
    values_buffers = [torch.zeros(1, 2, 8, 16) for _ in range(3)]
    value_views = [b[:, :, :n] for b, n in zip(values_buffers, lengths, strict=True)]
    k, v = torch.randn(3, 2, 1, 16), torch.randn(3, 2, 1, 16)
    fused.append_rows(k, v, views, value_views)
    for i, n in enumerate(lengths):
        assert torch.equal(buffers[i][:, :, n - 1], k[i : i + 1, :, 0])
        assert torch.equal(values_buffers[i][:, :, n - 1], v[i : i + 1, :, 0])
        assert int(buffers[i].ne(0).any(-1).sum()) == 2  # nothing else written


@pytest.mark.parametrize("width", [96, 100, 7])
def test_silu_mul_matches_torch_at_any_width(width: int) -> None:
    gate_up = torch.randn(3, 2 * width) * 30  # large activations too: exp must neither overflow nor lose them
    assert close(fused.silu_mul(gate_up), fused.silu_mul_reference(gate_up))


def test_silu_mul_matches_torch() -> None:
    gate_up = torch.randn(2, 3, 2 * 96)
    assert close(fused.silu_mul(gate_up), fused.silu_mul_reference(gate_up))
