"""Llama, Mistral, Qwen2 and Qwen3 natively: one decoder differing by flags of :class:`ModelConfig`.

* llama / mistral: RMSNorm, rotary q/k (default, linear, llama3 or yarn scaling), GQA, SwiGLU; Mistral's
  sliding window where its config sets one; ``attention_bias`` / ``mlp_bias`` where set.
* qwen2: biases on q, k and v; a sliding window only from ``max_window_layers`` on, if at all.
* qwen3: an RMSNorm over each q and k head before the rotary embedding.

Weights come as HF state-dict names (``model.layers.3.self_attn.q_proj.weight``...), tensors or packed.
"""

from __future__ import annotations

import torch
from torch import nn

from influence_tui.core.engine.models.attention import Attention, GatedMLP, supported_activation
from influence_tui.core.engine.models.base import Block, CausalLM
from influence_tui.core.engine.models.config import ModelConfig
from influence_tui.core.engine.models.layers import (
    RMSNorm,
    Weights,
    embedding,
    joined_linear,
    linear,
    take,
    tied_head,
    vector,
)
from influence_tui.core.engine.models.rope import RotaryTable, inverse_frequencies
from influence_tui.core.engine.quant.packed import PackedWeight
from influence_tui.core.errors import ModelFormatError


def compute_dtype(weights: Weights, dtype: torch.dtype) -> torch.dtype:
    """float32 when any matrix is packed (the kernels compute in float32), else ``dtype``."""
    return torch.float32 if any(isinstance(w, PackedWeight) for w in weights.values()) else dtype


def norm(weights: Weights, name: str, config: ModelConfig, dtype: torch.dtype) -> RMSNorm:
    weight = vector(weights, name)
    assert weight is not None
    return RMSNorm(weight, config.rms_norm_eps, dtype=dtype)


def attention(
    weights: Weights, prefix: str, index: int, config: ModelConfig, dtype: torch.dtype, *, norm_offset: float = 0.0
) -> Attention:
    """The attention of layer ``index``: q|k|v joined, o_proj, q/k norms where the config has them."""
    names = [f"{prefix}.{p}" for p in ("q_proj", "k_proj", "v_proj")]
    bias = config.attention_bias
    qkv = joined_linear(
        [take(weights, f"{n}.weight") for n in names],
        [vector(weights, f"{n}.bias", required=bias) for n in names],
        dtype=dtype,
        names=names,
    )
    q_norm = k_norm = None
    if config.qk_norm:
        q_w, k_w = vector(weights, f"{prefix}.q_norm.weight"), vector(weights, f"{prefix}.k_norm.weight")
        assert q_w is not None and k_w is not None
        cast_first = norm_offset == 0.0
        q_norm = RMSNorm(q_w, config.rms_norm_eps, dtype=dtype, offset=norm_offset, cast_first=cast_first)
        k_norm = RMSNorm(k_w, config.rms_norm_eps, dtype=dtype, offset=norm_offset, cast_first=cast_first)
    return Attention(
        index,
        qkv,
        linear(weights, f"{prefix}.o_proj", dtype=dtype, bias=config.attention_out_bias),
        heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        rotary_dim=config.rotary_dim,
        scale=config.attention_scale,
        window=config.window(index),
        softcap=config.attn_logit_softcapping,
        q_norm=q_norm,
        k_norm=k_norm,
    )


def gated_mlp(weights: Weights, prefix: str, config: ModelConfig, dtype: torch.dtype) -> GatedMLP:
    names = [f"{prefix}.gate_proj", f"{prefix}.up_proj"]
    gate_up = joined_linear(
        [take(weights, f"{n}.weight") for n in names],
        [vector(weights, f"{n}.bias", required=config.mlp_bias) for n in names],
        dtype=dtype,
        names=names,
    )
    down = linear(weights, f"{prefix}.down_proj", dtype=dtype, bias=config.mlp_bias)
    return GatedMLP(gate_up, down, config.hidden_act)


def head(weights: Weights, config: ModelConfig, embed: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The LM head: its own matrix, or the embedding's when tied (or when the weights have none)."""
    if "lm_head.weight" in weights and not config.tie_word_embeddings:
        return linear(weights, "lm_head", dtype=dtype)
    return tied_head(embed)


def rope_table(
    config: ModelConfig, weights: Weights, device: torch.device, *, theta: float | None = None, scaled: bool = True
) -> RotaryTable:
    factors = weights.get("rope_freqs")
    if isinstance(factors, PackedWeight):
        raise ModelFormatError("rope_freqs is a matrix where a vector is expected")
    inv, attention_factor = inverse_frequencies(
        config.rotary_dim,
        config.rope_theta if theta is None else theta,
        config.rope_scaling if scaled else None,
        factors if scaled else None,
    )
    return RotaryTable(inv, attention_factor, device=device)


def check(config: ModelConfig) -> None:
    if not supported_activation(config.hidden_act):
        raise ModelFormatError(f"activation {config.hidden_act!r} is not supported natively")
    if config.num_experts:
        raise ModelFormatError(f"{config.model_type} with experts is not a dense llama-family model")


def pre_norm_block(
    weights: Weights, prefix: str, config: ModelConfig, dtype: torch.dtype, *, attn: nn.Module, mlp: nn.Module
) -> Block:
    """Layer ``prefix`` as ``x + attn(norm(x))``, ``x + mlp(norm(x))`` with its two RMSNorms."""
    return Block(
        attn,
        mlp,
        norm(weights, f"{prefix}.input_layernorm.weight", config, dtype),
        norm(weights, f"{prefix}.post_attention_layernorm.weight", config, dtype),
    )


def embed_device(embed: nn.Module) -> torch.device:
    device: torch.device = next(iter([*embed.parameters(), *embed.buffers()])).device
    return device


def causal_lm(
    config: ModelConfig,
    weights: Weights,
    embed: nn.Module,
    layers: list[Block],
    final_norm: nn.Module,
    *,
    dtype: torch.dtype,
    ropes: list[RotaryTable] | None = None,
    rope_of_layer: list[int] | None = None,
) -> CausalLM:
    """The model around its layers: the LM head (tied or not) and the rotary table(s), one for every layer
    unless ``ropes`` / ``rope_of_layer`` say otherwise."""
    lm_head = head(weights, config, embed, dtype)
    return CausalLM(
        config,
        embed,
        layers,
        final_norm,
        lm_head,
        ropes=ropes if ropes is not None else [rope_table(config, weights, embed_device(embed))],
        rope_of_layer=rope_of_layer if rope_of_layer is not None else [0] * config.num_hidden_layers,
        dtype=dtype,
    )


def build_llama(config: ModelConfig, weights: Weights, *, dtype: torch.dtype = torch.float32) -> CausalLM:
    """The llama-family model of ``config`` over ``weights`` (HF names)."""
    check(config)
    dtype = compute_dtype(weights, dtype)
    embed = embedding(take(weights, "model.embed_tokens.weight"), dtype=dtype)
    layers = [
        pre_norm_block(
            weights,
            f"model.layers.{i}",
            config,
            dtype,
            attn=attention(weights, f"model.layers.{i}.self_attn", i, config, dtype),
            mlp=gated_mlp(weights, f"model.layers.{i}.mlp", config, dtype),
        )
        for i in range(config.num_hidden_layers)
    ]
    return causal_lm(config, weights, embed, layers, norm(weights, "model.norm.weight", config, dtype), dtype=dtype)
