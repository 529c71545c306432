"""OpenAI's ``/v1/embeddings`` (also served without ``/v1``): vectors from the served model or a library model."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Sequence
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request

from influence_tui.server.access import record_usage
from influence_tui.server.errors import bad_request
from influence_tui.server.models import ServedModel
from influence_tui.server.openai_routes import server_state
from influence_tui.server.schemas import EmbeddingRequest, parse_body

router = APIRouter()


def _embedding_inputs(value: str | list[str] | list[int] | list[list[int]] | None) -> list[str | list[int]]:
    if value is None:
        raise bad_request("input is required: a string or a list of strings", param="input")
    items: list[str | list[int]]
    if isinstance(value, str):
        items = [value]
    elif value and all(isinstance(item, int) for item in value):
        items = [[int(item) for item in value]]  # type: ignore[arg-type]
    else:
        items = list(value)  # type: ignore[arg-type]
    if not items:
        raise bad_request("input must not be an empty list", param="input")
    for index, item in enumerate(items):
        if not item:
            raise bad_request(f"input[{index}] is empty; every input needs some text", param="input")
    return items


def shorten(vector: list[float], dimensions: int | None) -> list[float]:
    """The first ``dimensions`` values, made unit length again (as OpenAI's ``dimensions`` does)."""
    if dimensions is None or dimensions >= len(vector):
        return vector
    head = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in head)) or 1.0
    return [x / norm for x in head]


def check_dimensions(dimensions: int | None, available: int, param: str = "dimensions") -> None:
    if dimensions is not None and not 1 <= dimensions <= available:
        raise bad_request(f"{param} must be between 1 and {available}, got {dimensions}", param=param)


def _base64(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


@router.post("/embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    state = server_state(request)
    body = parse_body(EmbeddingRequest, await request.body())
    inputs = _embedding_inputs(body.input)
    encoding = body.encoding_format or "float"
    if encoding not in ("float", "base64"):
        raise bad_request(f"encoding_format must be 'float' or 'base64', got {encoding!r}", param="encoding_format")
    if body.dimensions is not None and body.dimensions < 1:
        raise bad_request(f"dimensions must be at least 1, got {body.dimensions}", param="dimensions")
    target = await state.embedding_target(request, body.model)
    if isinstance(target, ServedModel):
        for item in inputs:
            if not isinstance(item, str):
                target.check_token_ids(item, "input")
    result = await anyio.to_thread.run_sync(state.embed, target, inputs)
    if result.vectors:
        check_dimensions(body.dimensions, len(result.vectors[0]))
    record_usage(request, result.prompt_tokens)
    data = []
    for index, vector in enumerate(result.vectors):
        values = shorten(vector, body.dimensions)
        data.append(
            {"object": "embedding", "index": index, "embedding": _base64(values) if encoding == "base64" else values}
        )
    return {
        "object": "list",
        "data": data,
        "model": result.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
