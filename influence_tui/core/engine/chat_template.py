"""Chat templates rendered with jinja2 exactly as transformers' ``apply_chat_template`` renders them.

A chat template is a Jinja program shipped with the model (``tokenizer_config.json``, ``chat_template.jinja`` or
the GGUF key ``tokenizer.chat_template``). Templates come from the Hub and are untrusted code, so they run in
jinja2's immutable sandbox, and what they see is rebuilt out of plain JSON types first. The environment matches
transformers' (``utils/chat_template_utils.py``) so a prompt renders byte for byte the same:

- ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension (``{% break %}``, ``{% continue %}``);
- ``raise_exception(message)`` and ``strftime_now(format)`` as globals, a ``tojson`` filter that does not escape
  HTML and takes ``ensure_ascii``, ``indent``, ``separators`` and ``sort_keys``;
- a ``{% generation %}`` block (it only marks the assistant's text for training masks, so here it renders its body);
- ``dict`` and ``namespace`` that refuse underscore-prefixed names.

Each template is compiled once and cached. transformers is not imported.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["compile_template", "render_chat"]

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
"""Names a message's reasoning comes under; templates read the first, gpt-oss's read ``thinking``."""


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Callable[[], str]) -> str:
        return caller()


class _TemplateDict:
    """``dict(...)`` for templates without the type itself (no attribute access to break out through)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace(...)`` that refuses underscore-prefixed attributes (a way into CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's own trick, so that namespace(self=...) works
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace, got {name!r}"
            )


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    """The template compiled in a sandboxed environment set up like transformers'; cached by source text.

    Raises ``jinja2.TemplateSyntaxError`` for a template that does not parse."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(source)


def _plain(value: Any) -> Any:
    """``value`` rebuilt out of plain JSON types (what the sandbox can safely hand a template); anything else
    becomes an inert ``"<TypeName>"`` placeholder, as in transformers."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and type(value).__module__ == "numpy":
        return _plain(item())
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump):
        return _plain(dump())
    return f"<{type(value).__name__}>"


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    """One message as the template sees it: keys whose value is None dropped (``content=None`` from OpenAI-style
    clients would render as "None"), plain types only, reasoning copied under every name templates read."""
    if not isinstance(message, Mapping):
        raise TypeError(f"chat messages must be mappings, got {message!r}")
    plain: dict[str, Any] = _plain({k: v for k, v in message.items() if v is not None})
    reasoning = next((plain[k] for k in _REASONING_FIELDS if plain.get(k) is not None), None)
    if reasoning is not None:
        plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
    return plain


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    **variables: Any,
) -> str:
    """Render one conversation through a chat template.

    ``tools`` are JSON schemas (``{"type": "function", "function": {...}}``), ``documents`` dicts with ``title``
    and ``text``; ``variables`` reach the template as they are (the special tokens ``bos_token``, ``eos_token``...
    and template switches such as ``enable_thinking``). Raises ``jinja2.TemplateError`` when the template does
    (``raise_exception``) or does not parse, ``TypeError`` for a message, tool or document that is not a mapping.
    """
    if not messages:
        raise ValueError("cannot apply a chat template to an empty conversation")
    for tool in tools or ():
        if not isinstance(tool, Mapping):
            raise TypeError(f"tools must be JSON schemas (mappings), got {tool!r}")
    for document in documents or ():
        if not isinstance(document, Mapping):
            raise TypeError(f"documents must be mappings with 'title' and 'text', got {document!r}")
    compiled = compile_template(template)
    return compiled.render(
        messages=[_message(m) for m in messages],
        tools=_plain(list(tools)) if tools is not None else None,
        documents=_plain(list(documents)) if documents is not None else None,
        add_generation_prompt=add_generation_prompt,
        **_plain(variables),
    )
