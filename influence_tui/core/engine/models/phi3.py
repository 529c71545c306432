"""Phi-3 / Phi-4-mini natively: the llama decoder whose checkpoint already joins ``qkv_proj`` and ``gate_up_proj``.

Those joined matrices are the layout the native attention and MLP compute anyway (q rows, then k, then v;
gate rows, then up), so they are used as they are. A ``partial_rotary_factor`` below one rotates only the
first dimensions of each head (in torch: the fused kernel rotates whole heads); a ``sliding_window`` applies
to every layer, as transformers' Phi3 does. LongRoPE (the 128k variants) is not native: its config is refused.
"""

from __future__ import annotations

import torch

from influence_tui.core.engine.models.attention import Attention, GatedMLP
from influence_tui.core.engine.models.base import CausalLM
from influence_tui.core.engine.models.config import ModelConfig
from influence_tui.core.engine.models.layers import Weights, embedding, linear, take
from influence_tui.core.engine.models.llama import causal_lm, check, compute_dtype, norm, pre_norm_block


def build_phi3(config: ModelConfig, weights: Weights, *, dtype: torch.dtype = torch.float32) -> CausalLM:
    """The Phi-3 model of ``config`` over ``weights`` (HF names)."""
    check(config)
    dtype = compute_dtype(weights, dtype)
    embed = embedding(take(weights, "model.embed_tokens.weight"), dtype=dtype)
    layers = []
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}"
        attn = Attention(
            i,
            linear(weights, f"{prefix}.self_attn.qkv_proj", dtype=dtype, bias=config.attention_bias),
            linear(weights, f"{prefix}.self_attn.o_proj", dtype=dtype, bias=config.attention_out_bias),
            heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            rotary_dim=config.rotary_dim,
            scale=config.attention_scale,
            window=config.window(i),
        )
        mlp = GatedMLP(
            linear(weights, f"{prefix}.mlp.gate_up_proj", dtype=dtype, bias=config.mlp_bias),
            linear(weights, f"{prefix}.mlp.down_proj", dtype=dtype, bias=config.mlp_bias),
            config.hidden_act,
        )
        layers.append(pre_norm_block(weights, prefix, config, dtype, attn=attn, mlp=mlp))
    return causal_lm(config, weights, embed, layers, norm(weights, "model.norm.weight", config, dtype), dtype=dtype)
