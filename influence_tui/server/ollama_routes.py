"""Ollama's API: ``/api/tags``, ``/api/show``, ``/api/generate``, ``/api/chat``, ``/api/embed``,
``/api/embeddings``, ``/api/ps``, ``/api/version`` and ``/``.

Answers stream as newline-delimited JSON unless ``"stream": false``; the final object carries
``done_reason`` and Ollama's timings in nanoseconds. Errors are ``{"error": "..."}`` with the right status.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from influence_tui import __version__
from influence_tui.core.engine.remote import RemoteEngine
from influence_tui.core.engine.runner import TokenStream
from influence_tui.core.errors import InfluenceError
from influence_tui.core.model_ids import model_id
from influence_tui.core.types import ChatMessage, GenerationStats, LoadedModelInfo, LocalModel, Role, SamplingParams
from influence_tui.core.units import human_count
from influence_tui.server.access import record_usage
from influence_tui.server.clock import utc_iso
from influence_tui.server.errors import APIError, bad_request, from_influence_error, log
from influence_tui.server.gateway import (
    ollama_show,
    ollama_tag,
    open_chat,
    open_completion,
    upstream_engine,
    upstream_models,
)
from influence_tui.server.models import ServedModel
from influence_tui.server.openai_embeddings import check_dimensions, shorten
from influence_tui.server.openai_routes import server_state
from influence_tui.server.params import RequestedSampling, sampling_params
from influence_tui.server.schemas import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaMessage,
    OllamaOptions,
    OllamaShowRequest,
    parse_body,
)
from influence_tui.server.state import ServerState, keep_alive_seconds, model_digest, model_modified
from influence_tui.server.streams import EngineStreamingResponse, EventPump, cancel_on_disconnect, collect, ndjson

router = APIRouter()

#: The Ollama API version these routes follow (clients such as Open WebUI check it).
OLLAMA_VERSION = "0.9.0"
NEVER = "9999-12-31T23:59:59Z"
"""``expires_at`` of the served model: it stays loaded while the server runs."""

_NS = 1_000_000_000


@router.get("/", response_class=PlainTextResponse)
@router.head("/", response_class=PlainTextResponse)
async def root() -> str:
    return "Ollama is running"


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": OLLAMA_VERSION, "influence": __version__}


# ------------------------------------------------------------------------------------------ models


def details(model: LocalModel) -> dict[str, Any]:
    family = model.architecture or "unknown"
    return {
        "parent_model": "",
        "format": "gguf" if model.format.startswith("gguf") else "safetensors",
        "family": family,
        "families": [family],
        "parameter_size": human_count(model.parameters) if model.parameters else "",
        "quantization_level": model.quantization or "",
    }


def _tag(model: LocalModel) -> dict[str, Any]:
    ident = model_id(model)
    return {
        "name": ident,
        "model": ident,
        "modified_at": utc_iso(model_modified(model)),
        "size": model.size_bytes,
        "digest": model_digest(model),
        "details": details(model),
    }


def _library_tags(state: ServerState) -> list[dict[str, Any]]:
    """The loaded models first (the started one leading), then every other loadable model of the library."""
    entries = [state.started, *(e for e in state.pool.entries() if e is not state.started)]
    tags = [_tag(e.model) for e in entries]
    seen = {t["name"] for t in tags}
    for model in state.library.models():
        if model.runtime is not None and model_id(model) not in seen:
            seen.add(model_id(model))
            tags.append(_tag(model))
    return tags


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    state = server_state(request)
    local = await anyio.to_thread.run_sync(_library_tags, state)
    return {"models": [*local, *(ollama_tag(m) for m in await upstream_models(state.gateway))]}


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    state = server_state(request)
    models = []
    for entry in state.pool.entries():
        info = entry.info
        if info is None:
            continue
        expires = entry.expires_at()
        models.append(
            {
                "name": entry.model_id,
                "model": entry.model_id,
                "size": entry.model.size_bytes,
                "digest": model_digest(entry.model),
                "details": details(entry.model),
                "expires_at": NEVER if expires is None else utc_iso(expires),
                "size_vram": entry.model.size_bytes if info.device.startswith(("cuda", "mps")) else 0,
                "context_length": info.context_length,
            }
        )
    return {"models": models}


def _parameters_text(state: ServerState, info: LoadedModelInfo | None) -> str:
    settings = state.settings
    lines = [
        f"temperature {settings.temperature:g}",
        f"top_p {settings.top_p:g}",
        f"repeat_penalty {settings.repeat_penalty:g}",
        f"num_predict {settings.max_tokens}",
    ]
    if settings.top_k:
        lines.append(f"top_k {settings.top_k}")
    if settings.min_p:
        lines.append(f"min_p {settings.min_p:g}")
    if info is not None:
        lines.append(f"num_ctx {info.context_length}")
    return "\n".join(lines)


@router.post("/api/show")
async def show(request: Request) -> dict[str, Any]:
    state = server_state(request)
    body = parse_body(OllamaShowRequest, await request.body())
    remote = await upstream_engine(state.gateway, body.model or body.name)
    if remote is not None:
        return ollama_show(remote)
    served = await state.acquire(request, body.model or body.name, required=True)
    info = served.info
    model = served.model
    arch = model.architecture or (info.architecture if info else "unknown")
    context = info.context_length if info else model.context_length
    model_info: dict[str, Any] = {
        "general.architecture": arch,
        "general.basename": model.name,
        "general.parameter_count": (info.parameters if info else None) or model.parameters,
        "general.file_type": model.quantization,
        f"{arch}.context_length": context,
    }
    template = await anyio.to_thread.run_sync(served.chat_template) if info else None
    return {
        "license": "",
        "modelfile": f"# Modelfile for {model.name}, served by Influence\nFROM {model.path}\n",
        "parameters": _parameters_text(state, info),
        "template": template or "",
        "details": details(model),
        "model_info": model_info,
        "capabilities": ["completion"],
        "modified_at": utc_iso(model_modified(model)),
    }


# ------------------------------------------------------------------------------------------ generation


def _sampling(state: ServerState, options: OllamaOptions | None, info: LoadedModelInfo) -> tuple[SamplingParams, int]:
    """Sampling parameters and the context to fit the prompt in, from Ollama's ``options``."""
    options = options or OllamaOptions()
    context = info.context_length
    if options.num_ctx is not None:
        if options.num_ctx < 1:
            raise bad_request(f"num_ctx must be at least 1, got {options.num_ctx}", param="num_ctx")
        context = min(context, options.num_ctx)
    num_predict = options.num_predict
    if num_predict is not None and context <= 0:  # a remote model of unknown context: it caps the reply itself
        num_predict = None if num_predict in (-1, -2) else num_predict
        context = 1 << 30
    if num_predict is not None:
        if num_predict in (-1, -2):  # until the context is full
            num_predict = context
        elif num_predict < 1:
            raise bad_request(f"num_predict must be -1, -2 or at least 1, got {num_predict}", param="num_predict")
        num_predict = min(num_predict, context)
    repeat_last_n = options.repeat_last_n
    if repeat_last_n == -1:
        repeat_last_n = 0  # the whole context
    asked = RequestedSampling(
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        min_p=options.min_p,
        repeat_penalty=options.repeat_penalty,
        repeat_last_n=repeat_last_n,
        max_tokens=num_predict,
        seed=options.seed,
        stop=options.stop,
    )
    return sampling_params(state.settings, asked, names={"max_tokens": "num_predict"}), context


def _fit(params: SamplingParams, context: int, prompt_tokens: int) -> SamplingParams:
    """At most what is left of ``context`` (``num_ctx``) after the prompt."""
    room = max(1, context - prompt_tokens)
    return params if params.max_tokens <= room else replace(params, max_tokens=room)


_DONE_REASONS = {"length": "length", "cancelled": "abort"}
"""Ollama's ``done_reason`` for the engine's finish reasons (the rest are ``stop``); ``abort``: the server
ended the generation (shutting down), as Ollama says of a request it aborts."""


def _timings(stats: GenerationStats | None, started: float) -> dict[str, Any]:
    total = time.perf_counter() - started
    if stats is None:
        return {"total_duration": int(total * _NS), "load_duration": 0}
    return {
        "done_reason": _DONE_REASONS.get(stats.finish_reason, "stop"),
        "total_duration": int(total * _NS),
        "load_duration": int(stats.load_s * _NS),
        "prompt_eval_count": stats.prompt_tokens,
        "prompt_eval_duration": int(stats.time_to_first_token_s * _NS),
        "eval_count": stats.generated_tokens,
        "eval_duration": int(max(0.0, stats.total_s - stats.time_to_first_token_s) * _NS),
    }


def _error_line(exc: Exception) -> bytes:
    if isinstance(exc, InfluenceError):
        return ndjson(from_influence_error(exc).ollama_body())
    log.error("generation failed", exc_info=exc)
    return ndjson(APIError(500, f"generation failed: {exc.__class__.__name__}: {exc}").ollama_body())


_ROLES: dict[str, Role] = {"system": "system", "user": "user", "assistant": "assistant"}


def _chat_messages(messages: list[OllamaMessage]) -> list[ChatMessage]:
    converted: list[ChatMessage] = []
    for index, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise bad_request(
                f"messages[{index}].role is {message.role!r}; supported roles are system, user and assistant"
            )
        if message.images:
            raise bad_request("images are not supported: the served model reads text only")
        converted.append(ChatMessage(role, message.content or ""))
    return converted


def _load_answer(model: str, started: float, key: str, keep_alive: object = None) -> dict[str, Any]:
    """What Ollama answers to a request with nothing to generate: the model is loaded (``done_reason`` "load"),
    or, with ``keep_alive`` 0, unloaded once this request ends ("unload")."""
    content: Any = {"role": "assistant", "content": ""} if key == "message" else ""
    return {
        "model": model,
        "created_at": utc_iso(),
        key: content,
        "done": True,
        "done_reason": "unload" if keep_alive is not None and keep_alive_seconds(keep_alive) == 0 else "load",
        "total_duration": int((time.perf_counter() - started) * _NS),
    }


Line = Callable[[str, bool], dict[str, Any]]
"""Builds one reply object of a route: its text piece and whether it is the last."""


def _final(
    line: Line, text: str, stats: GenerationStats | None, started: float, context: list[int] | None
) -> dict[str, Any]:
    """The last object: done, with the timings; /api/generate adds ``context`` (prompt + generated ids)."""
    answer = {**line(text, True), **_timings(stats, started)}
    if context is not None:
        answer["context"] = context
    return answer


async def _respond(
    request: Request, pump: EventPump, line: Line, started: float, *, stream: bool, context: list[int] | None = None
) -> Response:
    """An NDJSON stream of ``line`` objects ending with the final one, or (``stream`` off) one answer.

    ``context`` is the prompt's ids, for /api/generate's final ``context`` field; None for /api/chat.
    """
    if stream:

        async def lines() -> AsyncIterator[bytes]:
            generated: list[int] = []
            try:
                async for event in pump.events():
                    if event.token_id is not None:
                        generated.append(event.token_id)
                    if event.text:
                        yield ndjson(line(event.text, False))
                    if event.stats is not None:
                        record_usage(request, event.stats.prompt_tokens, event.stats.generated_tokens)
                        ids = None if context is None else context + generated
                        yield ndjson(_final(line, "", event.stats, started, ids))
            except Exception as exc:
                yield _error_line(exc)

        return EngineStreamingResponse(lines(), on_close=pump.cancel, media_type="application/x-ndjson")
    async with cancel_on_disconnect(request, [pump]):
        result = await collect(pump)
    if result.stats is not None:
        record_usage(request, result.stats.prompt_tokens, result.stats.generated_tokens)
    ids = None if context is None else context + result.token_ids
    return JSONResponse(_final(line, result.text, result.stats, started, ids))


@router.post("/api/chat", response_model=None)
async def chat(request: Request) -> Response:
    started = time.perf_counter()
    state = server_state(request)
    body = parse_body(OllamaChatRequest, await request.body())
    remote = await upstream_engine(state.gateway, body.model)
    messages = _chat_messages(body.messages) if body.messages else []
    if remote is None:
        if not (body.model and body.model.strip()):
            raise bad_request("model is required")
        served = await state.acquire(request, body.model, required=True, keep_alive=body.keep_alive)
    model = body.model or state.model.name
    info = remote.info if remote is not None and remote.info else served.require_ready()
    if not body.messages:
        return JSONResponse(_load_answer(model, started, "message", body.keep_alive))
    params, context = _sampling(state, body.options, info)
    if remote is not None:  # an upstream's model: its reply streams through the same lines
        _plan, stream = await open_chat(remote, messages, params)
        pump = EventPump(stream)
    else:
        plan = await anyio.to_thread.run_sync(served.chat_prompt, messages, params, context)
        params = _fit(params, context, len(plan.prompt_ids))
        pump = EventPump(served.submit(plan.prompt_ids, params))

    def line(content: str, done: bool) -> dict[str, Any]:
        return {
            "model": model,
            "created_at": utc_iso(),
            "message": {"role": "assistant", "content": content},
            "done": done,
        }

    return await _respond(request, pump, line, started, stream=body.stream is not False)


def _generate_prompt(
    state: ServedModel, body: OllamaGenerateRequest, params: SamplingParams, context: int
) -> list[int]:
    """The prompt's token ids (blocking: tokenizes): raw, or through the chat template; after ``context``."""
    prior = list(body.context or [])
    if prior:
        state.check_token_ids(prior, "context")
    prompt = body.prompt or ""
    if body.raw:
        ids = prior + state.encode(prompt, add_special_tokens=not prior)
    else:
        messages = [ChatMessage("system", body.system)] if body.system else []
        messages.append(ChatMessage("user", prompt))
        ids = prior + list(state.chat_prompt(messages, params, context - len(prior)).prompt_ids)
    if len(ids) >= context:
        raise bad_request(
            f"the prompt is {len(ids)} tokens but the context holds {context}: no room is left for a reply"
        )
    return ids


@router.post("/api/generate", response_model=None)
async def generate(request: Request) -> Response:
    started = time.perf_counter()
    state = server_state(request)
    body = parse_body(OllamaGenerateRequest, await request.body())
    remote = await upstream_engine(state.gateway, body.model)
    if body.images:
        raise bad_request("images are not supported: the served model reads text only")
    if body.suffix:
        raise bad_request("suffix (fill-in-the-middle) is not supported")
    if remote is None:
        if not (body.model and body.model.strip()):
            raise bad_request("model is required")
        served = await state.acquire(request, body.model, required=True, keep_alive=body.keep_alive)
    model = body.model or state.model.name
    info = remote.info if remote is not None and remote.info else served.require_ready()
    if not body.prompt and not body.context:
        return JSONResponse(_load_answer(model, started, "response", body.keep_alive))
    params, context = _sampling(state, body.options, info)
    if remote is not None:
        return await _remote_generate(request, remote, body, params, model=model, started=started)
    prompt_ids = await anyio.to_thread.run_sync(_generate_prompt, served, body, params, context)
    params = _fit(params, context, len(prompt_ids))
    stream: TokenStream = served.submit(prompt_ids, params)
    pump = EventPump(stream)

    def line(text: str, done: bool) -> dict[str, Any]:
        return {"model": model, "created_at": utc_iso(), "response": text, "done": done}

    return await _respond(request, pump, line, started, stream=body.stream is not False, context=prompt_ids)


async def _remote_generate(
    request: Request,
    remote: RemoteEngine,
    body: OllamaGenerateRequest,
    params: SamplingParams,
    *,
    model: str,
    started: float,
) -> Response:
    """/api/generate for an upstream's model: the prompt continued as is (``raw``) or sent as a chat."""
    if body.context:
        raise bad_request("context (token ids) is not supported for a remote model: send the text")
    if body.raw:
        stream = await open_completion(remote, body.prompt or "", params)
    else:
        messages = [ChatMessage("system", body.system)] if body.system else []
        messages.append(ChatMessage("user", body.prompt or ""))
        _plan, stream = await open_chat(remote, messages, params)

    def line(text: str, done: bool) -> dict[str, Any]:
        return {"model": model, "created_at": utc_iso(), "response": text, "done": done}

    return await _respond(request, EventPump(stream), line, started, stream=body.stream is not False)


# ------------------------------------------------------------------------------------------ embeddings


@router.post("/api/embed")
async def embed(request: Request) -> dict[str, Any]:
    started = time.perf_counter()
    state = server_state(request)
    body = parse_body(OllamaEmbedRequest, await request.body())
    if not body.model:
        raise bad_request("model is required")
    if body.input is None:
        raise bad_request("input is required: a string or a list of strings")
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if any(not text for text in texts):
        raise bad_request("every input needs some text")
    if body.dimensions is not None and body.dimensions < 1:
        raise bad_request(f"dimensions must be at least 1, got {body.dimensions}")
    target = await state.embedding_target(request, body.model, keep_alive=getattr(body, "keep_alive", None))
    result = await anyio.to_thread.run_sync(state.embed, target, texts)
    if result.vectors:
        check_dimensions(body.dimensions, len(result.vectors[0]))
    record_usage(request, result.prompt_tokens)
    return {
        "model": body.model,
        "embeddings": [shorten(vector, body.dimensions) for vector in result.vectors],
        "total_duration": int((time.perf_counter() - started) * _NS),
        "load_duration": int(result.load_s * _NS),
        "prompt_eval_count": result.prompt_tokens,
    }


@router.post("/api/embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    state = server_state(request)
    body = parse_body(OllamaEmbeddingsRequest, await request.body())
    if not body.model:
        raise bad_request("model is required")
    target = await state.embedding_target(request, body.model, keep_alive=getattr(body, "keep_alive", None))
    if not body.prompt:
        return {"embedding": []}
    result = await anyio.to_thread.run_sync(state.embed, target, [body.prompt])
    record_usage(request, result.prompt_tokens)
    return {"embedding": result.vectors[0]}
