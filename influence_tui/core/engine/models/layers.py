"""The building blocks every native family shares: linears (packed or float, joined), embeddings, RMSNorm.

A model is built from a flat mapping of HF state-dict names to tensors or :class:`PackedWeight` s. Where a
family computes several projections of one input (``q|k|v``, ``gate|up``), :func:`joined_linear` makes them
one product: packed matrices of one layout are stacked with :func:`~.packed.concat_rows` into one
:class:`PackedLinear`; float matrices are concatenated into one :class:`FloatLinear`; matrices of different
packed layouts (a Q4_K_M file keeps some in Q6_K) stay separate products whose outputs are concatenated.
Packed modules compute in float32 on the kernels; float modules in their weights' dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from influence_tui.core.engine.quant.fused import rms_norm
from influence_tui.core.engine.quant.kernels import load_kernels
from influence_tui.core.engine.quant.modules import PackedEmbedding, PackedLinear
from influence_tui.core.engine.quant.packed import PackedWeight, concat_rows, pack_plain
from influence_tui.core.errors import ModelFormatError

Weight = PackedWeight | torch.Tensor
Weights = Mapping[str, Weight]


FLOAT_FROM_ROWS = 96
"""From this many rows on (a long prompt), q4/q8 products are float products even with ``integer_dot``: the
kernel then dequantizes the matrix once for one GEMM, which beats its integer row loop (demo model, whole
prefill: 64 rows 181 ms integer / 187 ms float, 128 rows 486 / 237 ms, 1000 rows 4.6 / 1.8 s)."""


class KernelLinear(PackedLinear):
    """:class:`PackedLinear` that calls the kernel with its arguments gathered once (moving the module gathers
    them again): a decode step makes about four of these calls per layer, and each saved lookup counts. Long
    inputs take float products (:data:`FLOAT_FROM_ROWS`). Where the kernels are unavailable, or off the CPU,
    it is :class:`PackedLinear` as it is."""

    def __init__(self, weight: PackedWeight, bias: torch.Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(weight, bias, **kwargs)
        self._ext: Any = load_kernels()
        self._args: tuple[Any, ...] | None = None

    def _gather(self) -> tuple[Any, ...] | None:
        w = self.weight_packed.packed
        if self._ext is None or w.qweight.device.type != "cpu":
            return None
        self._args = (w.kind, w.qweight, w.scales, w.mins, w.group, self.bias)
        return self._args

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = self._args or self._gather()
        if args is None or x.device.type != "cpu":
            return super().forward(x)
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        integer = self.integer_dot and x.numel() < FLOAT_FROM_ROWS * self.in_features
        return self._ext.packed_linear(x, *args, integer)  # type: ignore[no-any-return]

    def _apply(self, fn: Any, recurse: bool = True) -> KernelLinear:
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        self._args = None
        return self


class FloatLinear(nn.Module):
    """``x @ W.T + b`` with a float weight (a lighter ``nn.Linear``: built from a tensor, no init)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.to(weight.dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.weight.dtype}"


class ConcatLinear(nn.Module):
    """Several products of one input, their outputs concatenated (packed parts of different layouts)."""

    def __init__(self, parts: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)


class FloatEmbedding(nn.Module):
    """A float token embedding table."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension. ``offset`` is added to the weight once (Gemma's ``1 + w``). In float32
    it runs on the kernel; in other dtypes it computes as transformers does: the norm in float32, then the
    weight applied after casting back (``cast_first``, llama) or before (Gemma)."""

    def __init__(
        self, weight: torch.Tensor, eps: float, *, dtype: torch.dtype, offset: float = 0.0, cast_first: bool = True
    ) -> None:
        super().__init__()
        w = weight.detach().to(torch.float32) + offset
        if dtype != torch.float32 and cast_first:
            w = (weight.detach().to(dtype) + offset) if offset else weight.detach().to(dtype)
        self.weight = nn.Parameter(w, requires_grad=False)
        self.eps = eps
        self.cast_first = cast_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return rms_norm(x, self.weight, self.eps)
        xf = x.to(torch.float32)
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.cast_first:
            return self.weight * normed.to(x.dtype)
        return (normed * self.weight).to(x.dtype)


# ------------------------------------------------------------------------------------------ builders


class ConsumedWeights(dict[str, Weight]):
    """The weights of one load, given up by :func:`take` as the model takes each matrix: joining q|k|v or
    gate|up makes new matrices, and the parts must not stay alive beside them (a load would otherwise peak at
    twice the weights). The file loaders hand the model builders one of these; any other mapping is only read."""


def take(weights: Weights, name: str) -> Weight:
    """``weights[name]`` (removed from a :class:`ConsumedWeights`), or a :class:`ModelFormatError` naming what
    is missing."""
    value = weights.pop(name, None) if isinstance(weights, ConsumedWeights) else weights.get(name)
    if value is None:
        raise ModelFormatError(f"the weights have no {name}")
    return value


def vector(weights: Weights, name: str, *, required: bool = True) -> torch.Tensor | None:
    """A 1-D tensor (norm weight, bias) as float32; None when absent and not ``required``."""
    value = weights.get(name)
    if value is None:
        if required:
            raise ModelFormatError(f"the weights have no {name}")
        return None
    if isinstance(value, PackedWeight):
        raise ModelFormatError(f"{name} is a matrix where a vector is expected")
    return value.to(torch.float32)


def _layout(w: PackedWeight) -> tuple[str, int, bool, int]:
    return (w.kind, w.group, w.mins is not None, w.shape[1])


def joined_linear(
    matrices: Sequence[Weight],
    biases: Sequence[torch.Tensor | None],
    *,
    dtype: torch.dtype,
    names: Sequence[str] = (),
) -> nn.Module:
    """One module computing ``cat([x @ W_i.T + b_i for i])`` (see the module docstring)."""
    if not matrices:
        raise ValueError("no matrices to join")
    widths = {w.shape[1] for w in matrices}
    if len(widths) != 1:
        raise ModelFormatError(f"{', '.join(names) or 'these projections'} take inputs of different sizes {widths}")
    any_bias = any(b is not None for b in biases)

    def bias_of(i: int) -> torch.Tensor | None:
        if not any_bias:
            return None
        b = biases[i]
        return torch.zeros(matrices[i].shape[0]) if b is None else b.to(torch.float32)

    if all(isinstance(w, torch.Tensor) for w in matrices):
        tensors = [w for w in matrices if isinstance(w, torch.Tensor)]
        weight = torch.cat([t.to(dtype) for t in tensors]) if len(tensors) > 1 else tensors[0].to(dtype)
        joined = [b for i in range(len(tensors)) if (b := bias_of(i)) is not None]
        return FloatLinear(weight.contiguous(), torch.cat(joined) if any_bias else None)
    packed = [w if isinstance(w, PackedWeight) else pack_plain(w, "f32") for w in matrices]
    groups: list[list[int]] = []
    for i, w in enumerate(packed):
        if groups and _layout(packed[groups[-1][0]]) == _layout(w):
            groups[-1].append(i)
        else:
            groups.append([i])
    parts: list[nn.Module] = []
    for group in groups:
        joined_weight = concat_rows([packed[i] for i in group]) if len(group) > 1 else packed[group[0]]
        group_biases = [b for i in group if (b := bias_of(i)) is not None]
        parts.append(KernelLinear(joined_weight, torch.cat(group_biases) if group_biases else None))
    return parts[0] if len(parts) == 1 else ConcatLinear(parts)


def linear(weights: Weights, name: str, *, dtype: torch.dtype, bias: bool = False) -> nn.Module:
    """The linear ``name`` (``name.weight`` and, where asked or present, ``name.bias``)."""
    b = vector(weights, f"{name}.bias", required=bias)
    return joined_linear([take(weights, f"{name}.weight")], [b], dtype=dtype, names=[name])


def embedding(weight: Weight, *, dtype: torch.dtype) -> nn.Module:
    if isinstance(weight, PackedWeight):
        return PackedEmbedding(weight)
    return FloatEmbedding(weight.to(dtype))


def tied_head(embed: nn.Module) -> nn.Module:
    """The LM head that shares the token embedding's matrix."""
    if isinstance(embed, PackedEmbedding):
        return KernelLinear(embed.weight_packed.packed, shared=embed.weight_packed)
    assert isinstance(embed, FloatEmbedding)
    return FloatLinear(embed.weight)
