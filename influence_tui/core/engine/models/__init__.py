"""OUR model code in plain torch (gpt-fast style): configs, families and the KV cache.

:func:`supports_native` says whether an architecture (config.json's ``model_type`` or a GGUF's
``general.architecture``) has a native model, and :func:`runtime_of` which runtime a library model loads on;
:func:`~influence_tui.core.engine.weights.load_native` loads one. Importing this package imports neither torch nor
transformers (the library and the CLI's listings ask :func:`runtime_of`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from influence_tui.core.runtimes import Runtime, native_architecture, runtime_for

if TYPE_CHECKING:
    from influence_tui.core.types import LocalModel

__all__ = ["Runtime", "runtime_of", "supports_native"]


def supports_native(architecture: str) -> bool:
    """Whether ``architecture`` (``llama``, ``qwen3``... as config.json or a GGUF header names it) loads natively."""
    return native_architecture(architecture)


def runtime_of(local_model: LocalModel) -> Runtime:
    """``native`` for a GGUF file or safetensors model of a native family, else ``transformers``."""
    return runtime_for(local_model.format, local_model.architecture)
