"""Named remotes in the config file and `influence remote add | list | show | rm | test`, `influence list`'s remote
rows: keys only as ${VAR} references, never printed; an unreachable remote is one line, not a failed listing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from influence_tui.cli import main
from influence_tui.core import paths
from influence_tui.core.config import load_settings, write_setting
from influence_tui.core.errors import ConfigError
from influence_tui.core.remotes import Remote, load_remotes, save_remote
from tests.remote.scripted import MODELS, ScriptedServer, response
from tests.server.conftest import Served

SECRET = "sk-never-print-me-42"


@pytest.fixture
def openai_like() -> Iterator[ScriptedServer]:
    """An OpenAI-compatible remote that only lists models (404 for Ollama's /api/tags)."""
    server = ScriptedServer(
        lambda seen: response(200, MODELS) if seen.path == "/v1/models" else response(404, {"error": "no route"})
    )
    yield server
    server.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_add_detects_the_kind_and_stores_only_a_reference_to_the_key(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    openai_like: ScriptedServer,
    tiny_server: Served,
) -> None:
    monkeypatch.setenv("LAB_KEY", SECRET)
    code, out, _ = run(capsys, "remote", "add", "lab", openai_like.url, "--api-key-env", "LAB_KEY")
    assert code == 0 and "openai API at" in out
    assert openai_like.seen[-1].headers["authorization"] == f"Bearer {SECRET}"  # detection asked with the key
    code, out, _ = run(capsys, "remote", "add", "box", tiny_server.url)
    assert code == 0 and "ollama API" in out
    text = paths.config_file().read_text()
    assert SECRET not in text and 'api_key = "${LAB_KEY}"' in text
    remotes = load_remotes()
    assert (remotes["lab"].kind, remotes["lab"].api_key_env, remotes["box"].kind) == ("openai", "LAB_KEY", "ollama")
    assert remotes["lab"].api_base == openai_like.url + "/v1"  # a URL without a path gets /v1
    code, _, err = run(capsys, "remote", "add", "lab", openai_like.url)
    assert code == 1 and "already a remote named lab" in err and "--replace" in err


def test_list_show_test_and_rm_never_print_the_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, openai_like: ScriptedServer
) -> None:
    monkeypatch.setenv("LAB_KEY", SECRET)
    save_remote(Remote(name="lab", url=openai_like.url + "/v1", kind="openai", api_key_env="LAB_KEY"))
    outputs = []
    code, out, _ = run(capsys, "remote", "list")
    assert code == 0 and "lab" in out and "$LAB_KEY (set)" in out
    outputs.append(out)
    code, out, _ = run(capsys, "remote", "list", "--json")
    assert json.loads(out)[0]["api_key_set"] is True
    outputs.append(out)
    code, out, _ = run(capsys, "remote", "show", "lab")
    assert code == 0 and "1: m" in out
    outputs.append(out)
    code, out, _ = run(capsys, "remote", "test", "lab", "--model", "m")
    assert code == 0 and "lab: ok" in out and "1 model" in out and "m@lab is served there" in out
    outputs.append(out)
    code, out, err = run(capsys, "list", "--remote", "--json")
    assert [m["name"] for m in json.loads(out)] == ["m@lab"]
    outputs.append(out + err)
    assert all(SECRET not in text for text in outputs)
    code, out, _ = run(capsys, "remote", "rm", "lab")
    assert code == 0 and load_remotes() == {}


def test_a_key_written_in_clear_is_refused_with_what_to_do_instead() -> None:
    config = paths.config_file()
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[remotes.gpu]\nurl = "http://gpu:8000/v1"\napi_key = "sk-abc"\n')
    with pytest.raises(ConfigError) as caught:
        load_remotes()
    assert "not a ${VAR} reference" in caught.value.message and "--api-key-env" in (caught.value.hint or "")


def test_settings_and_remotes_live_side_by_side_in_the_config_file() -> None:
    save_remote(Remote(name="gpu", url="http://gpu:8000/v1", kind="openai", api_key_env="GPU_KEY", read_timeout_s=300))
    write_setting("temperature", "0.3")  # rewrites the file: the remote table stays
    assert load_settings().temperature == 0.3
    (gpu,) = load_remotes().values()
    assert (gpu.url, gpu.read_timeout_s, gpu.api_key_env) == ("http://gpu:8000/v1", 300.0, "GPU_KEY")
    save_remote(Remote(name="ollama.home", url="http://home:11434", kind="ollama", num_ctx=16384, keep_alive="30m"))
    assert load_settings().temperature == 0.3
    assert load_remotes()["ollama.home"].num_ctx == 16384


def test_an_unreachable_remote_is_one_line_beside_the_local_models(
    capsys: pytest.CaptureFixture[str], unused_port: int, openai_like: ScriptedServer
) -> None:
    save_remote(Remote(name="down", url=f"http://127.0.0.1:{unused_port}/v1", kind="openai"))
    save_remote(Remote(name="lab", url=openai_like.url + "/v1", kind="openai"))
    started = time.monotonic()
    code, out, _ = run(capsys, "list")
    assert code == 0 and time.monotonic() - started < 10
    assert "(demo)" in out and "m@lab" in out and "remote 127.0.0.1:" in out
    assert "@down unreachable: cannot reach down" in out
    seen = len(openai_like.seen)
    code, out, _ = run(capsys, "list", "--local")
    assert code == 0 and "m@lab" not in out and len(openai_like.seen) == seen  # --local asks no remote


def test_a_model_at_an_unknown_remote_says_which_remotes_there_are(capsys: pytest.CaptureFixture[str]) -> None:
    save_remote(Remote(name="gpu", url="http://gpu:8000/v1", kind="openai"))
    code, _, err = run(capsys, "generate", "hi", "--model", "qwen@gpux")
    assert code == 1 and "no remote named 'gpux'" in err and "remotes: gpu" in err


def test_remote_test_fails_with_the_reason(capsys: pytest.CaptureFixture[str], unused_port: int) -> None:
    save_remote(Remote(name="down", url=f"http://127.0.0.1:{unused_port}/v1", kind="openai"))
    code, _, err = run(capsys, "remote", "test", "down")
    assert code == 1 and "down: FAILED" in err and "cannot reach down" in err


def test_detection_that_finds_nothing_asks_for_the_kind(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    nothing = ScriptedServer(lambda seen: response(404, {"error": "nothing here"}))
    try:
        code, _, err = run(capsys, "remote", "add", "odd", nothing.url)
    finally:
        nothing.stop()
    assert code == 1 and "could not tell what" in err and "--kind openai|ollama" in err
    assert load_remotes() == {}


def test_serve_takes_upstreams_by_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_llama: Path
) -> None:
    from influence_tui.cli import server_cmds

    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(server_cmds, "_serve", lambda *args: calls.append(args) or 0)
    save_remote(Remote(name="gpu", url="http://gpu:8000/v1", kind="openai"))
    assert main(["serve", "--model", str(tiny_llama), "--upstream", "gpu", "--upstream", "gpu"]) == 0
    (upstream,) = calls[-1][4]  # type: ignore[misc]
    assert upstream.name == "gpu"
    code, _, err = run(capsys, "serve", "--model", str(tiny_llama), "--upstream", "gpux")
    assert code == 1 and "no remote named gpux" in err and "remotes: gpu" in err


def test_a_key_given_where_its_variable_goes_is_refused_without_echoing_it(
    capsys: pytest.CaptureFixture[str], openai_like: ScriptedServer
) -> None:
    code, out, err = run(capsys, "remote", "add", "lab", openai_like.url, "--api-key-env", SECRET)
    assert code == 1 and "not a key" in err and "export VLLM_API_KEY" in err
    assert SECRET not in out + err and openai_like.seen == [] and load_remotes() == {}
    code, _, err = run(capsys, "remote", "add", "lab", openai_like.url, "--api-key-env", "1ABC")
    assert code == 1 and "not '1ABC'" in err
