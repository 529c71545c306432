"""A GGUF file's weights read as they are stored: quantized matrices become :class:`PackedWeight` s, not floats.

transformers' GGUF path dequantizes every tensor to float32 at load, so a 4-bit file takes about eight times
its size in memory. Here the tensor table is parsed by :func:`influence_tui.core.formats.read_gguf_tables`
(gguf-py's ``GGUFReader`` takes seconds decoding the tokenizer arrays), the tensor data is memory-mapped with numpy, and
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np
import torch

from influence_tui.core.engine.quant.gguf_blocks import (
    BF16,
    F16,
    F32,
    _block_size,
    _gguf_dequantize,
    _pack_tensor,
    pack_gguf_tensor,
)
from influence_tui.core.engine.quant.packed import PackedWeight
from influence_tui.core.errors import ModelFormatError
from influence_tui.core.formats import GGML_TYPE_NAMES, FormatError, read_gguf_tables

__all__ = [
    "GGUFArchitecture",
    "GGUFWeights",
    "pack_gguf_tensor",
    "read_gguf_file",
    "read_gguf_weights",
    "supports_gguf_architecture",
]

if TYPE_CHECKING:
    from transformers import PretrainedConfig

_GGUF_ARRAY = 9  # GGUF metadata value type of arrays: stepped over, the tensor table is what is needed


@dataclass(frozen=True)
class GGUFArchitecture:
    """How to read the files of one ``general.architecture``."""

    gguf_arch: str  # the gguf.MODEL_ARCH member whose tensor names the file uses
    unpermute_qk: bool  # llama.cpp permuted the q/k rows (transformers' LlamaTensorProcessor undoes it)
    modules: tuple[str, ...] | None = None  # the layer's HF modules, where they are not _LAYER_MODULES


# general.architecture -> how to read it. transformers un-permutes llama's q/k rows (its TENSOR_PROCESSORS are
# keyed by general.architecture) and leaves qwen2 / qwen3 alone, whose llama.cpp converters do not permute.
# llama.cpp writes Mistral models as "llama"; a file that says "mistral" is read as llama (names and permuted
# rows, what llama.cpp's Mistral converter writes). transformers cannot load such a file at all: gguf-py has
# no "mistral" tensor names (it would not permute either, having no processor for that key).
_ARCHITECTURES: dict[str, GGUFArchitecture] = {
    "llama": GGUFArchitecture("LLAMA", unpermute_qk=True),
    "mistral": GGUFArchitecture("LLAMA", unpermute_qk=True),
    "qwen2": GGUFArchitecture("QWEN2", unpermute_qk=False),
    "qwen3": GGUFArchitecture("QWEN3", unpermute_qk=False),
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
    return _read_weights(Path(path), config, {}, known=_ARCHITECTURES)[1]


_PLAIN_TYPES = frozenset({0, 1, 30})
"""GGML F32, F16 and BF16: kept in memory as they are in the file."""

NATIVE_EXTRA_TENSORS = {"rope_freqs.weight": "rope_freqs"}
"""GGUF tensors with no HF parameter that the native models read, by the name they get: llama.cpp stores Llama
3's rope scaling as per-frequency factors (``rope_freqs.weight``)."""


def read_gguf_file(
    path: Path, architectures: Mapping[str, GGUFArchitecture] | None = None
) -> tuple[dict[str, Any], GGUFWeights]:
    """The metadata (arrays stepped over, their lengths in their place) and :func:`read_gguf_weights`' tensors,
    plus :data:`NATIVE_EXTRA_TENSORS` under their names: everything the native models load, from one read and
    without transformers. ``architectures`` adds to the ones :func:`read_gguf_weights` knows; their 3-D expert
    tensors ``[E, N, K]`` are read as one matrix ``[E * N, K]``."""
    known = {**_ARCHITECTURES, **(architectures or {})}
    return _read_weights(Path(path), None, NATIVE_EXTRA_TENSORS, known=known)


def _read_weights(
    path: Path,
    config: PretrainedConfig | Mapping[str, Any] | None,
    extra: Mapping[str, str],
    *,
    known: Mapping[str, GGUFArchitecture],
) -> tuple[dict[str, Any], GGUFWeights]:
    metadata, infos, file_size = _read_table(path)
    arch_name = str(metadata.get("general.architecture", ""))
    native = known is not _ARCHITECTURES
    arch = known.get(arch_name)
    if arch is None:
        raise ModelFormatError(
            f"{path.name}: GGUF architecture {arch_name or '(none)'!r} cannot be read packed",
            hint=f"this reader knows {', '.join(sorted(known))}",
        )
    splits = metadata.get("split.count")
    if isinstance(splits, int) and splits > 1:
        raise ModelFormatError(f"{path.name} is part 1 of a GGUF split in {splits} files; it cannot be read packed")
    n_layers = _hparam(metadata, f"{arch_name}.block_count", config, "num_hidden_layers")
    if n_layers is None:
        blocks = [int(part) for i in infos for part in i.name.split(".")[1:2] if part.isdigit()]
        n_layers = 1 + max(blocks, default=-1)
    names = {**_name_map(arch.gguf_arch, n_layers, arch.modules or _LAYER_MODULES), **extra}
    heads = _hparam(metadata, f"{arch_name}.attention.head_count", config, "num_attention_heads")
    kv_heads = _hparam(metadata, f"{arch_name}.attention.head_count_kv", config, "num_key_value_heads") or heads

    result = GGUFWeights(arch_name, {})
    with open(path, "rb", buffering=0) as fh:
        _read_tensors(
            fh,
            path,
            infos,
            names=names,
            arch=arch,
            result=result,
            native=native,
            heads=heads,
            kv_heads=kv_heads,
            size=file_size,
        )
    return metadata, result


def _read_tensors(
    fh: Any,
    path: Path,
    infos: list[_TensorInfo],
    *,
    names: Mapping[str, str],
    arch: GGUFArchitecture,
    result: GGUFWeights,
    native: bool,
    heads: int | None,
    kv_heads: int | None,
    size: int,
) -> None:
    """Each tensor's bytes read from the file in one sequential read (several times faster than faulting in
    a memory map page by page, and the file's pages never count in the process's memory), then packed. Plain
    float tensors are read into memory of their own, which they keep; quantized ones into one scratch buffer
    reused from tensor to tensor (packing copies them out), so a load allocates little besides the result."""
    file_size = size
    scratch = np.empty(0, dtype=np.uint8)
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
            if info.ggml_type in _PLAIN_TYPES:
                raw = _read_bytes(fh, info.offset, np.empty(nbytes, dtype=np.uint8))
            else:
                if scratch.size < nbytes:
                    scratch = np.empty(nbytes, dtype=np.uint8)
                raw = _read_bytes(fh, info.offset, scratch[:nbytes])
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
            elif len(info.shape) == 3 and native:  # experts [E, N, K]: one matrix [E * N, K]
                experts, n, k = info.shape
                packed, requantized = _pack_tensor(raw.reshape(experts * n, -1), info.ggml_type, (experts * n, k))
                if requantized:
                    result.requantized[hf_name] = GGML_TYPE_NAMES.get(info.ggml_type, str(info.ggml_type))
                result.tensors[hf_name] = packed
            else:
                raise ModelFormatError(f"{path.name}: tensor {info.name} has {len(info.shape)} dimensions")
        except ValueError as exc:
            raise ModelFormatError(f"{path.name}: tensor {info.name}: {exc}") from exc


def _read_bytes(fh: Any, offset: int, out: np.ndarray) -> np.ndarray:
    """``len(out)`` bytes of the file from ``offset`` into ``out``."""
    nbytes = out.size
    view = out.data
    fh.seek(offset)
    done = 0
    while done < nbytes:
        got = fh.readinto(view[done:])
        if not got:
            raise ValueError("it runs past the end of the file (truncated?)")
        done += got
    return out


# ------------------------------------------------------------------------------------------ the file


def _read_table(path: Path) -> tuple[dict[str, Any], list[_TensorInfo], int]:
    """The metadata (arrays stepped over), the tensor table with absolute offsets, and the file size. A malformed
    file raises :class:`ModelFormatError` naming it, in time and memory bounded by its size."""
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            tables = read_gguf_tables(buf, lambda _key, vtype: vtype != _GGUF_ARRAY)
    except FormatError as exc:
        raise ModelFormatError(f"{path.name}: {exc.reason}") from exc
    except (OSError, ValueError) as exc:  # mmap of an empty file raises ValueError
        raise ModelFormatError(f"{path.name}: cannot read the file: {exc}") from exc
    infos = [
        _TensorInfo(t.name, tuple(reversed(t.dims)), t.ggml_type, tables.data_start + t.offset) for t in tables.tensors
    ]
    return tables.metadata, infos, tables.size


def _hparam(metadata: Mapping[str, Any], key: str, config: Any, attr: str) -> int | None:
    value = metadata.get(key)
    if value is None and config is not None:
        value = config.get(attr) if isinstance(config, Mapping) else getattr(config, attr, None)
    return int(value) if isinstance(value, int) else None


def _name_map(gguf_arch: str, n_layers: int, layer_modules: tuple[str, ...] = _LAYER_MODULES) -> dict[str, str]:
    """GGUF tensor name -> HF parameter name, from gguf-py's map as transformers builds it."""
    name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, gguf_arch), n_layers)
    modules = list(_TOP_MODULES) + [f"model.layers.{i}.{m}" for i in range(n_layers) for m in layer_modules]
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
