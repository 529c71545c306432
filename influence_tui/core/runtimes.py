"""Which runtime a model loads on (our native model code or transformers), from its format and architecture
names alone: no torch, so the library, the CLI's listings and the engine all read this one table."""

from __future__ import annotations

from typing import Literal

__all__ = ["GGUF_TO_HF", "NATIVE_FAMILIES", "Runtime", "family_of", "native_architecture", "runtime_for"]

Runtime = Literal["native", "transformers"]

NATIVE_FAMILIES: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma2": "gemma",
    "gemma3_text": "gemma",
    "phi3": "phi3",
    "qwen3_moe": "qwen3_moe",
}
"""model_type (config.json) or general.architecture (GGUF) -> the family module of the engine that computes it."""

GGUF_TO_HF = {"qwen3moe": "qwen3_moe", "gemma3": "gemma3_text", "mistral": "llama"}
"""GGUF ``general.architecture`` -> transformers' ``model_type``, where they differ."""

_NATIVE_FORMATS = ("gguf", "safetensors", "safetensors-sharded")


def family_of(name: str) -> str | None:
    """The family module (``llama``, ``gemma``, ``phi3``, ``qwen3_moe``) of a model_type or GGUF architecture."""
    return NATIVE_FAMILIES.get(GGUF_TO_HF.get(name, name))


def native_architecture(name: str) -> bool:
    """Whether ``name`` (a ``model_type`` or a GGUF ``general.architecture``) has a native model here."""
    return family_of(name) is not None


def runtime_for(model_format: str, architecture: str | None) -> Runtime:
    """``native`` for a GGUF file or safetensors model of a native family, else ``transformers``."""
    if model_format in _NATIVE_FORMATS and native_architecture(architecture or ""):
        return "native"
    return "transformers"
