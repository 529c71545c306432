"""GGUF tensors read packed: every GGML type against gguf-py's dequantization, names and q/k order against
transformers' GGUF loading (the demo model and tiny exported llamas), and the errors a caller falls back on."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from influence_tui.core.engine.quant.gguf_weights import (
    GGUFWeights,
    pack_gguf_tensor,
    read_gguf_weights,
    supports_gguf_architecture,
)
from influence_tui.core.engine.quant.packed import PackedWeight, dequantize, unpack_q4
from influence_tui.core.errors import ModelFormatError

EXACT = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
K_QUANTS = [T.Q4_K, T.Q5_K, T.Q6_K]
REQUANTIZED = [T.Q2_K, T.Q3_K, T.IQ4_NL, T.IQ4_XS, T.IQ2_XXS]
KINDS = {
    T.Q4_0: ("q4", 32, False),
    T.Q4_1: ("q4", 32, True),
    T.Q4_K: ("q4", 32, True),
    T.Q5_0: ("q8", 32, False),
    T.Q5_1: ("q8", 32, True),
    T.Q5_K: ("q8", 32, True),
    T.Q6_K: ("q8", 16, False),
    T.Q8_0: ("q8", 32, False),
}
# Byte offsets of the float16 fields of each block: scales (d, dmin) get sane values, the rest stays random.
SCALE_OFFSETS: dict[T, list[int]] = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.IQ4_NL: [0],
    T.IQ4_XS: [0],
    T.IQ2_XXS: [0],
}


def random_blocks(qtype: T, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Raw bytes [rows, bytes per row] of ``qtype``: random codes, random valid float16 scales in +-[1e-3, 1e-1]."""
    rng = np.random.default_rng(seed)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for offset in SCALE_OFFSETS[qtype]:
        values = rng.uniform(1e-3, 1e-1, n_blocks) * rng.choice([-1.0, 1.0], n_blocks)
        if offset == 0 or qtype not in (T.Q4_1, T.Q5_1):
            values = np.abs(values)  # d >= 0 as quantizers write it; Q4_1/Q5_1 mins keep their sign
        raw[:, offset : offset + 2] = values.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, -1)


def reference(raw: np.ndarray, qtype: T) -> torch.Tensor:
    return torch.from_numpy(gguf.quants.dequantize(raw, qtype).astype(np.float32))


def magnitude(w: PackedWeight) -> torch.Tensor:
    """|code * scale| + |min| per element: what the float16 rounding of a block's scale and min is relative to."""
    n, k = w.shape
    assert w.scales is not None
    codes = (unpack_q4(w.qweight) if w.kind == "q4" else w.qweight).to(torch.float32)
    terms = (codes.reshape(n, -1, w.group) * w.scales.float().unsqueeze(-1)).abs()
    if w.mins is not None:
        terms = terms + w.mins.float().abs().unsqueeze(-1)
    return terms.reshape(n, k)


# ------------------------------------------------------------------------------------------ every type


@pytest.mark.parametrize("qtype", EXACT, ids=lambda t: t.name)
def test_legacy_quants_are_exact(qtype: T) -> None:
    raw = random_blocks(qtype, 6, 512)
    packed = pack_gguf_tensor(raw, int(qtype), (6, 512))
    assert (packed.kind, packed.group, packed.mins is not None) == KINDS[qtype]
    assert packed.shape == (6, 512)
    assert torch.equal(dequantize(packed), reference(raw, qtype))


def test_q4_0_and_q4_1_nibbles_are_copied_as_they_are() -> None:
    for qtype, start in ((T.Q4_0, 2), (T.Q4_1, 4)):
        raw = random_blocks(qtype, 3, 64)
        packed = pack_gguf_tensor(raw, int(qtype), (3, 64))
        blocks = raw.reshape(3, 2, -1)
        assert np.array_equal(packed.qweight.numpy(), blocks[:, :, start:].reshape(3, 32))
        assert packed.scales is not None
        assert np.array_equal(packed.scales.numpy(), blocks[:, :, 0:2].copy().view(np.float16).reshape(3, 2))


@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda t: t.name)
def test_k_quants_differ_only_by_the_float16_rounding_of_their_sub_block_scales(qtype: T) -> None:
    raw = random_blocks(qtype, 6, 512)
    packed = pack_gguf_tensor(raw, int(qtype), (6, 512))
    assert (packed.kind, packed.group, packed.mins is not None) == KINDS[qtype]
    ours, ref = dequantize(packed), reference(raw, qtype)
    # Tolerance: each scale d*sc and min dmin*m is rounded once to float16 (relative error <= 2**-11), so a weight
    # may move by 2**-11 of |code * scale| + |min|; 2**-10 leaves room for float32 arithmetic on both sides.
    bound = 2.0**-10 * magnitude(packed)
    assert bool(((ours - ref).abs() <= bound).all()), float(((ours - ref).abs() - bound).max())
    assert not torch.equal(ours, ref)  # these scales do round: the bound is what is being tested


def test_k_quant_codes_are_exact_where_the_scales_are_representable() -> None:
    """With d*sc and dmin*m exact in float16 (small power-of-two d), the K-quants match gguf-py bit for bit."""
    for qtype in K_QUANTS:
        raw = random_blocks(qtype, 4, 256, seed=1)
        for offset in SCALE_OFFSETS[qtype]:
            raw.reshape(4, -1)[:, offset : offset + 2] = np.array([2.0**-8], np.float16).view(np.uint8)
        assert torch.equal(dequantize(pack_gguf_tensor(raw, int(qtype), (4, 256))), reference(raw, qtype)), qtype.name


@pytest.mark.parametrize("qtype", REQUANTIZED, ids=lambda t: t.name)
def test_other_types_are_requantized_to_q8(qtype: T) -> None:
    raw = random_blocks(qtype, 4, 512)
    packed = pack_gguf_tensor(raw, int(qtype), (4, 512))
    assert (packed.kind, packed.group, packed.mins) == ("q8", 32, None)
    ref = reference(raw, qtype)
    # quantize_q8: scale = absmax/127 rounded to float16, codes rounded: half a step plus the scale's rounding.
    absmax = ref.reshape(4, -1, 32).abs().amax(dim=-1, keepdim=True)
    bound = (absmax / 127 * 0.5 + absmax * 2.0**-10).expand(-1, -1, 32).reshape(4, 512)
    assert bool(((dequantize(packed) - ref).abs() <= bound + 1e-12).all())


def test_plain_matrices_are_exact() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((5, 48)).astype(np.float32)
    f32 = pack_gguf_tensor(values.view(np.uint8), int(T.F32), (5, 48))
    assert f32.kind == "f32" and torch.equal(dequantize(f32), torch.from_numpy(values))
    half = values.astype(np.float16)
    f16 = pack_gguf_tensor(half.view(np.uint8), int(T.F16), (5, 48))
    assert f16.kind == "f16" and torch.equal(f16.qweight, torch.from_numpy(half))
    assert torch.equal(dequantize(f16), reference(half.view(np.uint8), T.F16))
    bf = (values.view(np.uint32) >> 16).astype(np.uint16)
    bf16 = pack_gguf_tensor(bf.view(np.uint8), int(T.BF16), (5, 48))
    assert bf16.kind == "bf16" and bf16.qweight.dtype == torch.bfloat16
    assert torch.equal(dequantize(bf16), reference(bf.view(np.uint8), T.BF16))


def test_the_packed_weight_owns_its_memory() -> None:
    raw = random_blocks(T.Q8_0, 2, 64)
    packed = pack_gguf_tensor(raw, int(T.Q8_0), (2, 64))
    before = dequantize(packed)
    raw[:] = 0
    assert torch.equal(dequantize(packed), before)


def test_large_tensors_are_converted_in_chunks_of_rows() -> None:
    raw = random_blocks(T.Q4_K, 2 * 4096 + 3, 512)  # five chunks of 2**20 weights, the last one short
    packed = pack_gguf_tensor(raw, int(T.Q4_K), (2 * 4096 + 3, 512))
    one_by_one = torch.cat(
        [dequantize(pack_gguf_tensor(raw[i : i + 1], int(T.Q4_K), (1, 512))) for i in (0, 4096, 8194)]
    )
    assert torch.equal(dequantize(packed)[[0, 4096, 8194]], one_by_one)


def test_bad_shapes_and_scales_are_errors() -> None:
    with pytest.raises(ValueError, match="whole blocks"):
        pack_gguf_tensor(np.zeros((2, 34), np.uint8), int(T.Q8_0), (2, 48))
    raw = random_blocks(T.Q4_K, 1, 256)
    raw[0, 0:2] = np.array([60000.0], np.float16).view(np.uint8)
    raw[0, 4:16] = 0xFF  # every sc = 63: d*sc overflows float16
    with pytest.raises(ValueError, match="float16"):
        pack_gguf_tensor(raw, int(T.Q4_K), (1, 256))
    with pytest.raises(ValueError, match="cannot be read"):
        pack_gguf_tensor(np.zeros((1, 292), np.uint8), int(T.Q8_K), (1, 256))


# ------------------------------------------------------------------------------------------ files and names


def write_model(path: Path, arch: str, tensors: dict[str, tuple[np.ndarray, T]], **meta: int) -> Path:
    """A GGUF of ``arch`` with ``tensors`` (name -> float32 values, the type to store them in) and hparams."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(meta.get("layers", 1))
    if "heads" in meta:
        writer.add_head_count(meta["heads"])
    if "kv_heads" in meta:
        writer.add_head_count_kv(meta["kv_heads"])
    for name, (values, qtype) in tensors.items():
        if qtype == T.F32:
            writer.add_tensor(name, values.astype(np.float32))
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf ``LlamaModel.permute`` (HF's rotate-half order -> GGUF's pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def as_float(t: PackedWeight | torch.Tensor) -> torch.Tensor:
    return dequantize(t) if isinstance(t, PackedWeight) else t


def test_qwen_names_biases_and_norms_without_permutation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((64, 64)).astype(np.float32)
    tensors = {
        "token_embd.weight": (rng.standard_normal((10, 64)).astype(np.float32), T.Q8_0),
        "output.weight": (rng.standard_normal((10, 64)).astype(np.float32), T.Q4_0),
        "output_norm.weight": (np.ones(64, np.float32), T.F32),
        "blk.0.attn_q.weight": (q, T.Q8_0),
        "blk.0.attn_q.bias": (np.arange(64, dtype=np.float32), T.F32),
        "blk.0.attn_q_norm.weight": (np.arange(16, dtype=np.float32), T.F32),
        "blk.0.ffn_down.weight": (rng.standard_normal((64, 32)).astype(np.float32), T.Q5_0),
        "rope_freqs.weight": (np.ones(8, np.float32), T.F32),
    }
    path = write_model(tmp_path / "q.gguf", "qwen3", tensors, heads=4, kv_heads=2)
    weights = read_gguf_weights(path)
    assert weights.architecture == "qwen3"
    assert set(weights.tensors) == {
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.q_proj.bias",
        "model.layers.0.self_attn.q_norm.weight",
        "model.layers.0.mlp.down_proj.weight",
    }
    assert weights.unmapped == ["rope_freqs.weight"] and weights.requantized == {}
    assert not weights.tied_embeddings
    # qwen's q/k rows are not permuted: transformers reads them as they are
    q_proj = weights.tensors["model.layers.0.self_attn.q_proj.weight"]
    assert isinstance(q_proj, PackedWeight)
    raw = gguf.quants.quantize(q, T.Q8_0)
    assert torch.equal(dequantize(q_proj), reference(raw, T.Q8_0))
    bias = weights.tensors["model.layers.0.self_attn.q_proj.bias"]
    assert isinstance(bias, torch.Tensor) and bias.dtype == torch.float32
    assert torch.equal(bias, torch.arange(64, dtype=torch.float32))
    down = weights.tensors["model.layers.0.mlp.down_proj.weight"]
    assert isinstance(down, PackedWeight) and down.shape == (64, 32)


def test_llama_q_and_k_rows_go_back_to_hf_order(tmp_path: Path) -> None:
    """What llama.cpp's converter permuted (weights and biases, by heads for q and kv heads for k) comes back."""
    rng = np.random.default_rng(0)
    heads, kv_heads, head_dim, hidden = 4, 2, 16, 64
    q = rng.standard_normal((heads * head_dim, hidden)).astype(np.float32)
    k = rng.standard_normal((kv_heads * head_dim, hidden)).astype(np.float32)
    k_bias = rng.standard_normal(kv_heads * head_dim).astype(np.float32)
    tensors = {
        "blk.0.attn_q.weight": (llama_permute(q, heads), T.F32),
        "blk.0.attn_k.weight": (llama_permute(k, kv_heads), T.F32),
        "blk.0.attn_k.bias": (llama_permute(k_bias, kv_heads), T.F32),
        "blk.0.attn_v.weight": (llama_permute(k, kv_heads), T.F32),  # v is never permuted: stays as stored
        "blk.0.attn_output.weight": (q.T.copy(), T.Q4_1),
    }
    path = write_model(tmp_path / "l.gguf", "llama", tensors, heads=heads, kv_heads=kv_heads)
    got = {name: as_float(t) for name, t in read_gguf_weights(path).tensors.items()}
    assert torch.equal(got["model.layers.0.self_attn.q_proj.weight"], torch.from_numpy(q))
    assert torch.equal(got["model.layers.0.self_attn.k_proj.weight"], torch.from_numpy(k))
    assert torch.equal(got["model.layers.0.self_attn.k_proj.bias"], torch.from_numpy(k_bias))
    assert torch.equal(got["model.layers.0.self_attn.v_proj.weight"], torch.from_numpy(llama_permute(k, kv_heads)))
    # a quantized q: its rows (codes, scales and mins alike) move as they do in float
    tensors = {"blk.0.attn_q.weight": (llama_permute(q, heads), T.Q4_1)}
    path = write_model(tmp_path / "l4.gguf", "llama", tensors, heads=heads, kv_heads=kv_heads)
    packed = read_gguf_weights(path).tensors["model.layers.0.self_attn.q_proj.weight"]
    stored = reference(gguf.quants.quantize(llama_permute(q, heads), T.Q4_1), T.Q4_1).numpy()
    assert torch.equal(as_float(packed), torch.from_numpy(_unpermute(stored, heads)))


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' ``LlamaTensorProcessor._reverse_permute_weights``."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    return np.asarray(LlamaTensorProcessor()._reverse_permute_weights(w, n_head, n_head))


def test_head_counts_come_from_the_config_when_the_file_has_none(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    q = rng.standard_normal((64, 32)).astype(np.float32)
    path = write_model(tmp_path / "l.gguf", "llama", {"blk.0.attn_q.weight": (llama_permute(q, 4), T.F32)})
    with pytest.raises(ModelFormatError, match="head count"):
        read_gguf_weights(path)
    for config in ({"num_attention_heads": 4}, _Config(num_attention_heads=4)):
        got = read_gguf_weights(path, config).tensors["model.layers.0.self_attn.q_proj.weight"]
        assert torch.equal(as_float(got), torch.from_numpy(q))


class _Config:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def test_architectures(tmp_path: Path) -> None:
    for arch in ("llama", "mistral", "qwen2", "qwen3"):
        assert supports_gguf_architecture(arch)
    assert not supports_gguf_architecture("gemma2")
    path = write_model(tmp_path / "g.gguf", "gemma2", {"output_norm.weight": (np.ones(4, np.float32), T.F32)})
    with pytest.raises(ModelFormatError, match="gemma2"):
        read_gguf_weights(path)


def test_broken_files_are_model_format_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelFormatError):
        read_gguf_weights(empty)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + b"\0" * 64)
    with pytest.raises(ModelFormatError, match="magic"):
        read_gguf_weights(bad)
    rng = np.random.default_rng(0)
    tensors = {"blk.0.ffn_up.weight": (rng.standard_normal((64, 64)).astype(np.float32), T.Q8_0)}
    good = write_model(tmp_path / "t.gguf", "llama", tensors)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ModelFormatError, match="past the end of the file"):
        read_gguf_weights(cut)
    split = tmp_path / "split-00001-of-00002.gguf"
    writer = gguf.GGUFWriter(str(split), "llama")
    writer.add_uint16("split.count", 2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFormatError, match="split"):
        read_gguf_weights(split)


def test_requantized_matrices_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "q2.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    raw = random_blocks(T.Q2_K, 8, 256)
    writer.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=T.Q2_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    weights = read_gguf_weights(path)
    assert weights.requantized == {"model.layers.0.mlp.up_proj.weight": "Q2_K"}
    up = weights.tensors["model.layers.0.mlp.up_proj.weight"]
    assert isinstance(up, PackedWeight) and up.kind == "q8" and up.shape == (8, 256)


# ------------------------------------------------------------------------------------------ against transformers


def transformers_state(gguf_path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    return {name: t.detach() for name, t in model.state_dict().items()}


def assert_same_tensors(ours: GGUFWeights, theirs: dict[str, torch.Tensor]) -> None:
    expected = set(theirs) - ({"lm_head.weight"} if ours.tied_embeddings else set())
    assert set(ours.tensors) == expected
    for name, tensor in ours.tensors.items():
        assert torch.equal(as_float(tensor), theirs[name]), name


@pytest.fixture(scope="module")
def demo_transformers(demo_gguf: Path) -> dict[str, torch.Tensor]:
    return transformers_state(demo_gguf)


@pytest.mark.slow
def test_the_demo_model_reads_as_transformers_reads_it(
    demo_gguf: Path, demo_transformers: dict[str, torch.Tensor]
) -> None:
    started = time.perf_counter()
    weights = read_gguf_weights(demo_gguf)
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, f"reading the demo took {elapsed:.2f} s"
    assert weights.architecture == "llama" and weights.unmapped == [] and weights.requantized == {}
    assert weights.tied_embeddings  # SmolLM2 ties the LM head to the embedding: no lm_head.weight
    embed = weights.tensors["model.embed_tokens.weight"]
    assert isinstance(embed, PackedWeight) and (embed.kind, embed.shape) == ("q8", (49152, 576))
    kinds = {t.kind for t in weights.tensors.values() if isinstance(t, PackedWeight)}
    assert kinds == {"q4", "q8"}
    assert_same_tensors(weights, demo_transformers)


def _exporter() -> Any:
    if importlib.util.find_spec("bench.gguf_export") is None:
        pytest.skip("bench/gguf_export.py is not there")
    from bench import gguf_export

    return gguf_export


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "F16"])
def test_an_exported_tiny_llama_reads_as_transformers_reads_it(
    qtype: str, tiny_llama_template: Path, tmp_path: Path
) -> None:
    from tests.model_files import write_gguf

    exporter = _exporter()
    tokenizer = write_gguf(tmp_path / "tok" / "tok.gguf")
    out = exporter.export_llama_gguf(
        tiny_llama_template, tmp_path / "m" / f"tiny-{qtype}.gguf", qtype, tokenizer_gguf=tokenizer
    )
    weights = read_gguf_weights(out)
    assert not weights.tied_embeddings and "lm_head.weight" in weights.tensors
    assert_same_tensors(weights, transformers_state(out))
