"""Named remote engines from the config file's ``[remotes.NAME]`` tables, their models, and listing them all.

A remote is an OpenAI-compatible server (vLLM, SGLang, llama.cpp's server, a LiteLLM proxy, another
``influence serve``) or an Ollama server, given a name: ``influence remote add gpu http://gpu:8000/v1``. Its
models are named ``MODEL@REMOTE`` everywhere a local model name is accepted.

The API key is never stored: a table names the environment variable that holds it (``api_key = "${VAR}"``, or
``api_key_env = "VAR"``), read when a request is made, and sent only to that remote. A key written in clear in
the file is refused. Nothing here opens a connection: :mod:`influence_tui.core.remote_catalog` lists the remotes'
models.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from influence_tui.core import config, paths
from influence_tui.core.errors import ConfigError, ModelNotFoundError, RemoteError

if TYPE_CHECKING:
    from influence_tui.core.library import Library
    from influence_tui.core.types import LocalModel

RemoteKind = Literal["openai", "ollama"]
REMOTE_KINDS: tuple[RemoteKind, ...] = ("openai", "ollama")

CONNECT_TIMEOUT_S = 5.0
"""Default seconds to wait for a remote to accept a connection."""
READ_TIMEOUT_S = 120.0
"""Default seconds a remote may stay silent: before its first token (a long prompt on a busy GPU) and between
two chunks of a stream. Past it the request fails with a timeout instead of hanging."""
LIST_TIMEOUT_S = 3.0
"""Listing models (the library, the model picker) waits at most this long for each remote."""
LIST_CACHE_S = 60.0
"""How long a listing is reused before the remotes are asked again (a rescan asks at once)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEYS = frozenset(
    {"url", "kind", "api_key", "api_key_env", "connect_timeout", "read_timeout", "extras", "num_ctx", "keep_alive"}
)


def check_name(name: str) -> str:
    """A remote's name: letters, digits, ``.``, ``_`` and ``-`` (it follows ``@`` in model names)."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a remote name", hint="use letters, digits, '.', '_' and '-' (e.g. gpu, lab-vllm)"
        )
    return name


def check_key_env(name: str) -> str:
    """The name of the environment variable that holds a key (``VLLM_API_KEY``), never the key itself."""
    if not _VAR_NAME.fullmatch(name):
        hint = "e.g. --api-key-env VLLM_API_KEY, after `export VLLM_API_KEY=...`"
        if len(name) >= 16:  # a long value is likely the key itself: never echo it
            raise ConfigError("--api-key-env takes the name of an environment variable, not a key", hint=hint)
        raise ConfigError(f"--api-key-env takes a variable name, not {name!r}", hint=hint)
    return name


def check_url(url: str) -> str:
    text = url.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{url!r} is not an http(s) URL", hint="e.g. http://gpu-box:8000/v1 (vLLM) or http://host:11434 (Ollama)"
        )
    if parts.username or parts.password:
        raise ConfigError(
            "the URL holds a user name or password", hint="put the key in an environment variable: --api-key-env VAR"
        )
    return text


@dataclass(frozen=True)
class Remote:
    """One named remote engine, as its ``[remotes.NAME]`` table describes it."""

    name: str
    url: str
    """As given, without a trailing slash: ``http://gpu:8000/v1``, ``http://host:11434``."""
    kind: RemoteKind
    """``openai`` (``/v1/chat/completions`` with server-sent events) or ``ollama`` (its native ``/api/*`` routes)."""
    api_key_env: str | None = None
    """The environment variable holding the key (None: the remote needs none)."""
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S
    extras: bool | None = None
    """Send top_k, min_p and repeat_penalty as extra fields (None: when the server is one known to take them)."""
    num_ctx: int | None = None
    """Ollama only: the context to ask for (None: the model's own ``num_ctx``, else up to 8192)."""
    keep_alive: str | None = None
    """Ollama only: how long it keeps the model loaded after a request (``30m``; None: its default)."""

    @property
    def host(self) -> str:
        """``host:port`` of the URL, as front ends show where a chat goes."""
        return urlsplit(self.url).netloc

    @property
    def root(self) -> str:
        """The URL without a trailing ``/v1``: where Ollama's ``/api/*`` routes live."""
        return self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url

    @property
    def api_base(self) -> str:
        """Where this kind's routes start: ``…/v1`` for OpenAI (added when the URL has no path), the root for Ollama."""
        if self.kind == "ollama":
            return self.root
        return self.url if urlsplit(self.url).path not in ("", "/") else self.url + "/v1"

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The key from its environment variable; a :class:`RemoteError` when the variable is not set."""
        if self.api_key_env is None:
            return None
        value = (os.environ if environ is None else environ).get(self.api_key_env, "").strip()
        if not value:
            raise RemoteError(
                f"remote {self.name} needs an API key from ${self.api_key_env}, which is not set",
                hint=f"export {self.api_key_env}=... in the shell that runs Influence",
                reason="config",
            )
        return value

    def key_status(self, environ: Mapping[str, str] | None = None) -> str:
        """``none``, ``$VAR (set)`` or ``$VAR (not set)``: never the key itself."""
        if self.api_key_env is None:
            return "none"
        present = bool((os.environ if environ is None else environ).get(self.api_key_env, "").strip())
        return f"${self.api_key_env} ({'set' if present else 'not set'})"

    def to_table(self) -> dict[str, object]:
        """The ``[remotes.NAME]`` table: the key only as a ``${VAR}`` reference."""
        table: dict[str, object] = {"url": self.url, "kind": self.kind}
        if self.api_key_env:
            table["api_key"] = f"${{{self.api_key_env}}}"
        if self.connect_timeout_s != CONNECT_TIMEOUT_S:
            table["connect_timeout"] = self.connect_timeout_s
        if self.read_timeout_s != READ_TIMEOUT_S:
            table["read_timeout"] = self.read_timeout_s
        for key in ("extras", "num_ctx", "keep_alive"):
            value = getattr(self, key)
            if value is not None:
                table[key] = value
        return table

    def to_dict(self) -> dict[str, Any]:
        """A JSON view for ``influence remote list --json`` (the key as its variable's name and whether it is set)."""
        return {
            "name": self.name,
            "url": self.url,
            "kind": self.kind,
            "host": self.host,
            "api_base": self.api_base,
            "api_key_env": self.api_key_env,
            "api_key_set": self.api_key_env is not None and self.key_status().endswith("(set)"),
            "connect_timeout_s": self.connect_timeout_s,
            "read_timeout_s": self.read_timeout_s,
            "extras": self.extras,
            "num_ctx": self.num_ctx,
            "keep_alive": self.keep_alive,
        }


def _number(name: str, key: str, value: object, where: str, *, low: float, whole: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low or (whole and value != int(value)):
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"remotes.{name}.{key} in {where}: {value!r} is not {kind} of at least {low:g}")
    return int(value) if whole else float(value)


def remote_from_table(name: str, table: Mapping[str, object], where: str = "the config file") -> Remote:
    """A :class:`Remote` from its table; a :class:`ConfigError` naming the key for anything wrong."""
    check_name(name)
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(
            f"remotes.{name} in {where}: unknown key {unknown[0]!r}", hint=f"keys: {', '.join(sorted(_KEYS))}"
        )
    url = table.get("url")
    if not isinstance(url, str):
        raise ConfigError(f"remotes.{name} in {where} has no url", hint='add url = "http://host:port/v1"')
    kind = table.get("kind", "openai")
    if kind not in REMOTE_KINDS:
        raise ConfigError(f"remotes.{name}.kind in {where}: {kind!r} is not openai or ollama")
    key_env: str | None = None
    raw_key, raw_env = table.get("api_key"), table.get("api_key_env")
    if raw_key is not None:
        match = _VAR_REF.fullmatch(raw_key) if isinstance(raw_key, str) else None
        if match is None:
            raise ConfigError(
                f"remotes.{name}.api_key in {where} is not a ${{VAR}} reference: keys are never kept in the config file",
                hint=f'put the key in an environment variable and write api_key = "${{VAR}}" '
                f"(influence remote add {name} URL --api-key-env VAR)",
            )
        key_env = match.group(1)
    if raw_env is not None:
        if not isinstance(raw_env, str) or not _VAR_NAME.fullmatch(raw_env):
            raise ConfigError(f"remotes.{name}.api_key_env in {where}: {raw_env!r} is not a variable name")
        key_env = raw_env
    extras = table.get("extras")
    if extras is not None and not isinstance(extras, bool):
        raise ConfigError(f"remotes.{name}.extras in {where}: {extras!r} is not true or false")
    keep_alive = table.get("keep_alive")
    if keep_alive is not None and not isinstance(keep_alive, (str, int)):
        raise ConfigError(f"remotes.{name}.keep_alive in {where}: {keep_alive!r} is not a duration like 30m")
    try:
        checked_url = check_url(url)
    except ConfigError as exc:
        raise ConfigError(f"remotes.{name}.url in {where}: {exc.message}", hint=exc.hint) from None
    return Remote(
        name=name,
        url=checked_url,
        kind=kind,
        api_key_env=key_env,
        connect_timeout_s=_number(
            name, "connect_timeout", table.get("connect_timeout", CONNECT_TIMEOUT_S), where, low=0.01
        ),
        read_timeout_s=_number(name, "read_timeout", table.get("read_timeout", READ_TIMEOUT_S), where, low=0.01),
        extras=extras,
        num_ctx=None
        if table.get("num_ctx") is None
        else _number(name, "num_ctx", table["num_ctx"], where, low=1, whole=True),
        keep_alive=None if keep_alive is None else str(keep_alive),
    )


def load_remotes(path: Path | None = None) -> dict[str, Remote]:
    """Every remote of the config file, by name, in the file's order."""
    path = paths.config_file() if path is None else path
    return {name: remote_from_table(name, table, str(path)) for name, table in config.read_remote_tables(path).items()}


def save_remote(remote: Remote, *, replace: bool = False, path: Path | None = None) -> Path:
    """Add ``remote`` to the config file (atomically, settings and other remotes kept). Returns the file."""
    path = paths.config_file() if path is None else path
    tables = config.read_remote_tables(path)
    if remote.name in tables and not replace:
        raise ConfigError(
            f"there is already a remote named {remote.name}", hint="add --replace to change it, or pick another name"
        )
    tables[remote.name] = remote.to_table()
    config.write_config_file(path, config.read_config_file(path), tables)
    return path


def delete_remote(name: str, path: Path | None = None) -> Path:
    path = paths.config_file() if path is None else path
    tables = config.read_remote_tables(path)
    if name not in tables:
        raise ConfigError(f"there is no remote named {name}", hint="`influence remote list` shows them")
    del tables[name]
    config.write_config_file(path, config.read_config_file(path), tables)
    return path


# ------------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class RemoteModel:
    """A model a remote serves, named ``MODEL@REMOTE``."""

    remote: Remote
    model_id: str
    """The model's name on the remote (``Qwen/Qwen2.5-7B-Instruct``, ``llama3.2:3b``)."""
    context_length: int | None = None
    """From the remote's model list when it gives one (vLLM's ``max_model_len``); else known once loaded."""
    owned_by: str | None = None
    """``owned_by`` from ``/v1/models``: tells vLLM (``vllm``), llama.cpp (``llamacpp``)... apart."""
    size_bytes: int = 0
    family: str | None = None
    parameters: str | None = None
    """As Ollama writes it (``3.2B``)."""
    quantization: str | None = None

    @property
    def name(self) -> str:
        return f"{self.model_id}@{self.remote.name}"

    @property
    def host(self) -> str:
        return self.remote.host

    @property
    def format_label(self) -> str:
        return f"remote/{self.remote.kind}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": "remote",
            "remote": self.remote.name,
            "model": self.model_id,
            "host": self.host,
            "url": self.remote.url,
            "kind": self.remote.kind,
            "context_length": self.context_length,
            "owned_by": self.owned_by,
            "size_bytes": self.size_bytes,
            "family": self.family,
            "parameters": self.parameters,
            "quantization": self.quantization,
            "loadable": True,
        }


@dataclass(frozen=True)
class RemoteListing:
    """What one remote answered when asked for its models: the models, or why it could not be listed."""

    remote: Remote
    models: tuple[RemoteModel, ...] = ()
    error: str | None = None
    """One line (e.g. ``cannot reach gpu at http://…: connection refused``); None when it answered."""
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def split_model_ref(text: str, remotes: Mapping[str, Remote]) -> tuple[Remote, str] | None:
    """``(remote, model_id)`` for ``MODEL@REMOTE`` when REMOTE is a configured remote, else None."""
    model_id, at, name = text.strip().rpartition("@")
    if not at or not model_id or name not in remotes:
        return None
    return remotes[name], model_id


def resolve_model(
    library: Library, name: str | None, remotes: Mapping[str, Remote] | None = None
) -> LocalModel | RemoteModel:
    """The model a name means: ``MODEL@REMOTE`` for a configured remote, else the library's model (its
    configured or demo model when ``name`` is None)."""
    if not name:
        return library.default()
    remotes = load_remotes() if remotes is None else remotes
    found = split_model_ref(name, remotes)
    if found is not None:
        return RemoteModel(*found)
    try:
        return library.resolve(name)
    except ModelNotFoundError as exc:
        model_id, at, remote_name = name.rpartition("@")
        if not at or not model_id:
            raise
        known = ", ".join(remotes) or "none yet"
        raise ModelNotFoundError(
            f"{exc.message}, and there is no remote named {remote_name!r}",
            hint=f"remotes: {known} (`influence remote add {remote_name} URL` adds one)",
        ) from None
