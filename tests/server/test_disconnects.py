"""Clients that leave mid-reply while others complete, against a batching server (the fast version of
``bench/serve_disconnects.py``): every completed answer is its solo greedy text, and nothing is left running."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest

from bench.serve_disconnects import mismatches, questions, run, solo, wait_idle
from influence_tui.core.config import Settings
from influence_tui.core.engine.runner import EngineRunner
from influence_tui.core.model_ids import model_id
from influence_tui.core.types import LoadOptions
from influence_tui.server.app import create_app
from tests.server.conftest import ServerThread, local_model


def test_twelve_clients_some_leaving_the_rest_get_their_solo_texts(tiny_llama_template: Path, tmp_path: Path) -> None:
    model = local_model(tiny_llama_template)
    runner = EngineRunner(max_batch=4, queue_limit=32, prompt_cache_mib=16)
    runner.load(model, LoadOptions(device="cpu", dtype="float32", quantize="int8", cache_dir=tmp_path / "cache"))
    server = ServerThread(create_app(runner, model, settings=Settings())).start()
    name = model_id(model)
    try:
        asked = questions(6)
        alone = solo(server.url, name, asked, max_tokens=40)
        assert len(set(alone)) > 3
        outcomes = run(server.url, name, asked, requests=12, seed=3, max_tokens=40, leave=0.5, leave_s=(0.01, 0.2))
        left = [o for o in outcomes if not o.completed]
        assert left and any(o.stream for o in left)  # some left part-way, streamed ones among them
        assert len(left) < len(outcomes)
        assert mismatches(outcomes, alone) == []
        assert all(o.finish in ("stop", "length") for o in outcomes if o.completed)
        assert wait_idle(server.url, timeout=20)
        # what the leavers had started is gone from the engine; their caches are in the bounded prompt cache only
        cache = runner.prompt_cache_report()
        assert cache["bytes"] <= cache["max_bytes"]
        again = solo(server.url, name, asked, max_tokens=40)  # warm now, and still the same texts
        assert again == alone
    finally:
        server.stop()
        runner.close()
    gc.collect()
    deadline = time.monotonic() + 5
    while runner._thread.is_alive():  # the engine thread ends with close()
        if time.monotonic() > deadline:
            pytest.fail("the engine thread is still running")
        time.sleep(0.05)
