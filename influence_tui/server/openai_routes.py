"""OpenAI's API: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``.

Every route is also served without the ``/v1`` prefix. Everything a request can get wrong is checked before
an answer starts, so errors always come with the right status; a stream then only ends early if the engine
fails (an ``error`` event) or the client leaves (the generation is cancelled).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from influence_tui import __version__
from influence_tui.core.errors import InfluenceError
from influence_tui.core.model_ids import model_id
from influence_tui.core.remotes import RemoteModel
from influence_tui.core.types import ChatMessage, GenerationStats, LoadedModelInfo, LocalModel, Role
from influence_tui.server.access import record_usage
from influence_tui.server.errors import APIError, bad_request, from_influence_error, log
from influence_tui.server.gateway import open_chat, open_completion, upstream_engine, upstream_models
from influence_tui.server.models import ServedModel
from influence_tui.server.params import RequestedSampling, sampling_params
from influence_tui.server.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIMessage,
    OpenAISampling,
    parse_body,
)
from influence_tui.server.state import ServerState, model_modified
from influence_tui.server.streams import (
    SSE_DONE,
    SSE_HEADERS,
    EngineStreamingResponse,
    EventPump,
    cancel_on_disconnect,
    collect,
    sse,
)

router = APIRouter()

SYSTEM_FINGERPRINT = f"influence-{__version__}"


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.influence
    return state


# ------------------------------------------------------------------------------------------ models


def _model_card(model: LocalModel, served: ServedModel | None) -> dict[str, Any]:
    card: dict[str, Any] = {
        "id": served.model_id if served is not None else model_id(model),
        "object": "model",
        "created": int(model_modified(model)),
        "owned_by": "influence",
    }
    info = served.info if served is not None else None
    if info is not None:
        card["max_model_len"] = info.context_length  # vLLM's name: remote engines read the context from it
    card["loaded"] = info is not None
    return card


def _library_cards(state: ServerState) -> list[dict[str, Any]]:
    """The loaded models first (the started one leading), then every other loadable model of the library."""
    entries = [state.started, *(e for e in state.pool.entries() if e is not state.started)]
    cards = [_model_card(e.model, e) for e in entries]
    seen = {card["id"] for card in cards}
    for model in state.library.models():
        if model.runtime is None or model_id(model) in seen:
            continue
        seen.add(model_id(model))
        cards.append(_model_card(model, None))
    return cards


def _remote_card(model: RemoteModel) -> dict[str, Any]:
    card: dict[str, Any] = {
        "id": model.name,
        "object": "model",
        "created": 0,
        "owned_by": f"{model.remote.name} (remote)",
    }
    if model.context_length:
        card["max_model_len"] = model.context_length
    return card


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    state = server_state(request)
    remote = [_remote_card(m) for m in await upstream_models(state.gateway)]
    local = await anyio.to_thread.run_sync(_library_cards, state)
    return {"object": "list", "data": [*local, *remote]}


@router.get("/models/{model_id:path}")
async def get_model(request: Request, model_id: str) -> dict[str, Any]:
    state = server_state(request)
    engine = await upstream_engine(state.gateway, model_id)
    if engine is not None:
        return _remote_card(engine.model)
    model = await anyio.to_thread.run_sync(state.resolve, model_id)
    return _model_card(model, state.pool.find(model_id))


# ------------------------------------------------------------------------------------------ shared


def _requested(body: OpenAISampling, max_tokens: int | None) -> RequestedSampling:
    penalty = body.repeat_penalty if body.repeat_penalty is not None else body.repetition_penalty
    return RequestedSampling(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        repeat_penalty=penalty,
        repeat_last_n=body.repeat_last_n,
        max_tokens=max_tokens,
        seed=body.seed,
        stop=body.stop,
    )


def _check_n(body: OpenAISampling) -> None:
    if body.n is not None and body.n != 1:
        raise bad_request(f"n must be 1 (one choice per request is supported for now), got {body.n}", param="n")


def _check_max_tokens(max_tokens: int | None, info: LoadedModelInfo, param: str) -> None:
    if max_tokens is not None and max_tokens > info.context_length:
        raise bad_request(
            f"{param} is {max_tokens}, but {info.name} holds {info.context_length} tokens in all (prompt and reply); "
            f"ask for at most {info.context_length}",
            param=param,
            code="context_length_exceeded",
        )


def _finish_reason(stats: GenerationStats | None) -> str:
    """``length``, ``stop``, or ``abort`` for a generation the server ended (shutting down: a client that
    cancels its own request is gone and reads nothing), as vLLM says it."""
    if stats is not None and stats.finish_reason == "cancelled":
        return "abort"
    return "length" if stats is not None and stats.finish_reason == "length" else "stop"


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object; ``cached_tokens``: leading prompt tokens the engine's prompt cache already had."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def _stream_error(exc: Exception) -> bytes:
    if isinstance(exc, InfluenceError):
        error = from_influence_error(exc)
    else:
        log.error("generation failed", exc_info=exc)
        error = APIError(500, f"generation failed: {exc.__class__.__name__}: {exc}")
    return sse(error.openai_body())


# ------------------------------------------------------------------------------------------ chat


_ROLES: dict[str, Role] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _message_text(index: int, message: OpenAIMessage) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for number, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise bad_request(
                f"messages[{index}].content[{number}] is a {part.type!r} part; only text parts are supported",
                param=f"messages.{index}.content.{number}",
            )
        parts.append(part.text)
    return "".join(parts)


def chat_messages(messages: Sequence[OpenAIMessage] | None) -> list[ChatMessage]:
    if messages is None:
        raise bad_request("messages is required: a list of {role, content} objects", param="messages")
    if not messages:
        raise bad_request("messages must not be empty", param="messages")
    converted: list[ChatMessage] = []
    for index, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise bad_request(
                f"messages[{index}].role is {message.role!r}; supported roles are system, developer, user and assistant",
                param=f"messages.{index}.role",
            )
        converted.append(ChatMessage(role, _message_text(index, message)))
    return converted


@router.post("/chat/completions", response_model=None)
async def chat_completions(request: Request) -> Response:
    state = server_state(request)
    body = parse_body(ChatCompletionRequest, await request.body())
    remote = await upstream_engine(state.gateway, body.model)
    messages = chat_messages(body.messages)
    if body.logprobs:
        raise bad_request("logprobs are not supported", param="logprobs")
    _check_n(body)
    max_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if remote is not None:  # an upstream's model: its reply streams through the same events
        params = sampling_params(state.settings, _requested(body, max_tokens), names={"max_tokens": max_param})
        plan, stream = await open_chat(remote, messages, params)
        pump = EventPump(stream)
        model = remote.model.name
    else:
        served = await state.acquire(request, body.model)
        model = served.model_id
        info = served.require_ready()
        _check_max_tokens(max_tokens, info, max_param)
        params = sampling_params(state.settings, _requested(body, max_tokens), names={"max_tokens": max_param})
        plan = await anyio.to_thread.run_sync(served.chat_prompt, messages, params, info.context_length)
        pump = EventPump(served.submit(plan.prompt_ids, params))
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _chat_chunks(
            request, pump, completion_id=completion_id, created=created, model=model, include_usage=include_usage
        )
        return EngineStreamingResponse(
            chunks, on_close=pump.cancel, media_type="text/event-stream", headers=SSE_HEADERS
        )
    async with cancel_on_disconnect(request, [pump]):
        result = await collect(pump)
    stats = result.stats
    prompt_tokens = stats.prompt_tokens if stats else len(plan.prompt_ids)
    completion_tokens = stats.generated_tokens if stats else 0
    cached_tokens = stats.cached_prompt_tokens if stats else 0
    record_usage(request, prompt_tokens, completion_tokens)
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": _finish_reason(stats),
                }
            ],
            "usage": _usage(prompt_tokens, completion_tokens, cached_tokens),
        }
    )


async def _chat_chunks(
    request: Request, pump: EventPump, *, completion_id: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    base: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        data = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if include_usage:
            data["usage"] = None
        return sse(data)

    yield chunk({"role": "assistant", "content": ""})
    stats: GenerationStats | None = None
    try:
        async for event in pump.events():
            if event.text:
                yield chunk({"content": event.text})
            if event.stats is not None:
                stats = event.stats
    except Exception as exc:
        yield _stream_error(exc)
        return
    yield chunk({}, _finish_reason(stats))
    if stats is not None:
        record_usage(request, stats.prompt_tokens, stats.generated_tokens)
    if include_usage:
        usage = (
            _usage(stats.prompt_tokens, stats.generated_tokens, stats.cached_prompt_tokens) if stats else _usage(0, 0)
        )
        yield sse({**base, "choices": [], "usage": usage})
    yield SSE_DONE


# ------------------------------------------------------------------------------------------ completions


def _prompts(prompt: str | list[str] | list[int] | list[list[int]] | None) -> list[str | list[int]]:
    if prompt is None:
        raise bad_request("prompt is required", param="prompt")
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("prompt must not be an empty list", param="prompt")
    if all(isinstance(item, int) for item in prompt):
        return [[int(item) for item in prompt]]  # type: ignore[arg-type]
    return list(prompt)  # type: ignore[arg-type]


def _prompt_ids(
    state: ServerState | ServedModel, prompts: list[str | list[int]], info: LoadedModelInfo
) -> list[list[int]]:
    """Token ids of each prompt (blocking: tokenizes), checked to leave room for a reply."""
    all_ids: list[list[int]] = []
    for index, prompt in enumerate(prompts):
        param = "prompt" if len(prompts) == 1 else f"prompt.{index}"
        if isinstance(prompt, str):
            ids = state.encode(prompt, add_special_tokens=True)
        else:
            ids = list(prompt)
            state.check_token_ids(ids, param)
        if not ids:
            raise bad_request("the prompt is empty: there is nothing to continue", param=param)
        if len(ids) >= info.context_length:
            raise bad_request(
                f"the prompt is {len(ids)} tokens but {info.name} holds {info.context_length}: no room is left for a reply",
                param=param,
                code="context_length_exceeded",
            )
        all_ids.append(ids)
    return all_ids


@router.post("/completions", response_model=None)
async def completions(request: Request) -> Response:
    state = server_state(request)
    body = parse_body(CompletionRequest, await request.body())
    remote = await upstream_engine(state.gateway, body.model)
    prompts = _prompts(body.prompt)
    if body.suffix:
        raise bad_request("suffix (fill-in-the-middle) is not supported", param="suffix")
    if body.best_of is not None and body.best_of != 1:
        raise bad_request(f"best_of must be 1, got {body.best_of}", param="best_of")
    if body.logprobs:
        raise bad_request("logprobs are not supported", param="logprobs")
    _check_n(body)
    params = sampling_params(state.settings, _requested(body, body.max_tokens))
    if remote is not None:
        if not all(isinstance(p, str) for p in prompts):
            raise bad_request("a remote model takes prompts as text, not token ids", param="prompt")
        texts = [p for p in prompts if isinstance(p, str)]
        prompt_ids: list[list[int]] = [[] for _ in texts]
        echoes = texts if body.echo else [""] * len(texts)
        pumps = [EventPump(await open_completion(remote, text, params)) for text in texts]
        model = remote.model.name
    else:
        served = await state.acquire(request, body.model)
        model = served.model_id
        info = served.require_ready()
        _check_max_tokens(body.max_tokens, info, "max_tokens")
        prompt_ids = await anyio.to_thread.run_sync(_prompt_ids, served, prompts, info)
        echoes = [""] * len(prompts)
        if body.echo:
            echoes = [p if isinstance(p, str) else await anyio.to_thread.run_sync(served.decode, p) for p in prompts]
        pumps = []
        try:
            for ids in prompt_ids:
                pumps.append(EventPump(served.submit(ids, params)))
        except APIError:  # the queue filled up part way: the prompts already queued are not wanted any more
            for pump in pumps:
                pump.cancel()
            raise
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def cancel_all() -> None:
        for pump in pumps:
            pump.cancel()

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _completion_chunks(
            request,
            pumps,
            echoes=echoes,
            completion_id=completion_id,
            created=created,
            model=model,
            include_usage=include_usage,
        )
        return EngineStreamingResponse(chunks, on_close=cancel_all, media_type="text/event-stream", headers=SSE_HEADERS)
    choices: list[dict[str, Any]] = []
    prompt_tokens = completion_tokens = 0
    async with cancel_on_disconnect(request, pumps):
        for index, pump in enumerate(pumps):
            result = await collect(pump)
            stats = result.stats
            prompt_tokens += stats.prompt_tokens if stats else len(prompt_ids[index])
            completion_tokens += stats.generated_tokens if stats else 0
            choices.append(
                {
                    "text": echoes[index] + result.text,
                    "index": index,
                    "logprobs": None,
                    "finish_reason": _finish_reason(stats),
                }
            )
    record_usage(request, prompt_tokens, completion_tokens)
    return JSONResponse(
        {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }
    )


async def _completion_chunks(
    request: Request,
    pumps: list[EventPump],
    *,
    echoes: list[str],
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    base: dict[str, Any] = {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }

    def chunk(index: int, text: str, finish_reason: str | None = None) -> bytes:
        data = {**base, "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}]}
        if include_usage:
            data["usage"] = None
        return sse(data)

    prompt_tokens = completion_tokens = 0
    for index, pump in enumerate(pumps):
        if echoes[index]:
            yield chunk(index, echoes[index])
        stats: GenerationStats | None = None
        try:
            async for event in pump.events():
                if event.text:
                    yield chunk(index, event.text)
                if event.stats is not None:
                    stats = event.stats
        except Exception as exc:
            yield _stream_error(exc)
            return
        if stats is not None:
            prompt_tokens += stats.prompt_tokens
            completion_tokens += stats.generated_tokens
        yield chunk(index, "", _finish_reason(stats))
    record_usage(request, prompt_tokens, completion_tokens)
    if include_usage:
        yield sse({**base, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
    yield SSE_DONE
