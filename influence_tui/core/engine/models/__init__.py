"""OUR model code in plain torch (gpt-fast style): configs, families, the KV cache, and the one entry point.

:func:`supports_native` says whether an architecture (config.json's ``model_type`` or a GGUF's
``general.architecture``) has a native model, and :func:`runtime_of` which runtime a library model loads on;
:func:`load_native` loads one. Importing this package imports neither torch nor transformers (the library and
the CLI's listings ask :func:`runtime_of`); :func:`load_native` imports torch, never transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from influence_tui.core.engine.models.config import native_architecture

if TYPE_CHECKING:
    import torch

    from influence_tui.core.engine.models.base import CausalLM
    from influence_tui.core.types import LocalModel

__all__ = ["Runtime", "load_native", "runtime_of", "supports_native"]

Runtime = Literal["native", "transformers"]


def supports_native(architecture: str) -> bool:
    """Whether ``architecture`` (``llama``, ``qwen3``... as config.json or a GGUF header names it) loads natively."""
    return native_architecture(architecture)


def runtime_of(local_model: LocalModel) -> Runtime:
    """``native`` for a GGUF file or safetensors model of a native family, else ``transformers``."""
    if local_model.format in ("gguf", "safetensors", "safetensors-sharded") and supports_native(
        local_model.architecture or ""
    ):
        return "native"
    return "transformers"


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
