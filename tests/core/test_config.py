"""Settings: defaults < config file < .env < INFLUENCE_* environment < command-line flags, with sources and errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from influence_tui.core import paths
from influence_tui.core.config import (
    SETTING_NAMES,
    Settings,
    display_value,
    load_settings,
    read_config_file,
    setting_doc,
    write_setting,
)
from influence_tui.core.errors import ConfigError


@pytest.fixture
def config_file(isolated_env: Path) -> Path:
    path = paths.config_file()
    assert path == isolated_env / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def dotenv(isolated_env: Path) -> Path:
    path = Path.cwd() / ".env"
    assert path.parent == isolated_env / "work"
    return path


def _one_line_error(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------ layers


def test_defaults(isolated_env: Path) -> None:
    settings = load_settings()
    assert settings.temperature == 0.7
    assert settings.top_p == 0.9
    assert settings.top_k is None
    assert settings.port == 8080
    assert settings.device == "auto"
    assert settings.hub_endpoint == "https://huggingface.co"
    assert settings.hf_token is None
    assert settings.model is None
    assert settings.models_dir == isolated_env / "data" / "models"
    for name in ("temperature", "top_p", "port", "device", "model", "models_dir", "hub_endpoint"):
        assert settings.source(name) == "default"


def test_every_setting_is_documented() -> None:
    for name in SETTING_NAMES:
        assert setting_doc(name), name


def test_each_layer_beats_the_one_below(config_file: Path, dotenv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file.write_text(
        "temperature = 0.5\ntop_p = 0.5\nmax_tokens = 100\nport = 9001\n[server]\nhost = '0.0.0.0'\n",
        encoding="utf-8",
    )
    dotenv.write_text("INFLUENCE_TEMPERATURE=0.4\nINFLUENCE_TOP_P=0.4\nINFLUENCE_MAX_TOKENS=200\n", encoding="utf-8")
    monkeypatch.setenv("INFLUENCE_TEMPERATURE", "0.3")
    monkeypatch.setenv("INFLUENCE_TOP_P", "0.3")

    settings = load_settings({"temperature": "0.2", "top_k": None})

    assert (settings.temperature, settings.source("temperature")) == (0.2, "command line")
    assert (settings.top_p, settings.source("top_p")) == (0.3, "environment: INFLUENCE_TOP_P")
    assert (settings.max_tokens, settings.source("max_tokens")) == (200, f".env ({dotenv}): INFLUENCE_MAX_TOKENS")
    assert (settings.port, settings.source("port")) == (9001, f"config file ({config_file})")
    assert (settings.host, settings.source("host")) == ("0.0.0.0", f"config file ({config_file})")  # from a table
    assert (settings.repeat_penalty, settings.source("repeat_penalty")) == (1.1, "default")
    assert (settings.top_k, settings.source("top_k")) == (None, "default")  # a flag given as None is not given


def test_dotenv_syntax(dotenv: Path) -> None:
    dotenv.write_text(
        "# a comment\n"
        "\n"
        'export INFLUENCE_MODEL="my model # not a comment"\n'
        "INFLUENCE_PORT=9002 # a comment\n"
        "INFLUENCE_HOST='::1'\n"
        "UNRELATED=whatever\n",
        encoding="utf-8",
    )
    settings = load_settings()
    assert settings.model == "my model # not a comment"
    assert settings.port == 9002
    assert settings.host == "::1"


def test_dotenv_is_read_from_the_working_directory_only(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("INFLUENCE_PORT=9003\n", encoding="utf-8")  # the parent of the cwd
    assert load_settings().port == 8080
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".env").write_text("INFLUENCE_PORT=9004\n", encoding="utf-8")
    assert load_settings(cwd=elsewhere).port == 9004


def test_empty_variable_is_not_set(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file.write_text("temperature = 0.5\n", encoding="utf-8")
    monkeypatch.setenv("INFLUENCE_TEMPERATURE", "")
    settings = load_settings()
    assert (settings.temperature, settings.source("temperature")) == (0.5, f"config file ({config_file})")


def test_empty_top_k_means_off(config_file: Path, dotenv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file.write_text("top_k = 40\n", encoding="utf-8")
    assert load_settings().top_k == 40
    dotenv.write_text("INFLUENCE_TOP_K=\n", encoding="utf-8")
    settings = load_settings()
    assert (settings.top_k, settings.source("top_k")) == (None, f".env ({dotenv}): INFLUENCE_TOP_K")
    dotenv.unlink()
    monkeypatch.setenv("INFLUENCE_TOP_K", "")
    settings = load_settings()
    assert (settings.top_k, settings.source("top_k")) == (None, "environment: INFLUENCE_TOP_K")
    assert display_value(settings, "top_k") == "off"


@pytest.mark.parametrize("raw", ["0", "off", "none", " "])
def test_top_k_off_spellings(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("INFLUENCE_TOP_K", raw)
    assert load_settings().top_k is None


def test_top_k_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFLUENCE_TOP_K", "50")
    assert load_settings().top_k == 50
    assert load_settings({"top_k": 0}).top_k is None


def test_first_listed_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFLUENCE_MODEL", "second")
    monkeypatch.setenv("INFLUENCE_MODEL_PATH", "first")
    settings = load_settings()
    assert (settings.model, settings.source("model")) == ("first", "environment: INFLUENCE_MODEL_PATH")


def test_hf_token_and_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    settings = load_settings()
    assert (settings.hf_token, settings.source("hf_token")) == ("hf_abcdefghijklmnop", "environment: HF_TOKEN")
    assert settings.hub_endpoint == "https://hf-mirror.example"  # trailing slash dropped
    assert settings.source("hub_endpoint") == "environment: HF_ENDPOINT"
    shown = display_value(settings, "hf_token")
    assert "abcdefghijk" not in shown
    assert shown.startswith("hf_") and shown.endswith("mnop")


def test_influence_mirror_beats_hf_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-endpoint.example")
    monkeypatch.setenv("INFLUENCE_MIRROR", "https://influence-mirror.example")
    settings = load_settings()
    assert settings.hub_endpoint == "https://influence-mirror.example"
    assert settings.source("hub_endpoint") == "environment: INFLUENCE_MIRROR"
    flagged = load_settings({"hub_endpoint": "http://127.0.0.1:9999"})
    assert (flagged.hub_endpoint, flagged.source("hub_endpoint")) == ("http://127.0.0.1:9999", "command line")


def test_influence_hf_token_beats_hf_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "from-hf")
    monkeypatch.setenv("INFLUENCE_HF_TOKEN", "from-influence")
    assert load_settings().hf_token == "from-influence"


def test_paths_are_absolute(monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> None:
    monkeypatch.setenv("INFLUENCE_MODELS_DIR", "relative/models")
    settings = load_settings()
    assert settings.models_dir == isolated_env / "work" / "relative" / "models"
    assert settings.source("models_dir") == "environment: INFLUENCE_MODELS_DIR"
    assert load_settings({"models_dir": "~/m"}).models_dir == Path.home() / "m"


def test_settings_are_frozen_and_compared_without_sources() -> None:
    settings = load_settings()
    with pytest.raises(AttributeError):
        settings.temperature = 1.0  # type: ignore[misc]
    assert load_settings({"port": 8080}) == settings  # same values, different sources
    assert Settings().source("port") == "default"


# ------------------------------------------------------------------------------------------ errors


def test_bad_number_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFLUENCE_TEMPERATURE", "hot")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = _one_line_error(excinfo)
    assert "INFLUENCE_TEMPERATURE" in message
    assert "environment" in message
    assert "'hot'" in message
    assert "not a number" in message


def test_port_out_of_range_on_the_command_line() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings({"port": "99999"})
    message = _one_line_error(excinfo)
    assert "--port" in message
    assert "command line" in message
    assert "99999" in message
    assert "out of range" in message


def test_unknown_device_in_config_file(config_file: Path) -> None:
    config_file.write_text('device = "tpu"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = _one_line_error(excinfo)
    assert "device" in message
    assert str(config_file) in message
    assert "'tpu'" in message
    assert "cpu" in message  # the choices


def test_bad_value_in_dotenv(dotenv: Path) -> None:
    dotenv.write_text("INFLUENCE_PORT=eighty\n", encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = _one_line_error(excinfo)
    assert "INFLUENCE_PORT" in message
    assert str(dotenv) in message


def test_bad_toml(config_file: Path) -> None:
    config_file.write_text("temperature = = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = _one_line_error(excinfo)
    assert str(config_file) in message
    assert "not valid TOML" in message


def test_unknown_key_in_config_file(config_file: Path) -> None:
    config_file.write_text("temprature = 0.5\n", encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = _one_line_error(excinfo)
    assert message.startswith(f"unknown setting 'temprature' in {config_file} (")
    assert "did you mean 'temperature'?" in message
    assert "max_tokens" in message  # the known settings are listed


def test_unknown_key_in_a_config_table(config_file: Path) -> None:
    config_file.write_text("[server]\nbind = '0.0.0.0'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown setting 'bind'"):
        load_settings()


def test_wrong_toml_type(config_file: Path) -> None:
    config_file.write_text("temperature = true\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a number"):
        load_settings()


def test_malformed_dotenv_line(dotenv: Path) -> None:
    dotenv.write_text("INFLUENCE_PORT=9000\nthis line is wrong\n", encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = _one_line_error(excinfo)
    assert str(dotenv) in message
    assert "line 2" in message
    assert "this line is wrong" in message


def test_unknown_flag_name() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings({"colour": "red"})


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("INFLUENCE_TOP_P", "1.5"),
        ("INFLUENCE_MIN_P", "-0.1"),
        ("INFLUENCE_MAX_TOKENS", "0"),
        ("INFLUENCE_SEED", "-1"),
        ("INFLUENCE_DTYPE", "int4"),
        ("INFLUENCE_MIRROR", "ftp://mirror"),
        ("INFLUENCE_HOST", "two words"),
        ("INFLUENCE_TEMPERATURE", "nan"),
    ],
)
def test_more_bad_values(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = _one_line_error(excinfo)
    assert var in message
    assert "environment" in message


# ------------------------------------------------------------------------------------------ write_setting


def test_write_setting_round_trip(config_file: Path) -> None:
    assert write_setting("temperature", "0.3") == config_file
    assert write_setting("model", 'a "quoted" \\ name') == config_file
    settings = load_settings()
    assert (settings.temperature, settings.source("temperature")) == (0.3, f"config file ({config_file})")
    assert settings.model == 'a "quoted" \\ name'

    write_setting("temperature", None)
    settings = load_settings()
    assert (settings.temperature, settings.source("temperature")) == (0.7, "default")
    assert settings.model == 'a "quoted" \\ name'  # the other setting is kept
    assert "temperature" not in read_config_file(config_file)


def test_write_setting_off_and_paths(config_file: Path, isolated_env: Path) -> None:
    write_setting("top_k", "40")
    assert load_settings().top_k == 40
    write_setting("top_k", "off")
    assert load_settings().top_k is None
    write_setting("models_dir", "relative/models")
    assert load_settings().models_dir == isolated_env / "work" / "relative" / "models"
    assert load_settings(cwd=isolated_env).models_dir == isolated_env / "work" / "relative" / "models"


@pytest.mark.parametrize("name", ["model", "hf_token"])
def test_write_an_empty_text_setting(config_file: Path, name: str) -> None:
    write_setting(name, "")
    settings = load_settings()
    assert getattr(settings, name) is None  # not the text "off"
    assert display_value(settings, name) == "unset"


def test_write_setting_keeps_values_from_tables(config_file: Path) -> None:
    config_file.write_text("[server]\nport = 9005\n", encoding="utf-8")
    write_setting("temperature", "1.2")
    settings = load_settings()
    assert (settings.port, settings.temperature) == (9005, 1.2)


def test_write_setting_is_atomic(config_file: Path) -> None:
    write_setting("port", "9006")
    before = os.stat(config_file).st_ino
    write_setting("port", "9007")
    assert os.stat(config_file).st_ino != before  # a new file renamed over the old one, not rewritten in place
    assert sorted(p.name for p in config_file.parent.iterdir()) == ["config.toml"]  # no temp file left
    assert load_settings().port == 9007


def test_write_setting_creates_the_config_dir(isolated_env: Path) -> None:
    path = write_setting("device", "cpu")
    assert path == isolated_env / "config" / "config.toml"
    assert load_settings().device == "cpu"


@pytest.mark.parametrize(("name", "raw"), [("temperature", "hot"), ("port", "99999"), ("colour", "red")])
def test_write_setting_refuses_bad_values(config_file: Path, name: str, raw: str) -> None:
    config_file.write_text("# mine\ntemperature = 0.5\n", encoding="utf-8")
    before = config_file.read_bytes()
    with pytest.raises(ConfigError) as excinfo:
        write_setting(name, raw)
    assert name in _one_line_error(excinfo)
    assert config_file.read_bytes() == before
    assert sorted(p.name for p in config_file.parent.iterdir()) == ["config.toml"]


def test_write_setting_never_overwrites_a_corrupt_file(config_file: Path) -> None:
    config_file.write_text("temperature = = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        write_setting("port", "9000")
    assert config_file.read_text(encoding="utf-8") == "temperature = = 1\n"


def test_unset_a_setting_that_is_not_set(config_file: Path) -> None:
    with pytest.raises(ConfigError, match="'port' is not set"):
        write_setting("port", None)
    assert not config_file.exists()
