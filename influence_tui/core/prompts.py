"""One way to turn a conversation into the model's prompt: its chat template, or a plain transcript.

Every front end reaches the model through :func:`render_prompt` (the chat session's history fitting, the
engine runner's ``apply_chat_template`` for the server and the CLI), so the prompt a context meter counts is
the prompt that is sent. Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_LABELS = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def plain_transcript(messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
    """A conversation as ``System: ...`` / ``User: ...`` / ``Assistant: ...`` paragraphs, for models without a
    chat template."""
    parts = [
        f"{_LABELS.get(m.get('role', 'user'), m.get('role', 'user').capitalize())}: {m.get('content', '')}"
        for m in messages
    ]
    if add_generation_prompt:
        parts.append("Assistant:")
    return "\n\n".join(parts)


def render_prompt(
    tokenizer: Any,
    conversation: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    **template_kwargs: Any,
) -> tuple[str, list[int]]:
    """(the prompt text, its token ids). Through the tokenizer's chat template when it has one (the template
    writes the special tokens, BOS included, so none are added); else :func:`plain_transcript`, with the
    tokenizer's own special tokens (BOS) added. ``template_kwargs`` (``tools``...) go to the template."""
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(
            [dict(m) for m in conversation],
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **template_kwargs,
        )
        if not isinstance(text, str):  # pragma: no cover - tokenize=False always gives text
            raise TypeError(f"apply_chat_template returned {type(text).__name__}")
        return text, [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]
    text = plain_transcript(conversation, add_generation_prompt=add_generation_prompt)
    return text, [int(i) for i in tokenizer.encode(text, add_special_tokens=True)]
