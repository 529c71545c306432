"""Constrained decoding: a grammar decides, before each token is sampled, which tokens may come next.

The grammar engine is llguidance (the one vLLM, SGLang and llama.cpp use for JSON schemas): it takes our
tokenizer as a ``tokenizers`` JSON document, compiles JSON schemas, Lark and regular expressions, and computes
the allowed-token mask of a step in tens of microseconds (its "slicer" skips most of the vocabulary), on CPU,
with no GPU kernel needed. A :class:`Grammar` is what a request carries (a compiled-and-checked llguidance
grammar document; build one with :func:`json_object`, :func:`json_schema`, :func:`lark` or :func:`regex`); a
:class:`TokenConstraint` is one generation's matcher over it, driven by the loop in
:mod:`~influence_tui.core.engine.generate`: :meth:`TokenConstraint.mask` sets every forbidden logit to ``-inf``
before sampling, :meth:`TokenConstraint.consume` advances the matcher with the sampled token. The end-of-sequence
token is allowed only where the grammar may end, so a reply that ends on its own always parses; a reply cut by
``max_tokens`` is the one way to get an incomplete document (its finish reason says ``length``).

Only public llguidance calls are used (``LLTokenizer``, ``LLMatcher``, ``grammar_from_json_schema``,
``validate_grammar_with_warnings``, ``compute_bitmask``, ``consume_token``, ``is_stopped``); the tests check
their behaviour on the demo's tokenizer, so a change there fails loudly.
"""

from __future__ import annotations

import contextlib
import json
import threading
import weakref
from collections.abc import Collection
from typing import Any

import torch

from influence_tui.core.errors import InfluenceError
from influence_tui.core.types import Grammar

__all__ = ["Grammar", "GrammarError", "TokenConstraint", "json_object", "json_schema", "lark", "regex"]


class GrammarError(InfluenceError):
    """A grammar (a JSON schema, a Lark grammar, a regex) the grammar engine cannot use."""


_LABELS = {"json_object": "JSON object", "json_schema": "JSON schema", "lark": "grammar", "regex": "regular expression"}


def _checked(document: str, kind: str) -> Grammar:
    import llguidance

    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(document, None)
    if is_error:
        errors = "; ".join(m.strip() for m in messages) or "invalid grammar"
        raise GrammarError(f"the {_LABELS[kind]} cannot be used for constrained output: {errors}")
    return Grammar(document, kind)


# Compact JSON (a small model cannot wander into endless newlines); keywords llguidance does not implement
# (``format``, ``uniqueItems``...) are ignored rather than refused, as OpenAI's non-strict mode does.
_JSON_OPTIONS: Any = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": True}


def json_object() -> Grammar:
    """Any JSON object (OpenAI ``json_object``, Ollama ``format: "json"``)."""
    return json_schema({"type": "object"}, kind="json_object")


def json_schema(schema: Any, *, kind: str = "json_schema") -> Grammar:
    """Output valid for the JSON schema ``schema`` (a dict, or JSON text). Compact JSON: no whitespace between
    tokens beyond one space after ``:`` and ``,``, so a small model cannot wander into endless newlines."""
    import llguidance

    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise GrammarError(f"the JSON schema is not valid JSON: {exc}") from None
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    if not isinstance(schema, dict):
        raise GrammarError(f"a JSON schema is an object, not {type(schema).__name__}")
    try:
        text = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=_JSON_OPTIONS)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise GrammarError(f"the JSON schema cannot be used for constrained output: {exc}") from None
    return _checked(text, kind)


def lark(text: str) -> Grammar:
    """Output in the language of a Lark grammar (llguidance's dialect; ``start`` is the start rule)."""
    import llguidance

    try:
        document = llguidance.LLMatcher.grammar_from_lark(text)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise GrammarError(f"the grammar cannot be used for constrained output: {exc}") from None
    return _checked(document, "lark")


def regex(pattern: str) -> Grammar:
    """Output matching the regular expression ``pattern`` as a whole."""
    import llguidance

    try:
        document = llguidance.LLMatcher.grammar_from_regex(pattern)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise GrammarError(f"the regular expression cannot be used for constrained output: {exc}") from None
    return _checked(document, "regex")


# ------------------------------------------------------------------------------------------ tokenizers

_LL_TOKENIZERS: weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], Any]] = weakref.WeakKeyDictionary()
_LL_LOCK = threading.Lock()


def _backend_json(tokenizer: Any) -> str:
    """The ``tokenizers`` JSON of a :class:`~influence_tui.core.engine.tokenizer.NativeTokenizer` or of a
    transformers fast tokenizer."""
    backend = getattr(tokenizer, "backend", None) or getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        raise GrammarError(
            f"constrained output needs a fast tokenizer; {type(tokenizer).__name__} is not one",
            hint="use a model with a tokenizer.json, or a GGUF",
        )
    import copy

    backend = copy.copy(backend)
    backend.no_padding()
    backend.no_truncation()
    return str(backend.to_str())


def ll_tokenizer(tokenizer: Any, eos_token_ids: Collection[int]) -> Any:
    """llguidance's view of ``tokenizer`` with ``eos_token_ids`` as its end tokens (built once per tokenizer:
    about a second for a 50k vocabulary)."""
    import llguidance

    eos = tuple(sorted({int(i) for i in eos_token_ids}))
    with _LL_LOCK:
        per = _LL_TOKENIZERS.get(tokenizer)
        if per is None:
            per = {}
            with contextlib.suppress(TypeError):  # not weak-referenceable: built each time
                _LL_TOKENIZERS[tokenizer] = per
        found = per.get(eos)
        if found is None:
            if not eos:
                raise GrammarError("constrained output needs the model's end-of-sequence token; it has none")
            found = llguidance.LLTokenizer(_backend_json(tokenizer), eos_token=list(eos))
            per[eos] = found
        return found


# ------------------------------------------------------------------------------------------ one generation


_BITS = torch.tensor([1 << i for i in range(32)], dtype=torch.int64)
"""The 32 bits of one word of llguidance's token bitmask, lowest first."""


class TokenConstraint:
    """One generation's grammar matcher: which tokens may come next, and the tokens taken so far."""

    def __init__(self, tokenizer: Any, grammar: Grammar, eos_token_ids: Collection[int]) -> None:
        import llguidance

        self._tokenizer = ll_tokenizer(tokenizer, eos_token_ids)
        self.vocab = int(self._tokenizer.vocab_size)
        self._matcher = llguidance.LLMatcher(self._tokenizer, grammar.document)
        if self._matcher.is_error():
            raise GrammarError(
                f"the {_LABELS.get(grammar.kind, 'grammar')} cannot be used: {self._matcher.get_error()}"
            )
        self.grammar = grammar

    @property
    def finished(self) -> bool:
        """The grammar is complete and allows nothing more (the generation ends there)."""
        return bool(self._matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        """What was generated so far is a complete sentence of the grammar."""
        return bool(self._matcher.is_accepting())

    def allowed(self) -> torch.Tensor:
        """A bool tensor ``[vocab]``: the tokens the grammar allows next."""
        raw = self._matcher.compute_bitmask()
        if self._matcher.is_error():
            raise GrammarError(f"constrained decoding failed: {self._matcher.get_error()}")
        words = torch.frombuffer(bytearray(raw), dtype=torch.int32).to(torch.int64)
        bits = (words.unsqueeze(1) & _BITS) != 0
        return bits.reshape(-1)[: self.vocab]

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` ``[vocab or more]`` with every token the grammar forbids at ``-inf`` (a new tensor; rows
        past the tokenizer's vocabulary, the padding of some checkpoints, are forbidden too)."""
        allowed = self.allowed().to(logits.device)
        out = torch.full_like(logits, float("-inf"), dtype=torch.float32)
        n = min(out.shape[-1], allowed.shape[0])
        keep = allowed[:n]
        out[:n][keep] = logits[:n].float()[keep]
        return out

    def consume(self, token: int) -> None:
        """Advance the matcher past the sampled ``token`` (one :meth:`mask` allowed)."""
        if not self._matcher.consume_token(int(token)):
            raise GrammarError(
                f"constrained decoding failed: token {token} is not allowed here ({self._matcher.get_error()})"
            )
