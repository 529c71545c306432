"""Qwen3-MoE natively: Qwen3's attention with a sparse mixture-of-experts MLP in its sparse layers.

The router is a float linear over the hidden state; its softmax (float32) picks the ``num_experts_per_tok``
best experts per token, whose probabilities are renormalized to sum to one where ``norm_topk_prob`` says so.
Each expert is a gated MLP (``gate|up`` joined, silu on the kernel, packed where the weights are). A decode
step runs only the chosen experts, in ascending expert order as transformers adds them; a prompt groups its
tokens by expert. Layers in ``mlp_only_layers``, or off the ``decoder_sparse_step``, have a dense MLP.
Experts are read per expert (``mlp.experts.E.gate_proj.weight``...) or from transformers 5's joined 3-D
``mlp.experts.gate_up_proj`` / ``down_proj``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from influence_tui.core.engine.models.attention import GatedMLP
from influence_tui.core.engine.models.base import CausalLM
from influence_tui.core.engine.models.config import ModelConfig
from influence_tui.core.engine.models.layers import Weights, embedding, joined_linear, linear, take
from influence_tui.core.engine.models.llama import attention, causal_lm, compute_dtype, gated_mlp, norm, pre_norm_block
from influence_tui.core.errors import ModelFormatError


class SparseMoE(nn.Module):
    """Top-k routed experts (see the module docstring)."""

    def __init__(self, router: nn.Module, experts: Sequence[GatedMLP], *, top_k: int, norm_topk_prob: bool) -> None:
        super().__init__()
        self.gate = router
        self.experts = nn.ModuleList(experts)
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        self._router = router.forward
        self._experts = [e.forward for e in experts]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits = self._router(flat)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights /= weights.sum(dim=-1, keepdim=True)
        weights = weights.to(logits.dtype)
        out = torch.zeros_like(flat)
        if flat.shape[0] == 1:
            for expert, weight in sorted(zip(chosen[0].tolist(), weights[0], strict=True)):
                out += self._experts[expert](flat) * weight
            return out.view(shape)
        for expert in torch.unique(chosen).tolist():
            token, slot = torch.where(chosen == expert)
            part = self._experts[expert](flat[token]) * weights[token, slot, None]
            out.index_add_(0, token, part.to(out.dtype))
        return out.view(shape)


def _expert(weights: Weights, prefix: str, e: int, config: ModelConfig, dtype: torch.dtype) -> GatedMLP:
    """Expert ``e`` of the MoE layer at ``prefix``: per-expert names, else a slice of the joined 3-D tensors."""
    name = f"{prefix}.experts.{e}"
    if f"{name}.gate_proj.weight" in weights:
        return gated_mlp(weights, name, config, dtype)
    gate_up, down = take(weights, f"{prefix}.experts.gate_up_proj"), take(weights, f"{prefix}.experts.down_proj")
    if not isinstance(gate_up, torch.Tensor) or not isinstance(down, torch.Tensor) or gate_up.dim() != 3:
        raise ModelFormatError(f"{prefix}.experts: joined expert weights must be float 3-D tensors")
    return GatedMLP(
        joined_linear([gate_up[e]], [None], dtype=dtype),
        joined_linear([down[e]], [None], dtype=dtype),
        config.hidden_act,
    )


def sparse_layer(config: ModelConfig, layer: int) -> bool:
    return (
        layer not in config.mlp_only_layers
        and config.num_experts > 0
        and (layer + 1) % max(1, config.decoder_sparse_step) == 0
    )


def build_qwen3_moe(config: ModelConfig, weights: Weights, *, dtype: torch.dtype = torch.float32) -> CausalLM:
    """The Qwen3-MoE model of ``config`` over ``weights`` (HF names)."""
    if not config.num_experts or not config.num_experts_per_tok:
        raise ModelFormatError(f"{config.model_type}: the config names no experts")
    dtype = compute_dtype(weights, dtype)
    embed = embedding(take(weights, "model.embed_tokens.weight"), dtype=dtype)
    layers = []
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}"
        mlp: nn.Module
        if sparse_layer(config, i):
            experts = [_expert(weights, f"{prefix}.mlp", e, config, dtype) for e in range(config.num_experts)]
            router = linear(weights, f"{prefix}.mlp.gate", dtype=dtype)
            mlp = SparseMoE(router, experts, top_k=config.num_experts_per_tok, norm_topk_prob=config.norm_topk_prob)
        else:
            mlp = gated_mlp(weights, f"{prefix}.mlp", config, dtype)
        attn = attention(weights, f"{prefix}.self_attn", i, config, dtype)
        layers.append(pre_norm_block(weights, prefix, config, dtype, attn=attn, mlp=mlp))
    return causal_lm(config, weights, embed, layers, norm(weights, "model.norm.weight", config, dtype), dtype=dtype)
