"""Tiny Gemma 2/3, Phi-3 and Qwen3-MoE checkpoints written as GGUF the way llama.cpp's converter writes them.

What ``convert_hf_to_gguf.py`` does for these families, for tiny test models held in memory: the tensor names
from gguf-py's map (the converter's), Gemma's norm weights stored as ``1 + w``, Phi-3's joined ``attn_qkv`` /
``ffn_up``, Qwen3-MoE's experts stacked into 3-D ``ffn_{gate,up,down}_exps``; the hyperparameters it writes
(softcapping and sliding window for Gemma 2, rotary dimensions for Phi-3, expert counts for Qwen3-MoE).
Llama-family models go through ``bench/gguf_export.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import torch
from gguf import GGMLQuantizationType

ARCHS = {"gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3", "qwen3_moe": "qwen3moe"}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def _stack_experts(tensors: dict[str, torch.Tensor], layers: int, experts: int) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in tensors.items() if ".experts." not in k}
    for i in range(layers):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            stem = f"model.layers.{i}.mlp.experts"
            parts = [tensors.pop(f"{stem}.{e}.{proj}.weight") for e in range(experts)]
            out[f"{stem}.{proj}.weight"] = torch.stack(parts)
    return out


def export_family_gguf(folder: Path, out: Path, qtype: str, *, tokenizer_gguf: Path) -> Path:
    from bench.gguf_export import FILE_TYPES, _copy_tokenizer, _encode, tensor_type

    config: dict[str, Any] = json.loads((folder / "config.json").read_text())
    model_type = config["model_type"]
    arch = ARCHS[model_type]
    quant = GGMLQuantizationType[qtype]
    layers, heads = int(config["num_hidden_layers"]), int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    tensors = _tensors(folder)
    if model_type == "qwen3_moe":
        tensors = _stack_experts(tensors, layers, int(config["num_local_experts"]))
    if config.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)
    params = config.get("rope_parameters") or {}
    full = params.get("full_attention", params)

    writer = gguf.GGUFWriter(out, arch)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config["num_key_value_heads"]))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(full.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_file_type(int(FILE_TYPES[quant]))
    writer.add_vocab_size(int(config["vocab_size"]))
    if config.get("sliding_window"):
        writer.add_sliding_window(int(config["sliding_window"]))
    if model_type == "gemma2":
        writer.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    if full.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(full["factor"]))
    if model_type == "phi3":
        writer.add_rope_dimension_count(int(head_dim * float(params.get("partial_rotary_factor", 1.0))))
    if model_type == "qwen3_moe":
        writer.add_expert_count(int(config["num_local_experts"]))
        writer.add_expert_used_count(int(config["num_experts_per_tok"]))
        writer.add_expert_feed_forward_length(int(config["moe_intermediate_size"]))
    _copy_tokenizer(writer, tokenizer_gguf, int(config["vocab_size"]))

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), layers)
    for hf_name, tensor in tensors.items():
        stem, _, suffix = hf_name.rpartition(".")
        name = names.get_name(stem)
        assert name is not None, hf_name
        array = tensor.float().numpy()
        if model_type.startswith("gemma") and hf_name.endswith("norm.weight"):
            array = array + 1.0  # what the converter stores: Gemma's 1 + w
        kind = tensor_type(name, array.shape, quant)
        encoded = _encode(array, kind)
        if kind in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            writer.add_tensor(f"{name}.{suffix}", encoded)
        else:
            writer.add_tensor(f"{name}.{suffix}", encoded, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def export_any(folder: Path, out: Path, qtype: str) -> Path:
    """GGUF of any native family's tiny checkpoint."""
    from tests.model_files import write_gguf

    model_type = json.loads((folder / "config.json").read_text())["model_type"]
    if model_type not in ARCHS:
        from tests.native_oracle import export

        return export(folder, out, qtype)
    tokenizer = write_gguf(out.parent / "tokenizer-source" / "tok.gguf")
    return export_family_gguf(folder, out, qtype, tokenizer_gguf=tokenizer)
