"""The tokenizer of a native model, without transformers: a Rust ``tokenizers.Tokenizer`` plus the model's special
tokens and chat template, with the part of transformers' tokenizer interface this codebase uses.

Two sources:

- a model folder: ``tokenizer.json`` (the pipeline as it is, post-processor included: like transformers, the
  config's ``add_bos_token``/``add_eos_token`` do not override it), ``tokenizer_config.json`` (special tokens,
  ``model_max_length``, the chat template unless ``chat_template.jinja``,
  ``additional_chat_templates/`` or ``chat_template.json`` hold it), ``special_tokens_map.json`` and the eos ids of
  ``generation_config.json``: :meth:`NativeTokenizer.from_folder`;
- a GGUF file's metadata, which stores the vocabulary under llama.cpp's keys: :meth:`NativeTokenizer.from_gguf`,
  with the pipeline :mod:`.gguf_vocab` builds from it.

The GGUF pipelines are the ones transformers builds (``integrations/gguf/gguf_tokenizer_mapping.py`` with its
GPT-2, Llama and Gemma tokenizer classes), so both give the same ids; the tests check that with transformers as
the oracle. Chat templates render through :mod:`.chat_template`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, overload

from tokenizers import AddedToken, Tokenizer, processors

from influence_tui.core.engine.chat_template import render_chat
from influence_tui.core.engine.gguf_vocab import gguf_backend, read_gguf_tokenizer_metadata
from influence_tui.core.errors import ModelFormatError

__all__ = ["NativeTokenizer", "read_gguf_tokenizer_metadata"]

VERY_LARGE_INTEGER = int(1e30)
"""``model_max_length`` of a tokenizer that states none (transformers' value)."""

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
"""The named special tokens, in transformers' order (templates see them as variables of these names)."""


def _token_content(value: Any) -> tuple[str | None, AddedToken | None]:
    """A special token as a config file writes it: a string, an ``AddedToken`` dict (``content``, ``lstrip``...)
    or null."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        flags = {k: bool(value[k]) for k in ("single_word", "lstrip", "rstrip", "normalized") if k in value}
        return str(value["content"]), AddedToken(str(value["content"]), special=True, **flags)
    return None, None


class NativeTokenizer:
    """A ``tokenizers.Tokenizer`` with its model's special tokens and chat template.

    It answers what this codebase asks of a transformers tokenizer: :meth:`encode`, :meth:`decode`,
    :meth:`apply_chat_template`, ``chat_template``, the ``*_token``/``*_token_id`` attributes (``pad_token`` is
    settable), :meth:`get_vocab`, ``model_max_length``, :meth:`convert_ids_to_tokens`, ``len()``/``vocab_size``,
    ``all_special_ids``. Build one with :meth:`from_folder` or :meth:`from_gguf`.
    """

    def __init__(
        self,
        backend: Tokenizer,
        *,
        special_tokens: Mapping[str, str | AddedToken | None] | None = None,
        extra_special_tokens: Iterable[str | AddedToken] = (),
        chat_template: str | dict[str, str] | None = None,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        model_max_length: int = VERY_LARGE_INTEGER,
        eos_token_ids: Iterable[int] = (),
    ) -> None:
        """``special_tokens`` maps ``bos_token``, ``eos_token``... to the token (one not yet an added token of the
        backend is added as a special token, as transformers does). With ``add_bos_token``/``add_eos_token`` both
        None the backend's post-processor is kept (a ``tokenizer.json`` states its own; transformers too ignores
        the config's flags then); otherwise ``encode(add_special_tokens=True)`` wraps the text in bos/eos as those
        flags say."""
        self.backend = backend
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        self.padding_side = "right"
        self._eos_token_ids = tuple(eos_token_ids)
        self._special: dict[str, str | None] = dict.fromkeys(_SPECIAL_NAMES)
        added = {str(t.content) for t in backend.get_added_tokens_decoder().values()}
        to_add: list[AddedToken] = []
        for name, value in (special_tokens or {}).items():
            if name not in self._special:
                raise ValueError(f"unknown special token name {name!r}")
            content = value if isinstance(value, str) or value is None else str(value.content)
            self._special[name] = content
            if content is not None and content not in added:
                to_add.append(value if isinstance(value, AddedToken) else AddedToken(content, special=True))
                added.add(content)
        extra = [t if isinstance(t, AddedToken) else AddedToken(t, special=True) for t in extra_special_tokens]
        self._extra_special = [str(t.content) for t in extra]
        to_add += [t for t in extra if str(t.content) not in added]
        if to_add:
            backend.add_special_tokens(to_add)
        if add_bos_token is None and add_eos_token is None and backend.post_processor is not None:
            probe = backend.encode("", add_special_tokens=True).ids
            self._add_bos = self.bos_token_id is not None and probe[:1] == [self.bos_token_id]
            self._add_eos = self.eos_token_id is not None and probe[-1:] == [self.eos_token_id]
        else:
            self._add_bos = bool(add_bos_token) and self.bos_token is not None
            self._add_eos = bool(add_eos_token) and self.eos_token is not None
            self._set_post_processor()

    # ------------------------------------------------------------------------------------------ constructors

    @classmethod
    def from_folder(cls, folder: Path | str) -> NativeTokenizer:
        """The tokenizer of a model folder (``tokenizer.json`` and its companions).

        Raises :class:`ModelFormatError` when there is no ``tokenizer.json`` or a file cannot be read."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelFormatError(
                f"{folder.name} has no tokenizer.json",
                hint="the native runtime reads only tokenizer.json; download it from the model's repo",
            )
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own Exception subclass for a bad file
            raise ModelFormatError(f"{folder.name}: tokenizer.json cannot be read: {exc}") from exc
        config = _read_json(folder / "tokenizer_config.json")
        values: dict[str, Any] = {name: config[name] for name in _SPECIAL_NAMES if name in config}
        extra_values = _token_list(config.get("extra_special_tokens") or config.get("additional_special_tokens"))
        if "added_tokens_decoder" not in config:  # legacy: special_tokens_map.json completes the config
            legacy = _read_json(folder / "special_tokens_map.json")
            values.update({name: legacy[name] for name in _SPECIAL_NAMES if name in legacy})
            for token in _token_list(legacy.get("extra_special_tokens") or legacy.get("additional_special_tokens")):
                if token not in extra_values:
                    extra_values.append(token)
        special: dict[str, str | AddedToken | None] = {}
        for name, value in values.items():
            content, added = _token_content(value)
            special[name] = added or content
        extra: list[str | AddedToken] = []
        for value in extra_values:
            content, added = _token_content(value)
            if content is not None:
                extra.append(added or content)
        known = {str(t.content) for t in backend.get_added_tokens_decoder().values()}
        decoder = config.get("added_tokens_decoder")
        if isinstance(decoder, Mapping):  # tokens the config adds that tokenizer.json lacks
            missing = []
            for _index, value in sorted(decoder.items(), key=lambda kv: int(kv[0])):
                if isinstance(value, Mapping) and str(value.get("content")) not in known:
                    flags = {k: bool(value[k]) for k in ("single_word", "lstrip", "rstrip", "normalized") if k in value}
                    missing.append(AddedToken(str(value["content"]), special=bool(value.get("special")), **flags))
            if missing:
                backend.add_tokens(missing)
        max_length = config.get("model_max_length")
        generation = _read_json(folder / "generation_config.json")
        eos = generation.get("eos_token_id")
        return cls(
            backend,
            special_tokens=special,
            extra_special_tokens=extra,
            chat_template=_folder_chat_template(folder, config),
            model_max_length=int(max_length) if isinstance(max_length, int | float) else VERY_LARGE_INTEGER,
            eos_token_ids=_ids(eos),
        )

    @classmethod
    def from_gguf(cls, source: Path | str | Mapping[str, Any]) -> NativeTokenizer:
        """The tokenizer a GGUF file describes: ``source`` is the file (its first part, for a split model) or its
        metadata as key -> value, arrays included.

        Raises :class:`ModelFormatError` for a file without a tokenizer or with one of a kind not built here."""
        metadata = source if isinstance(source, Mapping) else read_gguf_tokenizer_metadata(Path(source))
        built = gguf_backend(metadata)
        backend, tokens = built.backend, built.tokens
        kind = metadata.get("tokenizer.ggml.model")
        architecture = str(metadata.get("general.architecture") or "")
        gemma = kind == "llama" and architecture in ("gemma", "gemma2", "gemma3")

        def token(key: str) -> str | None:
            index = metadata.get(f"tokenizer.ggml.{key}")
            return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

        special: dict[str, str | AddedToken | None] = {
            "bos_token": token("bos_token_id"),
            "eos_token": token("eos_token_id"),
            "unk_token": token("unknown_token_id"),
            "pad_token": token("padding_token_id"),
        }
        if gemma and backend.token_to_id("<mask>") is not None:
            special["mask_token"] = "<mask>"  # GemmaTokenizer's default, a token of its vocabulary
        add_bos = metadata.get("tokenizer.ggml.add_bos_token")
        if add_bos is None and kind == "llama":
            add_bos = True  # llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise
        template = metadata.get("tokenizer.chat_template")
        eos_ids = [metadata.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
        arch_context = metadata.get(f"{architecture}.context_length")
        return cls(
            backend,
            special_tokens=special,
            chat_template=template if isinstance(template, str) and template.strip() else None,
            add_bos_token=bool(add_bos),
            add_eos_token=bool(metadata.get("tokenizer.ggml.add_eos_token")),
            model_max_length=int(arch_context) if isinstance(arch_context, int) else VERY_LARGE_INTEGER,
            eos_token_ids=[i for i in eos_ids if isinstance(i, int)],
        )

    # ------------------------------------------------------------------------------------------ special tokens

    def __deepcopy__(self, memo: dict[int, Any]) -> NativeTokenizer:
        """A copy for another thread (the engine runner keeps one for building prompts): its own Python-side
        state, the same Rust tokenizer. Encoding and decoding only read the backend, and the Rust side allows
        shared reads from several threads; copying it would cost a JSON round trip (about 0.1 s for a 49k
        vocabulary) on every load. Only :attr:`pad_token` can change the backend (adding a token it lacks)."""
        clone = copy.copy(self)
        clone._special = dict(self._special)
        clone._extra_special = list(self._extra_special)
        memo[id(self)] = clone
        return clone

    def _token_id(self, token: str | None) -> int | None:
        return self.backend.token_to_id(token) if token is not None else None

    @property
    def bos_token(self) -> str | None:
        return self._special["bos_token"]

    @property
    def eos_token(self) -> str | None:
        return self._special["eos_token"]

    @property
    def unk_token(self) -> str | None:
        return self._special["unk_token"]

    @property
    def pad_token(self) -> str | None:
        return self._special["pad_token"]

    @pad_token.setter
    def pad_token(self, value: str | None) -> None:
        if value is not None and self.backend.token_to_id(value) is None:
            self.backend.add_special_tokens([AddedToken(value, special=True)])
        self._special["pad_token"] = value

    @property
    def bos_token_id(self) -> int | None:
        return self._token_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._token_id(self.eos_token)

    @property
    def unk_token_id(self) -> int | None:
        return self._token_id(self.unk_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._token_id(self.pad_token)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id the files say ends a reply: ``eos_token_id`` plus generation_config's (a folder) or the
        ``eot``/``eom`` ids (a GGUF); not in transformers' interface."""
        own = self.eos_token_id
        return tuple(dict.fromkeys([*([own] if own is not None else []), *self._eos_token_ids]))

    @property
    def add_bos_token(self) -> bool:
        return self._add_bos

    @property
    def add_eos_token(self) -> bool:
        return self._add_eos

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens that are set: what a chat template sees as variables."""
        return {name: value for name, value in self._special.items() if value is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        """The named special tokens and the extra ones, each once."""
        return list(dict.fromkeys([*self.special_tokens_map.values(), *self._extra_special]))

    @property
    def all_special_ids(self) -> list[int]:
        ids = (self.backend.token_to_id(t) for t in self.all_special_tokens)
        return [i for i in ids if i is not None]

    def _set_post_processor(self) -> None:
        """BOS/EOS around the text as ``add_bos_token``/``add_eos_token`` say (transformers'
        ``update_post_processor``)."""
        bos, eos = str(self.bos_token), str(self.eos_token)  # each set when its flag is
        single = f"{bos + ':0 ' if self._add_bos else ''}$A:0{' ' + eos + ':0' if self._add_eos else ''}"
        pair = f"{single}{' ' + bos + ':1' if self._add_bos else ''} $B:1{' ' + eos + ':1' if self._add_eos else ''}"
        pieces: list[tuple[str, int]] = []
        if self._add_bos:
            pieces.append((bos, int(self._token_id(bos) or 0)))
        if self._add_eos:
            pieces.append((eos, int(self._token_id(eos) or 0)))
        self.backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=pieces)

    # ------------------------------------------------------------------------------------------ vocabulary

    def __len__(self) -> int:
        """The vocabulary with the added tokens (transformers' ``len(tokenizer)``)."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    @property
    def vocab_size(self) -> int:
        """The base vocabulary, without added tokens (transformers' ``vocab_size``)."""
        return int(self.backend.get_vocab_size(with_added_tokens=False))

    def get_vocab(self) -> dict[str, int]:
        return dict(self.backend.get_vocab(with_added_tokens=True))

    @overload
    def convert_ids_to_tokens(self, ids: int, skip_special_tokens: bool = False) -> str | None: ...
    @overload
    def convert_ids_to_tokens(self, ids: Sequence[int], skip_special_tokens: bool = False) -> list[str | None]: ...
    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> list[str | None] | str | None:
        if isinstance(ids, int):
            return self.backend.id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.backend.id_to_token(int(i)) for i in ids if int(i) not in special]

    @overload
    def convert_tokens_to_ids(self, tokens: str) -> int | None: ...
    @overload
    def convert_tokens_to_ids(self, tokens: list[str] | tuple[str, ...]) -> list[int | None]: ...
    def convert_tokens_to_ids(self, tokens: str | list[str] | tuple[str, ...]) -> list[int | None] | int | None:
        if isinstance(tokens, str):
            return self.backend.token_to_id(tokens)
        return [self.backend.token_to_id(t) for t in tokens]

    # ------------------------------------------------------------------------------------------ text

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds BOS/EOS as the model wants (special tokens written
        in the text are always matched whole)."""
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of token ids; ``skip_special_tokens`` leaves out special added tokens."""
        sequence = [ids] if isinstance(ids, int) else [int(i) for i in ids]
        return str(self.backend.decode(sequence, skip_special_tokens=skip_special_tokens))

    def get_chat_template(self, chat_template: str | None = None, tools: Sequence[Any] | None = None) -> str:
        """The template to render: ``chat_template`` (a template, or the name of one of the model's), else the
        model's (with several: ``tool_use`` when there are tools, else ``default``). Raises ValueError if none."""
        templates = self.chat_template
        if isinstance(templates, dict):
            if chat_template is not None:
                return templates.get(chat_template, chat_template)
            if tools is not None and "tool_use" in templates:
                return templates["tool_use"]
            if "default" in templates:
                return templates["default"]
            raise ValueError(f"the model has several chat templates and no default: {sorted(templates)}")
        if chat_template is not None:
            return chat_template
        if templates is None:
            raise ValueError("the tokenizer has no chat template and none was given")
        return templates

    @overload
    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]],
        *,
        tokenize: Literal[False],
        add_generation_prompt: bool = ...,
        tools: Sequence[Mapping[str, Any]] | None = ...,
        documents: Sequence[Mapping[str, Any]] | None = ...,
        chat_template: str | None = ...,
        **kwargs: Any,
    ) -> str: ...
    @overload
    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]],
        *,
        tokenize: Literal[True] = ...,
        add_generation_prompt: bool = ...,
        tools: Sequence[Mapping[str, Any]] | None = ...,
        documents: Sequence[Mapping[str, Any]] | None = ...,
        chat_template: str | None = ...,
        **kwargs: Any,
    ) -> list[int]: ...
    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str | list[int]:
        """One conversation through the chat template: the prompt text (``tokenize=False``) or its ids (encoded
        without adding BOS/EOS: the template writes them). ``kwargs`` reach the template (``enable_thinking``...)
        and win over the special-token variables; ``return_dict`` and other tokenizer options are not taken."""
        text = render_chat(
            self.get_chat_template(chat_template, tools),
            conversation,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            documents=documents,
            **{**self.special_tokens_map, **kwargs},
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def __repr__(self) -> str:
        return f"NativeTokenizer(vocab={len(self)}, bos={self.bos_token!r}, eos={self.eos_token!r})"


# ------------------------------------------------------------------------------------------ folder files


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} when it is absent. Raises :class:`ModelFormatError` when it is broken."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ModelFormatError(f"{path.parent.name}/{path.name} cannot be read: {exc.strerror or exc}") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path.parent.name}/{path.name} is not valid JSON: {exc}") from exc
    return value if isinstance(value, dict) else {}


def _folder_chat_template(folder: Path, config: Mapping[str, Any]) -> str | dict[str, str] | None:
    """The chat template(s) of a folder, as transformers picks them: ``chat_template.jinja`` and
    ``additional_chat_templates/*.jinja`` over the config's ``chat_template`` (a string or a list of named ones),
    and ``chat_template.json`` (the processor file) when nothing else has one."""
    templates: dict[str, str] = {}
    value = config.get("chat_template")
    if isinstance(value, str):
        templates["default"] = value
    elif isinstance(value, list):
        templates.update({str(t["name"]): str(t["template"]) for t in value if isinstance(t, Mapping)})
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        templates["default"] = jinja.read_text(encoding="utf-8")
    extra_dir = folder / "additional_chat_templates"
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            templates[path.stem] = path.read_text(encoding="utf-8")
    if not templates:
        legacy = _read_json(folder / "chat_template.json").get("chat_template")
        if isinstance(legacy, str):
            templates["default"] = legacy
    if list(templates) == ["default"]:
        return templates["default"]
    return templates or None


def _token_list(value: Any) -> list[Any]:
    """Extra special tokens as a config lists them: a list, or a dict of model-specific names -> token."""
    if isinstance(value, Mapping):
        return list(value.values())
    return list(value) if isinstance(value, list) else []


def _ids(value: Any) -> list[int]:
    """An id or a list of ids as a config writes it."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []
