"""Gemma 2, Gemma 3, Phi-3 and Qwen3-MoE GGUF files against transformers.

transformers cannot be the oracle by reading these GGUFs itself: it takes Gemma's query scaling and Phi-3's
padding id from its config defaults, has no Qwen3-MoE top-k renormalization in its GGUF mapping, and reads no
sliding window or partial rotary for Phi-3 (tiny models show all of these). So the oracle is transformers'
model of the original checkpoint: for F32 files as saved (1e-4, as in test_native_models.py), for quantized
files with every matrix replaced by what the file stores, dequantized (the reader's dequantization is
bit-identical to gguf-py's: tests/core/test_gguf_weights.py), the native model using float products.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from influence_tui.core.engine.quant.gguf_weights import read_gguf_file
from influence_tui.core.engine.quant.packed import PackedWeight, dequantize
from influence_tui.core.engine.weights.gguf import ARCHITECTURES, _per_expert, load_gguf_model
from tests.native_gguf import export_any
from tests.native_oracle import build_family, full_logits, hf_model, max_difference, stepped_logits, token_ids

TOLERANCE = 1e-4
PROMPT = 8
IDS = token_ids(PROMPT + 32)
FAMILIES: dict[str, dict[str, Any]] = {
    # llama.cpp scales Gemma's queries by head_dim (hidden / heads in the 27B models), and gives Gemma 3 a
    # sliding window on five layers of six: the checkpoints follow what GGUF can say.
    "gemma2": {"family": "gemma2", "tie": True, "head_dim": 16, "window": 8, "query_pre_attn_scalar": 16},
    "gemma3": {
        "family": "gemma3",
        "tie": True,
        "head_dim": 16,
        "window": 8,
        "num_hidden_layers": 6,
        "query_pre_attn_scalar": 16,
        "rope": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
        },
    },
    "phi3": {
        "family": "phi3",
        "window": 8,
        "rope": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    },
    "qwen3-moe": {
        "family": "qwen3_moe",
        "head_dim": 16,
        "moe_intermediate_size": 32,
        "num_experts": 8,
        "norm_topk_prob": True,
    },
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: build_family(root / name, std=0.25, **kwargs) for name, kwargs in FAMILIES.items()}


def dequantized_oracle(folder: Path, path: Path) -> Any:
    """transformers' model of ``folder`` with every weight replaced by the one the GGUF at ``path`` stores."""
    config = json.loads((folder / "config.json").read_text())
    _, read = read_gguf_file(path, ARCHITECTURES)
    tensors: dict[str, Any] = dict(read.tensors)
    if config["model_type"] == "qwen3_moe":
        tensors = _per_expert(tensors, int(config["num_local_experts"]))

    def stored(name: str) -> torch.Tensor:
        value = tensors[name]
        weight = dequantize(value) if isinstance(value, PackedWeight) else value
        if config["model_type"].startswith("gemma") and name.endswith("norm.weight"):
            weight = weight - 1.0  # the converter stores Gemma's 1 + w
        return weight

    model = hf_model(folder)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name == "lm_head.weight" and name not in tensors:
                continue  # tied to the embedding
            if name.endswith("mlp.experts.gate_up_proj"):  # transformers 5 joins the experts
                stem = name.removesuffix(".gate_up_proj")
                parts = [
                    torch.cat((stored(f"{stem}.{e}.gate_proj.weight"), stored(f"{stem}.{e}.up_proj.weight")))
                    for e in range(param.shape[0])
                ]
                param.copy_(torch.stack(parts))
            elif name.endswith("mlp.experts.down_proj"):
                stem = name.removesuffix(".down_proj")
                param.copy_(torch.stack([stored(f"{stem}.{e}.down_proj.weight") for e in range(param.shape[0])]))
            else:
                param.copy_(stored(name).view_as(param))
    return model


@pytest.mark.parametrize("family", list(FAMILIES))
def test_f32_gguf_matches_the_checkpoint(family: str, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = checkpoints[family]
    model, config, _ = load_gguf_model(export_any(folder, tmp_path / f"{family}.gguf", "F32"))
    assert config.norm_offset == 0.0 and config.num_hidden_layers == FAMILIES[family].get("num_hidden_layers", 2)
    reference = full_logits(hf_model(folder), IDS)
    assert max_difference(stepped_logits(model, IDS, PROMPT), reference) <= TOLERANCE


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_quantized_gguf_computes_its_dequantized_weights(
    family: str, qtype: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    folder = checkpoints[family]
    path = export_any(folder, tmp_path / f"{family}-{qtype}.gguf", qtype)
    model = load_gguf_model(path)[0]
    assert set(model.packed_kinds()) >= {"q4" if qtype == "Q4_0" else "q8"}
    model.set_integer_dot(False)
    reference = full_logits(dequantized_oracle(folder, path), IDS)
    assert max_difference(stepped_logits(model, IDS, PROMPT), reference) <= TOLERANCE
