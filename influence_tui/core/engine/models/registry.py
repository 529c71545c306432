"""Which family module builds a :class:`ModelConfig`'s model: one place to add a family."""

from __future__ import annotations

import torch

from influence_tui.core.engine.models.base import CausalLM
from influence_tui.core.engine.models.config import ModelConfig
from influence_tui.core.engine.models.layers import Weights


def build_model(config: ModelConfig, weights: Weights, *, dtype: torch.dtype = torch.float32) -> CausalLM:
    """The native model of ``config`` over ``weights`` (HF state-dict names; tensors or packed matrices).
    Packed matrices compute in float32 whatever ``dtype`` is; float ones in ``dtype``."""
    family = config.family
    if family == "llama":
        from influence_tui.core.engine.models.llama import build_llama

        return build_llama(config, weights, dtype=dtype)
    if family == "gemma":
        from influence_tui.core.engine.models.gemma import build_gemma

        return build_gemma(config, weights, dtype=dtype)
    if family == "phi3":
        from influence_tui.core.engine.models.phi3 import build_phi3

        return build_phi3(config, weights, dtype=dtype)
    if family == "qwen3_moe":
        from influence_tui.core.engine.models.qwen3_moe import build_qwen3_moe

        return build_qwen3_moe(config, weights, dtype=dtype)
    raise AssertionError(f"family {family!r} is listed but has no builder")  # pragma: no cover
