"""One prompt builder: the chat session's history fitting and the engine runner's prompt are the same ids,
with a chat template and without one."""

from __future__ import annotations

from pathlib import Path

import pytest

from influence_tui.core.engine.runner import EngineRunner
from influence_tui.core.library import inspect_path
from influence_tui.core.prompts import plain_transcript, render_prompt
from influence_tui.core.sessions import build_prompt
from influence_tui.core.types import ChatMessage, LoadOptions


def test_plain_transcript_for_models_without_a_template() -> None:
    text = plain_transcript([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert text == "System: S\n\nUser: U\n\nAssistant:"
    assert plain_transcript([{"role": "user", "content": "U"}], add_generation_prompt=False) == "User: U"


@pytest.mark.parametrize("template", [True, False])
def test_the_session_and_the_runner_send_the_same_prompt(tiny_llama: Path, template: bool) -> None:
    if not template:  # a model without a chat template
        config = tiny_llama / "tokenizer_config.json"
        config.write_text(config.read_text().replace('"chat_template"', '"unused_template"'))
        (tiny_llama / "chat_template.jinja").unlink(missing_ok=True)
    (local,) = inspect_path(tiny_llama)
    messages = [
        ChatMessage("user", "Hello there"),
        ChatMessage("assistant", "Hi!"),
        ChatMessage("user", "What is the capital of France?"),
    ]
    with EngineRunner() as runner:
        runner.load(local, LoadOptions(device="cpu"))
        assert runner.with_model(lambda loaded: bool(loaded.info.has_chat_template)) is template
        sent = runner.apply_chat_template([ChatMessage("system", "Be brief."), *messages])
        plan = runner.with_model(
            lambda loaded: build_prompt(
                loaded.tokenizer, messages, system_prompt="Be brief.", context_length=256, reserve_tokens=16
            )
        )
        text, ids = runner.with_model(
            lambda loaded: render_prompt(
                loaded.tokenizer,
                [
                    {"role": "system", "content": "Be brief."},
                    *({"role": m.role, "content": m.content} for m in messages),
                ],
            )
        )
    assert list(plan.prompt_ids) == sent == ids
    assert plan.used_chat_template is template
    assert ("Assistant:" in text) is not template
