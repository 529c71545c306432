"""A GGUF file as a native model: metadata to :class:`ModelConfig`, tensors packed as stored, in one read.

:func:`~influence_tui.core.engine.quant.gguf_weights.read_gguf_file` reads the tensor table and converts each
tensor from the memory-mapped file into a packed matrix that owns its memory (Q4_0/Q4_1 nibbles copied as
they are, K-quants re-laid out; see that module); the model is built around them directly, with no prepared
copy on disk. Besides what that reader knows (llama, mistral, qwen2, qwen3), :data:`ARCHITECTURES` names the
other native families' tensors (Gemma 2/3, Phi-3, Qwen3-MoE, whose 3-D expert tensors are cut into one
matrix per expert, views of the one read). What llama.cpp's converters changed is undone or followed: Gemma's
norm weights are stored with the ``1 + w`` already added; Llama 3's rope scaling is a ``rope_freqs`` tensor.
``quantize="none"`` dequantizes every matrix to ``dtype`` (float products, e.g. for a GPU); ``int8`` /
``int4`` are refused: a GGUF keeps its own quantization.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from influence_tui.core.engine.models.base import CausalLM
from influence_tui.core.engine.models.config import ModelConfig, native_architecture
from influence_tui.core.engine.models.layers import ConsumedWeights, Weight
from influence_tui.core.engine.models.registry import build_model
from influence_tui.core.engine.models.sources import gguf_config
from influence_tui.core.engine.quant.gguf_weights import GGUFArchitecture, read_gguf_file
from influence_tui.core.engine.quant.packed import PackedWeight, dequantize
from influence_tui.core.errors import ModelFormatError
from influence_tui.core.formats import FormatError, read_gguf_header

_ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_GEMMA = (
    "input_layernorm",
    *_ATTENTION,
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
_PHI3 = ("input_layernorm", "self_attn.qkv_proj", "self_attn.o_proj", "post_attention_layernorm")
_QWEN3_MOE = ("input_layernorm", *_ATTENTION, "self_attn.q_norm", "self_attn.k_norm", "post_attention_layernorm")
ARCHITECTURES = {
    "gemma2": GGUFArchitecture("GEMMA2", unpermute_qk=False, modules=_GEMMA),
    "gemma3": GGUFArchitecture("GEMMA3", unpermute_qk=False, modules=(*_GEMMA, "self_attn.q_norm", "self_attn.k_norm")),
    "phi3": GGUFArchitecture("PHI3", unpermute_qk=False, modules=(*_PHI3, "mlp.gate_up_proj", "mlp.down_proj")),
    "qwen3moe": GGUFArchitecture(
        "QWEN3MOE",
        unpermute_qk=False,
        modules=(*_QWEN3_MOE, "mlp.gate", "mlp.experts.gate_proj", "mlp.experts.up_proj", "mlp.experts.down_proj"),
    ),
}
"""The native families' GGUF tensors under transformers' names (gguf-py's name map, as transformers asks it)."""


def load_gguf_model(
    path: Path, *, quantize: str = "auto", dtype: torch.dtype = torch.float32
) -> tuple[CausalLM, ModelConfig, dict[str, Any]]:
    """(the model, its config, the file's metadata: arrays stepped over, their lengths in their place)."""
    path = Path(path)
    if quantize not in ("auto", "none"):
        raise ModelFormatError(
            f"{path.name} is a GGUF file, which keeps its own quantization",
            hint="drop --quantize (or use --quantize none to load it as floats)",
        )
    try:
        arch = read_gguf_header(path).architecture or ""
    except FormatError as exc:
        raise ModelFormatError(f"{path.name}: {exc}") from exc
    if not native_architecture(arch):
        raise ModelFormatError(f"{path.name}: GGUF architecture {arch or '(none)'!r} has no native model")
    metadata, read = read_gguf_file(path, ARCHITECTURES)
    if any(name.startswith("rope_factors") for name in read.unmapped):
        raise ModelFormatError(f"{path.name}: LongRoPE scaling (rope_factors_long/short) is not supported natively")
    tied = read.tied_embeddings
    tensors = ConsumedWeights(read.tensors)
    read.tensors.clear()  # one dict holds the matrices: the model builder gives each up as it takes it
    embed = tensors.get("model.embed_tokens.weight")
    if embed is None:
        raise ModelFormatError(f"{path.name} has no token embedding (token_embd.weight)")
    config = gguf_config(metadata, vocab_size=embed.shape[0])
    # Gemma's converter stores norm weights as 1 + w: the offset is in the weights already.
    config = config.with_(vocab_size=int(embed.shape[0]), tie_word_embeddings=tied, norm_offset=0.0)
    if config.num_experts:
        tensors = ConsumedWeights(_per_expert(tensors, config.num_experts))
    if quantize == "none":
        tensors = ConsumedWeights(
            {k: dequantize(v, dtype) if isinstance(v, PackedWeight) else v for k, v in tensors.items()}
        )
    model = build_model(config, tensors, dtype=dtype)
    return model, config, metadata


def _per_expert(tensors: dict[str, Weight], experts: int) -> dict[str, Weight]:
    """``mlp.experts.gate_proj.weight`` ``[E * N, K]`` -> ``mlp.experts.{e}.gate_proj.weight`` ``[N, K]``
    (row slices: views of the one packed matrix)."""
    out: dict[str, Weight] = {}
    for name, value in tensors.items():
        stem, sep, leaf = name.rpartition(".experts.")
        if not sep or leaf[:1].isdigit():
            out[name] = value
            continue
        if not isinstance(value, PackedWeight) or value.shape[0] % experts:
            raise ModelFormatError(f"{name}: {list(value.shape)} is not {experts} experts' matrices")
        n = value.shape[0] // experts
        for e in range(experts):
            rows = slice(e * n, (e + 1) * n)
            out[f"{stem}.experts.{e}.{leaf}"] = PackedWeight(
                value.kind,
                (n, value.shape[1]),
                value.qweight[rows],
                None if value.scales is None else value.scales[rows],
                None if value.mins is None else value.mins[rows],
                value.group,
            )
    return out
