"""Write a HuggingFace llama / mistral / qwen2 / qwen3 / gemma2 / gemma3 checkpoint as a GGUF file.

What llama.cpp's ``convert_hf_to_gguf.py`` writes for a ``LlamaForCausalLM`` (and ``MistralForCausalLM``,
which it writes as ``llama`` too; ``Qwen2ForCausalLM`` and ``Qwen3ForCausalLM`` as ``qwen2`` / ``qwen3``), for
the few types gguf-py can quantize: the ``<arch>.*`` hyperparameters and ``general.file_type``, tensors named
``token_embd``, ``output_norm``, ``output`` (only when the embeddings are untied) and ``blk.N.{attn_norm,
attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}`` (plus qwen3's ``attn_q_norm`` /
``attn_k_norm``, and the q/k/v biases where the model has them), with llama's q and k rows permuted the way its
``LlamaModel.permute`` does (GGUF's llama rotates adjacent pairs; HF's rotates the two halves of each head;
the qwen converters do not permute). Llama 3 rope scaling becomes a ``rope_freqs`` tensor of per-frequency
factors and linear scaling ``rope.scaling.*`` metadata, as the converter writes them. ``Gemma2ForCausalLM`` /
``Gemma3ForCausalLM`` (model_type ``gemma2`` / ``gemma3_text``) follow its ``Gemma2Model`` / ``Gemma3Model``:
architecture ``gemma2`` / ``gemma3``, every norm weight stored as ``1 + w`` (q/k norms included), no q/k
permutation, the embeddings tied (no ``output``), key/value length always written, the four per-layer norms
as ``attn_norm``, ``post_attention_norm``, ``ffn_norm`` and ``post_ffw_norm``, and ``attn_logit_softcapping``
/ ``final_logit_softcapping`` (where set) and ``attention.sliding_window``; Gemma 2 writes no rope base and
Gemma 3 the global layers' (the local layers' 10000 is implied, as is the layer pattern). Norms and other 1-D
tensors stay float32; every 2-D tensor gets ``qtype`` (``F32``, ``F16``, ``BF16``, ``Q8_0``, ``Q4_0``...), or
F16 where its rows are not whole quantization blocks (as convert_hf_to_gguf falls back). Q4_0 here is "pure":
llama-quantize would keep ``output.weight`` in Q6_K, which gguf-py cannot write; both engines read the same file.

The tokenizer comes from another GGUF (``tokenizer_gguf``): all its ``tokenizer.*`` fields, chat template
included, are copied, and the vocabulary is padded with ``[PAD{i}]`` tokens up to the model's vocab size as
convert_hf_to_gguf pads it.

Tensors are converted one at a time and streamed to the file, so a 1B model needs about one embedding
matrix in float32 of memory, not the whole model.

    python bench/gguf_export.py HF_DIR OUT.gguf --qtype Q4_0 --tokenizer-gguf demo.gguf
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, LlamaFileType

FILE_TYPES: dict[GGMLQuantizationType, LlamaFileType] = {
    GGMLQuantizationType.F32: LlamaFileType.ALL_F32,
    GGMLQuantizationType.F16: LlamaFileType.MOSTLY_F16,
    GGMLQuantizationType.BF16: LlamaFileType.MOSTLY_BF16,
    GGMLQuantizationType.Q4_0: LlamaFileType.MOSTLY_Q4_0,
    GGMLQuantizationType.Q4_1: LlamaFileType.MOSTLY_Q4_1,
    GGMLQuantizationType.Q5_0: LlamaFileType.MOSTLY_Q5_0,
    GGMLQuantizationType.Q5_1: LlamaFileType.MOSTLY_Q5_1,
    GGMLQuantizationType.Q8_0: LlamaFileType.MOSTLY_Q8_0,
}
"""The types this writer produces: the ones gguf-py's ``quants.quantize`` implements with a llama file type."""

_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GEMMA_LAYER_NAMES = {
    **_LAYER_NAMES,
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}
"""Gemma's four norms per layer: gguf-py's ``attn_norm``, ``post_attention_norm``, ``ffn_norm``, ``post_ffw_norm``."""
_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_TOKEN_TYPE_UNUSED = 5  # llama.cpp's LLAMA_TOKEN_TYPE_UNUSED, what convert_hf_to_gguf gives its [PAD] tokens
GGUF_ARCHITECTURES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
}
"""config.json model_type -> the general.architecture convert_hf_to_gguf writes for it."""


def gguf_name(hf_name: str, arch: str = "llama") -> str | None:
    """The GGUF tensor name of a HF tensor (``model.layers.3.mlp.up_proj.weight`` -> ``blk.3.ffn_up.weight``) in
    the GGUF architecture ``arch``; None for tensors GGUF does not store (``rotary_emb.inv_freq``)."""
    stem, _, suffix = hf_name.rpartition(".")
    if suffix not in ("weight", "bias") or "rotary_emb" in hf_name:
        return None
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}"
    names = _GEMMA_LAYER_NAMES if arch.startswith("gemma") else _LAYER_NAMES
    parts = stem.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in names:
        return f"blk.{int(parts[2])}.{names[parts[3]]}.{suffix}"
    raise ValueError(f"unexpected tensor in a {arch} checkpoint: {hf_name}")


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's ``LlamaModel.permute``: q/k rows from HF's rotate-half order to GGUF's pairs."""
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _weight_files(hf_dir: Path) -> list[Path]:
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [hf_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors in {hf_dir}")
    return files


def _tensors(hf_dir: Path) -> Iterator[tuple[str, Any]]:
    """(name, torch tensor) for every tensor of the checkpoint, one at a time."""
    from safetensors import safe_open

    for file in _weight_files(hf_dir):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, handle.get_tensor(name)


def _shapes(hf_dir: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in _weight_files(hf_dir):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def tensor_type(name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType) -> GGMLQuantizationType:
    """F32 for 1-D tensors (norms, biases); ``qtype`` for matrices, F16 where a row is not whole blocks."""
    if len(shape) < 2 or qtype == GGMLQuantizationType.F32:
        return GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        return GGMLQuantizationType.F16
    return qtype


def _encode(array: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype == GGMLQuantizationType.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == GGMLQuantizationType.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    return np.ascontiguousarray(gguf.quants.quantize(array, qtype))


def _copy_tokenizer(writer: gguf.GGUFWriter, tokenizer_gguf: Path, vocab_size: int) -> None:
    """Every ``tokenizer.*`` field of ``tokenizer_gguf``, strings as raw bytes, the vocabulary padded to ``vocab_size``."""
    reader = gguf.GGUFReader(tokenizer_gguf)
    n_tokens = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        main = field.types[0]
        if main == GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == GGUFValueType.STRING:
                values: list[Any] = [bytes(field.parts[i]) for i in field.data]
            else:
                values = [field.parts[i].tolist()[0] for i in field.data]
            if key == "tokenizer.ggml.tokens":
                n_tokens = len(values)
                values += [f"[PAD{i}]".encode() for i in range(n_tokens, vocab_size)]
            elif key == "tokenizer.ggml.token_type":
                values += [_TOKEN_TYPE_UNUSED] * (vocab_size - len(values))
            elif key == "tokenizer.ggml.scores":
                values += [-1000.0] * (vocab_size - len(values))
            writer.add_key_value(key, values, main, sub_type=sub)
        elif main == GGUFValueType.STRING:
            writer.add_key_value(key, bytes(field.parts[-1]), main)
        else:
            writer.add_key_value(key, field.parts[-1].tolist()[0], main)
    if n_tokens > vocab_size:
        raise ValueError(f"{tokenizer_gguf.name} has {n_tokens} tokens, more than the model's vocab_size {vocab_size}")


def _rope(config: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(theta, the rope parameters): transformers 5's ``rope_parameters`` or the older top-level keys."""
    params = dict(config.get("rope_parameters") or {})
    if isinstance(params.get("full_attention"), dict):  # Gemma 3: per layer type; GGUF keeps the global layers'
        params = dict(params["full_attention"])
    params = {**(config.get("rope_scaling") or {}), **params}
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in ("default", "llama3", "linear"):
        raise NotImplementedError(f"rope type {kind!r}: this writer knows default, llama3 and linear only")
    params["rope_type"] = kind
    return float(config.get("rope_theta") or params.get("rope_theta") or 10000.0), params


def llama3_rope_factors(theta: float, dim: int, params: dict[str, Any]) -> np.ndarray:
    """convert_hf_to_gguf's ``rope_freqs`` for Llama 3 scaling: the factor each frequency is divided by."""
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(params.get("factor", 8.0))
    low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    old = float(params.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old / low, old / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def export_llama_gguf(hf_dir: Path, out: Path, qtype: str, *, tokenizer_gguf: Path) -> Path:
    """Write the llama checkpoint in ``hf_dir`` as a GGUF of type ``qtype`` (``F16``, ``Q8_0``, ``Q4_0``, ...)
    at ``out`` (written to a temporary name first, so a crash leaves no half file); returns ``out``."""
    config = json.loads((Path(hf_dir) / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "llama":
        raise ValueError(f"{hf_dir} is a {config.get('model_type')!r} model, not llama")
    return export_gguf(hf_dir, out, qtype, tokenizer_gguf=tokenizer_gguf)


def export_gguf(hf_dir: Path, out: Path, qtype: str, *, tokenizer_gguf: Path) -> Path:
    """:func:`export_llama_gguf` for any model_type of :data:`GGUF_ARCHITECTURES`."""
    hf_dir, out = Path(hf_dir), Path(out)
    try:
        quant = GGMLQuantizationType[qtype.upper()]
    except KeyError:
        raise ValueError(f"unknown GGML type {qtype!r}") from None
    if quant not in FILE_TYPES:
        raise ValueError(f"{qtype}: gguf-py writes only {', '.join(t.name for t in FILE_TYPES)}")
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    arch = GGUF_ARCHITECTURES.get(str(config.get("model_type")))
    if arch is None:
        raise ValueError(
            f"{hf_dir} is a {config.get('model_type')!r} model: this writer knows {', '.join(GGUF_ARCHITECTURES)}"
        )
    theta, rope = _rope(config)
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    shapes = _shapes(hf_dir)
    vocab_size = shapes["model.embed_tokens.weight"][0]

    tmp = out.with_name(f".{out.name}.partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(tmp, arch)
    writer.add_name(hf_dir.name)
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    gemma = arch.startswith("gemma")
    if not gemma:  # the Gemma converters write no rope dimension count (llama.cpp takes the head size)
        writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // n_head or gemma:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch != "gemma2":  # Gemma2Model writes no rope base either (llama.cpp's default, 10000, is its own)
        writer.add_rope_freq_base(theta)
    if gemma:
        # Gemma2Model / Gemma3Model: soft-caps where the model has them (Gemma 3 has none) and the window of
        # the sliding layers; their pattern (every other layer, five in six) is implied by the architecture.
        if config.get("attn_logit_softcapping") is not None:
            writer.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))
        if config.get("final_logit_softcapping") is not None:
            writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
        if config.get("sliding_window"):
            writer.add_sliding_window(int(config["sliding_window"]))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-5))
    writer.add_vocab_size(vocab_size)
    writer.add_file_type(int(FILE_TYPES[quant]))
    if quant not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _copy_tokenizer(writer, Path(tokenizer_gguf), vocab_size)

    # The tensor table comes before the data: declare every tensor (type, byte size) from the shapes alone.
    planned: dict[str, tuple[str, GGMLQuantizationType]] = {}
    if config.get("tie_word_embeddings", gemma):  # Gemma's configs tie them by default
        shapes.pop("lm_head.weight", None)  # a tied head is the embedding: convert_hf_to_gguf writes no output
    extra: dict[str, np.ndarray] = {}
    if rope["rope_type"] == "llama3":
        extra["rope_freqs.weight"] = llama3_rope_factors(theta, head_dim, rope)
    for name, array in extra.items():
        writer.add_tensor_info(name, array.shape, array.dtype, array.nbytes)
    for hf_name, shape in shapes.items():
        name = gguf_name(hf_name, arch)
        if name is None:
            continue
        kind = tensor_type(name, shape, quant)
        planned[hf_name] = (name, kind)
        if kind in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            dtype = np.dtype(np.float32 if kind == GGMLQuantizationType.F32 else np.float16)
            writer.add_tensor_info(name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(shape, kind)
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=kind)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for array in extra.values():
            writer.write_tensor_data(array)
        order = iter(planned)
        for hf_name, tensor in _tensors(hf_dir):  # the order of _shapes, so of the table
            if hf_name not in planned:
                continue
            if next(order) != hf_name:
                raise RuntimeError(f"{hf_name} read out of the order its table entry was written in")
            name, kind = planned[hf_name]
            array = tensor.float().numpy()
            if arch == "llama" and name.endswith(("attn_q.weight", "attn_q.bias")):
                array = permute(array, n_head)
            elif arch == "llama" and name.endswith(("attn_k.weight", "attn_k.bias")):
                array = permute(array, n_kv)
            elif gemma and name.endswith("norm.weight"):
                array = array + 1  # Gemma's RMSNorm scales by 1 + w: the converter stores 1 + w
            writer.write_tensor_data(_encode(array, kind))
            del array, tensor
        writer.close()
        tmp.replace(out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "hf_dir",
        type=Path,
        help="folder with config.json and *.safetensors of a llama, mistral, qwen2, qwen3, gemma2 or gemma3_text model",
    )
    parser.add_argument("out", type=Path, help="the .gguf file to write")
    parser.add_argument("--qtype", default="F16", help="F32, F16, BF16, Q8_0, Q5_0, Q5_1, Q4_0, Q4_1 (default F16)")
    parser.add_argument("--tokenizer-gguf", type=Path, required=True, help="a GGUF whose tokenizer.* fields to copy")
    args = parser.parse_args(argv)
    path = export_gguf(args.hf_dir, args.out, args.qtype, tokenizer_gguf=args.tokenizer_gguf)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
