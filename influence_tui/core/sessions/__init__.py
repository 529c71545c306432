"""Chat sessions: the conversation and its sampling parameters, the prompt fitted to a model's context window,
and JSON files that the original Influence tool can read and write.

A :class:`ChatSession` is a small mutable holder (the CLI REPL, the TUI and the server each keep one per
conversation); its messages are frozen :class:`ChatMessage` records with ISO 8601 UTC timestamps.

:func:`build_prompt` renders a conversation with the model's chat template and leaves out the oldest whole
exchanges until the prompt and the room kept for the reply fit the context window. The system prompt and the
newest user message are never left out; when even they do not fit, it is an error the user can act on.

What lives where: :mod:`.stamps` (times, ids, titles), :mod:`.sampling` (parsing the sampling parameters),
:mod:`.prompt` (fitting the prompt), :mod:`.session` (the session and its JSON file format), :mod:`.folder`
(:class:`SessionStore`, the sessions dir). Every public name is re-exported here, where callers import it.
"""

from influence_tui.core.sessions.folder import SessionListing, SessionProblem, SessionStore, SessionSummary
from influence_tui.core.sessions.prompt import (
    NO_CHAT_TEMPLATE_WARNING,
    NO_SYSTEM_ROLE_WARNING,
    PromptPlan,
    build_prompt,
    reply_reserve,
)
from influence_tui.core.sessions.sampling import PARAM_NAMES, canonical_param, format_param, param_doc, parse_stop
from influence_tui.core.sessions.session import FORMAT_VERSION, ChatSession, load_session
from influence_tui.core.sessions.stamps import (
    TITLE_LENGTH,
    make_title,
    new_session_id,
    normalize_timestamp,
    parse_time,
    utc_now,
)

__all__ = [
    "FORMAT_VERSION",
    "NO_CHAT_TEMPLATE_WARNING",
    "NO_SYSTEM_ROLE_WARNING",
    "PARAM_NAMES",
    "TITLE_LENGTH",
    "ChatSession",
    "PromptPlan",
    "SessionListing",
    "SessionProblem",
    "SessionStore",
    "SessionSummary",
    "build_prompt",
    "canonical_param",
    "format_param",
    "load_session",
    "make_title",
    "new_session_id",
    "normalize_timestamp",
    "param_doc",
    "parse_stop",
    "parse_time",
    "reply_reserve",
    "utc_now",
]
