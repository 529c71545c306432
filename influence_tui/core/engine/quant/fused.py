"""Fewer, larger steps per token: fused replacements for a llama-style decoder's attention, MLP and norms.

At batch 1 a small model's decode step is a few hundred tiny torch ops, and their dispatch costs as much as
the matrix products. For the module classes listed here (whose forward is known to be llama's), the packed
model gets:

* :class:`FusedAttention`: one packed ``q|k|v`` product, the rotary embedding and the head split in one
  kernel, attention of the new position over the cache in one kernel at decode (transformers' attention
  function for prompts and masks), then ``o_proj``;
* :class:`FusedMLP`: one packed ``gate|up`` product and ``silu(gate) * up`` in one kernel, then ``down_proj``;
* :class:`FusedRMSNorm`: the norm in one kernel.

The decoder layers, the rotary embedding, the masks and the cache stay transformers'. Every kernel has a
pure-torch twin (used where the extension is unavailable, and by the tests to check the kernels).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from influence_tui.core.engine.quant.kernels import load_kernels
from influence_tui.core.engine.quant.modules import PackedLinear
from influence_tui.core.engine.quant.packed import PackedWeight, concat_rows

ATTENTION_CLASSES = frozenset({"LlamaAttention", "MistralAttention", "Qwen2Attention"})
MLP_CLASSES = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})
NORM_CLASSES = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})


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


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    ext = load_kernels()
    if ext is not None and gate_up.device.type == "cpu" and gate_up.dtype == torch.float32:
        return ext.silu_mul(gate_up)  # type: ignore[no-any-return]
    return silu_mul_reference(gate_up)


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


# ------------------------------------------------------------------------------------------ the modules


class FusedRMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().to(torch.float32), requires_grad=False)
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.variance_epsilon)


class FusedMLP(nn.Module):
    def __init__(self, gate_up: PackedLinear, down: nn.Module) -> None:
        super().__init__()
        self.gate_up_proj = gate_up
        self.down_proj = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_mul(self.gate_up_proj(x)))  # type: ignore[no-any-return]


class FusedAttention(nn.Module):
    """Llama's attention with one ``q|k|v`` product and fused rotary embedding (see the module docstring)."""

    def __init__(self, original: Any, qkv: PackedLinear) -> None:
        super().__init__()
        self.config: Any = original.config
        self.layer_idx = original.layer_idx
        self.head_dim = int(original.head_dim)
        self.scaling = float(original.scaling)
        self.num_key_value_groups = int(original.num_key_value_groups)
        self.attention_dropout = 0.0
        self.is_causal = True
        self.sliding_window = getattr(original, "sliding_window", None)
        self.num_heads = int(original.config.num_attention_heads)
        self.num_kv_heads = self.num_heads // self.num_key_value_groups
        self.qkv_proj = qkv
        self.o_proj: nn.Module = original.o_proj

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        # transformers up to 5.23 hands the cache over as past_key_values, 5.24 as cache; either way the load-time
        # self-check (engine/selfcheck.py) proves the cache is really read before this module is used.
        if past_key_values is None:
            past_key_values = kwargs.pop("cache", None)
        kwargs.pop("cache", None)
        b, t, _ = hidden_states.shape
        assert position_embeddings is not None
        cos, sin = position_embeddings
        q, k, v = qkv_rope(
            self.qkv_proj(hidden_states), cos, sin, heads=self.num_heads, kv_heads=self.num_kv_heads, dim=self.head_dim
        )
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        if t == 1 and attention_mask is None and self.sliding_window is None:
            out = attend_decode(q, k, v, self.scaling)
        else:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
            from transformers.models.llama.modeling_llama import eager_attention_forward

            attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
            extra = {"sliding_window": self.sliding_window} if self.sliding_window is not None else {}
            out, _ = attention(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling, **extra, **kwargs)
            out = out.reshape(b, t, -1)
        return self.o_proj(out), None


# ------------------------------------------------------------------------------------------ the swap


def _fusable(*linears: Any) -> list[PackedWeight] | None:
    if not all(isinstance(m, PackedLinear) for m in linears):
        return None
    weights = [m.weight_packed.packed for m in linears]
    first = weights[0]
    if any(w.kind != first.kind or w.group != first.group or (w.mins is None) != (first.mins is None) for w in weights):
        return None
    if any(w.shape[1] != first.shape[1] for w in weights):
        return None
    return weights


def _joined_bias(*linears: PackedLinear) -> torch.Tensor | None:
    biases = [m.bias for m in linears]
    if all(b is None for b in biases):
        return None
    return torch.cat(
        [b.detach() if b is not None else torch.zeros(m.out_features) for b, m in zip(biases, linears, strict=True)]
    )


def fuse_model(model: nn.Module) -> int:
    """Swap the fused modules into a packed model, in place; returns how many modules were replaced."""
    config = getattr(model, "config", None)
    silu = config is not None and getattr(config, "hidden_act", "silu") == "silu"
    replaced = 0
    wanted = ATTENTION_CLASSES | MLP_CLASSES | NORM_CLASSES
    for name, module in [(n, m) for n, m in model.named_modules() if type(m).__name__ in wanted]:
        cls = type(module).__name__
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new: nn.Module | None = None
        if cls in ATTENTION_CLASSES and not any(hasattr(module, n) for n in ("q_norm", "k_norm")):
            weights = _fusable(module.q_proj, module.k_proj, module.v_proj)
            if weights is not None and isinstance(module.o_proj, PackedLinear):
                linears = (module.q_proj, module.k_proj, module.v_proj)
                new = FusedAttention(module, PackedLinear(concat_rows(weights), _joined_bias(*linears)))
        elif cls in MLP_CLASSES and silu:
            weights = _fusable(module.gate_proj, module.up_proj)
            if weights is not None:
                joined = PackedLinear(concat_rows(weights), _joined_bias(module.gate_proj, module.up_proj))
                new = FusedMLP(joined, module.down_proj)
        elif cls in NORM_CLASSES:
            new = FusedRMSNorm(module.weight, float(module.variance_epsilon))
        if new is not None:
            setattr(parent, child, new)
            replaced += 1
    return replaced
