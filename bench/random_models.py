"""The random-weight models bench/compare.py runs beside the demo: their shapes, and building them once.

Each is made with transformers on the meta device for its tensor names and shapes, filled with seeded random
weights (normal, std 0.02; norm weights at their identity: 1, or 0 for Gemma's ``1 + w`` norms), written as
bfloat16 safetensors with its config and the demo model's tokenizer (vocabulary 49152), then as GGUF files by
:mod:`bench.gguf_export`. A folder is reused while its stamp (build version, seed, shape, demo file) matches.

``1b``
    a llama in TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632), untied;
    GGUF Q4_0, Q8_0 and F16.
``qwen2``
    a qwen2 in Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, q/k/v biases,
    tied embeddings, rope base 1e6); GGUF Q4_0 and Q8_0.
``gemma``
    a gemma3_text in Gemma-3-1B's layer shape (hidden 1152, 4 heads, 1 KV head, head_dim 256, MLP 6912,
    sliding window 512 on five layers in six, global rope base 1e6, local 10000) cut to 18 layers (Gemma-3-270M's
    depth) to be 0.5B-class, tied embeddings; GGUF Q4_0 and Q8_0.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEED = 1234
INIT_STD = 0.02
BUILD_VERSION = 1
"""Bump to rebuild the cached models (any change to how they are made)."""


@dataclass(frozen=True)
class RandomModel:
    key: str
    """The ``--models`` name."""
    folder: str
    config_class: str
    model_class: str
    shape: dict[str, Any]
    qtypes: tuple[str, ...]
    """The GGUF types written."""
    title: str
    zero_norms: bool = False
    """Norm weights are 0 at identity (Gemma's ``1 + w``), not 1."""


LLAMA_1B: dict[str, Any] = {
    "hidden_size": 2048,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "intermediate_size": 5632,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
"""TinyLlama-1.1B's shape; the vocabulary is the demo model's."""
QWEN2_05B: dict[str, Any] = {
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}
"""Qwen2.5-0.5B's shape (qwen2 always has q/k/v biases); the vocabulary is the demo model's."""
GEMMA3_05B: dict[str, Any] = {
    "hidden_size": 1152,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "intermediate_size": 6912,
    "sliding_window": 512,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}
"""Gemma-3-1B's layers, 18 of them; transformers' defaults give the rope bases and the layer pattern."""

MODELS: dict[str, RandomModel] = {
    "1b": RandomModel(
        "1b",
        "llama-1b-random",
        "LlamaConfig",
        "LlamaForCausalLM",
        LLAMA_1B,
        ("Q4_0", "Q8_0", "F16"),
        "1B llama, random weights (TinyLlama shape, demo tokenizer)",
    ),
    "qwen2": RandomModel(
        "qwen2",
        "qwen2-0.5b-random",
        "Qwen2Config",
        "Qwen2ForCausalLM",
        QWEN2_05B,
        ("Q4_0", "Q8_0"),
        "0.5B qwen2, random weights (Qwen2.5-0.5B shape, demo tokenizer)",
    ),
    "gemma": RandomModel(
        "gemma",
        "gemma3-0.5b-random",
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        GEMMA3_05B,
        ("Q4_0", "Q8_0"),
        "0.5B gemma3_text, random weights (Gemma-3-1B layers x 18, demo tokenizer)",
        zero_norms=True,
    ),
}


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build(spec: RandomModel, root: Path, demo: Path) -> dict[str, Path]:
    """``hf`` (bf16 safetensors, config, tokenizer) and one GGUF per type of ``spec``, under ``root``; built
    once (minutes), then reused while BUILD_VERSION, the shape and the demo file are the same."""
    folder = root / spec.folder
    hf = folder / "hf"
    paths = {"hf": hf, **{q: folder / "gguf" / f"{spec.folder}.{q}.gguf" for q in spec.qtypes}}
    stamp = hf / ".bench-complete"
    wanted = json.dumps(
        {"version": BUILD_VERSION, "seed": SEED, "class": spec.model_class, "shape": spec.shape, "demo": demo.name}
    )
    fresh = stamp.is_file() and stamp.read_text(encoding="utf-8") == wanted
    if fresh and all(p.exists() for p in paths.values()):
        return paths
    if not fresh:
        import torch
        import transformers
        from safetensors.torch import save_file
        from transformers import AutoTokenizer

        _progress(f"building the {spec.title} in {folder} (once; a few minutes)")
        shutil.rmtree(folder, ignore_errors=True)
        hf.mkdir(parents=True)
        tokenizer = AutoTokenizer.from_pretrained(demo.parent, gguf_file=demo.name)
        config = getattr(transformers, spec.config_class)(
            **spec.shape,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            architectures=[spec.model_class],
        )
        with torch.device("meta"):
            state = getattr(transformers, spec.model_class)(config).state_dict()
            shapes = {name: tuple(t.shape) for name, t in state.items()}
        if config.tie_word_embeddings:
            shapes.pop("lm_head.weight", None)  # save_pretrained drops the tied copy too
        generator = torch.Generator().manual_seed(SEED)
        tensors: dict[str, torch.Tensor] = {}
        for name in sorted(shapes):
            if name.endswith("norm.weight"):
                fill = torch.zeros if spec.zero_norms else torch.ones
                tensors[name] = fill(shapes[name], dtype=torch.bfloat16)
            else:
                weights = torch.randn(shapes[name], generator=generator, dtype=torch.float32).mul_(INIT_STD)
                tensors[name] = weights.to(torch.bfloat16)
        params = sum(t.numel() for t in tensors.values())
        _progress(f"  {params / 1e9:.2f}B parameters, vocab {config.vocab_size}: writing bf16 safetensors")
        save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        config.save_pretrained(hf)
        tokenizer.save_pretrained(hf)
        stamp.write_text(wanted, encoding="utf-8")
    from bench.gguf_export import export_gguf

    for qtype in spec.qtypes:
        if not paths[qtype].exists():
            _progress(f"  writing GGUF {qtype}")
            export_gguf(hf, paths[qtype], qtype, tokenizer_gguf=demo)
    return paths
