"""Chat sessions: the conversation and its sampling parameters, the prompt fitted to a model's context window,
and JSON files that the original Influence tool can read and write.

A :class:`ChatSession` is a small mutable holder (the CLI REPL, the TUI and the server each keep one per
conversation); its messages are frozen :class:`ChatMessage` records with ISO 8601 UTC timestamps.

:func:`build_prompt` renders a conversation with the model's chat template and leaves out the oldest whole
exchanges until the prompt and the room kept for the reply fit the context window. The system prompt and the
newest user message are never left out; when even they do not fit, it is an error the user can act on.

Session files keep the original tool's top-level keys (``model_path``, ``system_prompt``, ``max_tokens``,
``temperature``, ``top_p``, ``top_k``, ``repeat_penalty``, ``messages``, ``created_at``) and add ours under
``"influence"``. Files are written atomically, and a file that is not a session is never overwritten.
:class:`SessionStore` autosaves sessions to the sessions dir and lists, loads and deletes them.
"""

from __future__ import annotations

import difflib
import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from influence_tui.core.config import parse_value, setting_doc
from influence_tui.core.errors import ConfigError, InfluenceError, SessionError
from influence_tui.core.fsutil import atomic_write_text
from influence_tui.core.prompts import has_chat_template, render_prompt
from influence_tui.core.types import ChatMessage, GenerationStats, Role, SamplingParams

FORMAT_VERSION = 1
"""Version of our ``"influence"`` block in session files; a newer one is refused rather than misread."""

TITLE_LENGTH = 60
"""Longest title made from the first user message (a longer one is cut at a word and ends with …)."""

NO_CHAT_TEMPLATE_WARNING = (
    "this model has no chat template, so a plain 'User: … Assistant:' prompt is used and replies may be poor "
    "(chat and instruct models ship one)"
)
NO_SYSTEM_ROLE_WARNING = (
    "this model's chat template does not accept a system prompt, so it was put at the start of the first message"
)

_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ROLE_NAMES: dict[str, Role] = {"system": "system", "user": "user", "assistant": "assistant"}


# ------------------------------------------------------------------------------------------ small helpers


def utc_now() -> str:
    """The current time as ISO 8601 UTC, to the second (``2026-01-29T14:30:15+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _parse_time(text: str) -> datetime | None:
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"  # Python 3.10's fromisoformat does not read "Z"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # naive: local time, as the original tool wrote it
    return parsed.astimezone(timezone.utc)


def normalize_timestamp(text: str) -> str:
    """ISO 8601 UTC for any ISO-like date or time; a naive one (the original tool wrote local time as
    ``2026-01-29 14:30:15``) is read as local time. Text that is not a date is kept as written."""
    parsed = _parse_time(text)
    return parsed.isoformat(timespec="seconds") if parsed else text


def new_session_id() -> str:
    """A short random id, safe in a file name (12 hex digits)."""
    return secrets.token_hex(6)


def make_title(text: str, limit: int = TITLE_LENGTH) -> str:
    """One line from a message: whitespace collapsed, cut at a word near ``limit`` characters with an ellipsis."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    cut = line[: limit - 1].rstrip()
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space].rstrip()
    return cut + "…"


# ------------------------------------------------------------------------------------------ parameters


def _unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` in a typed stop string become a newline, a tab and a backslash."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}.get(m.group(1), m.group(0)), text)


def parse_stop(raw: object) -> tuple[str, ...]:
    """Stop strings from a typed value: ``off``/``none``/empty clears them, a JSON list gives several, anything
    else is one stop string (``\\n`` typed as backslash-n means a newline)."""
    if isinstance(raw, (list, tuple)):
        items: Sequence[object] = raw
    else:
        text = str(raw).strip()
        if text.lower() in ("", "off", "none"):
            return ()
        if text.startswith("["):
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError:
                raise ConfigError(
                    f"stop: {text!r} is not a JSON list of strings", hint='e.g. /set stop ["\\n\\n", "User:"]'
                ) from None
            if not isinstance(loaded, list):
                raise ConfigError(f"stop: {text!r} is not a JSON list of strings")
            items = loaded
        else:
            items = [_unescape(text)]
    if not all(isinstance(item, str) and item for item in items):
        raise ConfigError(f"stop: {raw!r} must be non-empty strings")
    return tuple(str(item) for item in items)


def _repeat_last_n(raw: object) -> int:
    text = str(raw).strip()
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"repeat_last_n: {text!r} is not a whole number") from None
    if not 0 <= value <= 1_000_000:
        raise ConfigError(f"repeat_last_n: {text!r} is out of range (0 to 1000000)")
    return value


def _setting(name: str) -> Callable[[object], Any]:
    return lambda raw: parse_value(name, raw, name)


_PARAM_PARSERS: dict[str, Callable[[object], Any]] = {
    "temperature": _setting("temperature"),
    "top_p": _setting("top_p"),
    "top_k": _setting("top_k"),
    "min_p": _setting("min_p"),
    "repeat_penalty": _setting("repeat_penalty"),
    "repeat_last_n": _repeat_last_n,
    "max_tokens": _setting("max_tokens"),
    "seed": _setting("seed"),
    "stop": parse_stop,
}

PARAM_NAMES: tuple[str, ...] = tuple(_PARAM_PARSERS)
"""The sampling parameters ``/set`` can change, in the order they are listed."""

_PARAM_ALIASES = {"temp": "temperature", "repetition_penalty": "repeat_penalty", "max_new_tokens": "max_tokens"}

_PARAM_DOCS = {
    "repeat_last_n": "How many recent tokens the repetition penalty looks at (0: the whole context).",
    "stop": 'Stop strings: the reply ends before the first one (off, one string, or a JSON list like ["\\n\\n"]).',
}


def param_doc(name: str) -> str:
    """One line describing a sampling parameter."""
    return _PARAM_DOCS.get(name) or setting_doc(name)


def canonical_param(name: str) -> str:
    """The parameter a typed name means (``top-p`` → ``top_p``, ``temp`` → ``temperature``)."""
    key = name.strip().lower().replace("-", "_")
    key = _PARAM_ALIASES.get(key, key)
    if key not in _PARAM_PARSERS:
        close = difflib.get_close_matches(key, [*PARAM_NAMES, *_PARAM_ALIASES], n=1, cutoff=0.6)
        guess = f"did you mean {_PARAM_ALIASES.get(close[0], close[0])}? " if close else ""
        raise ConfigError(f"unknown parameter {name!r}", hint=f"{guess}parameters: {', '.join(PARAM_NAMES)}")
    return key


def format_param(params: SamplingParams, name: str) -> str:
    """A parameter's value as shown to a user (``off`` for a filter that is switched off)."""
    value = getattr(params, canonical_param(name))
    if value is None or value == ():
        return "off"
    if isinstance(value, tuple):
        return json.dumps(list(value), ensure_ascii=False)
    return str(value)


# ------------------------------------------------------------------------------------------ prompts


@dataclass(frozen=True)
class PromptPlan:
    """A prompt ready for the engine, and what was done to fit it in the context window."""

    prompt_ids: tuple[int, ...]
    prompt_text: str
    dropped: int = 0
    """How many of the oldest exchanges (a user message and its replies) were left out."""
    dropped_indexes: tuple[int, ...] = ()
    """Indexes (in the message list given) of the messages left out."""
    used_chat_template: bool = True
    warning: str | None = None
    """Something the user should know about the prompt format (no chat template, no system role)."""

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def dropped_notice(self) -> str | None:
        """A line for front ends to show when turns were left out, else None."""
        if not self.dropped:
            return None
        turns = "exchange" if self.dropped == 1 else "exchanges"
        return (
            f"{self.dropped} earliest {turns} ({len(self.dropped_indexes)} messages) left out to fit the model's "
            "context"
        )


def _merge_system(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """The system text put at the start of the first user message, for templates with no system role."""
    system = "\n\n".join(m["content"] for m in conversation if m["role"] == "system")
    rest = [dict(m) for m in conversation if m["role"] != "system"]
    for message in rest:
        if message["role"] == "user":
            message["content"] = f"{system}\n\n{message['content']}"
            break
    return rest


def build_prompt(
    tokenizer: Any,
    messages: Sequence[ChatMessage],
    *,
    system_prompt: str | None = None,
    context_length: int,
    reserve_tokens: int,
) -> PromptPlan:
    """Render ``messages`` (after ``system_prompt``) for the model, leaving out the oldest exchanges as needed.

    The prompt plus ``reserve_tokens`` (room for the reply) must fit in ``context_length``. System messages,
    the system prompt and the newest user message (with anything after it) are always kept; older messages
    are left out a whole exchange at a time, oldest first. The conversation must end with a user message.
    Uses ``tokenizer.apply_chat_template`` when the tokenizer has a chat template, a plain
    ``User:``/``Assistant:`` format (with a warning) when it has none. ``tokenizer`` is a transformers tokenizer
    (anything with ``chat_template``, ``apply_chat_template`` and ``encode``). The prompt is rendered a few times
    at most (a binary search over how many exchanges to leave out).
    """
    last_user = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), None)
    if last_user is None:
        raise SessionError("there is no user message to reply to", hint="send a message first")
    if any(m.role == "assistant" for m in messages[last_user + 1 :]):
        raise SessionError("the conversation ends with a reply, not a user message", hint="send a message first")

    pinned = [i for i, m in enumerate(messages) if m.role == "system"]
    kept_tail = list(range(last_user, len(messages)))
    groups: list[list[int]] = []
    for i, message in enumerate(messages[:last_user]):
        if message.role == "system":
            continue
        if message.role == "user" or not groups:
            groups.append([])
        groups[-1].append(i)

    use_template = has_chat_template(tokenizer)
    state: dict[str, Any] = {"merge": False, "warning": None if use_template else NO_CHAT_TEMPLATE_WARNING}
    budget = context_length - max(0, reserve_tokens)

    def render(skip: int) -> tuple[str, list[int]]:
        keep = sorted({*pinned, *kept_tail, *(i for group in groups[skip:] for i in group)})
        conversation = [{"role": "system", "content": system_prompt}] if system_prompt else []
        conversation += [{"role": messages[i].role, "content": messages[i].content} for i in keep]
        if not use_template:
            return render_prompt(tokenizer, conversation)
        has_system = any(m["role"] == "system" for m in conversation)
        try:
            return render_prompt(tokenizer, _merge_system(conversation) if state["merge"] else conversation)
        except Exception as exc:
            if not has_system or state["merge"]:
                raise SessionError(
                    f"the model's chat template refused this conversation: {exc}",
                    hint="the conversation must alternate user and assistant messages for some models",
                ) from None
            state["merge"] = True
            state["warning"] = NO_SYSTEM_ROLE_WARNING
            return render_prompt(tokenizer, _merge_system(conversation))

    cache: dict[int, tuple[str, list[int]]] = {}

    def fits(skip: int) -> bool:
        if skip not in cache:
            cache[skip] = render(skip)
        return len(cache[skip][1]) <= budget

    skip = 0
    if not fits(0):
        if not fits(len(groups)):
            needed = len(cache[len(groups)][1])
            raise SessionError(
                f"the message is too long for the model's context: the prompt needs {needed} tokens, but only "
                f"{max(budget, 0)} of the model's {context_length} are free once {reserve_tokens} are kept for the "
                "reply",
                hint="shorten the message or the system prompt, or lower max_tokens",
            )
        low, high = 0, len(groups)  # the prompt does not fit at `low` and fits at `high`
        while high - low > 1:
            middle = (low + high) // 2
            if fits(middle):
                high = middle
            else:
                low = middle
        skip = high
    text, ids = cache[skip]
    dropped = tuple(i for group in groups[:skip] for i in group)
    return PromptPlan(
        prompt_ids=tuple(ids),
        prompt_text=text,
        dropped=skip,
        dropped_indexes=dropped,
        used_chat_template=use_template,
        warning=state["warning"],
    )


# ------------------------------------------------------------------------------------------ the session


@dataclass(eq=False)
class ChatSession:
    """One conversation: its messages, system prompt, sampling parameters and the model it is held with."""

    system_prompt: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    model: str | None = None
    """A library name or a path; None when not yet chosen."""
    messages: list[ChatMessage] = field(default_factory=list)
    """User and assistant messages, oldest first (the system prompt is kept apart)."""
    title: str = ""
    """Set from the first user message unless given."""
    id: str = field(default_factory=new_session_id)
    created_at: str = field(default_factory=utc_now)
    updated_at: str = ""
    last_stats: GenerationStats | None = field(default=None, repr=False)
    """Figures of the last reply (not saved)."""

    def __post_init__(self) -> None:
        if not self.updated_at:
            self.updated_at = self.created_at

    @classmethod
    def from_settings(cls, settings: Any, *, model: str | None = None, system_prompt: str | None = None) -> ChatSession:
        """A new session with the settings' sampling defaults and model."""
        return cls(
            system_prompt=system_prompt or None,
            params=SamplingParams.from_settings(settings),
            model=model if model is not None else settings.model,
        )

    # -------------------------------------------------------------- changes

    def touch(self) -> None:
        self.updated_at = utc_now()

    def add_user(self, content: str) -> ChatMessage:
        """Append the user's message (the first one also names the session)."""
        if not content.strip():
            raise SessionError("the message is empty")
        message = ChatMessage("user", content, utc_now())
        self.messages.append(message)
        if not self.title:
            self.title = make_title(content)
        self.updated_at = message.timestamp
        return message

    def add_assistant(self, content: str, stats: GenerationStats | None = None) -> ChatMessage:
        """Append the model's reply (and keep its figures for /stats)."""
        message = ChatMessage("assistant", content, utc_now())
        self.messages.append(message)
        if stats is not None:
            self.last_stats = stats
        self.updated_at = message.timestamp
        return message

    def clear(self) -> None:
        """Start a new conversation with the same system prompt, parameters and model.

        It gets a new id, so the cleared conversation stays in the session store under the old one.
        """
        self.messages.clear()
        self.title = ""
        self.id = new_session_id()
        self.created_at = utc_now()
        self.updated_at = self.created_at
        self.last_stats = None

    def pop_last_exchange(self) -> tuple[ChatMessage, ...]:
        """Remove the last user message and any replies after it; return what was removed (empty if nothing)."""
        last_user = next((i for i in range(len(self.messages) - 1, -1, -1) if self.messages[i].role == "user"), None)
        if last_user is None:
            return ()
        removed = tuple(self.messages[last_user:])
        del self.messages[last_user:]
        self.touch()
        return removed

    def prepare_retry(self) -> tuple[ChatMessage, ...]:
        """Remove the replies after the last user message so it can be answered again; return them.

        A last user message with no reply (generation failed or was stopped) is simply answered again.
        """
        end = len(self.messages)
        while end and self.messages[end - 1].role == "assistant":
            end -= 1
        if not end or self.messages[end - 1].role != "user":
            raise SessionError("there is nothing to retry", hint="send a message first")
        removed = tuple(self.messages[end:])
        del self.messages[end:]
        if removed:
            self.touch()
        return removed

    def set_system_prompt(self, text: str | None) -> None:
        self.system_prompt = text.strip() if text and text.strip() else None
        self.touch()

    def set_param(self, name: str, raw: object) -> str:
        """Validate and set one sampling parameter (same rules as the settings); return its canonical name."""
        key = canonical_param(name)
        value = _PARAM_PARSERS[key](raw)
        self.params = replace(self.params, **{key: value})
        self.touch()
        return key

    def param_display(self, name: str) -> str:
        return format_param(self.params, name)

    # -------------------------------------------------------------- views

    @property
    def display_title(self) -> str:
        return self.title or "New chat"

    def history_text(self) -> str:
        """The whole conversation as plain text, for /history."""
        lines: list[str] = []
        if self.system_prompt:
            lines.append(f"System: {self.system_prompt}")
        for message in self.messages:
            who = {"user": "You", "assistant": "Assistant", "system": "System"}[message.role]
            when = _parse_time(message.timestamp) if message.timestamp else None
            stamp = f" ({when.astimezone().strftime('%Y-%m-%d %H:%M:%S')})" if when else ""
            lines.append(f"{who}{stamp}:\n{message.content}")
        if not self.messages:
            lines.append("(no messages yet)")
        return "\n\n".join(lines)

    def build_prompt(self, tokenizer: Any, *, context_length: int, reserve_tokens: int) -> PromptPlan:
        """The prompt for the next reply; :attr:`PromptPlan.dropped_indexes` index :attr:`messages`."""
        return build_prompt(
            tokenizer,
            self.messages,
            system_prompt=self.system_prompt,
            context_length=context_length,
            reserve_tokens=reserve_tokens,
        )

    # -------------------------------------------------------------- files

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the original tool's keys, and ours under ``"influence"``."""
        params = self.params
        return {
            "model_path": self.model or "",
            "system_prompt": self.system_prompt,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "repeat_penalty": params.repeat_penalty,
            "messages": [{"role": m.role, "content": m.content, "timestamp": m.timestamp} for m in self.messages],
            "created_at": self.created_at,
            "influence": {
                "version": FORMAT_VERSION,
                "id": self.id,
                "title": self.title,
                "model": self.model,
                "min_p": params.min_p,
                "seed": params.seed,
                "stop": list(params.stop),
                "repeat_last_n": params.repeat_last_n,
                "updated_at": self.updated_at,
            },
        }

    @classmethod
    def from_dict(cls, data: object, *, source: str = "session", defaults: SamplingParams | None = None) -> ChatSession:
        """A session from its JSON form (ours or the original tool's); :class:`SessionError` for anything else.

        ``defaults`` fills the sampling parameters the data does not hold.
        """
        return _session_from_dict(data, source, defaults or SamplingParams())

    def save(self, path: Path, *, overwrite: bool = False) -> Path:
        """Write the session to ``path`` atomically and return it.

        An existing file is replaced only when it is itself a session file (or with ``overwrite=True``).
        """
        path = Path(path).expanduser()
        if path.is_dir():
            raise SessionError(f"{path} is a folder", hint="give a file name, e.g. chat.json")
        if path.exists() and not overwrite:
            try:
                load_session(path)
            except SessionError:
                raise SessionError(
                    f"{path} exists and is not an Influence session file, so it was not overwritten",
                    hint="choose another file name",
                ) from None
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        try:
            atomic_write_text(path, text)
        except OSError as exc:
            raise SessionError(f"cannot save the session to {path}: {exc.strerror or exc}") from None
        return path


def load_session(path: Path, *, defaults: SamplingParams | None = None) -> ChatSession:
    """Read a session file (ours or the original tool's). Anything else is a :class:`SessionError`."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SessionError(f"there is no session file {path}") from None
    except IsADirectoryError:
        raise SessionError(f"{path} is a folder, not a session file") from None
    except UnicodeDecodeError:
        raise SessionError(f"{path} is not a session file (it is not UTF-8 text)") from None
    except OSError as exc:
        raise SessionError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else ""
        raise SessionError(
            f"{path} is not a session file: it is not valid JSON{where}", hint="the file was left as it is"
        ) from None
    # A file with no id of ours (the original tool's) is named after the file, so it keeps one id across loads.
    fallback_id = path.stem if _ID_PATTERN.fullmatch(path.stem) else None
    return _session_from_dict(data, str(path), defaults or SamplingParams(), fallback_id)


def _session_from_dict(
    data: object, source: str, defaults: SamplingParams, fallback_id: str | None = None
) -> ChatSession:
    def fail(problem: str) -> SessionError:
        return SessionError(f"{source} is not a session file: {problem}")

    if not isinstance(data, dict):
        raise fail(f"expected a JSON object, found {type(data).__name__}")
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list):
        raise fail('it has no "messages" list')
    ours = data.get("influence", {})
    if not isinstance(ours, dict):
        raise fail('"influence" is not an object')
    version = ours.get("version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise fail('"influence.version" is not a number')
    if version > FORMAT_VERSION:
        raise SessionError(
            f"{source} was written by a newer Influence (session format {version})", hint="upgrade Influence"
        )

    def text_field(mapping: Mapping[str, object], key: str, label: str) -> str | None:
        value = mapping.get(key)
        if value is not None and not isinstance(value, str):
            raise fail(f'"{label}" is not text')
        return value

    system_prompt = text_field(data, "system_prompt", "system_prompt") or None
    messages: list[ChatMessage] = []
    for number, item in enumerate(raw_messages, start=1):
        if not isinstance(item, dict):
            raise fail(f"message {number} is not an object")
        role, content = item.get("role"), item.get("content")
        if not isinstance(role, str) or role.lower() not in _ROLE_NAMES:
            raise fail(f"message {number} has an unknown role {role!r} (expected user, assistant or system)")
        if not isinstance(content, str):
            raise fail(f"message {number} has no text content")
        timestamp = text_field(item, "timestamp", f"messages[{number}].timestamp") or ""
        role_name = _ROLE_NAMES[role.lower()]
        if role_name == "system":
            system_prompt = system_prompt or content or None  # a system message in the list: the prompt
            continue
        messages.append(ChatMessage(role_name, content, normalize_timestamp(timestamp)))

    values: dict[str, Any] = {}
    for key in PARAM_NAMES:
        holder = data if key in data else ours
        if key not in holder or (holder[key] is None and key not in ("top_k", "min_p", "seed")):
            continue
        raw = holder[key]
        if key == "stop" and not isinstance(raw, list):
            raise fail('"stop" is not a list of strings')
        if key != "stop" and not (raw is None or isinstance(raw, (int, float))):
            raise fail(f'"{key}" is not a number')
        try:
            values[key] = _PARAM_PARSERS[key](raw)
        except InfluenceError as exc:
            raise fail(str(exc)) from None

    model = (
        text_field(ours, "model", "influence.model")
        if "model" in ours
        else text_field(data, "model_path", "model_path")
    )
    session_id = ours.get("id")
    if session_id is None:
        session_id = fallback_id or new_session_id()
    elif not isinstance(session_id, str) or not _ID_PATTERN.fullmatch(session_id):
        raise fail('"influence.id" is not a session id (letters, digits, - and _)')
    created = text_field(data, "created_at", "created_at")
    if created:
        created_at = normalize_timestamp(created)
    else:
        created_at = messages[0].timestamp if messages and messages[0].timestamp else utc_now()
    updated = text_field(ours, "updated_at", "influence.updated_at")
    if updated:
        updated_at = normalize_timestamp(updated)
    else:
        updated_at = messages[-1].timestamp if messages and messages[-1].timestamp else created_at
    title = text_field(ours, "title", "influence.title") or ""
    if not title:
        first_user = next((m.content for m in messages if m.role == "user"), "")
        title = make_title(first_user)
    return ChatSession(
        system_prompt=system_prompt,
        params=replace(defaults, **values),
        model=model or None,
        messages=messages,
        title=title,
        id=session_id,
        created_at=created_at,
        updated_at=updated_at,
    )


# ------------------------------------------------------------------------------------------ the store


@dataclass(frozen=True)
class SessionSummary:
    """What a list of saved sessions shows, read from one file."""

    id: str
    title: str
    model: str | None
    message_count: int
    created_at: str
    updated_at: str
    path: Path


@dataclass(frozen=True)
class SessionProblem:
    """A file in the sessions dir that could not be read as a session (it is left as it is)."""

    path: Path
    message: str


@dataclass(frozen=True)
class SessionListing:
    sessions: tuple[SessionSummary, ...]
    """Newest (last updated) first."""
    problems: tuple[SessionProblem, ...] = ()


class SessionStore:
    """Sessions kept in the sessions dir as ``<created date>-<id>.json``; autosaved after every reply."""

    def __init__(self, sessions_dir: Path) -> None:
        self.sessions_dir = Path(sessions_dir)

    def path_for(self, session: ChatSession) -> Path:
        created = _parse_time(session.created_at) or datetime.now(timezone.utc)
        return self.sessions_dir / f"{created.date().isoformat()}-{session.id}.json"

    def autosave(self, session: ChatSession) -> Path:
        """Write ``session`` to its file in the store (atomically) and return the path."""
        return session.save(self.path_for(session))

    def scan(self) -> SessionListing:
        """Every session in the store, newest first, and the files that are not sessions."""
        sessions: list[SessionSummary] = []
        problems: list[SessionProblem] = []
        try:
            files = sorted(p for p in self.sessions_dir.glob("*.json") if not p.name.startswith("."))
        except OSError:
            files = []
        for path in files:
            try:
                session = load_session(path)
            except SessionError as exc:
                problems.append(SessionProblem(path, str(exc)))
                continue
            sessions.append(
                SessionSummary(
                    id=session.id,
                    title=session.display_title,
                    model=session.model,
                    message_count=len(session.messages),
                    created_at=session.created_at,
                    updated_at=session.updated_at,
                    path=path,
                )
            )
        sessions.sort(
            key=lambda s: (_parse_time(s.updated_at) or datetime.min.replace(tzinfo=timezone.utc), s.path.name)
        )
        sessions.reverse()
        return SessionListing(tuple(sessions), tuple(problems))

    def list(self) -> tuple[SessionSummary, ...]:
        """The sessions in the store, newest first (files that are not sessions are skipped; see :meth:`scan`)."""
        return self.scan().sessions

    def find(self, ref: str) -> Path:
        """The file of a session given by id, unique id prefix or file name."""
        ref = ref.strip()
        listing = self.scan()
        exact = [s.path for s in listing.sessions if ref in (s.id, s.path.name, s.path.stem)]
        exact += [p.path for p in listing.problems if ref in (p.path.name, p.path.stem)]
        if exact:
            return exact[0]
        prefixed = [s for s in listing.sessions if ref and s.id.startswith(ref)]
        if len(prefixed) == 1:
            return prefixed[0].path
        if len(prefixed) > 1:
            raise SessionError(f"{ref!r} matches {len(prefixed)} saved sessions", hint="give more of the id")
        raise SessionError(f"there is no saved session {ref!r} in {self.sessions_dir}", hint="list them to see the ids")

    def load(self, ref: str | Path, *, defaults: SamplingParams | None = None) -> ChatSession:
        """Load a session from a path, or from the store by id, id prefix or file name."""
        path = Path(ref).expanduser()
        if isinstance(ref, Path) or path.is_file() or len(path.parts) > 1:
            return load_session(path, defaults=defaults)
        return load_session(self.find(str(ref)), defaults=defaults)

    def delete(self, ref: str) -> Path:
        """Remove a session's file from the store (by id, id prefix or file name); return the path removed."""
        path = self.find(ref)
        try:
            path.unlink()
        except OSError as exc:
            raise SessionError(f"cannot delete {path}: {exc.strerror or exc}") from None
        return path
