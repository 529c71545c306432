"""Weight loaders for the native models: GGUF files (packed as stored) and safetensors folders (memory-mapped),
and :func:`load_native`, the one entry point. Importing this package imports no torch (the loaders do)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from influence_tui.core.engine.models.base import CausalLM

__all__ = ["load_native"]


def load_native(
    weights_path: Path, *, gguf: bool, quantize: str = "auto", dtype: torch.dtype | None = None
) -> CausalLM:
    """The native model of a GGUF file (``gguf=True``) or a safetensors folder. ``quantize``: ``auto`` (a GGUF
    as stored, safetensors as floats), ``none`` (floats in ``dtype``), ``int8`` / ``int4`` (safetensors
    quantized on load). Raises :class:`~influence_tui.core.errors.ModelFormatError` for what it cannot load."""
    import torch

    dtype = dtype or torch.float32
    if gguf:
        from influence_tui.core.engine.weights.gguf import load_gguf_model

        return load_gguf_model(Path(weights_path), quantize=quantize, dtype=dtype)[0]
    from influence_tui.core.engine.weights.safetensors import load_safetensors_model

    return load_safetensors_model(Path(weights_path), quantize=quantize, dtype=dtype)[0]
