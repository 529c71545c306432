"""The FastAPI app: both APIs, /health, /metrics, API-key checks, CORS and one log line per request.

:func:`create_app` takes the :class:`~influence_tui.core.engine.runner.EngineRunner` and the model it serves
(injected, so tests build the app on a tiny model). Either the runner has already loaded the model, or
``load`` loads it: the app then starts at once, /health says ``loading``, generation routes answer 503 until
the model is ready. While the server shuts down (:mod:`~influence_tui.server.lifecycle`) /health says
``stopping`` and new requests get a 503. /metrics is Prometheus' text (:mod:`~influence_tui.server.metrics`),
behind the API key like every route but /health.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from influence_tui import __version__
from influence_tui.core.config import Settings
from influence_tui.core.errors import InfluenceError
from influence_tui.server import ollama_routes, openai_embeddings, openai_routes
from influence_tui.server.access import AccessLogMiddleware, ApiKeyMiddleware
from influence_tui.server.errors import (
    APIError,
    handle_api_error,
    handle_http_exception,
    handle_influence_error,
    handle_unexpected,
)
from influence_tui.server.lifecycle import StoppingMiddleware
from influence_tui.server.metrics import CONTENT_TYPE, ServerMetrics, metrics_for
from influence_tui.server.models import LeaseMiddleware
from influence_tui.server.state import ServerState

if TYPE_CHECKING:
    from influence_tui.core.engine.runner import EngineRunner
    from influence_tui.core.library import Library
    from influence_tui.core.remotes import Remote
    from influence_tui.core.types import LocalModel


def create_app(
    runner: EngineRunner,
    model: LocalModel,
    *,
    load: Callable[[], object] | None = None,
    on_load_failure: Callable[[BaseException], None] | None = None,
    settings: Settings | None = None,
    library: Library | None = None,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    upstreams: Sequence[Remote] = (),
) -> FastAPI:
    """The server for ``model`` on ``runner``.

    ``load`` (when given) loads the model on the runner; it runs on a thread once the app starts, and
    ``on_load_failure`` is called if it fails. Without it the runner must already hold the model.
    ``settings`` give the sampling defaults (and the library for embedding models); ``api_key`` makes every
    route but /health require ``Authorization: Bearer KEY``; ``cors_origins`` are allowed browser origins
    (``*`` for any). ``upstreams`` are remotes whose models are served beside ``model`` as ``MODEL@REMOTE``.
    """
    gateway = None
    if upstreams:
        from influence_tui.server.gateway import Gateway

        gateway = Gateway(upstreams)
    state = ServerState(
        runner, model, settings=settings or Settings(), library=library, api_key=api_key, gateway=gateway
    )
    if load is None:
        state.finish_loading()
    metrics = metrics_for(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if load is not None and state.status == "loading":
            state.start_loading(load, on_load_failure)
        try:
            yield
        finally:
            if gateway is not None:
                gateway.close()
            state.pool.close()

    app = FastAPI(
        title="Influence",
        version=__version__,
        summary="OpenAI- and Ollama-compatible API over a local model",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.influence = state
    app.state.metrics = metrics

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        report = state.health()
        status = 503 if state.stopping else {"ok": 200, "loading": 503, "error": 500}[state.status]
        return JSONResponse(report, status_code=status)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    for router in (openai_routes.router, openai_embeddings.router):
        app.include_router(router, prefix="/v1")
        app.include_router(router)  # the same routes without /v1, as llama.cpp serves them
    app.include_router(ollama_routes.router)

    app.add_exception_handler(APIError, handle_api_error)
    app.add_exception_handler(InfluenceError, handle_influence_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(Exception, handle_unexpected)

    # Added innermost first: the access log sees every answer, CORS answers preflights before the key check;
    # a request's model leases go back once its answer (streamed or not) is complete.
    app.add_middleware(LeaseMiddleware, pool=state.pool)
    if state.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=state.api_key)
    app.add_middleware(StoppingMiddleware, state=state)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
            allow_credentials="*" not in cors_origins,
        )
    app.add_middleware(AccessLogMiddleware)
    return app


def server_state(app: FastAPI) -> ServerState:
    """The state of an app made by :func:`create_app` (for the CLI and tests)."""
    state: ServerState = app.state.influence
    return state


def server_metrics(app: FastAPI) -> ServerMetrics:
    """The metrics of an app made by :func:`create_app`."""
    metrics: ServerMetrics = app.state.metrics
    return metrics
