"""A chat session (:class:`ChatSession`: the conversation, its system prompt, sampling parameters and model) and its
JSON file format, which the original Influence tool can read and write.

Session files keep the original tool's top-level keys (``model_path``, ``system_prompt``, ``max_tokens``,
``temperature``, ``top_p``, ``top_k``, ``repeat_penalty``, ``messages``, ``created_at``) and add ours under
``"influence"``. Files are written atomically, and a file that is not a session is never overwritten.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from influence_tui.core.errors import InfluenceError, SessionError
from influence_tui.core.fsutil import atomic_write_text
from influence_tui.core.sessions.prompt import PromptPlan, build_prompt
from influence_tui.core.sessions.sampling import PARAM_NAMES, PARAM_PARSERS, canonical_param, format_param
from influence_tui.core.sessions.stamps import (
    SESSION_ID,
    make_title,
    new_session_id,
    normalize_timestamp,
    parse_time,
    utc_now,
)
from influence_tui.core.types import ChatMessage, GenerationStats, Role, SamplingParams

__all__ = ["FORMAT_VERSION", "ChatSession", "load_session"]

FORMAT_VERSION = 1
"""Version of our ``"influence"`` block in session files; a newer one is refused rather than misread."""

_ROLE_NAMES: dict[str, Role] = {"system": "system", "user": "user", "assistant": "assistant"}


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
        value = PARAM_PARSERS[key](raw)
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
            when = parse_time(message.timestamp) if message.timestamp else None
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
    fallback_id = path.stem if SESSION_ID.fullmatch(path.stem) else None
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
            values[key] = PARAM_PARSERS[key](raw)
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
    elif not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
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
