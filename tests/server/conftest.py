"""A real uvicorn server on 127.0.0.1 in a background thread, around an app built on a runner we choose.

The tiny llama server is shared by the tests of a module (built in well under a second); tests that need
other settings (an API key, a slow engine, a model still loading) start their own.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from influence_tui.core.config import Settings
from influence_tui.core.engine.generate import generate_stream
from influence_tui.core.engine.runner import EngineRunner, LoadFn, TokenStream
from influence_tui.core.library import inspect_path
from influence_tui.core.types import LoadOptions, LocalModel, SamplingParams, TokenEvent
from influence_tui.server.app import create_app


class ServerThread:
    """uvicorn serving ``app`` on a free port of 127.0.0.1 until :meth:`stop`; with ``grace_s``, the server
    ``influence serve`` runs (:class:`~influence_tui.server.lifecycle.GracefulServer`), which a test stops as a
    signal would with ``server.handle_exit(signal.SIGTERM, None)``."""

    def __init__(self, app: Any, grace_s: float | None = None) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", access_log=False)
        if grace_s is None:
            self.server = uvicorn.Server(config)
        else:
            from influence_tui.server.app import server_state
            from influence_tui.server.lifecycle import GracefulServer

            self.server = GracefulServer(config, server_state(app), grace_s=grace_s)
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        port: int = self.server.servers[0].sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


class RecordingRunner(EngineRunner):
    """A runner that keeps every stream it hands out (to check what happened to a request server-side) and can
    slow each token down (so a test can leave a stream while its generation still runs)."""

    def __init__(self, delay: float = 0.0, load_fn: LoadFn | None = None) -> None:
        self.delay = delay
        self.streams: list[TokenStream] = []
        super().__init__(generate_fn=self._generate_slowly, load_fn=load_fn)

    def _generate_slowly(self, *args: Any, **kwargs: Any) -> Iterator[TokenEvent]:
        for event in generate_stream(*args, **kwargs):
            if self.delay and event.stats is None:
                time.sleep(self.delay)
            yield event

    def submit(self, prompt_ids: Any, params: SamplingParams, stop_event: threading.Event | None = None) -> TokenStream:
        stream = super().submit(prompt_ids, params, stop_event)
        self.streams.append(stream)
        return stream


@dataclass
class Served:
    server: ServerThread
    runner: RecordingRunner
    model: LocalModel
    settings: Settings

    @property
    def url(self) -> str:
        return self.server.url


def local_model(path: Path) -> LocalModel:
    (model,) = inspect_path(path)
    return model


def serve(runner: RecordingRunner, model: LocalModel, settings: Settings | None = None, **app_kwargs: Any) -> Served:
    settings = settings or Settings()
    app = create_app(runner, model, settings=settings, **app_kwargs)
    return Served(ServerThread(app).start(), runner, model, settings)


@pytest.fixture(scope="module")
def tiny_runner(tiny_llama_template: Path) -> Iterator[tuple[RecordingRunner, LocalModel]]:
    model = local_model(tiny_llama_template)
    runner = RecordingRunner()
    runner.load(model, LoadOptions(device="cpu", dtype="float32"))
    yield runner, model
    runner.close()


@pytest.fixture(scope="module")
def tiny_server(
    tiny_runner: tuple[RecordingRunner, LocalModel], tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The tiny llama behind a server; its library (for embedding models) holds the tiny BERT as ``tiny-bert``."""
    runner, model = tiny_runner
    models_dir = tmp_path_factory.mktemp("server-models")
    shutil.copytree(tiny_bert, models_dir / "tiny-bert")
    settings = replace(Settings(), models_dir=models_dir)
    served = serve(runner, model, settings)
    yield served
    served.server.stop()
