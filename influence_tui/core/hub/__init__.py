"""Search the HuggingFace Hub (or a mirror) and describe a repo: its files, its weight formats, every GGUF
quantization as a separate choice, and whether each choice fits in this machine's memory.

The API calls go through ``huggingface_hub.HfApi``; the few small files read to describe a repo
(``config.json``, a safetensors index, the first bytes of a GGUF) are fetched with ``httpx`` from the same
resolve URLs a download uses. Every failure a user can cause or fix becomes a :class:`HubError`.

Where each part lives: ``errors`` (a failure as a :class:`HubError` with a hint), ``client`` (the
:class:`HubClient`: search, repo info, small file reads, details) and ``files`` (which files make up each
download choice). The memory estimates are :mod:`influence_tui.core.memory`'s, the GGUF metadata reader
:mod:`influence_tui.core.formats`'. Callers import from this package.
"""

from __future__ import annotations

from influence_tui.core.hub.client import (
    API_TIMEOUT_S,
    DEFAULT_LIMIT,
    GGUF_PREFIX_BYTES,
    SORTS,
    HubClient,
    RepoInfo,
    model_details,
)
from influence_tui.core.hub.errors import (
    gated_error,
    http_error,
    hub_errors,
    not_found,
    revision_not_found,
    unreachable,
)
from influence_tui.core.hub.files import (
    FORMAT_SUFFIXES,
    SAFETENSORS_INDEX,
    gguf_groups,
    gguf_quant_name,
    select_safetensors,
    weight_formats,
)

__all__ = [
    "API_TIMEOUT_S",
    "DEFAULT_LIMIT",
    "FORMAT_SUFFIXES",
    "GGUF_PREFIX_BYTES",
    "SAFETENSORS_INDEX",
    "SORTS",
    "HubClient",
    "RepoInfo",
    "gated_error",
    "gguf_groups",
    "gguf_quant_name",
    "http_error",
    "hub_errors",
    "model_details",
    "not_found",
    "revision_not_found",
    "select_safetensors",
    "unreachable",
    "weight_formats",
]
