"""A GGUF file's weights read as they are stored: quantized matrices become :class:`PackedWeight` s, not floats.

transformers' GGUF path dequantizes every tensor to float32 at load, so a 4-bit file takes about eight times
its size in memory. Here the tensor table is parsed with :mod:`influence_tui.core.formats`' cursor (gguf-py's
``GGUFReader`` takes seconds decoding the tokenizer arrays), the tensor data is memory-mapped with numpy, and
each matrix is re-laid out into one of :mod:`.packed`'s kinds, vectorized over chunks of whole rows:

========  =====================================================================================
GGML      packed
========  =====================================================================================
Q4_0      ``q4``, no mins: the nibbles copied as they are, scale ``d`` (exact)
Q4_1      ``q4`` with mins: the nibbles copied, scale ``d``, min ``m`` (exact)
Q4_K      ``q4`` with mins per 32: the nibbles re-laid out, scale ``fp16(d*sc)``, min ``fp16(-dmin*m)``
Q5_0      ``q8``, codes ``q - 16``, scale ``d`` (exact)
Q5_1      ``q8``, codes ``q``, scale ``d``, min ``m`` (exact)
Q5_K      ``q8`` group 32, codes ``q``, scale ``fp16(d*sc)``, min ``fp16(-dmin*m)``
Q6_K      ``q8`` group 16, codes ``q - 32``, scale ``fp16(d*sc)``
Q8_0      ``q8`` group 32, codes and scale copied (exact)
F16/BF16  ``f16`` / ``bf16`` (exact); F32 matrices ``f32``
other     (Q2_K, Q3_K, IQ*, TQ*...) dequantized with gguf-py, re-quantized with ``quantize_q8`` (lossy)
========  =====================================================================================

The K-quants' ``d * sc`` products are exact in float32 and rounded once to float16: a relative error of at
most 2**-11 per sub-block scale and min in float16's normal range (a product beyond that range, which no real
model has, is an error). Re-quantized matrices are listed in :attr:`GGUFWeights.requantized`. 1-D tensors
(norms, biases) become float32 tensors. Split GGUFs (``-00001-of-0000N``) are refused.

Names follow transformers' mapping: gguf-py's ``TensorNameMap`` for the architecture, asked about each
parameter name the HF model has (``model.layers.3.self_attn.q_proj`` -> ``blk.3.attn_q``). For ``llama`` the
q and k rows are put back in HF's order (llama.cpp's converter permutes them so that rope rotates adjacent
pairs); it is a permutation of rows, so it is applied to the stored rows before they are converted. Files
of an architecture :func:`supports_gguf_architecture` does not list raise :class:`ModelFormatError`, so the
caller can fall back to transformers' path.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np
import torch

from influence_tui.core.engine.quant.packed import Kind, PackedWeight, quantize_q8
from influence_tui.core.errors import ModelFormatError
from influence_tui.core.formats import GGML_TYPE_NAMES, GGML_TYPE_SIZES, FormatError, _Cursor, read_gguf_metadata

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# ggml type ids (ggml.h), the ones converted here by hand.
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q4_K, Q5_K, Q6_K, BF16 = 12, 13, 14, 30

_GGUF_ARRAY = 9  # GGUF metadata value type of arrays: stepped over, the tensor table is what is needed
_CHUNK_WEIGHTS = 1 << 20  # rows are converted in chunks of about this many weights, to bound the temporaries
_MAX_THREADS = 8  # chunks of one tensor are converted by up to this many threads


@dataclass(frozen=True)
class _Arch:
    gguf_arch: str  # the gguf.MODEL_ARCH member whose tensor names the file uses
    unpermute_qk: bool  # llama.cpp permuted the q/k rows (transformers' LlamaTensorProcessor undoes it)


# general.architecture -> how to read it. transformers un-permutes llama's q/k rows (its TENSOR_PROCESSORS are
# keyed by general.architecture) and leaves qwen2 / qwen3 alone, whose llama.cpp converters do not permute.
# llama.cpp writes Mistral models as "llama"; a file that says "mistral" is read as llama (names and permuted
# rows, what llama.cpp's Mistral converter writes). transformers cannot load such a file at all: gguf-py has
# no "mistral" tensor names (it would not permute either, having no processor for that key).
_ARCHITECTURES: dict[str, _Arch] = {
    "llama": _Arch("LLAMA", unpermute_qk=True),
    "mistral": _Arch("LLAMA", unpermute_qk=True),
    "qwen2": _Arch("QWEN2", unpermute_qk=False),
    "qwen3": _Arch("QWEN3", unpermute_qk=False),
}

# The HF parameter names of these decoder-only models (without .weight / .bias); the name map drops the
# ones an architecture does not have (q_norm / k_norm exist in qwen3 only).
_TOP_MODULES = ("model.embed_tokens", "model.norm", "lm_head")
_LAYER_MODULES = (
    "input_layernorm",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "self_attn.q_norm",
    "self_attn.k_norm",
    "post_attention_layernorm",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def supports_gguf_architecture(arch: str) -> bool:
    """Whether :func:`read_gguf_weights` reads files of this ``general.architecture``."""
    return arch in _ARCHITECTURES


@dataclass
class GGUFWeights:
    """What :func:`read_gguf_weights` read: the tensors by HF name, and what it could not map exactly."""

    architecture: str
    tensors: dict[str, PackedWeight | torch.Tensor]
    unmapped: list[str] = field(default_factory=list)
    """GGUF tensors with no HF parameter (``rope_freqs.weight``...): skipped, as transformers skips them."""
    requantized: dict[str, str] = field(default_factory=dict)
    """HF name -> GGML type of the matrices with no exact packed kind, re-quantized to ``q8``."""

    @property
    def tied_embeddings(self) -> bool:
        """True when the file has no ``output.weight``: the LM head is the token embedding."""
        return "lm_head.weight" not in self.tensors


@dataclass(frozen=True)
class _TensorInfo:
    name: str
    shape: tuple[int, ...]  # HF order: (N, K) for a matrix (GGUF stores ne[0] = K first)
    ggml_type: int
    offset: int  # from the start of the file


def read_gguf_weights(path: Path, config: PretrainedConfig | Mapping[str, Any] | None = None) -> GGUFWeights:
    """Every tensor of the GGUF file at ``path`` under its HF state-dict name, matrices packed.

    The head counts that undo llama's q/k permutation come from the file's metadata (what its converter used),
    else from ``config``. Raises :class:`ModelFormatError` for an architecture this reader does not know
    (see :func:`supports_gguf_architecture`) and for malformed files.
    """
    path = Path(path)
    metadata, infos, file_size = _read_table(path)
    arch_name = str(metadata.get("general.architecture", ""))
    arch = _ARCHITECTURES.get(arch_name)
    if arch is None:
        raise ModelFormatError(
            f"{path.name}: GGUF architecture {arch_name or '(none)'!r} cannot be read packed",
            hint=f"this reader knows {', '.join(sorted(_ARCHITECTURES))}",
        )
    splits = metadata.get("split.count")
    if isinstance(splits, int) and splits > 1:
        raise ModelFormatError(f"{path.name} is part 1 of a GGUF split in {splits} files; it cannot be read packed")
    n_layers = _hparam(metadata, f"{arch_name}.block_count", config, "num_hidden_layers")
    if n_layers is None:
        blocks = [int(part) for i in infos for part in i.name.split(".")[1:2] if part.isdigit()]
        n_layers = 1 + max(blocks, default=-1)
    names = _name_map(arch.gguf_arch, n_layers)
    heads = _hparam(metadata, f"{arch_name}.attention.head_count", config, "num_attention_heads")
    kv_heads = _hparam(metadata, f"{arch_name}.attention.head_count_kv", config, "num_key_value_heads") or heads

    data = np.memmap(path, dtype=np.uint8, mode="r", shape=(file_size,))
    result = GGUFWeights(arch_name, {})
    for info in infos:
        hf_name = names.get(info.name)
        if hf_name is None:
            result.unmapped.append(info.name)
            continue
        n_head = None
        if arch.unpermute_qk and (".attn_q." in info.name or ".attn_k." in info.name):
            n_head = heads if ".attn_q." in info.name else kv_heads
            if n_head is None:
                raise ModelFormatError(f"{path.name}: no attention head count to undo the q/k permutation")
        try:
            block, type_size = _block_size(info.ggml_type)
            if info.shape[-1] % block:
                raise ValueError(f"rows of {info.shape[-1]} are not whole blocks of {block}")
            count = int(np.prod(info.shape))
            nbytes = count // block * type_size
            if info.offset + nbytes > file_size:
                raise ValueError("it runs past the end of the file (truncated?)")
            raw = data[info.offset : info.offset + nbytes]
            if len(info.shape) == 1:
                vector = _vector(raw, info.ggml_type, count)
                if n_head is not None:
                    vector = vector[_unpermuted_rows(count, n_head)]
                result.tensors[hf_name] = torch.from_numpy(np.ascontiguousarray(vector))
            elif len(info.shape) == 2:
                n, k = info.shape
                rows = raw.reshape(n, nbytes // max(n, 1))
                if n_head is not None:
                    rows = rows[_unpermuted_rows(n, n_head)]
                packed, requantized = _pack_tensor(rows, info.ggml_type, (n, k))
                if requantized:
                    result.requantized[hf_name] = GGML_TYPE_NAMES.get(info.ggml_type, str(info.ggml_type))
                result.tensors[hf_name] = packed
            else:
                raise ModelFormatError(f"{path.name}: tensor {info.name} has {len(info.shape)} dimensions")
        except ValueError as exc:
            raise ModelFormatError(f"{path.name}: tensor {info.name}: {exc}") from exc
    return result


# ------------------------------------------------------------------------------------------ the file


def _read_table(path: Path) -> tuple[dict[str, Any], list[_TensorInfo], int]:
    """The metadata (arrays stepped over), the tensor table with absolute offsets, and the file size."""
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf)
            _version, tensor_count, metadata = read_gguf_metadata(cur, lambda _key, vtype: vtype != _GGUF_ARRAY)
            table: list[tuple[str, tuple[int, ...], int, int]] = []
            for _ in range(tensor_count):
                name = cur.string()
                n_dims = cur.u32()
                cur.need(8 * n_dims)
                dims = struct.unpack_from(f"<{n_dims}Q", buf, cur.pos)
                cur.pos += 8 * n_dims
                table.append((name, tuple(reversed(dims)), cur.u32(), cur.u64()))
            alignment = metadata.get("general.alignment")
            alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
            start = cur.pos + (-cur.pos % alignment)
            size = cur.size
    except FormatError as exc:
        raise ModelFormatError(f"{path.name}: {exc}") from exc
    except (OSError, ValueError) as exc:  # mmap of an empty file raises ValueError
        raise ModelFormatError(f"{path.name}: cannot read the file: {exc}") from exc
    return metadata, [_TensorInfo(name, shape, t, start + off) for name, shape, t, off in table], size


def _block_size(ggml_type: int) -> tuple[int, int]:
    """(weights, bytes) per block: :mod:`formats`' table, else the installed gguf-py's (newer types)."""
    size = GGML_TYPE_SIZES.get(ggml_type)
    if size is None:
        try:
            size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise ValueError(f"unknown GGML type {ggml_type}") from None
    return int(size[0]), int(size[1])


def _hparam(metadata: Mapping[str, Any], key: str, config: Any, attr: str) -> int | None:
    value = metadata.get(key)
    if value is None and config is not None:
        value = config.get(attr) if isinstance(config, Mapping) else getattr(config, attr, None)
    return int(value) if isinstance(value, int) else None


def _name_map(gguf_arch: str, n_layers: int) -> dict[str, str]:
    """GGUF tensor name -> HF parameter name, from gguf-py's map as transformers builds it."""
    name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, gguf_arch), n_layers)
    modules = list(_TOP_MODULES) + [f"model.layers.{i}.{m}" for i in range(n_layers) for m in _LAYER_MODULES]
    out: dict[str, str] = {}
    for module in modules:
        stem = name_map.get_name(module)
        if stem is not None:
            out[f"{stem}.weight"] = f"{module}.weight"
            out[f"{stem}.bias"] = f"{module}.bias"
    return out


def _unpermuted_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes llama.cpp's q/k permutation (transformers' ``_reverse_permute_weights``)."""
    if n_rows % (2 * n_head):
        raise ValueError(f"{n_rows} rows are not pairs within {n_head} heads")
    order: np.ndarray = np.arange(n_rows).reshape(n_head, n_rows // n_head // 2, 2).swapaxes(1, 2).reshape(-1)
    return order


def _vector(raw: np.ndarray, ggml_type: int, count: int) -> np.ndarray:
    """A 1-D tensor as float32."""
    if ggml_type == F32:
        return np.array(raw.view(np.float32))
    if ggml_type == F16:
        return raw.view(np.float16).astype(np.float32)
    if ggml_type == BF16:
        widened: np.ndarray = raw.view(np.uint16).astype(np.uint32) << 16
        return widened.view(np.float32)
    return _gguf_dequantize(raw.reshape(1, -1), ggml_type).reshape(count)


def _gguf_dequantize(blocks: np.ndarray, ggml_type: int) -> np.ndarray:
    try:
        out: np.ndarray = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType(ggml_type))
    except (NotImplementedError, ValueError) as exc:
        name = GGML_TYPE_NAMES.get(ggml_type, str(ggml_type))
        raise ValueError(f"GGML type {name} cannot be read (gguf-py cannot dequantize it)") from exc
    return out


# ------------------------------------------------------------------------------------------ conversion
#
# Each fill function gets the raw blocks of a chunk of rows as uint8 [B, type_size] and writes the same B blocks
# into the packed outputs, viewed as [B, per block]: qweight [B, block/2] (q4) or [B, block] (q8), scales and
# mins [B, block/group].

_Fill = Callable[[np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"], None]


@dataclass(frozen=True)
class _Layout:
    kind: Kind
    group: int
    mins: bool
    fill: _Fill


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte ``start`` of every block, [B, 1]."""
    return blocks[:, start : start + 2].view(np.float16)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Bytes [..., 16] of a Q4_0-style block -> codes [..., 32] (low nibbles first, then high)."""
    return np.concatenate((qs & 0x0F, qs >> 4), axis=-1)


def _fill_q4_0(b: np.ndarray, q: np.ndarray, s: np.ndarray, m: np.ndarray | None) -> None:
    s[:] = _f16(b, 0)
    q[:] = b[:, 2:18]


def _fill_q4_1(b: np.ndarray, q: np.ndarray, s: np.ndarray, m: np.ndarray | None) -> None:
    assert m is not None
    s[:] = _f16(b, 0)
    m[:] = _f16(b, 2)
    q[:] = b[:, 4:20]


def _fill_q8_0(b: np.ndarray, q: np.ndarray, s: np.ndarray, m: np.ndarray | None) -> None:
    s[:] = _f16(b, 0)
    q[:] = b[:, 2:34].view(np.int8)


def _five_bits(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1 codes 0..31 [B, 32]: nibbles from ``qs`` [B, 16], fifth bits from the 32-bit ``qh`` [B, 4]."""
    codes: np.ndarray = _nibbles(qs) | (np.unpackbits(qh, axis=-1, bitorder="little") << 4)
    return codes


def _fill_q5_0(b: np.ndarray, q: np.ndarray, s: np.ndarray, m: np.ndarray | None) -> None:
    s[:] = _f16(b, 0)
    q[:] = _five_bits(b[:, 2:6], b[:, 6:22]).view(np.int8) - 16


def _fill_q5_1(b: np.ndarray, q: np.ndarray, s: np.ndarray, m: np.ndarray | None) -> None:
    assert m is not None
    s[:] = _f16(b, 0)
    m[:] = _f16(b, 2)
    q[:] = _five_bits(b[:, 4:8], b[:, 8:24]).view(np.int8)


def _k_scales(b: np.ndarray, s: np.ndarray, m: np.ndarray | None) -> None:
    """Q4_K/Q5_K: the 8 sub-block scales ``fp16(d*sc)`` and mins ``fp16(-dmin*m)`` of each 256-block."""
    assert m is not None
    sc, mn = gguf.quants.Q4_K.get_scale_min(np.ascontiguousarray(b[:, 4:16]))
    with np.errstate(
        over="ignore", invalid="ignore"
    ):  # an overflow is found (and refused) once the whole tensor is converted
        s[:] = (_f16(b, 0).astype(np.float32) * sc.astype(np.float32)).astype(np.float16)
        m[:] = (-(_f16(b, 2).astype(np.float32) * mn.astype(np.float32))).astype(np.float16)


def _fill_q4_k(b: np.ndarray, q: np.ndarray, s: np.ndarray, m: np.ndarray | None) -> None:
    # Q4_K keeps 64 weights per 32 bytes (low nibbles: sub-block 2j, high: 2j+1); q4 keeps 32 per 16 bytes
    # (low nibbles: elements 0..15, high: 16..31).
    _k_scales(b, s, m)
    qs = b[:, 16:144].reshape(-1, 4, 32)
    lo, hi = qs[..., :16], qs[..., 16:]
    out = q.reshape(-1, 4, 2, 16)
    out[:, :, 0] = (lo & 0x0F) | (hi << 4)
    out[:, :, 1] = (lo >> 4) | (hi & 0xF0)


def _fill_q5_k(b: np.ndarray, q: np.ndarray, s: np.ndarray, m: np.ndarray | None) -> None:
    # Nibbles as in Q4_K; bit j of qh[i] is the fifth bit of element i of sub-block j.
    _k_scales(b, s, m)
    high = np.unpackbits(b[:, 16:48], axis=-1, bitorder="little").reshape(-1, 32, 8).swapaxes(1, 2) << 4
    qs = b[:, 48:176].reshape(-1, 4, 32)
    out = q.reshape(-1, 8, 32).view(np.uint8)
    out[:, 0::2] = (qs & 0x0F) | high[:, 0::2]
    out[:, 1::2] = (qs >> 4) | high[:, 1::2]


def _fill_q6_k(b: np.ndarray, q: np.ndarray, s: np.ndarray, m: np.ndarray | None) -> None:
    # Element h*128 + j*32 + i (h < 2, j < 4, i < 32): low 4 bits in ql[h*64 + (j%2)*32 + i] (nibble j//2),
    # high 2 bits in qh[h*32 + i] at bit 2j. Scales: one int8 per 16 elements, times d.
    ql = b[:, 0:128].reshape(-1, 2, 2, 32)
    qh = b[:, 128:192].reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    codes = np.concatenate((ql & 0x0F, ql >> 4), axis=2) | ((qh & 0x03) << 4)
    q[:] = codes.reshape(-1, 256).view(np.int8) - 32
    with np.errstate(over="ignore", invalid="ignore"):
        s[:] = (_f16(b, 208).astype(np.float32) * b[:, 192:208].view(np.int8).astype(np.float32)).astype(np.float16)


def _fill_requantized(ggml_type: int) -> _Fill:
    """Any other type: gguf-py's dequantization, then :func:`quantize_q8` per block of 32."""

    def fill(b: np.ndarray, q: np.ndarray, s: np.ndarray, m: np.ndarray | None) -> None:
        weights = torch.from_numpy(_gguf_dequantize(b, ggml_type).reshape(q.shape[0], -1))
        packed = quantize_q8(weights, 32)
        assert packed.scales is not None
        q[:] = packed.qweight.numpy()
        s[:] = packed.scales.numpy()

    return fill


_LAYOUTS: dict[int, _Layout] = {
    Q4_0: _Layout("q4", 32, False, _fill_q4_0),
    Q4_1: _Layout("q4", 32, True, _fill_q4_1),
    Q4_K: _Layout("q4", 32, True, _fill_q4_k),
    Q5_0: _Layout("q8", 32, False, _fill_q5_0),
    Q5_1: _Layout("q8", 32, True, _fill_q5_1),
    Q5_K: _Layout("q8", 32, True, _fill_q5_k),
    Q6_K: _Layout("q8", 16, False, _fill_q6_k),
    Q8_0: _Layout("q8", 32, False, _fill_q8_0),
}


def pack_gguf_tensor(raw: np.ndarray, ggml_type: int, shape: tuple[int, int]) -> PackedWeight:
    """The ``[N, K]`` matrix stored as ``raw`` (its bytes in GGML type ``ggml_type``, N rows) as a packed weight.

    The result owns its memory (nothing refers to ``raw`` afterwards, so a memory map can be closed).
    """
    return _pack_tensor(raw, ggml_type, shape)[0]


def _pack_tensor(raw: np.ndarray, ggml_type: int, shape: tuple[int, int]) -> tuple[PackedWeight, bool]:
    """:func:`pack_gguf_tensor`, and whether the weights had to be re-quantized."""
    n, k = shape
    block, type_size = _block_size(ggml_type)
    if k % block:
        raise ValueError(f"rows of {k} are not whole blocks of {block}")
    raw = np.asarray(raw, dtype=np.uint8).reshape(n, k // block * type_size)
    if ggml_type in (F32, F16, BF16):
        plain = torch.from_numpy(raw.view({F32: np.float32, F16: np.float16, BF16: np.int16}[ggml_type]).copy())
        if ggml_type == BF16:
            return PackedWeight("bf16", (n, k), plain.view(torch.bfloat16)), False
        return PackedWeight("f32" if ggml_type == F32 else "f16", (n, k), plain), False
    layout = _LAYOUTS.get(ggml_type)
    if layout is None:
        return _pack(raw, (n, k), ggml_type, _Layout("q8", 32, False, _fill_requantized(ggml_type))), True
    packed = _pack(raw, (n, k), ggml_type, layout)
    if ggml_type in (Q4_K, Q5_K, Q6_K) and not _finite(packed):
        raise ValueError("a sub-block scale d*sc is beyond float16's range")
    return packed, False


def _pack(raw: np.ndarray, shape: tuple[int, int], ggml_type: int, layout: _Layout) -> PackedWeight:
    """Convert the rows of ``raw`` [N, bytes per row] in chunks through ``layout.fill``."""
    n, k = shape
    block, type_size = _block_size(ggml_type)
    per_block = block // 2 if layout.kind == "q4" else block
    qweight = np.empty((n, k // block * per_block), dtype=np.uint8 if layout.kind == "q4" else np.int8)
    scales = np.empty((n, k // layout.group), dtype=np.float16)
    mins = np.empty_like(scales) if layout.mins else None
    step = max(1, _CHUNK_WEIGHTS // k)
    subs = block // layout.group

    def convert(r0: int) -> None:
        r1 = min(n, r0 + step)
        blocks = raw[r0:r1].reshape(-1, type_size)
        count = blocks.shape[0]
        layout.fill(
            blocks,
            qweight[r0:r1].reshape(count, per_block),
            scales[r0:r1].reshape(count, subs),
            None if mins is None else mins[r0:r1].reshape(count, subs),
        )

    starts = range(0, n, step)
    workers = min(len(starts), os.cpu_count() or 1, _MAX_THREADS)
    if workers > 1:  # numpy lets go of the GIL in these operations: chunks convert in parallel
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(convert, starts):
                pass
    else:
        for r0 in starts:
            convert(r0)
    return PackedWeight(
        layout.kind,
        (n, k),
        torch.from_numpy(qweight),
        torch.from_numpy(scales),
        None if mins is None else torch.from_numpy(mins),
        layout.group,
    )


def _finite(packed: PackedWeight) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in (packed.scales, packed.mins) if t is not None)
