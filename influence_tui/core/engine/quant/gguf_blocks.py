"""GGUF blocks re-laid out as :class:`PackedWeight` s: one GGML type's bytes in, one packed kind out.

Which GGML type becomes which packed kind, and why each conversion is exact (or how it rounds), is in
:mod:`.gguf_weights`' docstring; this module holds the per-type converters, vectorized over chunks of whole
rows (numpy lets go of the GIL in them, so the chunks of one tensor convert on several threads).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import gguf
import numpy as np
import torch

from influence_tui.core.engine.quant.packed import Kind, PackedWeight, quantize_q8
from influence_tui.core.formats import GGML_TYPE_NAMES, GGML_TYPE_SIZES

# ggml type ids (ggml.h), the ones converted here by hand.
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q4_K, Q5_K, Q6_K, BF16 = 12, 13, 14, 30

_CHUNK_WEIGHTS = 1 << 20  # rows are converted in chunks of about this many weights, to bound the temporaries
_MAX_THREADS = 8  # chunks of one tensor are converted by up to this many threads


def _block_size(ggml_type: int) -> tuple[int, int]:
    """(weights, bytes) per block: :mod:`formats`' table, else the installed gguf-py's (newer types)."""
    size = GGML_TYPE_SIZES.get(ggml_type)
    if size is None:
        try:
            size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise ValueError(f"unknown GGML type {ggml_type}") from None
    return int(size[0]), int(size[1])


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
        typed = raw.view({F32: np.float32, F16: np.float16, BF16: np.int16}[ggml_type])
        # memory of its own already (the reader reads each tensor into a new array): kept, not copied again
        owned = typed.flags.writeable and typed.flags.c_contiguous and typed.base is not None
        plain = torch.from_numpy(typed if owned else typed.copy())
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
