"""Constrained decoding and logprobs in the generation loop, on the real demo model and its GGUF tokenizer.

llguidance is driven through its public calls only; these tests pin what we rely on (a schema compiles, the
mask forbids what the grammar forbids, end-of-sequence comes only where the grammar may end), so an upstream
change in any of that fails here.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

from influence_tui.core.engine import constrain
from influence_tui.core.engine.generate import generate_stream
from influence_tui.core.types import SamplingParams, TokenEvent

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France? Answer in JSON with the keys city and country."
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "country", "population"],
    "additionalProperties": False,
}


def run(loaded: Any, params: SamplingParams, question: str = QUESTION) -> list[TokenEvent]:
    tokenizer = loaded.tokenizer
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(ids, dict):
        ids = ids["input_ids"]
    info = loaded.info
    return list(
        generate_stream(
            loaded.model, tokenizer, ids, params, eos_token_ids=info.eos_token_ids, context_length=info.context_length
        )
    )


def text_of(events: list[TokenEvent]) -> str:
    return "".join(event.text for event in events)


def test_a_schema_constrains_the_reply_to_a_valid_document(demo_loaded: Any) -> None:
    events = run(demo_loaded, SamplingParams(temperature=0, max_tokens=80, grammar=constrain.json_schema(CITY)))
    reply = json.loads(text_of(events))
    assert set(reply) == {"city", "country", "population"}
    assert isinstance(reply["city"], str) and isinstance(reply["country"], str) and type(reply["population"]) is int
    assert reply["city"] == "Paris"
    assert events[-1].stats is not None and events[-1].stats.finish_reason == "stop"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sampled_replies_parse_too(demo_loaded: Any, seed: int) -> None:
    params = SamplingParams(temperature=1.2, top_p=1.0, max_tokens=120, seed=seed, grammar=constrain.json_object())
    events = run(demo_loaded, params, "Describe a cat.")
    assert events[-1].stats is not None
    if events[-1].stats.finish_reason == "stop":  # a reply cut by max_tokens is the one way to be incomplete
        assert isinstance(json.loads(text_of(events)), dict)


def test_without_a_grammar_the_reply_is_prose(demo_loaded: Any) -> None:
    text = text_of(run(demo_loaded, SamplingParams(temperature=0, max_tokens=40)))
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_the_mask_allows_only_what_the_grammar_allows(demo_loaded: Any) -> None:
    tokenizer = demo_loaded.tokenizer
    eos = demo_loaded.info.eos_token_ids
    matcher = constrain.TokenConstraint(tokenizer, constrain.regex("(yes|no)"), eos)
    allowed = matcher.allowed()
    words = {tokenizer.decode([i]) for i in allowed.nonzero().flatten().tolist()}
    assert words and all("yes".startswith(w) or "no".startswith(w) for w in words)
    assert not any(bool(allowed[i]) for i in eos)  # nothing generated yet: the grammar cannot end
    logits = torch.zeros(len(allowed) + 7)
    masked = matcher.mask(logits)
    assert torch.isinf(masked[len(allowed) :]).all()  # padding rows past the vocabulary are forbidden
    assert int(torch.isfinite(masked).sum()) == int(allowed.sum())
    yes = tokenizer.encode("yes")
    for token in yes:
        matcher.consume(token)
    assert matcher.accepting
    after = matcher.allowed()
    assert all(bool(after[i]) for i in eos) or matcher.finished
    with pytest.raises(constrain.GrammarError, match="not allowed"):
        constrain.TokenConstraint(tokenizer, constrain.regex("(yes|no)"), eos).consume(tokenizer.encode("maybe")[0])


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: constrain.json_schema({"type": "nonsense"}), "JSON schema"),
        (lambda: constrain.json_schema("{not json"), "not valid JSON"),
        (lambda: constrain.json_schema([1, 2]), "is an object"),
        (lambda: constrain.regex("(unclosed"), "regular expression"),
        (lambda: constrain.lark("start: missing_rule"), "grammar"),
    ],
)
def test_a_bad_grammar_is_a_clear_error(build: Any, match: str) -> None:
    with pytest.raises(constrain.GrammarError, match=match):
        build()


def test_logprobs_are_the_models_own(demo_loaded: Any) -> None:
    # (no repetition penalty: the log probabilities are the model's, before the penalty or any filter)
    events = run(demo_loaded, SamplingParams(temperature=0, max_tokens=8, repeat_penalty=1.0, logprobs=3))
    tokens = [e for e in events if e.token_id is not None]
    assert tokens
    for event in tokens:
        assert event.logprob is not None and event.logprob <= 0
        assert len(event.top_logprobs) == 3
        ids = [i for i, _ in event.top_logprobs]
        values = [v for _, v in event.top_logprobs]
        assert values == sorted(values, reverse=True)
        # greedy: the chosen token is the most likely one, with that very log probability
        assert ids[0] == event.token_id and math.isclose(values[0], event.logprob, abs_tol=1e-6)
    plain = run(demo_loaded, SamplingParams(temperature=0, max_tokens=8, repeat_penalty=1.0))
    assert [e.token_id for e in plain] == [e.token_id for e in events]  # asking for them changes nothing
    assert all(e.logprob is None and e.top_logprobs == () for e in plain)
