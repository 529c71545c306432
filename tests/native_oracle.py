"""Tiny random models of each native family built with transformers (the oracle), and the logits to compare.

:func:`build_family` saves a random 2-layer model (hidden 64, vocab 256) of a family as safetensors;
:func:`export` writes it as GGUF the way llama.cpp's converter does (``bench/gguf_export.py``);
:func:`stepped_logits` runs a native model as the generation loop does (a prefill, then one token at a time
through its cache) and :func:`full_logits` runs a transformers model over the whole sequence in one pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.model_files import write_gguf

VOCAB = 256


def build_family(
    dest: Path,
    family: str,
    *,
    seed: int = 0,
    tie: bool = False,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    rope: dict[str, Any] | None = None,
    window: int | None = None,
    std: float = 0.5,
    shards: int = 1,
    context: int = 512,
    **extra: Any,
) -> Path:
    """Save a random ``family`` model (llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3, qwen3_moe) under
    ``dest``; return ``dest``. Norm weights are drawn near 1 (Gemma's near 0: it scales by ``1 + w``)."""
    import transformers

    classes = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "mistral": ("MistralConfig", "MistralForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
        "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
        "phi3": ("Phi3Config", "Phi3ForCausalLM"),
        "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
    }
    config_name, model_name = classes[family]
    kwargs: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": context,
        "tie_word_embeddings": tie,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "rms_norm_eps": 1e-5,
    }
    if head_dim is not None:
        kwargs["head_dim"] = head_dim
    if rope is not None:
        kwargs["rope_parameters"] = rope
    if family in ("mistral", "phi3", "gemma2", "gemma3"):
        kwargs["sliding_window"] = window
    if family.startswith("gemma"):
        kwargs.update(pad_token_id=0, query_pre_attn_scalar=24)
    if family == "phi3":
        kwargs.update(pad_token_id=0)
    kwargs.update(extra)
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(-0.5, 0.5) if family.startswith("gemma") else param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, std)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True, max_shard_size="40KB" if shards > 1 else "1GB")
    return dest


def hf_model(folder: Path, dtype: torch.dtype = torch.float32, **kwargs: Any) -> Any:
    """transformers' model, with its eager attention: the reference definition (its SDPA path drops Gemma 2's
    score soft-capping)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager", **kwargs)
    model.eval()
    return model


def hf_gguf_model(path: Path) -> Any:
    """transformers' own reading of a GGUF file (every tensor dequantized to float32)."""
    return hf_model(path.parent, gguf_file=path.name)


def export(folder: Path, out: Path, qtype: str) -> Path:
    from bench.gguf_export import export_gguf

    tokenizer = write_gguf(out.parent / "tokenizer-source" / "tok.gguf")
    return export_gguf(folder, out, qtype, tokenizer_gguf=tokenizer)


def token_ids(n: int, seed: int = 1) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return [int(i) for i in torch.randint(3, VOCAB, (n,), generator=generator)]


def stepped_logits(model: Any, ids: list[int], prompt: int, cache: Any = None) -> torch.Tensor:
    """``[len(ids), vocab]``: the prompt's logits from one prefill, then each later token's from a decode step."""
    cache = model.new_cache() if cache is None else cache
    with torch.inference_mode():
        tokens = torch.tensor([ids])
        positions = torch.arange(len(ids)).unsqueeze(0)
        out = model(input_ids=tokens[:, :prompt], past_key_values=cache, position_ids=positions[:, :prompt])
        assert out.past_key_values is cache
        rows = [out.logits[0]]
        for i in range(prompt, len(ids)):
            out = model(
                input_ids=tokens[:, i : i + 1],
                past_key_values=cache,
                position_ids=positions[:, i : i + 1],
                use_cache=True,
                logits_to_keep=1,
            )
            rows.append(out.logits[0])
    return torch.cat(rows)


def full_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.float() - b.float()).abs().max())
