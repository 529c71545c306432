"""The native models' config readers, rotary tables and KV cache, as units (no model files but the demo's header)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from influence_tui.core.engine.models.cache import CHUNK, KVCache
from influence_tui.core.engine.models.config import RopeScaling, native_architecture
from influence_tui.core.engine.models.rope import RotaryTable, inverse_frequencies
from influence_tui.core.engine.models.sources import gguf_config, hf_config
from influence_tui.core.errors import ModelFormatError
from influence_tui.core.formats import read_gguf_header

LLAMA = {
    "model_type": "llama",
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "eos_token_id": [2, 7],
}


def test_both_config_json_layouts_of_rope_scaling_read_the_same() -> None:
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    old = hf_config({**LLAMA, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **scaling}})
    new = hf_config({**LLAMA, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **scaling}})
    assert old == new
    assert old.rope_theta == 5e5 and old.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    assert old.head_dim == 16 and old.eos_token_ids == (2, 7) and old.family == "llama"
    linear = hf_config({**LLAMA, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert linear.rope_scaling == RopeScaling("linear", 2.0)


def test_what_the_native_models_cannot_compute_is_refused() -> None:
    with pytest.raises(ModelFormatError, match="rope type 'dynamic'"):
        hf_config({**LLAMA, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})
    with pytest.raises(ModelFormatError, match="no native model"):
        hf_config({**LLAMA, "model_type": "gpt2"})
    with pytest.raises(ModelFormatError, match="multiple"):
        hf_config({**LLAMA, "num_key_value_heads": 3})
    assert native_architecture("llama") and native_architecture("mistral") and native_architecture("qwen2")
    assert native_architecture("qwen3") and not native_architecture("bert")
    for name in ("gemma2", "gemma3", "gemma3_text", "phi3", "qwen3_moe", "qwen3moe"):  # config.json or GGUF names
        assert native_architecture(name), name
    with pytest.raises(ModelFormatError, match="rope type 'longrope'"):
        hf_config({**LLAMA, "model_type": "phi3", "rope_scaling": {"type": "longrope", "factor": 4}})


def test_sliding_windows_per_family() -> None:
    mistral = hf_config({**LLAMA, "model_type": "mistral", "sliding_window": 16})
    assert [mistral.window(i) for i in range(2)] == [16, 16]
    qwen = {**LLAMA, "model_type": "qwen2", "sliding_window": 16, "max_window_layers": 1}
    assert hf_config(qwen).window(1) is None  # use_sliding_window is off by default
    assert hf_config({**qwen, "use_sliding_window": True}).layer_types == (
        "full_attention",
        "sliding_attention",
    )
    assert hf_config({**LLAMA, "sliding_window": None}).window(0) is None


def test_the_demo_gguf_metadata(demo_gguf: Path) -> None:
    config = gguf_config(read_gguf_header(demo_gguf).metadata)
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("llama", 576, 30)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert (config.intermediate_size, config.vocab_size, config.max_position_embeddings) == (1536, 49152, 8192)
    assert config.rope_theta == 100000.0 and config.rope_scaling is None and config.partial_rotary_factor == 1.0
    assert config.eos_token_id == 2 and config.bos_token_id == 1
    assert abs(config.rms_norm_eps - 1e-5) < 1e-9


def test_gguf_rope_scaling_metadata() -> None:
    meta = {
        "general.architecture": "qwen2",
        "qwen2.embedding_length": 64,
        "qwen2.block_count": 2,
        "qwen2.attention.head_count": 4,
        "qwen2.vocab_size": 10,
        "qwen2.rope.scaling.type": "yarn",
        "qwen2.rope.scaling.factor": 4.0,
        "qwen2.rope.scaling.original_context_length": 32768,
    }
    config = gguf_config(meta)
    assert config.attention_bias and config.num_key_value_heads == 4
    assert config.rope_scaling == RopeScaling("yarn", 4.0, original_max_position_embeddings=32768)
    with pytest.raises(ModelFormatError, match="no native model"):
        gguf_config({**meta, "general.architecture": "falcon"})


def test_rotary_tables_are_transformers_arithmetic_and_grow() -> None:
    inv, factor = inverse_frequencies(16, 10000.0)
    assert factor == 1.0 and torch.equal(inv, 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float) / 16)))
    table = RotaryTable(inv)
    positions = torch.tensor([[0, 5, 4100]])
    cos, sin = table.lookup(positions, 4101)
    assert table.size == 8192 and cos.shape == (1, 3, 16)
    angles = positions[..., None].float() * inv
    assert torch.equal(cos, torch.cat((angles, angles), -1).cos()) and torch.equal(sin[0, 0], torch.zeros(16))
    factors = torch.linspace(1, 8, 8)
    assert torch.equal(inverse_frequencies(16, 10000.0, factors=factors)[0], inv / factors)
    _, attention = inverse_frequencies(16, 10000.0, RopeScaling("yarn", 4.0, original_max_position_embeddings=64))
    assert attention == pytest.approx(0.1 * torch.log(torch.tensor(4.0)).item() + 1.0)


def kv(t: int, start: float = 0.0) -> torch.Tensor:
    """[1, 2, t, 4] whose values are the positions ``start .. start + t - 1``."""
    return (torch.arange(t, dtype=torch.float32) + start).view(1, 1, t, 1).expand(1, 2, t, 4).contiguous()


def test_the_cache_grows_in_chunks_writes_in_place_and_crops() -> None:
    cache = KVCache([None, None])
    k, _ = cache.update(kv(3), kv(3), 0)
    cache.update(kv(3), kv(3), 1)
    assert cache.get_seq_length() == 3 and k.shape == (1, 2, 3, 4)
    assert cache.nbytes == 2 * 2 * (2 * CHUNK * 4) * 4
    buffer = cache.layers[0]._keys
    for i in range(3, CHUNK):
        cache.update(kv(1, i), kv(1, i), 0)
    assert cache.layers[0]._keys is buffer  # no copy until the chunk is full
    k, _ = cache.update(kv(2, CHUNK), kv(2, CHUNK), 0)
    assert k.shape[2] == CHUNK + 2 and torch.equal(k[0, 0, :, 0], torch.arange(CHUNK + 2, dtype=torch.float32))
    assert cache.layers[0]._keys is not buffer and cache.get_seq_length(1) == 3
    cache.crop(5)
    assert cache.get_seq_length() == 5 and cache.get_seq_length(1) == 3
    k, _ = cache.update(kv(1, 99), kv(1, 99), 0)
    assert k[0, 0, :, 0].tolist() == [0, 1, 2, 3, 4, 99]
    cache.crop(-2)  # transformers' convention: drop the last two
    assert cache.get_seq_length() == 4
    cache.reset()
    assert cache.get_seq_length() == 0 and len(cache) == 2


def test_a_trimmed_sliding_layer_keeps_its_window() -> None:
    cache = KVCache([4], trim_sliding=True)
    for i in range(CHUNK + 10):
        k, _ = cache.update(kv(1, i), kv(1, i), 0)
    assert cache.get_seq_length() == CHUNK + 10
    assert k[0, 0, -4:, 0].tolist() == [CHUNK + 6, CHUNK + 7, CHUNK + 8, CHUNK + 9]
    assert cache.nbytes == 2 * (2 * CHUNK * 4) * 4  # never grown past one chunk
    cache.crop(CHUNK + 5)  # the last three positions before it are still there
    k, _ = cache.update(kv(1, -1), kv(1, -1), 0)
    assert k[0, 0, -4:, 0].tolist() == [CHUNK + 2, CHUNK + 3, CHUNK + 4, -1]
    with pytest.raises(ValueError, match="cannot be cropped"):
        cache.crop(10)
    cache.crop(0)
    assert cache.get_seq_length() == 0


def test_checkpoint_names_are_normalized_to_the_causal_lm() -> None:
    from influence_tui.core.engine.weights.safetensors import hf_name

    assert hf_name("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert hf_name("layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert hf_name("embed_tokens.weight") == "model.embed_tokens.weight"
    assert hf_name("lm_head.weight") == "lm_head.weight"
    assert hf_name("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    assert hf_name("model.language_model.layers.1.self_attn.q_norm.weight") == "model.layers.1.self_attn.q_norm.weight"
    assert hf_name("language_model.model.embed_tokens.weight") == "model.embed_tokens.weight"
    assert hf_name("vision_tower.vision_model.embeddings.patch_embedding.weight") is None
    assert hf_name("model.multi_modal_projector.mm_input_projection_weight") is None


def test_a_gemma3_multimodal_config_reads_as_its_text_model() -> None:
    config = hf_config(
        {
            "model_type": "gemma3",
            "eos_token_id": [1, 106],
            "text_config": {
                "model_type": "gemma3_text",
                "hidden_size": 2560,
                "intermediate_size": 10240,
                "num_attention_heads": 8,
                "num_hidden_layers": 34,
                "num_key_value_heads": 4,
                "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                "sliding_window": 1024,
            },
            "vision_config": {"model_type": "siglip_vision_model"},
        }
    )
    assert config.model_type == "gemma3_text" and config.family == "gemma" and config.tie_word_embeddings
    assert (config.vocab_size, config.head_dim, config.query_pre_attn_scalar) == (262208, 256, 256.0)
    assert config.rope_theta == 1e6 and config.rope_local_theta == 10000.0
    assert config.rope_scaling == RopeScaling("linear", 8.0) and config.eos_token_ids == (1, 106)
    assert sum(config.is_sliding(i) for i in range(34)) == 34 - 5 and not config.is_sliding(5)
    assert config.norm_offset == 1.0 and config.embedding_multiplier == 2560**0.5
