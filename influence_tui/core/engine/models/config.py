"""What a native model is made of: one frozen :class:`ModelConfig`, read from config.json or GGUF metadata.

:func:`.sources.hf_config` takes a ``config.json`` as a dict (the older top-level ``rope_theta`` /
``rope_scaling`` layout and transformers 5's ``rope_parameters``, per layer type for Gemma 3, are both read);
:func:`.sources.gguf_config` takes a GGUF file's metadata (``<arch>.embedding_length``...). Anything
the native models cannot compute (an unknown rope type, a family not implemented) is a
:class:`~influence_tui.core.errors.ModelFormatError`, so a caller can fall back to transformers. Neither reads
torch (the readers are in :mod:`.sources`); :func:`native_architecture` says which ``model_type`` /
``general.architecture`` names are native.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from influence_tui.core.errors import ModelFormatError
from influence_tui.core.runtimes import GGUF_TO_HF, family_of, native_architecture

FULL = "full_attention"
SLIDING = "sliding_attention"

__all__ = [  # the architecture table lives in core.runtimes (no torch), re-exported for the engine
    "FULL",
    "GGUF_TO_HF",
    "SLIDING",
    "ModelConfig",
    "RopeScaling",
    "family_of",
    "native_architecture",
    "yarn_attention_factor",
]


@dataclass(frozen=True)
class RopeScaling:
    """How the rotary frequencies are stretched past the training context (transformers' ``rope_type``)."""

    kind: str
    """``linear``, ``llama3`` or ``yarn``."""
    factor: float = 1.0
    """How many times longer the context is made (every frequency divided by it for ``linear``)."""
    low_freq_factor: float = 1.0
    """llama3: wavelengths above ``original / low_freq_factor`` are divided by ``factor``."""
    high_freq_factor: float = 4.0
    """llama3: wavelengths below ``original / high_freq_factor`` are kept."""
    original_max_position_embeddings: int = 0
    """The context the model was trained on (llama3, yarn)."""
    beta_fast: float = 32.0
    """yarn: the rotation count where extrapolation ends."""
    beta_slow: float = 1.0
    """yarn: the rotation count where interpolation starts."""
    attention_factor: float | None = None
    """yarn: the factor cos and sin are scaled by (None: ``0.1 ln(factor) + 1``)."""
    truncate: bool = True
    """yarn: round the correction range to whole dimensions."""


@dataclass(frozen=True)
class ModelConfig:
    """The hyperparameters of a decoder-only model, as the native model code reads them."""

    model_type: str
    """transformers' ``model_type`` (``llama``, ``qwen3``...); GGUF names are translated (``qwen3moe``)."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 2048
    """The context length the model was made for."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies (of the full-attention layers where local layers have their own)."""
    rope_scaling: RopeScaling | None = None
    rope_local_theta: float | None = None
    """Gemma 3: base of the rotary frequencies of the sliding-window layers (unscaled)."""
    partial_rotary_factor: float = 1.0
    """Fraction of each head's dimensions that rotate (Phi-3 family: sometimes less than 1)."""
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    """The LM head is the token embedding (no separate output matrix)."""
    attention_bias: bool = False
    """q, k and v projections have biases (Qwen2; llama's ``attention_bias``)."""
    attention_out_bias: bool = False
    """The output projection has a bias (llama's ``attention_bias`` covers it too, Qwen2's does not)."""
    mlp_bias: bool = False
    qk_norm: bool = False
    """An RMSNorm over each head of q and k before the rotary embedding (Qwen3, Gemma 3)."""
    hidden_act: str = "silu"
    sliding_window: int | None = None
    """Positions a sliding-window layer attends to (itself included)."""
    layer_types: tuple[str, ...] = ()
    """``full_attention`` / ``sliding_attention`` per layer; empty: all full."""
    norm_offset: float = 0.0
    """Added to every RMSNorm weight (Gemma's ``1 + w``)."""
    embedding_multiplier: float = 1.0
    """The token embeddings are multiplied by this (Gemma: ``sqrt(hidden_size)``)."""
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None
    query_pre_attn_scalar: float | None = None
    """Attention scores are scaled by ``query_pre_attn_scalar ** -0.5`` instead of ``head_dim ** -0.5``."""
    num_experts: int = 0
    """Mixture-of-experts: experts per MoE layer (0: dense)."""
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    """Renormalize the top-k router probabilities to sum to one."""
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Whatever else the source had, for diagnostics (never read by the model code)."""

    def __post_init__(self) -> None:
        if self.layer_types and len(self.layer_types) != self.num_hidden_layers:
            raise ModelFormatError(
                f"layer_types lists {len(self.layer_types)} layers but the model has {self.num_hidden_layers}"
            )
        if self.num_attention_heads % max(1, self.num_key_value_heads):
            raise ModelFormatError(
                f"{self.num_attention_heads} attention heads are not a multiple of {self.num_key_value_heads} kv heads"
            )

    # ------------------------------------------------------------------------------------------ derived

    @property
    def family(self) -> str:
        """The module that computes this model (``llama``...)."""
        family = family_of(self.model_type)
        if family is None:
            raise ModelFormatError(f"model_type {self.model_type!r} has no native model")
        return family

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def attention_scale(self) -> float:
        return 1.0 / math.sqrt(self.query_pre_attn_scalar or self.head_dim)

    def is_sliding(self, layer: int) -> bool:
        return bool(self.sliding_window) and bool(self.layer_types) and self.layer_types[layer] == SLIDING

    def window(self, layer: int) -> int | None:
        """The sliding window of ``layer``, None where it attends to every earlier position."""
        return self.sliding_window if self.is_sliding(layer) else None

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        eos = self.eos_token_id
        return () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)

    def with_(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` (configs are replaced, never mutated)."""
        return replace(self, **changes)


def yarn_attention_factor(scaling: RopeScaling) -> float:
    """What yarn scales cos and sin by (transformers' ``get_mscale``)."""
    if scaling.attention_factor is not None:
        return scaling.attention_factor
    return 1.0 if scaling.factor <= 1 else 0.1 * math.log(scaling.factor) + 1.0
