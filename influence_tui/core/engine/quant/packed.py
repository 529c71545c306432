"""Packed weight matrices: how a linear layer's weights are kept small in memory, and the pure-torch reference.

A :class:`PackedWeight` is one ``[out_features, in_features]`` matrix in one of five kinds:

``q4``
    4-bit unsigned codes, two per byte, in blocks of 32 along a row (``group`` is always 32). Within a block
    the 16 bytes hold elements 0..15 in their low nibbles and elements 16..31 in their high nibbles: the
    layout of GGUF's Q4_0 / Q4_1 blocks, so those are copied as they are. ``qweight`` is uint8
    ``[N, K // 2]``. A weight is ``scale * q + min`` with ``mins``, else ``scale * (q - 8)`` (Q4_0).
``q8``
    8-bit signed codes, ``qweight`` int8 ``[N, K]``, blocks of ``group`` (32, or 16 for Q6_K). A weight is
    ``scale * q + min`` with ``mins``, else ``scale * q``.
``f16`` / ``bf16`` / ``f32``
    plain matrices in that dtype (``scales`` and ``mins`` are None).

``scales`` and ``mins`` are float16 ``[N, K // group]``. GGUF Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 map onto these
kinds exactly; the K-quants' sub-block scales are products ``d * sc`` rounded to float16 (a relative error of
at most 2**-11 per block scale).

:func:`dequantize` and :func:`linear_reference` are the pure-torch definitions that the compiled kernels are
tested against and that run where the kernels cannot be built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Kind = Literal["q4", "q8", "f16", "bf16", "f32"]
KINDS: tuple[Kind, ...] = ("q4", "q8", "f16", "bf16", "f32")
PLAIN_DTYPES: dict[str, torch.dtype] = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
Q4_GROUP = 32


@dataclass(eq=False)
class PackedWeight:
    """One weight matrix ``[N, K]`` kept in a packed kind (see the module docstring)."""

    kind: Kind
    shape: tuple[int, int]
    qweight: torch.Tensor
    scales: torch.Tensor | None = None
    mins: torch.Tensor | None = None
    group: int = 32

    def __post_init__(self) -> None:
        n, k = self.shape
        if self.kind == "q4":
            _expect(self.qweight, torch.uint8, (n, k // 2), "q4 qweight")
            if self.group != Q4_GROUP or k % Q4_GROUP:
                raise ValueError(f"q4 needs blocks of 32 and K a multiple of 32 (K={k}, group={self.group})")
        elif self.kind == "q8":
            _expect(self.qweight, torch.int8, (n, k), "q8 qweight")
            if self.group not in (16, 32) or k % self.group:
                raise ValueError(f"q8 needs blocks of 16 or 32 dividing K (K={k}, group={self.group})")
        elif self.kind in PLAIN_DTYPES:
            _expect(self.qweight, PLAIN_DTYPES[self.kind], (n, k), f"{self.kind} weight")
            return
        else:
            raise ValueError(f"unknown packed kind {self.kind!r}")
        if self.scales is None:
            raise ValueError(f"{self.kind} needs scales")
        _expect(self.scales, torch.float16, (n, k // self.group), "scales")
        if self.mins is not None:
            _expect(self.mins, torch.float16, (n, k // self.group), "mins")

    @property
    def nbytes(self) -> int:
        """Bytes the matrix takes in memory (codes, scales and mins)."""
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.mins) if t is not None)

    @property
    def bits_per_weight(self) -> float:
        n, k = self.shape
        return 8.0 * self.nbytes / (n * k)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to save, by suffix (``qweight``, ``scales``, ``mins``)."""
        out = {"qweight": self.qweight}
        if self.scales is not None:
            out["scales"] = self.scales
        if self.mins is not None:
            out["mins"] = self.mins
        return out

    def rows(self, index: torch.Tensor) -> PackedWeight:
        """The packed rows ``index`` (an embedding lookup gathers rows before dequantizing them)."""

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.index_select(0, index)

        return PackedWeight(
            self.kind,
            (int(index.numel()), self.shape[1]),
            self.qweight.index_select(0, index),
            pick(self.scales),
            pick(self.mins),
            self.group,
        )


def _expect(t: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...], what: str) -> None:
    if t.dtype != dtype or tuple(t.shape) != shape:
        raise ValueError(f"{what} must be {dtype} {list(shape)}, got {t.dtype} {list(t.shape)}")


def unpack_q4(qweight: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, K/2]`` in the q4 block layout -> codes 0..15 as uint8 ``[N, K]``."""
    n, half = qweight.shape
    blocks = qweight.reshape(n, half // 16, 16)
    low = blocks & 0x0F
    high = blocks >> 4
    return torch.cat((low, high), dim=2).reshape(n, half * 2)


def pack_q4(codes: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 ``[N, K]`` (any integer dtype) -> uint8 ``[N, K/2]`` in the q4 block layout."""
    n, k = codes.shape
    blocks = codes.to(torch.uint8).reshape(n, k // 32, 2, 16)
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n, k // 2)


def dequantize(w: PackedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``[N, K]`` matrix ``w`` stands for, in ``dtype``."""
    if w.kind in PLAIN_DTYPES:
        return w.qweight.to(dtype)
    n, k = w.shape
    if w.kind == "q4":
        codes = unpack_q4(w.qweight).to(torch.float32)
        if w.mins is None:
            codes = codes - 8.0
    else:
        codes = w.qweight.to(torch.float32)
    assert w.scales is not None
    blocks = codes.reshape(n, k // w.group, w.group) * w.scales.to(torch.float32).unsqueeze(-1)
    if w.mins is not None:
        blocks = blocks + w.mins.to(torch.float32).unsqueeze(-1)
    return blocks.reshape(n, k).to(dtype)


def linear_reference(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` in float32 with ``W`` dequantized: the definition every kernel must match."""
    return torch.nn.functional.linear(
        x.to(torch.float32), dequantize(w), None if bias is None else bias.to(torch.float32)
    )


def linear_reference_int8x(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The integer-dot decode product, defined in torch: each row of ``x`` quantized to int8 per block of 32
    (``d = absmax / 127``, round half to even), ``sum_g d_w * d_x * (codes . x_q)`` per weight block, plus the
    mins (or Q4_0's ``-8 * scale``) times the float sums of ``x`` per block. Plain kinds are not quantized."""
    if w.kind in PLAIN_DTYPES:
        return linear_reference(x, w, bias)
    assert w.scales is not None
    n, k = w.shape
    xf = x.to(torch.float32).reshape(-1, k)
    xb = xf.reshape(-1, k // 32, 32)
    dx = xb.abs().amax(dim=-1) / 127.0
    inv = torch.where(dx > 0, 1.0 / dx, torch.zeros_like(dx))
    xq = torch.round(xb * inv.unsqueeze(-1)).clamp(-127, 127)
    codes = unpack_q4(w.qweight).to(torch.float32) if w.kind == "q4" else w.qweight.to(torch.float32)
    g = w.group
    # per weight block: codes . x_q (exact in float32 for these magnitudes), times d_w * d_x
    dots = torch.einsum("ngj,mgj->mng", codes.reshape(n, k // g, g), xq.reshape(-1, k // g, g))
    dx_per_group = dx.repeat_interleave(32 // g, dim=1) if g < 32 else dx
    y = (dots * w.scales.to(torch.float32).unsqueeze(0) * dx_per_group.unsqueeze(1)).sum(-1)
    offsets = (
        w.mins.to(torch.float32)
        if w.mins is not None
        else (-8.0 * w.scales.to(torch.float32) if w.kind == "q4" else None)
    )
    if offsets is not None:
        xsum = xf.reshape(-1, k // g, g).sum(-1)
        y = y + xsum @ offsets.T
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.reshape(*x.shape[:-1], n)


# ------------------------------------------------------------------------------------------ quantize on load


def quantize_q8(weight: torch.Tensor, group: int = 32) -> PackedWeight:
    """Symmetric 8-bit per block of ``group``: ``scale = absmax / 127`` (the Q8_0 recipe)."""
    n, k = weight.shape
    if k % group:
        raise ValueError(f"in_features {k} is not a multiple of the block size {group}")
    blocks = weight.detach().to(torch.float32).reshape(n, k // group, group)
    scale = blocks.abs().amax(dim=-1) / 127.0
    scale16 = scale.to(torch.float16)
    safe = torch.where(scale16 == 0, torch.ones_like(scale), scale16.to(torch.float32))
    codes = torch.round(blocks / safe.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return PackedWeight("q8", (n, k), codes.reshape(n, k), scale16, None, group)


def quantize_q4(weight: torch.Tensor) -> PackedWeight:
    """Asymmetric 4-bit per block of 32: ``scale = (max - min) / 15``, ``min`` kept (the Q4_1 recipe)."""
    n, k = weight.shape
    if k % Q4_GROUP:
        raise ValueError(f"in_features {k} is not a multiple of the block size {Q4_GROUP}")
    blocks = weight.detach().to(torch.float32).reshape(n, k // Q4_GROUP, Q4_GROUP)
    lo = blocks.amin(dim=-1)
    hi = blocks.amax(dim=-1)
    mins16 = lo.to(torch.float16)
    scale16 = ((hi - mins16.to(torch.float32)) / 15.0).to(torch.float16)
    scale = scale16.to(torch.float32)
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = torch.round((blocks - mins16.to(torch.float32).unsqueeze(-1)) / safe.unsqueeze(-1)).clamp_(0, 15)
    return PackedWeight("q4", (n, k), pack_q4(codes.reshape(n, k)), scale16, mins16, Q4_GROUP)


def pack_plain(weight: torch.Tensor, kind: Kind) -> PackedWeight:
    """A plain matrix as an ``f16`` / ``bf16`` / ``f32`` packed weight."""
    n, k = weight.shape
    return PackedWeight(kind, (n, k), weight.detach().to(PLAIN_DTYPES[kind]).contiguous())


def concat_rows(weights: list[PackedWeight]) -> PackedWeight:
    """Matrices of one kind stacked along N (``q|k|v``, ``gate|up``): one product instead of several."""
    first = weights[0]

    def cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
        if any(p is None for p in parts):
            return None
        return torch.cat([p for p in parts if p is not None], dim=0)

    return PackedWeight(
        first.kind,
        (sum(w.shape[0] for w in weights), first.shape[1]),
        torch.cat([w.qweight for w in weights], dim=0),
        cat([w.scales for w in weights]),
        cat([w.mins for w in weights]),
        first.group,
    )
