"""Model ids as clients spell them, and the one lookup every front end uses to find a model by name or id."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from influence_tui.core.errors import ModelNotFoundError

if TYPE_CHECKING:
    from influence_tui.core.library import Library
    from influence_tui.core.types import LocalModel

_DEMO_SUFFIX = " (demo)"


def strip_tag(name: str) -> str:
    """``name:latest`` -> ``name`` (Ollama clients add the default tag to names they are given)."""
    return name[: -len(":latest")] if name.endswith(":latest") else name


def model_id(model: LocalModel) -> str:
    """The id a client uses for a library model, as Ollama and OpenAI-style servers spell them: lowercase, no
    spaces or brackets, ``name:tag`` with a GGUF's quantization as the tag (the demo model is
    ``smollm2-135m-instruct:q4_1``; a folder's ``qwen:Q4_K_M`` is ``qwen:q4_k_m``; a safetensors model keeps its
    name, lowercased: ``huggingfacetb/smollm2-135m-instruct``)."""
    name = model.name.strip()
    if model.source == "demo" and name.endswith(_DEMO_SUFFIX):
        name = name[: -len(_DEMO_SUFFIX)]
    name = re.sub(r"[()\[\]{}]", "", re.sub(r"\s+", "-", name)).lower()
    if ":" not in name and model.quantization and model.format.startswith("gguf"):
        name = f"{name}:{model.quantization.lower()}"
    return name


def model_names(model: LocalModel) -> set[str]:
    """Every lowercase spelling a request may use for ``model``: its id, the id without its tag, its library name
    (the demo's ``SmolLM2-135M-Instruct (demo)`` with or without the suffix), and ``demo`` for the demo."""
    ident = model_id(model)
    name = model.name.strip().lower()
    names = {ident, ident.partition(":")[0], name, str(model.path).lower()}
    if model.source == "demo":
        names |= {"demo", name.removesuffix(_DEMO_SUFFIX)}
    return names


def names_model(model: LocalModel, requested: str) -> bool:
    """Whether ``requested`` (any case, ``:latest`` or not) is one of :func:`model_names`."""
    return strip_tag(requested.strip()).lower() in model_names(model) or requested.strip().lower() in model_names(model)


def resolve_model(library: Library, requested: str | None, *, paths: bool = False) -> LocalModel:
    """The library model a front end is asked for: by id (``smollm2-135m-instruct:q4_1``), name, ``demo``; with
    ``paths`` (the CLI) also a path or a unique part of a name. Nothing asked: the default model. Raises
    :class:`~influence_tui.core.errors.ModelNotFoundError` (the server answers it as a 404)."""
    if requested is None or not requested.strip():
        return library.default()
    models = library.models()
    exact = [m for m in models if m.name == requested.strip()]
    found = exact or [m for m in models if names_model(m, requested)]
    loadable = [m for m in found if m.loadable] or found
    if loadable:
        return loadable[0]
    if paths:
        return library.resolve(requested)
    raise ModelNotFoundError(
        f"model {requested.strip()!r} not found", hint="`influence list` shows the library; GET /api/tags lists it"
    )
