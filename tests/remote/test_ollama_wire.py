"""Ollama's wire format as a remote, against our own server's Ollama routes (no Ollama server installs here), and
another ``influence serve`` as an OpenAI remote: same answers as asking the server directly, figures from it."""

from __future__ import annotations

import httpx
import pytest

from influence_tui.core.engine.remote import RemoteEngine
from influence_tui.core.engine.remote_http import detect_kind
from influence_tui.core.errors import RemoteError
from influence_tui.core.remote_catalog import list_remote
from influence_tui.core.remotes import Remote, RemoteModel
from influence_tui.core.types import ChatMessage, SamplingParams
from tests.server.conftest import Served

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, repeat_penalty=1.0)
MESSAGES = [ChatMessage("user", "Hello there")]


def test_the_kind_is_detected_from_what_answers(tiny_server: Served) -> None:
    # our server answers /api/tags (Ollama's list) as well as /v1/models: Ollama's richer routes win
    assert detect_kind(Remote(name="box", url=tiny_server.url, kind="openai")) == "ollama"


def test_an_ollama_remote_lists_chats_and_reports_the_servers_figures(tiny_server: Served) -> None:
    remote = Remote(name="box", url=tiny_server.url, kind="ollama")
    listing = list_remote(remote)
    assert listing.ok, listing.error
    names = [m.name for m in listing.models]
    # the loaded model first, then the rest of that server's library (it loads them on demand)
    assert names[0] == f"{tiny_server.model.name}@box" and all(name.endswith("@box") for name in names)
    assert "tiny-bert@box" in names
    engine = RemoteEngine(listing.models[0])
    info = engine.load()
    assert info.context_length == tiny_server.runner.info.context_length  # num_ctx from /api/show  # type: ignore[union-attr]
    assert info.device == f"remote {remote.host}"
    _plan, stream = engine.start_chat(MESSAGES, "Be brief.", GREEDY)
    text = stream.text()
    served = tiny_server.runner.streams[-1].stats
    assert stream.stats is not None and served is not None
    # the counts are the server's own (prompt_eval_count, eval_count), not estimates
    assert (stream.stats.prompt_tokens, stream.stats.generated_tokens) == (
        served.prompt_tokens,
        served.generated_tokens,
    )
    assert stream.stats.generated_tokens == 6 and stream.stats.finish_reason == "length"
    direct = httpx.post(
        f"{tiny_server.url}/api/chat",
        json={
            "model": tiny_server.model.name,
            "stream": False,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
            "options": {"temperature": 0, "num_predict": 6, "repeat_penalty": 1.0},
        },
        timeout=60,
    ).json()
    assert text == direct["message"]["content"]


def test_an_influence_server_as_an_openai_remote_gives_its_context_and_takes_the_extras(tiny_server: Served) -> None:
    remote = Remote(name="peer", url=f"{tiny_server.url}/v1", kind="openai")
    engine = RemoteEngine(RemoteModel(remote, tiny_server.model.name))
    info = engine.load()
    assert info.context_length == tiny_server.runner.info.context_length  # type: ignore[union-attr]
    plan, stream = engine.start_chat(MESSAGES, None, SamplingParams(temperature=0.0, max_tokens=4, top_k=3))
    assert plan.warning is None  # owned_by influence: top_k and the others are sent
    stream.text()
    assert stream.stats is not None and stream.stats.generated_tokens == 4
    assert stream.stats.prompt_tokens == tiny_server.runner.streams[-1].stats.prompt_tokens  # type: ignore[union-attr]


def test_a_model_the_server_does_not_serve_is_not_found(tiny_server: Served) -> None:
    remote = Remote(name="box", url=tiny_server.url, kind="ollama")
    with pytest.raises(RemoteError) as caught:
        RemoteEngine(RemoteModel(remote, "no-such-model")).load()
    assert caught.value.reason == "not_found" and caught.value.status == 404


def test_a_long_conversation_is_fitted_to_the_remote_context(tiny_server: Served) -> None:
    remote = Remote(name="box", url=tiny_server.url, kind="ollama", num_ctx=64)
    engine = RemoteEngine(RemoteModel(remote, tiny_server.model.name))
    assert engine.load().context_length == 64  # num_ctx from the remote's table wins
    history = []
    for turn in range(6):
        history += [ChatMessage("user", f"question {turn} " + "words " * 10), ChatMessage("assistant", "answer " * 5)]
    history.append(ChatMessage("user", "last question"))
    plan, conversation = engine.plan(history, None, SamplingParams(max_tokens=8))
    assert plan.dropped > 0 and plan.dropped_notice is not None
    assert conversation[-1] == {"role": "user", "content": "last question"}
    assert len(conversation) < len(history)
