"""Rotary position embeddings: inverse frequencies as transformers computes them, cos/sin tables looked up.

:func:`inverse_frequencies` repeats transformers' float32 arithmetic for the default, ``linear``, ``llama3``
and ``yarn`` rope types (and llama.cpp's per-frequency ``rope_freqs`` factors), so the tables hold the same
values transformers' rotary embedding computes at each step. :class:`RotaryTable` keeps ``cos`` / ``sin``
``[positions, rotary_dim]`` in float32, grown in chunks as positions get used; a step looks its rows up.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from influence_tui.core.engine.models.config import RopeScaling, yarn_attention_factor

TABLE_CHUNK = 4096
"""Positions the tables grow by."""


def inverse_frequencies(
    dim: int, theta: float, scaling: RopeScaling | None = None, factors: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """(inverse frequencies ``[dim // 2]`` float32, the factor cos and sin are scaled by)."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))
    if factors is not None:  # llama.cpp's rope_freqs: each frequency divided by its factor
        return inv / factors.to(torch.float32).reshape(-1)[: dim // 2], 1.0
    if scaling is None:
        return inv, 1.0
    if scaling.kind == "linear":
        return inv / scaling.factor, 1.0
    if scaling.kind == "llama3":
        return _llama3(inv, scaling), 1.0
    if scaling.kind == "yarn":
        return _yarn(dim, theta, scaling), yarn_attention_factor(scaling)
    raise ValueError(f"rope type {scaling.kind!r}")


def _llama3(inv: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    old = s.original_max_position_embeddings
    low_wavelen = old / s.low_freq_factor
    high_wavelen = old / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    inv_llama = torch.where(wavelen > low_wavelen, inv / s.factor, inv)
    smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * inv_llama / s.factor + smooth * inv_llama
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, inv_llama)


def _yarn(dim: int, base: float, s: RopeScaling) -> torch.Tensor:
    def correction_dim(rotations: float) -> float:
        return (dim * math.log(s.original_max_position_embeddings / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (s.factor * pos_freqs)
    keep = 1 - ramp
    return interpolation * (1 - keep) + extrapolation * keep


class RotaryTable:
    """cos / sin of every position's angles, ``[positions, rotary_dim]`` float32 (both halves, as transformers'
    ``cat((freqs, freqs))``), times the rope type's attention factor."""

    def __init__(self, inv_freq: torch.Tensor, attention_factor: float = 1.0, *, device: torch.device | None = None):
        self.inv_freq = inv_freq.to(torch.float32)
        self.attention_factor = attention_factor
        self.device = device or torch.device("cpu")
        self.cos = torch.empty(0, 2 * inv_freq.numel(), device=self.device)
        self.sin = torch.empty_like(self.cos)
        self.size = 0

    def ensure(self, positions: int) -> None:
        """Make the tables cover positions ``0 .. positions - 1``."""
        if positions <= self.size:
            return
        size = -(-positions // TABLE_CHUNK) * TABLE_CHUNK
        freqs = torch.arange(size, dtype=torch.float32).unsqueeze(-1) * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * self.attention_factor).to(self.device)
        self.sin = (emb.sin() * self.attention_factor).to(self.device)
        self.size = size

    def lookup(self, position_ids: torch.Tensor, bound: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[B, T, rotary_dim]`` of ``position_ids`` (all below ``bound``)."""
        if bound > self.size:
            self.ensure(bound)
        return F.embedding(position_ids, self.cos), F.embedding(position_ids, self.sin)

    def to(self, device: torch.device) -> RotaryTable:
        self.device = device
        self.cos, self.sin = self.cos.to(device), self.sin.to(device)
        return self
