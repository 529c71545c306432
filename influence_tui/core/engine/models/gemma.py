"""Gemma 2 and Gemma 3 (text) natively: the llama decoder with Gemma's differences, as flags and extra norms.

* every RMSNorm scales by ``1 + w`` (the offset is added to the weights once, at load) and applies it before
  casting back to the activation dtype;
* the token embeddings are multiplied by ``sqrt(hidden_size)`` (rounded to the activation dtype);
* four norms per layer: before and after attention, before and after the MLP; the MLP is gelu-tanh gated;
* attention scores are scaled by ``query_pre_attn_scalar ** -0.5``; sliding-window layers alternate with
  full ones (Gemma 2: every other layer; Gemma 3: five of six);
* Gemma 2 soft-caps attention scores and the final logits (``cap * tanh(x / cap)``), so its attention is
  computed eagerly, as transformers' reference implementation does;
* Gemma 3 has per-head q/k norms and two rotary tables: ``rope_local_theta`` for the sliding layers and the
  (possibly linearly scaled) ``rope_theta`` for the global ones.
"""

from __future__ import annotations

import torch

from influence_tui.core.engine.models.base import Block, CausalLM
from influence_tui.core.engine.models.config import ModelConfig
from influence_tui.core.engine.models.layers import RMSNorm, Weights, embedding, take, vector
from influence_tui.core.engine.models.llama import (
    attention,
    causal_lm,
    check,
    compute_dtype,
    embed_device,
    gated_mlp,
    rope_table,
)


def gemma_norm(weights: Weights, name: str, config: ModelConfig, dtype: torch.dtype) -> RMSNorm:
    weight = vector(weights, name)
    assert weight is not None
    return RMSNorm(weight, config.rms_norm_eps, dtype=dtype, offset=config.norm_offset, cast_first=False)


def build_gemma(config: ModelConfig, weights: Weights, *, dtype: torch.dtype = torch.float32) -> CausalLM:
    """The Gemma 2 / Gemma 3 text model of ``config`` over ``weights`` (HF names)."""
    check(config)
    dtype = compute_dtype(weights, dtype)
    embed = embedding(take(weights, "model.embed_tokens.weight"), dtype=dtype)
    layers = []
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}"

        def norm(name: str, prefix: str = prefix) -> RMSNorm:
            return gemma_norm(weights, f"{prefix}.{name}.weight", config, dtype)

        layers.append(
            Block(
                attention(weights, f"{prefix}.self_attn", i, config, dtype, norm_offset=config.norm_offset),
                gated_mlp(weights, f"{prefix}.mlp", config, dtype),
                norm("input_layernorm"),
                norm("pre_feedforward_layernorm"),
                post_attn_out_norm=norm("post_attention_layernorm"),
                post_mlp_out_norm=norm("post_feedforward_layernorm"),
            )
        )
    final_norm = gemma_norm(weights, "model.norm.weight", config, dtype)
    device = embed_device(embed)
    ropes = [rope_table(config, weights, device)]
    rope_of_layer = [0] * config.num_hidden_layers
    if config.rope_local_theta is not None:  # Gemma 3: the sliding layers rotate with their own, unscaled base
        ropes.append(rope_table(config, weights, device, theta=config.rope_local_theta, scaled=False))
        rope_of_layer = [1 if config.is_sliding(i) else 0 for i in range(config.num_hidden_layers)]
    return causal_lm(config, weights, embed, layers, final_norm, dtype=dtype, ropes=ropes, rope_of_layer=rope_of_layer)
