"""The remotes ``influence serve --upstream NAME`` serves beside the local model: their models and engines.

A request whose ``model`` is ``MODEL@REMOTE`` for one of the upstreams goes to that remote's engine; its
reply streams back through the same routes, events and error shapes as the local model's. The client's own
``Authorization`` header is never passed on: each remote gets its own key (from its variable), and nothing
else. Model lists are fetched from every upstream in parallel with a short timeout and cached for a while, so
a slow or unreachable upstream only drops its own models from ``/v1/models`` and ``/api/tags``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import anyio.to_thread

from influence_tui.core.engine.remote import RemoteEngine, RemoteTokenStream
from influence_tui.core.engine.remote_http import RemoteClient
from influence_tui.core.remote_catalog import list_remotes
from influence_tui.core.remotes import Remote, RemoteListing, RemoteModel, split_model_ref
from influence_tui.core.sessions import PromptPlan
from influence_tui.core.types import ChatMessage, SamplingParams
from influence_tui.server.clock import utc_iso

log = logging.getLogger("influence.server")

LIST_TTL_S = 30.0
LIST_TIMEOUT_S = 3.0


def _strip_latest(name: str) -> str:
    return name[: -len(":latest")] if name.endswith(":latest") else name


class Gateway:
    """The upstream remotes of one server. Its blocking calls run on worker threads (see the async helpers)."""

    def __init__(self, remotes: Sequence[Remote], *, list_ttl_s: float = LIST_TTL_S) -> None:
        self.remotes = {remote.name: remote for remote in remotes}
        self.list_ttl_s = list_ttl_s
        self._clients = {remote.name: RemoteClient(remote) for remote in remotes}
        self._engines: dict[str, RemoteEngine] = {}
        self._listing: tuple[float, list[RemoteListing]] | None = None
        self._lock = threading.Lock()

    def names(self, requested: str | None) -> tuple[Remote, str] | None:
        """``(remote, model_id)`` when ``requested`` is ``MODEL@REMOTE`` for an upstream (``:latest`` as
        Ollama clients add it is ignored), else None: the local model's routes answer."""
        if not requested:
            return None
        return split_model_ref(requested.strip(), self.remotes) or split_model_ref(
            _strip_latest(requested.strip()), self.remotes
        )

    def engine(self, requested: str) -> RemoteEngine:
        """The engine of an upstream model, asked about the model on first use (blocking)."""
        found = self.names(requested)
        assert found is not None
        remote, model_id = found
        name = f"{model_id}@{remote.name}"
        with self._lock:
            engine = self._engines.get(name)
        if engine is not None:
            return engine
        engine = RemoteEngine(RemoteModel(remote, model_id), client=self._clients[remote.name])
        engine.load()
        log.info("%s", engine.describe())
        with self._lock:
            return self._engines.setdefault(name, engine)

    def listings(self) -> list[RemoteListing]:
        """Every upstream's models (blocking; cached for :attr:`list_ttl_s`)."""
        with self._lock:
            cached = self._listing
        if cached is not None and time.monotonic() - cached[0] < self.list_ttl_s:
            return cached[1]
        listings = list_remotes(self.remotes.values(), LIST_TIMEOUT_S)
        for listing in listings:
            if listing.error:
                log.warning("upstream %s: %s", listing.remote.name, listing.error)
        with self._lock:
            self._listing = (time.monotonic(), listings)
        return listings

    def models(self) -> list[RemoteModel]:
        return [model for listing in self.listings() for model in listing.models]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


# ------------------------------------------------------------------------------------------ Ollama's views


def _ollama_details(model: RemoteModel) -> dict[str, Any]:
    family = model.family or "remote"
    return {
        "parent_model": "",
        "format": model.format_label,
        "family": family,
        "families": [family],
        "parameter_size": model.parameters or "",
        "quantization_level": model.quantization or "",
    }


def ollama_tag(model: RemoteModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "model": model.name,
        "modified_at": utc_iso(0),
        "size": model.size_bytes,
        "digest": hashlib.sha256(f"{model.remote.url}\0{model.model_id}".encode()).hexdigest(),
        "details": _ollama_details(model),
        "remote_host": model.host,
    }


def ollama_show(engine: RemoteEngine) -> dict[str, Any]:
    model = engine.model
    context = engine.info.context_length if engine.info else 0
    return {
        "license": "",
        "modelfile": f"# {model.model_id} on {model.remote.name} ({model.remote.api_base}), through Influence\n",
        "parameters": f"num_ctx {context}" if context else "",
        "template": "",
        "details": _ollama_details(model),
        "model_info": {"general.architecture": model.family or "remote", "remote.context_length": context or None},
        "capabilities": ["completion"],
        "modified_at": utc_iso(0),
    }


# ------------------------------------------------------------------------------------------ for the routes


async def upstream_engine(gateway: Gateway | None, requested: str | None) -> RemoteEngine | None:
    """The remote engine a request's ``model`` names, or None for the local model."""
    if gateway is None or gateway.names(requested) is None:
        return None
    assert requested is not None
    return await anyio.to_thread.run_sync(gateway.engine, requested)


async def upstream_models(gateway: Gateway | None) -> list[RemoteModel]:
    if gateway is None:
        return []
    return await anyio.to_thread.run_sync(gateway.models)


async def open_chat(
    engine: RemoteEngine, messages: Sequence[ChatMessage], params: SamplingParams
) -> tuple[PromptPlan, RemoteTokenStream]:
    """Send a conversation and wait until the remote has accepted it, so that its refusal (a 404, a 429...)
    is the answer's status rather than an error inside a stream that already said 200."""

    def start() -> tuple[PromptPlan, RemoteTokenStream]:
        plan, stream = engine.start_chat(messages, None, params)
        stream.wait_open()
        return plan, stream

    return await anyio.to_thread.run_sync(start)


async def open_completion(engine: RemoteEngine, prompt: str, params: SamplingParams) -> RemoteTokenStream:
    def start() -> RemoteTokenStream:
        stream = engine.start_completion(prompt, params)
        stream.wait_open()
        return stream

    return await anyio.to_thread.run_sync(start)
