"""Settings: built-in defaults < config file < ``.env`` < ``INFLUENCE_*`` environment < command-line flags.

:func:`load_settings` reads every layer, validates each value where it is found (so an error names the
variable and the place it came from) and returns a frozen :class:`Settings` that remembers the source of
every field. Settings are replaced (:func:`dataclasses.replace`), never mutated.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from influence_tui.core import paths
from influence_tui.core.errors import ConfigError
from influence_tui.core.fsutil import atomic_write_text
from influence_tui.core.params import PARAM_RANGES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[no-redef, import-not-found, unused-ignore]

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZE_MODES = ("auto", "none", "int8", "int4")
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class Settings:
    """Every setting Influence reads, with the place each value came from in :attr:`sources`."""

    model: str | None = None
    """Default model: a library name or a path. Unset: the demo model when it is installed."""
    models_dir: Path = field(default_factory=paths.default_models_dir)
    """Where downloaded and imported models live (one folder per model, or loose .gguf files)."""
    sessions_dir: Path = field(default_factory=paths.default_sessions_dir)
    """Where chat sessions are saved and autosaved."""
    cache_dir: Path = field(default_factory=paths.default_cache_dir)
    """Scratch space: partial downloads, compiled kernels."""
    temperature: float = 0.7
    """Sampling temperature; 0 is greedy decoding."""
    top_p: float = 0.9
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 = off)."""
    top_k: int | None = None
    """Keep only the k most likely tokens (off when unset or 0)."""
    min_p: float | None = None
    """Drop tokens less likely than min_p times the most likely one (off when unset or 0)."""
    repeat_penalty: float = 1.1
    """Penalty on tokens already in the context (1 = off)."""
    max_tokens: int = 512
    """Most tokens to generate for one reply."""
    seed: int | None = None
    """Random seed for reproducible sampling (unset: a new seed each time)."""
    device: str = "auto"
    """auto (cuda, then mps, then cpu), cpu, cuda or mps."""
    device_index: int = 0
    """Which GPU to use when there are several."""
    dtype: str = "auto"
    """auto, float32, bfloat16 or float16."""
    quantize: str = "auto"
    """Weights in memory on CPU: auto (a GGUF keeps its quantization), none (floats), int8 or int4."""
    host: str = "127.0.0.1"
    """Address `influence serve` binds to."""
    port: int = 8080
    """Port `influence serve` listens on."""
    parallel: int = 8
    """Requests `influence serve` generates at once, batched (1: one after another)."""
    queue_limit: int = 64
    """Requests `influence serve` keeps waiting beyond those generating; more get 503 with Retry-After."""
    prefill_chunk: int = 512
    """Prompt tokens prefilled per step while other requests generate (0: a whole prompt at once)."""
    prompt_cache_mib: int = 256
    """MiB of recent conversations' KV caches `influence serve` keeps to skip their history (0: none; TUI: 64)."""
    shutdown_grace: float = 10.0
    """Seconds `influence serve` lets running requests finish once told to stop; then they end with "abort"."""
    keep_alive: str = "5m"
    """How long `influence serve` keeps a model loaded after its last request (5m, 1h, 300; -1: forever; 0: unload
    at once); an Ollama request's keep_alive overrides it. The --model one stays forever unless this is set."""
    max_loaded_memory: int | None = None
    """Bytes (8GiB, 512MiB...) the models `influence serve` loads may take together (unset: 75% of RAM, or of VRAM)."""
    max_loaded_models: int = 0
    """Most models `influence serve` keeps loaded at once (0: as many as the memory budget allows)."""
    hub_endpoint: str = DEFAULT_HUB_ENDPOINT
    """HuggingFace Hub endpoint or mirror."""
    hf_token: str | None = None
    """HuggingFace access token, for gated and private models."""
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Where each setting's value came from (not itself a setting)."""

    def source(self, name: str) -> str:
        return self.sources.get(name, "default")


# --------------------------------------------------------------------------------------------- parsing


def _text(raw: object) -> str:
    if isinstance(raw, str):
        return raw.strip()
    return str(raw)


def _as_float(raw: object, *, low: float, high: float, optional: bool = False) -> float | None:
    if isinstance(raw, bool):
        raise ValueError("is not a number")
    text = _text(raw).lower()
    if optional and text in ("", "off", "none", "0", "0.0"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"is out of range ({low:g} to {high:g})")
    if optional and value == 0:
        return None
    return value


def _as_int(raw: object, *, low: int, high: int, optional: bool = False) -> int | None:
    if isinstance(raw, bool):
        raise ValueError("is not a whole number")
    text = _text(raw).lower()
    if optional and text in ("", "off", "none", "random"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError("is not a whole number") from None
    if not low <= value <= high:
        raise ValueError(f"is out of range ({low} to {high})")
    return value


def _as_choice(raw: object, choices: tuple[str, ...]) -> str:
    text = _text(raw).lower()
    if text not in choices:
        raise ValueError(f"is not one of {', '.join(choices)}")
    return text


def _as_path(raw: object) -> Path:
    text = _text(raw)
    if not text:
        raise ValueError("is empty")
    return Path(text).expanduser().absolute()


def _as_optional_text(raw: object) -> str | None:
    text = _text(raw)
    return text or None


def _as_host(raw: object) -> str:
    text = _text(raw)
    if not text or any(c.isspace() for c in text):
        raise ValueError("is not a host name or address")
    return text


def _as_url(raw: object) -> str:
    text = _text(raw).rstrip("/")
    if not text.startswith(("http://", "https://")) or len(text) <= len("https://"):
        raise ValueError("is not an http(s) URL")
    return text


def _as_keep_alive(raw: object) -> str:
    from influence_tui.core.units import parse_keep_alive

    text = _text(raw)
    parse_keep_alive(text)
    return text


def _as_size(raw: object) -> int | None:
    from influence_tui.core.units import parse_size

    text = _text(raw)
    if text.lower() in ("", "auto", "none", "off"):
        return None
    return parse_size(text)


def _float_in(name: str, *, optional: bool = False) -> Callable[[object], float | None]:
    """The parser of a float sampling parameter, in its one range (:data:`.params.PARAM_RANGES`)."""
    bounds = PARAM_RANGES[name]
    return lambda raw: _as_float(raw, low=bounds.low, high=bounds.high, optional=optional)


def _int_in(name: str, *, optional: bool = False) -> Callable[[object], int | None]:
    """The parser of a whole-number sampling parameter, in its one range."""
    bounds = PARAM_RANGES[name]
    return lambda raw: _as_int(raw, low=int(bounds.low), high=int(bounds.high), optional=optional)


def _top_k(raw: object) -> int | None:
    value = _int_in("top_k", optional=True)(raw)
    return value or None


@dataclass(frozen=True)
class _Spec:
    parse: Callable[[object], Any]
    env: tuple[str, ...] = ()
    flag: str | None = None
    secret: bool = False


_SPECS: dict[str, _Spec] = {
    "model": _Spec(_as_optional_text, ("INFLUENCE_MODEL_PATH", "INFLUENCE_MODEL"), "--model"),
    "models_dir": _Spec(_as_path, ("INFLUENCE_MODELS_DIR", "INFLUENCE_OUTPUT_DIR"), "--models-dir"),
    "sessions_dir": _Spec(_as_path, ("INFLUENCE_SESSIONS_DIR",)),
    "cache_dir": _Spec(_as_path, ("INFLUENCE_CACHE_DIR",)),
    "temperature": _Spec(_float_in("temperature"), ("INFLUENCE_TEMPERATURE",), "--temperature"),
    "top_p": _Spec(_float_in("top_p"), ("INFLUENCE_TOP_P",), "--top-p"),
    "top_k": _Spec(_top_k, ("INFLUENCE_TOP_K",), "--top-k"),
    "min_p": _Spec(_float_in("min_p", optional=True), ("INFLUENCE_MIN_P",), "--min-p"),
    "repeat_penalty": _Spec(_float_in("repeat_penalty"), ("INFLUENCE_REPEAT_PENALTY",), "--repeat-penalty"),
    "max_tokens": _Spec(_int_in("max_tokens"), ("INFLUENCE_MAX_TOKENS",), "--max-tokens"),
    "seed": _Spec(_int_in("seed", optional=True), ("INFLUENCE_SEED",), "--seed"),
    "device": _Spec(lambda r: _as_choice(r, DEVICES), ("INFLUENCE_DEVICE",), "--device"),
    "device_index": _Spec(lambda r: _as_int(r, low=0, high=1024), ("INFLUENCE_DEVICE_INDEX",)),
    "dtype": _Spec(lambda r: _as_choice(r, DTYPES), ("INFLUENCE_DTYPE",), "--dtype"),
    "quantize": _Spec(lambda r: _as_choice(r, QUANTIZE_MODES), ("INFLUENCE_QUANTIZE",), "--quantize"),
    "host": _Spec(_as_host, ("INFLUENCE_HOST",), "--host"),
    "port": _Spec(lambda r: _as_int(r, low=1, high=65535), ("INFLUENCE_PORT",), "--port"),
    "parallel": _Spec(lambda r: _as_int(r, low=1, high=256), ("INFLUENCE_PARALLEL",), "--parallel"),
    "queue_limit": _Spec(lambda r: _as_int(r, low=0, high=1_000_000), ("INFLUENCE_QUEUE_LIMIT",)),
    "prefill_chunk": _Spec(lambda r: _as_int(r, low=0, high=1_000_000), ("INFLUENCE_PREFILL_CHUNK",)),
    "prompt_cache_mib": _Spec(lambda r: _as_int(r, low=0, high=1_048_576), ("INFLUENCE_PROMPT_CACHE_MIB",)),
    "keep_alive": _Spec(_as_keep_alive, ("INFLUENCE_KEEP_ALIVE", "OLLAMA_KEEP_ALIVE"), "--keep-alive"),
    "max_loaded_memory": _Spec(_as_size, ("INFLUENCE_MAX_LOADED_MEMORY",), "--memory-budget"),
    "max_loaded_models": _Spec(
        lambda r: _as_int(r, low=0, high=1024), ("INFLUENCE_MAX_LOADED_MODELS",), "--max-models"
    ),
    "shutdown_grace": _Spec(lambda r: _as_float(r, low=0.0, high=86_400.0), ("INFLUENCE_SHUTDOWN_GRACE",), "--grace"),
    "hub_endpoint": _Spec(_as_url, ("INFLUENCE_MIRROR", "HF_ENDPOINT"), "--mirror"),
    "hf_token": _Spec(_as_optional_text, ("INFLUENCE_HF_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"), "--token", True),
}

_BLANK_MEANS_OFF = frozenset({"top_k", "min_p", "seed"})

SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Settings) if f.name != "sources")
assert set(SETTING_NAMES) == set(_SPECS), "every setting needs a spec"


def setting_doc(name: str) -> str:
    """The one-line description of a setting (its field docstring, kept here for `influence config`)."""
    return _field_docs().get(name, "")


def setting_env_vars(name: str) -> tuple[str, ...]:
    return _SPECS[name].env


def is_secret(name: str) -> bool:
    return _SPECS[name].secret


def display_value(settings: Settings, name: str) -> str:
    """A setting's value as `influence config` shows it (tokens masked, unset shown as "off"/"unset")."""
    value = getattr(settings, name)
    if value is None:
        return "off" if name in ("top_k", "min_p", "seed") else "unset"
    if _SPECS[name].secret:
        text = str(value)
        return f"{text[:3]}…{text[-4:]}" if len(text) > 10 else "****"
    return str(value)


def _unknown_setting(name: str, place: str = "") -> ConfigError:
    close = difflib.get_close_matches(name, SETTING_NAMES, n=1)
    known = f"known settings: {', '.join(SETTING_NAMES)}"
    return ConfigError(
        f"unknown setting {name!r}{place}", hint=f"did you mean {close[0]!r}? {known}" if close else known
    )


def parse_value(name: str, raw: object, where: str) -> Any:
    """Validate one raw value; ``where`` describes its origin for the error message."""
    if name not in _SPECS:
        raise _unknown_setting(name)
    try:
        return _SPECS[name].parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {_text(raw)!r} {exc}") from None


# --------------------------------------------------------------------------------------------- layers


REMOTES_TABLE = "remotes"
"""The config file's ``[remotes.NAME]`` tables: named remote engines (:mod:`influence_tui.core.remotes`), not
settings."""


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
            return data
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}", hint="fix or remove it") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def read_config_file(path: Path) -> dict[str, object]:
    """The raw key/value pairs of a TOML config file ({} when it does not exist); ``[remotes.*]`` left out."""
    data = _read_toml(path)
    flat: dict[str, object] = {}
    for key, value in data.items():
        if key == REMOTES_TABLE and isinstance(value, dict):
            continue
        # Tables ([generation], [server], ...) are allowed for grouping; their keys are setting names.
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE pairs of a ``.env`` file: ``#`` comments, optional ``export``, single or double quotes."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export ") :].lstrip()
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum():
            raise ConfigError(f"{path}, line {number}: expected KEY=VALUE, got {line.strip()!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def load_settings(
    flags: Mapping[str, object] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    config_path: Path | None = None,
) -> Settings:
    """Build the settings from every layer; ``flags`` maps setting names to command-line values (None = not given)."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    config_path = paths.config_file() if config_path is None else config_path

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    for key, raw in read_config_file(config_path).items():
        if key not in _SPECS:
            raise _unknown_setting(key, f" in {config_path}")
        values[key] = parse_value(key, raw, f"{key} in {config_path}")
        sources[key] = f"config file ({config_path})"

    dotenv_path = cwd / ".env"
    for layer, label in ((read_dotenv(dotenv_path), f".env ({dotenv_path})"), (environ, "environment")):
        for name in SETTING_NAMES:
            for var in _SPECS[name].env:
                if var not in layer:
                    continue
                if not layer[var].strip() and name not in _BLANK_MEANS_OFF:
                    continue  # an empty variable is "not set", except where empty means "off"
                values[name] = parse_value(name, layer[var], f"{var} in {label}")
                sources[name] = f"{label}: {var}"
                break

    for name, raw in (flags or {}).items():
        if raw is None:
            continue
        flag = _SPECS[name].flag if name in _SPECS else None
        values[name] = parse_value(name, raw, f"{flag or name} (command line)")
        sources[name] = "command line"

    return replace(Settings(), **values, sources=sources)


def write_setting(name: str, raw: str | None, path: Path | None = None) -> Path:
    """Set (or, with ``raw=None``, remove) one setting in the config file, atomically. Returns the file."""
    path = paths.config_file() if path is None else path
    current = read_config_file(path)
    if raw is None:
        if name not in current:
            raise ConfigError(f"{name!r} is not set in {path}")
        del current[name]
    else:
        value = parse_value(name, raw, f"{name}")
        current[name] = str(value) if isinstance(value, Path) else value
        if value is None:  # "off" where that is a value; "" (unset) for a model or a token
            current[name] = "off" if name in _BLANK_MEANS_OFF else ""
    write_config_file(path, current, read_remote_tables(path))
    return path


def read_remote_tables(path: Path | None = None) -> dict[str, dict[str, object]]:
    """The ``[remotes.NAME]`` tables of the config file, as written (``{}`` when there are none)."""
    path = paths.config_file() if path is None else path
    tables = _read_toml(path).get(REMOTES_TABLE, {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{REMOTES_TABLE} in {path} must be tables: [remotes.NAME]", hint="fix or remove it")
    result: dict[str, dict[str, object]] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"remotes.{name} in {path} is not a table", hint=f'write it as [remotes.{name}] url = "..."'
            )
        result[str(name)] = dict(table)
    return result


def write_config_file(path: Path, settings: Mapping[str, object], remotes: Mapping[str, Mapping[str, object]]) -> None:
    """Write the whole config file atomically: flat settings first, then one ``[remotes."NAME"]`` table each."""
    lines = ["# Influence settings; `influence config` lists them all with their sources.\n"]
    for key, value in settings.items():
        lines.append(f"{key} = {_toml_scalar(value)}\n")
    for name, table in remotes.items():
        lines.append(f"\n[{REMOTES_TABLE}.{_toml_scalar(name)}]\n")
        for key, value in table.items():
            lines.append(f"{key} = {_toml_scalar(value)}\n")
    atomic_write_text(path, "".join(lines))


def _toml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


@functools.cache
def _field_docs() -> dict[str, str]:
    """Field docstrings, read from this module's source (the dataclass keeps no docstrings of its own)."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    try:
        tree = ast.parse(inspect.getsource(Settings))
    except (OSError, TypeError):  # pragma: no cover - source unavailable (zipapp)
        return docs
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = following.value.value.strip()
    return docs
