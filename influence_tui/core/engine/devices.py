"""The torch device and dtype a setting names (``auto`` included), their short names, and giving memory back."""

from __future__ import annotations

import gc

import torch

from influence_tui.core.config import DEVICES, DTYPES
from influence_tui.core.errors import ConfigError

__all__ = ["CPU_AUTO_DTYPE", "device_name", "dtype_name", "release_memory", "resolve_device", "resolve_dtype"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 / AMX through oneDNN), not by emulation."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch build without oneDNN
        capability = str(torch.backends.cpu.get_cpu_capability())
        return "AVX512" in capability


# The dtype "auto" picks on CPU. bfloat16 halves the memory and the bytes read per token, which is what bounds
# CPU decoding speed, but only pays where oneDNN has native bf16 kernels; elsewhere float32 is faster.
# bench/decode.py measures float32 against bfloat16 decoding on this machine: set this constant from what it
# reports (it is the one place the CPU default is decided).
CPU_AUTO_DTYPE: torch.dtype = torch.bfloat16 if _cpu_has_native_bf16() else torch.float32


def resolve_device(device: str = "auto", device_index: int = 0) -> torch.device:
    """The torch device for the ``device`` setting: auto is cuda, else mps, else cpu. An unavailable explicit
    device is a :class:`ConfigError` (the setting has a value this machine cannot honour)."""
    name = device.strip().lower()
    if name not in DEVICES:
        raise ConfigError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise ConfigError(
                "device is mps but Apple's Metal backend (MPS) is not available here",
                hint="use --device cpu, or auto to pick what this machine has",
            )
        return torch.device("mps")
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(
            f"device is cuda but {why}",
            hint="use --device cpu, or auto to pick what this machine has",
        )
    count = torch.cuda.device_count()
    if not 0 <= device_index < count:
        raise ConfigError(
            f"device_index is {device_index} but there {'is' if count == 1 else 'are'} {count} CUDA GPU(s)",
            hint=f"set INFLUENCE_DEVICE_INDEX to 0..{count - 1}",
        )
    return torch.device("cuda", device_index)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype for the ``dtype`` setting on ``device``. auto: bfloat16 on CUDA GPUs that support it
    (else float16), float16 on MPS, :data:`CPU_AUTO_DTYPE` on CPU."""
    name = dtype.strip().lower()
    if name not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return CPU_AUTO_DTYPE


def dtype_name(dtype: torch.dtype) -> str:
    """``bfloat16`` for ``torch.bfloat16``."""
    return str(dtype).removeprefix("torch.")


def device_name(device: torch.device) -> str:
    """``cpu``, ``mps``, ``cuda:0``."""
    return f"{device.type}:{device.index}" if device.type == "cuda" and device.index is not None else device.type


def release_memory(device: torch.device | None = None) -> None:
    """Collect garbage, then empty the cache of ``device`` (of every accelerator when None)."""
    gc.collect()
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if (device is None or device.type == "mps") and _mps_available():
        torch.mps.empty_cache()
