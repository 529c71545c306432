"""Reading a :class:`~.config.ModelConfig` from its two sources: a config.json dict, a GGUF file's metadata.

transformers writes every key of its config classes into config.json, but hand-written configs (Gemma 3's
``text_config``) leave many out: those take transformers' defaults for their model_type (:data:`HF_DEFAULTS`).
GGUF metadata holds what llama.cpp's converter wrote (``<arch>.embedding_length``...); what it leaves implicit
(Gemma's query scaling and sliding-window pattern, Llama 3's rope scaling stored as a tensor) follows llama.cpp.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from influence_tui.core.engine.models.config import FULL, GGUF_TO_HF, SLIDING, ModelConfig, RopeScaling, family_of
from influence_tui.core.errors import ModelFormatError

_ROPE_KINDS = ("default", "linear", "llama3", "yarn")

# transformers' defaults for the keys a config.json may omit (its save_pretrained writes them all, but
# hand-written configs such as Gemma 3's text_config leave many out).
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048},
    "mistral": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 131072},
    "qwen2": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 32768},
    "qwen3": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "head_dim": 128, "max_position_embeddings": 32768},
    "gemma2": {
        "vocab_size": 256000,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192,
        "rope_theta": 10000.0,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
    },
    "gemma3_text": {
        "vocab_size": 262208,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 131072,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10000.0,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "sliding_window_pattern": 6,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
    },
    "phi3": {"rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 4096},
    "qwen3_moe": {
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 32768,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 768,
    },
}


def hf_config(config: Mapping[str, Any]) -> ModelConfig:
    """The :class:`ModelConfig` of a ``config.json`` dict; keys it omits take transformers' defaults for that
    model_type. A Gemma 3 multimodal config is read as its ``text_config`` (the vision tower is not native)."""
    return ModelConfig(**hf_fields(config))


def gguf_config(metadata: Mapping[str, Any], *, vocab_size: int | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a GGUF file's metadata. ``vocab_size`` (the token embedding's rows) is used
    where the file has no ``<arch>.vocab_size`` and its token list was not read."""
    return ModelConfig(**gguf_fields(metadata, vocab_size=vocab_size))


def hf_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`ModelConfig`'s fields from a config.json dict."""
    model_type = str(config.get("model_type") or "")
    if model_type == "gemma3" and isinstance(config.get("text_config"), Mapping):
        top = {
            k: config[k] for k in ("tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id") if k in config
        }
        config = {**top, **config["text_config"], "model_type": "gemma3_text"}
        model_type = "gemma3_text"
    family = family_of(model_type)
    if family is None:
        raise ModelFormatError(f"model_type {model_type or '(none)'!r} has no native model")
    c = {**HF_DEFAULTS.get(model_type, {}), **config}
    if c.get("use_bidirectional_attention"):
        raise ModelFormatError(f"{model_type} with bidirectional attention (an embedding model) is not a causal LM")
    heads = _int(c, "num_attention_heads")
    hidden = _int(c, "hidden_size")
    layers = _int(c, "num_hidden_layers")
    head_dim = c.get("head_dim") or hidden // heads
    rope_theta, scaling = _hf_rope(c)
    window = c.get("sliding_window")
    layer_types = tuple(str(t) for t in c.get("layer_types") or ())
    if model_type in ("qwen2", "qwen3", "qwen3_moe"):
        # Qwen configs carry a sliding_window they do not use unless use_sliding_window is set, and then
        # only from layer max_window_layers on (transformers' Qwen2Config).
        if not c.get("use_sliding_window"):
            window = None
        elif not layer_types:
            first = int(c.get("max_window_layers") or 0)
            layer_types = tuple(SLIDING if i >= first else FULL for i in range(layers))
    elif family == "gemma" and not layer_types:
        pattern = int(c.get("sliding_window_pattern") or c.get("_sliding_window_pattern") or 2)
        layer_types = tuple(SLIDING if (i + 1) % pattern else FULL for i in range(layers))
    elif window and not layer_types:
        layer_types = (SLIDING,) * layers  # mistral, phi3: every layer slides
    if not window or SLIDING not in layer_types:
        window, layer_types = None, ()
    attention_bias = bool(c.get("attention_bias", False))
    gemma = family == "gemma"
    local_theta = None
    if model_type == "gemma3_text":
        params = c.get("rope_parameters")
        local = params.get(SLIDING) if isinstance(params, Mapping) else None
        local_theta = float((local or {}).get("rope_theta") or c.get("rope_local_base_freq") or 10000.0)
    experts = int(config.get("num_experts") or config.get("num_local_experts") or c.get("num_experts") or 0)
    experts = experts if family == "qwen3_moe" else 0
    return {
        "model_type": model_type,
        "vocab_size": _int(c, "vocab_size"),
        "hidden_size": hidden,
        "intermediate_size": int(c.get("intermediate_size") or 0),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(c.get("num_key_value_heads") or heads),
        "head_dim": int(head_dim),
        "max_position_embeddings": int(c.get("max_position_embeddings") or 2048),
        "rope_theta": rope_theta,
        "rope_scaling": scaling,
        "rope_local_theta": local_theta,
        "partial_rotary_factor": float(_partial_rotary(c)),
        "rms_norm_eps": float(c.get("rms_norm_eps") or 1e-6),
        "tie_word_embeddings": bool(c.get("tie_word_embeddings", gemma)),
        "attention_bias": attention_bias or model_type == "qwen2",
        "attention_out_bias": attention_bias,
        "mlp_bias": bool(c.get("mlp_bias", False)),
        "qk_norm": model_type in ("qwen3", "qwen3_moe", "gemma3_text"),
        "hidden_act": str((c.get("hidden_activation") if gemma else None) or c.get("hidden_act") or "silu"),
        "sliding_window": int(window) if window else None,
        "layer_types": layer_types,
        "norm_offset": 1.0 if gemma else 0.0,
        "embedding_multiplier": math.sqrt(hidden) if gemma else 1.0,
        "final_logit_softcapping": _opt_float(c.get("final_logit_softcapping")),
        "attn_logit_softcapping": _opt_float(c.get("attn_logit_softcapping")),
        "query_pre_attn_scalar": _opt_float(c.get("query_pre_attn_scalar")) if gemma else None,
        "num_experts": experts,
        "num_experts_per_tok": int(c.get("num_experts_per_tok") or 0) if experts else 0,
        "moe_intermediate_size": int(c.get("moe_intermediate_size") or 0) if experts else 0,
        "norm_topk_prob": bool(c.get("norm_topk_prob", False)),
        "decoder_sparse_step": int(c.get("decoder_sparse_step") or 1),
        "mlp_only_layers": tuple(int(i) for i in c.get("mlp_only_layers") or ()),
        "bos_token_id": _opt_int(c.get("bos_token_id")),
        "eos_token_id": _eos(c.get("eos_token_id")),
        "pad_token_id": _opt_int(c.get("pad_token_id")),
        "extra": {"source": "config.json"},
    }


def gguf_fields(metadata: Mapping[str, Any], *, vocab_size: int | None = None) -> dict[str, Any]:
    """:class:`ModelConfig`'s fields from GGUF metadata."""
    arch = str(metadata.get("general.architecture") or "")
    model_type = GGUF_TO_HF.get(arch, arch)
    family = family_of(model_type)
    if family is None:
        raise ModelFormatError(f"GGUF architecture {arch or '(none)'!r} has no native model")

    def get(key: str, default: Any = None) -> Any:
        value = metadata.get(f"{arch}.{key}")
        return default if value is None else value

    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    layers = int(get("block_count"))
    kv = get("attention.head_count_kv", heads)
    if isinstance(kv, list):  # per-layer head counts (some hybrids): not native
        raise ModelFormatError(f"{arch}: per-layer kv head counts are not supported natively")
    tokens = metadata.get("tokenizer.ggml.tokens")  # the list, or its length where arrays were stepped over
    vocab = get("vocab_size") or (len(tokens) if isinstance(tokens, list) else tokens) or vocab_size
    if not isinstance(vocab, int) or not vocab:
        raise ModelFormatError(f"{arch}: the GGUF metadata gives no vocabulary size")
    head_dim = int(get("attention.key_length", hidden // heads))
    rotary = get("rope.dimension_count")
    window = get("attention.sliding_window")
    layer_types: tuple[str, ...] = (SLIDING,) * layers if window else ()
    gemma = family == "gemma"
    fields: dict[str, Any] = {}
    if gemma:
        # llama.cpp's Gemma: local layers alternate (Gemma 2) or five in six (Gemma 3; their base is 10000),
        # queries scaled by hidden / heads in the 27B models and by head_dim otherwise; the converter stores
        # norm weights with Gemma's 1 + w already added, so no offset is applied here.
        pattern = 6 if model_type == "gemma3_text" else 2
        layer_types = tuple(SLIDING if (i + 1) % pattern else FULL for i in range(layers)) if window else ()
        big = layers in (46, 62)  # gemma-2-27b, gemma-3-27b
        fields = {
            "hidden_act": "gelu_pytorch_tanh",
            "embedding_multiplier": math.sqrt(hidden),
            "query_pre_attn_scalar": float(hidden // heads if big else head_dim),
            "final_logit_softcapping": _opt_float(get("final_logit_softcapping")),
            "attn_logit_softcapping": _opt_float(get("attn_logit_softcapping")),
            "rope_local_theta": 10000.0 if model_type == "gemma3_text" else None,
        }
    if family == "qwen3_moe":
        fields = {
            "num_experts": int(get("expert_count", 0)),
            "num_experts_per_tok": int(get("expert_used_count", 0)),
            "moe_intermediate_size": int(get("expert_feed_forward_length", 0)),
            "norm_topk_prob": True,  # llama.cpp always renormalizes qwen3moe's top-k weights
        }
    return {
        "model_type": model_type,
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length", 0)),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv),
        "head_dim": head_dim,
        "max_position_embeddings": int(get("context_length", 2048)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "rope_scaling": _gguf_rope_scaling(get),
        "partial_rotary_factor": float(rotary) / head_dim if rotary else 1.0,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "tie_word_embeddings": False,  # the loader sets it from whether the file has output.weight
        "attention_bias": model_type == "qwen2",
        "qk_norm": model_type in ("qwen3", "qwen3_moe", "gemma3_text"),
        "sliding_window": int(window) if window else None,
        "layer_types": layer_types,
        "bos_token_id": _opt_int(metadata.get("tokenizer.ggml.bos_token_id")),
        "eos_token_id": _opt_int(metadata.get("tokenizer.ggml.eos_token_id")),
        "pad_token_id": _opt_int(metadata.get("tokenizer.ggml.padding_token_id")),
        "extra": {"source": "gguf", "architecture": arch},
        **fields,
    }


# ------------------------------------------------------------------------------------------ helpers


def _int(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelFormatError(f"config.json has no integer {key!r}")
    return value


def _opt_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _partial_rotary(config: Mapping[str, Any]) -> float:
    params = config.get("rope_parameters")
    value = params.get("partial_rotary_factor") if isinstance(params, Mapping) else None
    return float(value or config.get("partial_rotary_factor") or 1.0)


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _eos(value: Any) -> int | tuple[int, ...] | None:
    if isinstance(value, list | tuple):
        ids = tuple(v for v in value if isinstance(v, int))
        return ids[0] if len(ids) == 1 else ids or None
    return _opt_int(value)


def _hf_rope(config: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from ``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling``."""
    params = config.get("rope_parameters")
    if isinstance(params, Mapping) and isinstance(params.get(FULL), Mapping):
        params = params[FULL]
    params = dict(params) if isinstance(params, Mapping) else {}
    scaling = config.get("rope_scaling")
    if isinstance(scaling, Mapping):
        params = {**scaling, **params}
    theta = float(params.get("rope_theta") or config.get("rope_theta") or 10000.0)
    return theta, _rope_scaling(params, config)


def _rope_scaling(params: Mapping[str, Any], config: Mapping[str, Any]) -> RopeScaling | None:
    kind = str(params.get("rope_type") or params.get("type") or "default")
    if kind not in _ROPE_KINDS:
        raise ModelFormatError(f"rope type {kind!r} is not supported natively (only {', '.join(_ROPE_KINDS)})")
    if kind == "default":
        return None
    factor = params.get("factor")
    original = params.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
    if factor is None and kind == "yarn" and original:
        factor = float(config.get("max_position_embeddings") or original) / float(original)
    if factor is None:
        raise ModelFormatError(f"rope type {kind!r} needs a factor")
    if kind in ("llama3", "yarn") and not original:
        raise ModelFormatError(f"rope type {kind!r} needs original_max_position_embeddings")
    if kind == "yarn" and (params.get("mscale") or params.get("mscale_all_dim")):
        raise ModelFormatError("yarn with mscale (DeepSeek-style) is not supported natively")
    attention = params.get("attention_factor")
    return RopeScaling(
        kind=kind,
        factor=float(factor),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(original or 0),
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
        attention_factor=float(attention) if attention is not None else None,
        truncate=bool(params.get("truncate", True)),
    )


def _gguf_rope_scaling(get: Any) -> RopeScaling | None:
    """``rope.scaling.type`` linear / yarn. (Llama 3's scaling is stored as a ``rope_freqs`` tensor, which
    the weights loader reads.)"""
    kind = get("rope.scaling.type")
    if kind in (None, "none"):
        return None
    factor = float(get("rope.scaling.factor", 1.0))
    if kind == "linear":
        return None if factor == 1.0 else RopeScaling("linear", factor)
    if kind == "yarn":
        attention = get("rope.scaling.attn_factor")
        return RopeScaling(
            "yarn",
            factor,
            original_max_position_embeddings=int(get("rope.scaling.original_context_length", 0)),
            beta_fast=float(get("rope.scaling.yarn_beta_fast", 32.0)),
            beta_slow=float(get("rope.scaling.yarn_beta_slow", 1.0)),
            attention_factor=None if attention is None else float(attention),
        )
    raise ModelFormatError(f"GGUF rope scaling {kind!r} is not supported natively")
