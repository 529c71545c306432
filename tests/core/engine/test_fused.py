"""The fused decoder steps: each kernel against its pure-torch twin, and the fused model against the unfused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from influence_tui.core.engine.kvcache import GrowingCache
from influence_tui.core.engine.quant import fused
from influence_tui.core.engine.quant.kernels import load_kernels
from influence_tui.core.engine.quant.modules import build_packed_model, packed_state
from influence_tui.core.engine.quant.packed import pack_plain, quantize_q8

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


def test_silu_mul_matches_torch() -> None:
    gate_up = torch.randn(2, 3, 2 * 96)
    assert close(fused.silu_mul(gate_up), fused.silu_mul_reference(gate_up))


def _logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        cache = GrowingCache()
        prefill = model(input_ids=torch.tensor([ids[:-3]]), past_key_values=cache, use_cache=True).logits
        steps = [
            model(
                input_ids=torch.tensor([[token]]),
                past_key_values=cache,
                position_ids=torch.tensor([[len(ids) - 3 + i]]),
                use_cache=True,
            ).logits
            for i, token in enumerate(ids[-3:])
        ]
    return torch.cat([prefill, *steps], dim=1)


@pytest.mark.parametrize("kind", ["f32", "q8"])
def test_the_fused_model_computes_what_the_unfused_one_does(tiny_llama: Path, kind: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_llama)
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    linears = {
        f"{n}.weight" for n, m in reference.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Embedding)
    }
    weights = {
        name: (quantize_q8(t) if kind == "q8" else pack_plain(t, "f32")) if name in linears else t
        for name, t in reference.state_dict().items()
    }
    plain = build_packed_model(config, weights)
    fast = build_packed_model(config, weights)
    assert fused.fuse_model(fast) == 2 * 4 + 1  # per layer: attention, MLP, two norms; and the final norm
    names = {type(m).__name__ for m in fast.modules()}
    assert {"FusedAttention", "FusedMLP", "FusedRMSNorm"} <= names and "LlamaAttention" not in names
    ids = [1, 5, 9, 20, 33, 7, 8, 40, 41, 42]
    # integer-dot decode (int8 activations) is used by both, so they agree to float rounding
    assert close(_logits(fast, ids), _logits(plain, ids), 1e-4)
    # fusing keeps the weights: same bytes, same parameter count
    total = lambda m: sum(v.nbytes if hasattr(v, "kind") else v.numel() * 4 for v in packed_state(m).values())  # noqa: E731
    assert total(fast) == total(plain)
