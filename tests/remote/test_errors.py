"""Every way a remote can fail, against a scripted server on 127.0.0.1: each an actionable RemoteError, never a hang."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

import httpx
import pytest

from influence_tui.core.engine.remote import RemoteEngine, RemoteTokenStream
from influence_tui.core.engine.remote_http import RemoteClient
from influence_tui.core.errors import RemoteError
from influence_tui.core.remotes import Remote, RemoteModel
from influence_tui.core.types import ChatMessage, SamplingParams
from tests.remote.scripted import (
    END,
    MODELS,
    ScriptedServer,
    Seen,
    Step,
    chunk,
    chunked_head,
    delta,
    response,
    sse,
)

KEY = "sk-test-0123456789abcdef"
QUESTION = [ChatMessage("user", "Hi")]


@pytest.fixture
def scripted() -> Iterator[list[ScriptedServer]]:
    servers: list[ScriptedServer] = []
    yield servers
    for server in servers:
        server.stop()


def serve(servers: list[ScriptedServer], chat: list[Step] | None = None, models: object = MODELS) -> ScriptedServer:
    """A remote answering /v1/models with ``models`` and a chat with the ``chat`` steps."""

    def script(seen: Seen) -> Iterable[Step]:
        if seen.path.endswith("/models"):
            return response(200, models)
        return chat or response(500, {"error": {"message": "no script"}})

    server = ScriptedServer(script)
    servers.append(server)
    return server


def remote_at(url: str, **kw: object) -> Remote:
    return Remote(name="lab", url=url + "/v1", kind="openai", read_timeout_s=2.0, **kw)  # type: ignore[arg-type]


def ask(remote: Remote, params: SamplingParams | None = None) -> tuple[str, RemoteTokenStream]:
    engine = RemoteEngine(RemoteModel(remote, "m"))
    engine.load()
    _plan, stream = engine.start_chat(QUESTION, None, params or SamplingParams(max_tokens=8))
    return stream.text(), stream


def failure(remote: Remote) -> RemoteError:
    with pytest.raises(RemoteError) as caught:
        ask(remote)
    return caught.value


def sse_reply(*events: bytes) -> list[Step]:
    return [chunked_head(), *events, END]


def test_a_reply_streams_with_usage_and_the_request_carries_the_key_and_the_sampling(
    scripted: list[ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
    server = serve(scripted, sse_reply(sse(delta("Hello")), sse(delta(" world", "stop")), sse(usage), sse(b"[DONE]")))
    monkeypatch.setenv("LAB_KEY", KEY)
    params = SamplingParams(temperature=0.0, top_k=5, min_p=0.1, seed=3, stop=("END",), max_tokens=9)
    text, stream = ask(remote_at(server.url, api_key_env="LAB_KEY"), params)
    assert text == "Hello world"
    assert stream.stats is not None
    assert (stream.stats.prompt_tokens, stream.stats.generated_tokens) == (7, 2)
    assert stream.stats.finish_reason == "stop"
    chat = server.seen[-1]
    assert chat.path == "/v1/chat/completions"
    assert chat.headers["authorization"] == f"Bearer {KEY}"
    body = chat.body
    assert body["model"] == "m" and body["stream"] is True and body["messages"] == [{"role": "user", "content": "Hi"}]
    assert (body["temperature"], body["max_tokens"], body["seed"], body["stop"]) == (0.0, 9, 3, ["END"])
    # owned_by "vllm": a server known to take the extra sampling fields
    assert (body["top_k"], body["min_p"], body["repetition_penalty"]) == (5, 0.1, 1.1)


def test_a_server_not_known_to_take_extras_gets_none_and_the_plan_says_so(scripted: list[ScriptedServer]) -> None:
    models = {"data": [{"id": "m", "owned_by": "openai"}]}
    server = serve(scripted, sse_reply(sse(delta("ok", "stop"))), models=models)
    engine = RemoteEngine(RemoteModel(remote_at(server.url), "m"))
    info = engine.load()
    assert info.context_length == 0  # not given: unknown, the prompt is sent whole
    plan, stream = engine.start_chat(QUESTION, None, SamplingParams(top_k=40))
    assert stream.text() == "ok"
    assert plan.warning is not None and "top_k" in plan.warning and "repeat_penalty" in plan.warning
    assert not {"top_k", "min_p", "repeat_penalty", "repetition_penalty"} & set(server.seen[-1].body)


def test_a_refused_key_says_which_variable_to_fix_and_never_shows_the_key(
    scripted: list[ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    echo = {"error": {"message": f"Incorrect API key provided: {KEY}"}}
    server = ScriptedServer(lambda seen: response(401, echo))
    scripted.append(server)
    monkeypatch.setenv("LAB_KEY", KEY)
    error = failure(remote_at(server.url, api_key_env="LAB_KEY"))
    assert error.reason == "auth" and error.status == 401
    assert "refused the API key" in error.message and "$LAB_KEY" in (error.hint or "")
    assert KEY not in str(error) and "***" in str(error)


def test_a_model_that_is_gone_is_a_not_found_with_what_the_remote_serves(scripted: list[ScriptedServer]) -> None:
    server = serve(scripted)
    with pytest.raises(RemoteError) as caught:
        RemoteEngine(RemoteModel(remote_at(server.url), "gone")).load()
    assert caught.value.reason == "not_found" and "it serves: m" in caught.value.message
    # listed, then removed before the chat: the remote's 404 on the chat itself
    server2 = serve(scripted, response(404, {"error": {"message": "The model `m` does not exist."}}))
    error = failure(remote_at(server2.url))
    assert error.reason == "not_found" and "has no model 'm'" in error.message
    assert "influence list --remote" in (error.hint or "")


@pytest.mark.parametrize(("status", "words"), [(429, "limiting requests"), (503, "busy or still loading")])
def test_busy_answers_carry_retry_after(scripted: list[ScriptedServer], status: int, words: str) -> None:
    server = serve(scripted, response(status, {"error": "slow down"}, headers={"Retry-After": "7"}))
    error = failure(remote_at(server.url))
    assert error.reason == "busy" and error.status == status and error.retry_after == 7.0
    assert words in error.message and "slow down" in error.message and error.hint == "try again in 7 s"


def test_a_server_error_passes_its_message_on(scripted: list[ScriptedServer]) -> None:
    server = serve(scripted, response(500, {"detail": "CUDA out of memory"}))
    error = failure(remote_at(server.url))
    assert error.reason == "server" and "HTTP 500: CUDA out of memory" in error.message


def test_a_stream_cut_mid_reply_keeps_the_text_and_says_interrupted(scripted: list[ScriptedServer]) -> None:
    server = serve(scripted, [chunked_head(), sse(delta("Hello")), sse(delta(" wor")), 0.05, None])
    error = failure(remote_at(server.url))
    assert error.interrupted and error.partial_text == "Hello wor"
    assert "broke in the middle of the reply" in error.message and "kept" in (error.hint or "")


@pytest.mark.parametrize(
    ("events", "reason", "words"),
    [
        ([sse(delta("Hi")), sse(b"[DONE]")], "interrupted", "without a finish reason"),
        ([sse(delta("Hi"))], "interrupted", "without a finish reason"),
        ([sse(b"{not json")], "protocol", "not JSON"),
        ([sse({"id": 1})], "protocol", '"choices"'),
        ([sse(delta("Hi")), sse({"error": {"message": "engine died"}})], "interrupted", "engine died"),
    ],
    ids=["done-without-finish", "eof-without-finish", "malformed", "no-choices", "error-event"],
)
def test_broken_streams(scripted: list[ScriptedServer], events: list[bytes], reason: str, words: str) -> None:
    server = serve(scripted, sse_reply(*events))
    error = failure(remote_at(server.url))
    assert error.reason == reason and words in error.message


def test_a_silent_server_times_out_instead_of_hanging(scripted: list[ScriptedServer]) -> None:
    server = serve(scripted, [chunked_head(), sse(delta("Hi")), 5.0, END])
    started = time.monotonic()
    remote = Remote(name="lab", url=server.url + "/v1", kind="openai", read_timeout_s=0.4)
    error = failure(remote)
    assert time.monotonic() - started < 3.0
    assert error.reason == "timeout" and "sent nothing for 0.4 s" in error.message
    assert "read_timeout" in (error.hint or "")


def test_an_unreachable_host_and_a_tls_failure_are_said_as_such(
    scripted: list[ScriptedServer], unused_port: int
) -> None:
    error = failure(Remote(name="lab", url=f"http://127.0.0.1:{unused_port}/v1", kind="openai"))
    assert error.reason == "unreachable" and "cannot reach lab" in error.message
    assert "influence remote test lab" in (error.hint or "")
    server = serve(scripted)  # plain HTTP: a TLS handshake with it fails
    error = failure(Remote(name="lab", url=server.url.replace("http://", "https://") + "/v1", kind="openai"))
    assert error.reason == "tls" and "TLS" in error.message and "http://" in (error.hint or "")


def test_connect_timeouts_are_worded_with_the_limit() -> None:
    client = RemoteClient(Remote(name="lab", url="http://127.0.0.1:9/v1", kind="openai", connect_timeout_s=1.5))
    error = client.transport_error(httpx.ConnectTimeout("timed out"))
    assert error.reason == "timeout" and "did not accept a connection within 1.5 s" in error.message


def test_a_redirect_is_not_followed_so_the_key_stays_with_its_remote(
    scripted: list[ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = serve(scripted)
    redirecting = ScriptedServer(lambda seen: response(307, b"", headers={"Location": elsewhere.url + seen.path}))
    scripted.append(redirecting)
    monkeypatch.setenv("LAB_KEY", KEY)
    with pytest.raises(RemoteError) as caught:
        RemoteEngine(RemoteModel(remote_at(redirecting.url, api_key_env="LAB_KEY"), "m")).load()
    assert "redirect" in caught.value.message and "not followed" in caught.value.message
    assert elsewhere.seen == []  # nothing, and so no key, went to the other host


def test_cancel_ends_the_stream_at_once_and_closes_the_connection(scripted: list[ScriptedServer]) -> None:
    closed = threading.Event()

    def script(seen: Seen) -> Iterable[Step]:
        if seen.path.endswith("/models"):
            yield from response(200, MODELS)
            return
        yield chunked_head()
        yield sse(delta("first"))
        try:
            for _ in range(100):  # silent for up to 10 s, then more: only a closed connection ends it early
                yield 0.1
        finally:
            closed.set()

    server = ScriptedServer(script)
    scripted.append(server)
    remote = Remote(name="lab", url=server.url + "/v1", kind="openai", read_timeout_s=30.0)
    engine = RemoteEngine(RemoteModel(remote, "m"))
    engine.load()
    stop = threading.Event()
    _plan, stream = engine.start_chat(QUESTION, None, SamplingParams(), stop)
    assert next(stream).text == "first"
    started = time.monotonic()
    threading.Timer(0.2, stop.set).start()  # as Esc in the TUI sets the worker's cancel event
    final = next(stream)
    assert time.monotonic() - started < 1.0
    assert final.stats is not None and final.stats.finish_reason == "cancelled"
    assert stream.finished
    stream._thread.join(2.0)
    assert not stream._thread.is_alive()  # the reader woke up (the socket was shut) and closed the connection


def test_wait_open_raises_the_refusal_before_any_stream(scripted: list[ScriptedServer]) -> None:
    server = serve(scripted, response(429, {"error": "busy"}, headers={"Retry-After": "2"}))
    engine = RemoteEngine(RemoteModel(remote_at(server.url), "m"))
    engine.load()
    _plan, stream = engine.start_chat(QUESTION, None, SamplingParams())
    with pytest.raises(RemoteError) as caught:
        stream.wait_open(5.0)
    assert caught.value.status == 429


def test_a_missing_key_variable_is_said_before_anything_is_sent(
    scripted: list[ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(scripted)
    monkeypatch.delenv("LAB_KEY", raising=False)
    with pytest.raises(RemoteError) as caught:
        RemoteEngine(RemoteModel(remote_at(server.url, api_key_env="LAB_KEY"), "m")).load()
    assert caught.value.reason == "config" and "$LAB_KEY" in caught.value.message
    assert server.seen == []


def test_chunks_are_not_needed_whole(scripted: list[ScriptedServer]) -> None:
    """An event split across network chunks, CRLF line ends and comments still parse."""
    event = b'data: {"choices": [{"delta": {"content": "Pa"}, "finish_reason": null}]}\r\n\r\n'
    tail = b': keep-alive\n\ndata: {"choices": [{"delta": {"content": "ris"}, "finish_reason": "stop"}]}\n\n'
    server = serve(scripted, [chunked_head(), chunk(event[:20]), chunk(event[20:]), chunk(tail), END])
    text, _stream = ask(remote_at(server.url))
    assert text == "Paris"
