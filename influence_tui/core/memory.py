"""Memory estimates: this machine's free RAM and VRAM, a model's KV-cache shape, and whether a download fits."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from influence_tui.core.formats import CONTEXT_LENGTH_KEYS
from influence_tui.core.types import MachineMemory, MemoryEstimate, Verdict
from influence_tui.core.units import human_size

DEFAULT_CONTEXT = 4096
"""Context (tokens) the memory estimate sizes the KV cache for."""
KV_BYTES_PER_VALUE = 2
"""The KV cache is kept in 16-bit floats."""
OVERHEAD_FIXED = 256 * 2**20
"""Runtime memory beside weights and KV cache (interpreter, torch, activations)..."""
OVERHEAD_FRACTION = 0.05
"""...plus this share of the weights."""
FITS_SHARE = 0.8
"""A choice *fits* when it needs at most this share of the free memory, is *tight* up to all of it."""


def machine_memory(*, probe_gpu: bool = True, device_index: int = 0) -> MachineMemory:
    """Free RAM (psutil) and, when a CUDA GPU is visible, free VRAM. torch is asked only when it is already
    imported or an NVIDIA driver is present, so describing a model on a CPU machine never loads torch."""
    import psutil

    vm = psutil.virtual_memory()
    vram_total = vram_free = None
    gpu_name = None
    nvidia = os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None
    if "torch" in sys.modules or (probe_gpu and nvidia):
        try:
            import torch

            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info(device_index)
                vram_free, vram_total = int(free), int(total)
                gpu_name = str(torch.cuda.get_device_name(device_index))
        except Exception:  # no usable GPU is not an error here
            vram_total = vram_free = None
    return MachineMemory(
        ram_total=int(vm.total),
        ram_available=int(vm.available),
        vram_total=vram_total,
        vram_free=vram_free,
        gpu_name=gpu_name,
    )


def describe_machine(machine: MachineMemory) -> str:
    """The one sentence every front end shows of this machine's memory: ``12 GiB RAM free, no CUDA GPU`` or
    ``..., 20 GiB VRAM free on NVIDIA L4``."""
    where = f"{human_size(machine.ram_available)} RAM free"
    if machine.vram_free is not None:
        return f"{where}, {human_size(machine.vram_free)} VRAM free on {machine.gpu_name or 'the GPU'}"
    return f"{where}, no CUDA GPU"


def kv_shape_from_config(config: dict[str, Any]) -> dict[str, int]:
    """``layers``, ``kv_heads``, ``head_dim`` (and ``context``) from a transformers config.json."""
    scope = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    assert isinstance(scope, dict)

    def first(*keys: str) -> int | None:
        for key in keys:
            value = scope.get(key, config.get(key))
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    layers = first("num_hidden_layers", "n_layer", "num_layers", "n_layers")
    heads = first("num_attention_heads", "n_head", "num_heads")
    kv_heads = first("num_key_value_heads", "num_kv_heads", "n_head_kv") or heads
    hidden = first("hidden_size", "n_embd", "d_model")
    head_dim = first("head_dim") or (hidden // heads if hidden and heads else None)
    shape: dict[str, int] = {}
    if layers and kv_heads and head_dim:
        shape = {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim}
    context = first(*CONTEXT_LENGTH_KEYS)
    if context:
        shape["context"] = context
    return shape


def kv_shape_from_gguf(metadata: dict[str, Any]) -> dict[str, int]:
    """The same shape from GGUF metadata (``<arch>.block_count``, ``<arch>.attention.head_count_kv``...)."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        return {}

    def get(key: str) -> int | None:
        value = metadata.get(f"{arch}.{key}")
        if isinstance(value, list):  # per-layer values (some architectures): take the largest
            value = max((v for v in value if isinstance(v, int)), default=None)
        return value if isinstance(value, int) and value > 0 else None

    layers = get("block_count")
    heads = get("attention.head_count")
    kv_heads = get("attention.head_count_kv") or heads
    hidden = get("embedding_length")
    head_dim = get("attention.key_length") or (hidden // heads if hidden and heads else None)
    shape: dict[str, int] = {}
    if layers and kv_heads and head_dim:
        shape = {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim}
    context = get("context_length")
    if context:
        shape["context"] = context
    return shape


def kv_cache_bytes(shape: dict[str, int], context: int) -> int:
    """Keys and values for ``context`` tokens in every layer, 16-bit."""
    return 2 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * context * KV_BYTES_PER_VALUE


def verdict(needed: int, available: int) -> Verdict:
    if needed <= FITS_SHARE * available:
        return "fits"
    if needed <= available:
        return "tight"
    return "won't fit"


def estimate_memory(
    weights_bytes: int,
    shape: dict[str, int],
    context: int,
    machine: MachineMemory,
    parameters: int | None = None,
) -> MemoryEstimate:
    """Weights + KV cache at ``context`` tokens + runtime overhead, on the GPU when it fits there, else the CPU.

    Without the model's shape the KV cache is estimated at 2.5e-5 bytes per parameter per token (the middle of
    current GQA models, 0.5B to 8B), parameters being counted or guessed from 16-bit weights."""
    exact = {"layers", "kv_heads", "head_dim"} <= shape.keys()
    if exact:
        kv = kv_cache_bytes(shape, context)
    else:
        params = parameters or weights_bytes // 2
        kv = int(2.5e-5 * params * context)
    overhead = OVERHEAD_FIXED + int(OVERHEAD_FRACTION * weights_bytes)
    needed = weights_bytes + kv + overhead
    if machine.vram_free is not None:
        on_gpu = verdict(needed, machine.vram_free)
        if on_gpu != "won't fit":
            return MemoryEstimate(weights_bytes, kv, overhead, context, "cuda", machine.vram_free, on_gpu, exact)
    return MemoryEstimate(
        weights_bytes,
        kv,
        overhead,
        context,
        "cpu",
        machine.ram_available,
        verdict(needed, machine.ram_available),
        exact,
    )
