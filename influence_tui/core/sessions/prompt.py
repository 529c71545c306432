"""The one prompt builder of the product: a conversation rendered with the model's chat template, the oldest
whole exchanges left out until the prompt and the room kept for the reply fit the context window.

The system prompt and the newest user message are never left out; when even they do not fit, it is an error the
user can act on. Every front end and both engines (local and remote) fit prompts here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from influence_tui.core.errors import SessionError
from influence_tui.core.prompts import has_chat_template, render_prompt
from influence_tui.core.types import ChatMessage, SamplingParams

__all__ = ["NO_CHAT_TEMPLATE_WARNING", "NO_SYSTEM_ROLE_WARNING", "PromptPlan", "build_prompt", "reply_reserve"]

NO_CHAT_TEMPLATE_WARNING = (
    "this model has no chat template, so a plain 'User: … Assistant:' prompt is used and replies may be poor "
    "(chat and instruct models ship one)"
)
NO_SYSTEM_ROLE_WARNING = (
    "this model's chat template does not accept a system prompt, so it was put at the start of the first message"
)


def reply_reserve(params: SamplingParams, context_length: int) -> int:
    """Tokens kept free for the reply when fitting history: max_tokens, but never more than half the context."""
    return max(1, min(params.max_tokens, context_length // 2))


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
