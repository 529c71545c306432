"""One chat turn over the engine: fit the session into the context, start the reply, record it when done.

Shared by every front end (the CLI REPL, the TUI worker, the server) so they build prompts and keep
history the same way. Nothing here touches a UI.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from influence_tui.core.errors import InfluenceError
from influence_tui.core.sessions import reply_reserve
from influence_tui.core.types import GenerationStats

__all__ = ["ReplyInProgress", "finish_reply", "is_remote", "reply_reserve", "start_reply"]

if TYPE_CHECKING:
    from typing import TypeAlias

    from typing_extensions import TypeIs

    from influence_tui.core.engine.remote import RemoteEngine
    from influence_tui.core.engine.runner import EngineRunner, TokenStream
    from influence_tui.core.sessions import ChatSession, PromptPlan, SessionStore
    from influence_tui.core.store import ChatStore

    ChatEngine: TypeAlias = "EngineRunner | RemoteEngine"
    """What a front end chats through: the local engine runner, or a remote engine (its chats leave the machine)."""


def is_remote(engine: object) -> TypeIs[RemoteEngine]:
    """Whether ``engine`` is a remote engine (checked without importing the HTTP client)."""
    return getattr(engine, "remote_engine", False) is True


@dataclass
class ReplyInProgress:
    """A reply being generated: its prompt plan and token stream."""

    plan: PromptPlan
    stream: TokenStream


def start_reply(runner: ChatEngine, session: ChatSession, stop_event: threading.Event | None = None) -> ReplyInProgress:
    """Build the prompt for the session's last user message and queue its generation (locally), or send the
    conversation (to a remote engine)."""
    if is_remote(runner):
        plan, stream = runner.start_chat(session.messages, session.system_prompt, session.params, stop_event)
        return ReplyInProgress(plan, stream)
    info = runner.info
    if info is None:
        raise InfluenceError("no model is loaded", hint="load a model before chatting")
    params = session.params
    plan = runner.with_model(
        lambda loaded: session.build_prompt(
            loaded.tokenizer,
            context_length=info.context_length,
            reserve_tokens=reply_reserve(params, info.context_length),
        )
    )
    return ReplyInProgress(plan, runner.submit(plan.prompt_ids, params, stop_event))


def finish_reply(
    session: ChatSession,
    text: str,
    stats: GenerationStats | None,
    store: SessionStore | ChatStore | None = None,
) -> None:
    """Record the reply (even a cancelled, partial one: nothing the user saw is lost) and autosave."""
    if text or stats is None or stats.finish_reason != "cancelled":
        session.add_assistant(text, stats=stats)
    if store is not None:
        store.autosave(session)
