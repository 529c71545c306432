"""Request bodies of the OpenAI and Ollama routes, as pydantic models.

Bodies are validated from the raw JSON in strict mode (``"0.5"`` is not a number, ``1`` is not a bool), so a
wrong type is a 400 naming the field. Fields a client may send that Influence does not use are ignored, as
the real servers do; fields whose meaning would be silently lost (``n > 1``, ``logprobs``) are refused by the
routes with a clear message.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from influence_tui.server.errors import from_validation_error


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


B = TypeVar("B", bound=_Body)


def parse_body(model: type[B], raw: bytes) -> B:
    """``raw`` (the request body) validated as ``model``; a 400 :class:`~influence_tui.server.errors.APIError`
    naming the first bad field otherwise."""
    if not raw.strip():
        raw = b"{}"
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


# ------------------------------------------------------------------------------------------ OpenAI


class ContentPart(_Body):
    """One part of a message's content list; only ``{"type": "text", "text": ...}`` is understood."""

    type: str
    text: str | None = None


class OpenAIMessage(_Body):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Body):
    include_usage: bool | None = None


class OpenAISampling(_Body):
    model: str | None = None
    """Optional here (the served model); the official clients always send it."""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    """Extension (llama.cpp's name)."""
    min_p: float | None = None
    """Extension."""
    repeat_penalty: float | None = None
    """Extension (llama.cpp's and Ollama's name)."""
    repetition_penalty: float | None = None
    """Extension (vLLM's and transformers' name for the same thing)."""
    repeat_last_n: int | None = None
    """Extension."""
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    frequency_penalty: float | None = None
    """Accepted and ignored (0 is the only value Influence implements)."""
    presence_penalty: float | None = None
    """Accepted and ignored."""


class ChatCompletionRequest(OpenAISampling):
    messages: list[OpenAIMessage] | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class CompletionRequest(OpenAISampling):
    prompt: str | list[str] | list[int] | list[list[int]] | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None


class EmbeddingRequest(_Body):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]] | None = None
    encoding_format: str | None = None
    dimensions: int | None = None
    user: str | None = None


# ------------------------------------------------------------------------------------------ Ollama


class OllamaOptions(_Body):
    """The ``options`` Influence maps onto its sampling parameters (Ollama's other options are ignored)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    num_predict: int | None = None
    num_ctx: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None


class OllamaMessage(_Body):
    role: str
    content: str | None = None
    images: list[str] | None = None


class _OllamaBase(_Body):
    model: str | None = None
    options: OllamaOptions | None = None
    keep_alive: Any = None
    """How long the model stays loaded after this request (Ollama's durations; 0 unloads it, negative: forever)."""


class OllamaGenerateRequest(_OllamaBase):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool | None = None
    raw: bool | None = None
    format: Any = None
    images: list[str] | None = None


class OllamaChatRequest(_OllamaBase):
    messages: list[OllamaMessage] | None = None
    stream: bool | None = None
    format: Any = None
    tools: Any = None


class OllamaEmbedRequest(_OllamaBase):
    input: str | list[str] | None = None
    truncate: bool | None = None
    dimensions: int | None = None


class OllamaEmbeddingsRequest(_OllamaBase):
    prompt: str | None = None


class OllamaShowRequest(_Body):
    model: str | None = None
    name: str | None = None
    verbose: bool | None = None
