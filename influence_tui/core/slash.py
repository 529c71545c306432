"""Chat slash commands (``/help``, ``/set temperature 0.9``, ``/save chat.json``...), shared by the CLI REPL and
the TUI.

:func:`parse` turns a line into a typed command (None when the line is chat text); :func:`execute` applies it
to a :class:`~influence_tui.core.sessions.ChatSession` and returns a :class:`SlashResult`: a message for the
user and a :class:`SlashAction` for the front end. Generation is not done here: ``/retry`` and ``/stats``
come back as actions the front end carries out.

A line is a command when it starts with ``/`` and a word (``/usr/bin/env: not found`` is chat text).
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from influence_tui.core.errors import InfluenceError
from influence_tui.core.export import export_markdown
from influence_tui.core.sessions import (
    PARAM_NAMES,
    ChatSession,
    SessionStore,
    canonical_param,
    load_session,
    param_doc,
)
from influence_tui.core.store import ChatStore
from influence_tui.core.types import ChatMessage, GenerationStats

# ------------------------------------------------------------------------------------------ the commands


@dataclass(frozen=True)
class CommandSpec:
    """One command as /help shows it."""

    name: str
    usage: str
    summary: str
    aliases: tuple[str, ...] = ()


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("help", "/help [COMMAND]", "show the commands, or how to use one", ("?",)),
    CommandSpec("clear", "/clear", "start a new conversation (the system prompt and parameters are kept)"),
    CommandSpec("history", "/history", "show every message of this conversation"),
    CommandSpec("retry", "/retry", "answer your last message again (the old reply is kept as an alternative)"),
    CommandSpec("undo", "/undo", "step back over your last exchange (the chat store keeps it as a branch)"),
    CommandSpec("system", "/system [TEXT | --clear]", "show the system prompt, set it, or remove it"),
    CommandSpec("set", "/set [PARAM VALUE]", "change a sampling parameter; alone, list them"),
    CommandSpec("params", "/params", "list the sampling parameters and their values"),
    CommandSpec("stats", "/stats", "show the token counts and speed of the last reply"),
    CommandSpec("title", "/title TEXT", "rename this conversation"),
    CommandSpec("save", "/save FILE", "save this conversation to a JSON file"),
    CommandSpec("load", "/load FILE|ID", "load a conversation from a JSON file or the saved sessions"),
    CommandSpec("export", "/export FILE", "write this conversation to a Markdown file (model, parameters, dates)"),
    CommandSpec("sessions", "/sessions", "list the saved conversations"),
    CommandSpec("quit", "/quit", "leave the chat", ("exit", "q")),
)

_SPECS: dict[str, CommandSpec] = {spec.name: spec for spec in COMMANDS}
_NAMES: dict[str, str] = {
    **{spec.name: spec.name for spec in COMMANDS},
    **{alias: spec.name for spec in COMMANDS for alias in spec.aliases},
}
_CLEAR_WORDS = frozenset({"--clear", "off", "none"})


@dataclass(frozen=True)
class Help:
    topic: str | None = None


@dataclass(frozen=True)
class Clear:
    pass


@dataclass(frozen=True)
class History:
    pass


@dataclass(frozen=True)
class Retry:
    pass


@dataclass(frozen=True)
class Undo:
    pass


@dataclass(frozen=True)
class System:
    text: str | None = None
    """None: show the system prompt."""
    clear: bool = False


@dataclass(frozen=True)
class Set:
    name: str | None = None
    """None: list the parameters."""
    value: str | None = None
    """None: show the parameter's value."""


@dataclass(frozen=True)
class Params:
    pass


@dataclass(frozen=True)
class Stats:
    pass


@dataclass(frozen=True)
class Title:
    text: str


@dataclass(frozen=True)
class Save:
    path: str


@dataclass(frozen=True)
class Load:
    target: str


@dataclass(frozen=True)
class Export:
    path: str


@dataclass(frozen=True)
class Sessions:
    pass


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Invalid:
    """A line that looks like a command but is not a usable one; ``message`` says why and what to type."""

    message: str


SlashCommand: TypeAlias = (
    Help
    | Clear
    | History
    | Retry
    | Undo
    | System
    | Set
    | Params
    | Stats
    | Title
    | Save
    | Load
    | Export
    | Sessions
    | Quit
    | Invalid
)

_NO_ARGUMENT: dict[str, Callable[[], SlashCommand]] = {
    "clear": Clear,
    "history": History,
    "retry": Retry,
    "undo": Undo,
    "params": Params,
    "stats": Stats,
    "sessions": Sessions,
    "quit": Quit,
}

_COMMAND_LINE = re.compile(r"/([A-Za-z?]+)(?:\s+(.*))?", re.DOTALL)


def _usage(name: str) -> str:
    spec = _SPECS[name]
    return f"usage: {spec.usage} — {spec.summary}"


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse(line: str) -> SlashCommand | None:
    """The command on ``line``, or None when the line is chat text for the model."""
    text = line.strip()
    if text == "/":
        return Invalid("type a command after /, e.g. /help")
    match = _COMMAND_LINE.fullmatch(text)
    if match is None:
        return None  # "/usr/bin/env ..." or "/2 is a fraction": not a command
    word, rest = match.group(1).lower(), (match.group(2) or "").strip()
    name = _NAMES.get(word)
    if name is None:
        close = difflib.get_close_matches(word, list(_NAMES), n=1, cutoff=0.6)
        guess = f"did you mean /{_NAMES[close[0]]}? " if close else ""
        return Invalid(f"unknown command /{word}: {guess}/help lists the commands")

    if name in _NO_ARGUMENT:
        if rest:
            return Invalid(f"/{name} takes no argument ({_usage(name)})")
        return _NO_ARGUMENT[name]()
    if name == "help":
        return Help(rest.lstrip("/").lower() or None)
    if name == "system":
        if not rest:
            return System()
        if rest.lower() in _CLEAR_WORDS:
            return System(clear=True)
        return System(rest)
    if name == "set":
        if not rest:
            return Set()
        param, _, value = rest.partition(" ")
        return Set(param, value.strip() or None)
    if not rest:
        return Invalid(_usage(name))
    if name == "title":
        return Title(rest)
    if name == "save":
        return Save(_unquote(rest))
    if name == "export":
        return Export(_unquote(rest))
    return Load(_unquote(rest))


# ------------------------------------------------------------------------------------------ results


class SlashAction(enum.Enum):
    """What the front end does after a command, beyond showing its message."""

    NONE = "none"
    QUIT = "quit"
    """Leave the chat."""
    RETRY = "retry"
    """Generate a reply to the last user message (its old reply is already removed)."""
    SHOW_STATS = "show_stats"
    """Show the last reply's figures (the message has them when the session does)."""
    RELOAD = "reload"
    """The conversation changed (/clear, /undo, /load): show it again from the session."""
    UPDATED = "updated"
    """The system prompt, a parameter or the title changed."""


@dataclass(frozen=True)
class SlashResult:
    message: str
    """Text for the user (plain text, never markup)."""
    action: SlashAction = SlashAction.NONE
    ok: bool = True
    """False when the command failed or was not understood."""
    session: ChatSession | None = None
    """The session that replaces the current one (/load)."""
    path: Path | None = None
    """The file /save wrote or /load read."""
    removed: tuple[ChatMessage, ...] = ()
    """Messages /retry or /undo took out of the conversation."""


def _error(message: str) -> SlashResult:
    return SlashResult(message, ok=False)


# ------------------------------------------------------------------------------------------ texts


def help_text(topic: str | None = None) -> str:
    """Every command with a one-line description, or the usage of one command."""
    if topic:
        name = _NAMES.get(topic.lstrip("/").lower())
        if name is None:
            return f"unknown command /{topic.lstrip('/')}: /help lists the commands"
        spec = _SPECS[name]
        aliases = f" (also {', '.join('/' + a for a in spec.aliases)})" if spec.aliases else ""
        extra = f"\nparameters: {', '.join(PARAM_NAMES)}" if name == "set" else ""
        return f"{spec.usage}{aliases}\n{spec.summary}{extra}"
    width = max(len(spec.usage) for spec in COMMANDS)
    lines = ["Commands:"]
    for spec in COMMANDS:
        aliases = f" (also {', '.join('/' + a for a in spec.aliases)})" if spec.aliases else ""
        lines.append(f"  {spec.usage:<{width}}  {spec.summary}{aliases}")
    lines.append("Anything else is sent to the model.")
    return "\n".join(lines)


def params_text(session: ChatSession) -> str:
    """The sampling parameters, their values and what they do."""
    width = max(len(name) for name in PARAM_NAMES)
    values = {name: session.param_display(name) for name in PARAM_NAMES}
    value_width = min(max(len(v) for v in values.values()), 16)
    lines = ["Parameters (change one with /set PARAM VALUE):"]
    for name in PARAM_NAMES:
        lines.append(f"  {name:<{width}}  {values[name]:<{value_width}}  {param_doc(name)}")
    return "\n".join(lines)


def format_stats(stats: GenerationStats) -> str:
    """One reply's figures on one line."""
    parts = [
        f"{stats.prompt_tokens} prompt tokens",
        f"{stats.generated_tokens} generated",
        f"first token after {stats.time_to_first_token_s:.2f} s",
        f"{stats.decode_tokens_per_s:.1f} tokens/s",
        f"{stats.total_s:.2f} s in all",
    ]
    if stats.load_s:
        parts.append(f"model loaded in {stats.load_s:.1f} s")
    parts.append(f"finished: {stats.finish_reason}")
    return " · ".join(parts)


def sessions_text(store: SessionStore | ChatStore, *, limit: int = 20) -> str:
    if isinstance(store, ChatStore):
        chats = store.list(limit=limit + 1)
        if not chats:
            return f"No saved chats in {store.path}"
        lines = [f"Saved chats in {store.path} (load one with /load ID):"]
        for chat in chats[:limit]:
            when = chat.updated_at[:16].replace("T", " ")
            lines.append(f"  {chat.id}  {when}  {chat.message_count:>3} messages  {chat.title}")
        if len(chats) > limit:
            lines.append(f"  … and {store.count() - limit} older (influence sessions list shows them all)")
        return "\n".join(lines)
    listing = store.scan()
    if not listing.sessions and not listing.problems:
        return f"No saved sessions in {store.sessions_dir}"
    lines = [f"Saved sessions in {store.sessions_dir} (load one with /load ID):"]
    for summary in listing.sessions[:limit]:
        when = summary.updated_at[:16].replace("T", " ")
        lines.append(f"  {summary.id}  {when}  {summary.message_count:>3} messages  {summary.title}")
    if len(listing.sessions) > limit:
        lines.append(f"  … and {len(listing.sessions) - limit} older")
    for problem in listing.problems:
        lines.append(f"  skipped {problem.path.name}: {problem.message}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ execution


def resolve_path(text: str, base_dir: Path | None = None) -> Path:
    """A typed file name as a path: ``~`` expanded, relative to ``base_dir`` (default: the working dir)."""
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return path


def execute(
    command: SlashCommand,
    session: ChatSession,
    *,
    store: SessionStore | ChatStore | None = None,
    base_dir: Path | None = None,
) -> SlashResult:
    """Apply ``command`` to ``session`` (changing it in place) and say what happened.

    ``store`` lets /load take a saved session's id and enables /sessions; ``base_dir`` is where relative file
    names of /save, /load and /export point (default: the working dir). Errors the user can cause come back as a
    result with ``ok=False``, never as an exception.
    """
    try:
        return _execute(command, session, store, base_dir)
    except InfluenceError as exc:
        return _error(str(exc))


def run(
    line: str, session: ChatSession, *, store: SessionStore | ChatStore | None = None, base_dir: Path | None = None
) -> SlashResult | None:
    """Parse and execute ``line``; None when it is chat text."""
    command = parse(line)
    if command is None:
        return None
    return execute(command, session, store=store, base_dir=base_dir)


def _execute(
    command: SlashCommand, session: ChatSession, store: SessionStore | ChatStore | None, base_dir: Path | None
) -> SlashResult:
    if isinstance(command, Invalid):
        return _error(command.message)
    if isinstance(command, Help):
        return SlashResult(help_text(command.topic))
    if isinstance(command, Quit):
        return SlashResult("Bye.", SlashAction.QUIT)
    if isinstance(command, Clear):
        session.clear()
        return SlashResult("✓ Conversation cleared (system prompt and parameters kept)", SlashAction.RELOAD)
    if isinstance(command, History):
        return SlashResult(session.history_text())
    if isinstance(command, Retry):
        removed = session.prepare_retry()
        return SlashResult("Answering your last message again…", SlashAction.RETRY, removed=removed)
    if isinstance(command, Undo):
        removed = session.pop_last_exchange()
        if not removed:
            return _error("there is nothing to undo")
        return SlashResult(
            f"✓ Removed your last message and its reply ({len(removed)} messages)", SlashAction.RELOAD, removed=removed
        )
    if isinstance(command, System):
        if command.clear:
            session.set_system_prompt(None)
            return SlashResult("✓ System prompt removed", SlashAction.UPDATED)
        if command.text is None:
            if session.system_prompt:
                return SlashResult(f"System prompt: {session.system_prompt}")
            return SlashResult("No system prompt (set one with /system TEXT)")
        session.set_system_prompt(command.text)
        return SlashResult("✓ System prompt set", SlashAction.UPDATED)
    if isinstance(command, Params) or (isinstance(command, Set) and command.name is None):
        return SlashResult(params_text(session))
    if isinstance(command, Set):
        name = canonical_param(command.name or "")
        if command.value is None:
            return SlashResult(f"{name} = {session.param_display(name)} (change it with /set {name} VALUE)")
        session.set_param(name, command.value)
        return SlashResult(f"✓ {name} set to {session.param_display(name)}", SlashAction.UPDATED)
    if isinstance(command, Stats):
        if session.last_stats is None:
            return SlashResult("No reply yet in this conversation", SlashAction.SHOW_STATS)
        return SlashResult(format_stats(session.last_stats), SlashAction.SHOW_STATS)
    if isinstance(command, Title):
        session.title = " ".join(command.text.split())
        session.touch()
        return SlashResult(f"✓ Conversation renamed to {session.title!r}", SlashAction.UPDATED)
    if isinstance(command, Save):
        path = resolve_path(command.path, base_dir)
        if not path.suffix:
            path = path.with_suffix(".json")
        written = session.save(path)
        return SlashResult(f"✓ Conversation saved to: {written}", path=written)
    if isinstance(command, Export):
        path = resolve_path(command.path, base_dir)
        if not path.suffix:
            path = path.with_suffix(".md")
        written = export_markdown(session, path)
        return SlashResult(f"✓ Conversation exported to: {written}", path=written)
    if isinstance(command, Load):
        loaded, source = _load(command.target, store, base_dir, session)
        if loaded.model is None:
            loaded.model = session.model
        where = source if source is not None else f"the saved chats ({loaded.id})"
        return SlashResult(
            f"✓ Loaded session from: {where}\n  Messages: {len(loaded.messages)}",
            SlashAction.RELOAD,
            session=loaded,
            path=source,
        )
    if isinstance(command, Sessions):
        if store is None:
            return _error("there is no session store here")
        return SlashResult(sessions_text(store))
    raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover


def _load(
    target: str, store: SessionStore | ChatStore | None, base_dir: Path | None, current: ChatSession
) -> tuple[ChatSession, Path | None]:
    defaults = current.params
    path = resolve_path(target, base_dir)
    candidates = [path] if path.suffix else [path, path.with_suffix(".json")]
    for candidate in candidates:
        if candidate.exists():
            return load_session(candidate, defaults=defaults), candidate
    if isinstance(store, ChatStore) and len(Path(target).parts) == 1:
        return store.load(target, defaults=defaults), None
    if isinstance(store, SessionStore) and len(Path(target).parts) == 1:
        found = store.find(target)
        return load_session(found, defaults=defaults), found
    return load_session(path, defaults=defaults), path  # raises: no such file
