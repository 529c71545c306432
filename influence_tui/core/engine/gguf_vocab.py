"""The GGUF vocabulary -> ``tokenizers.Tokenizer`` conversion: a GGUF file's ``tokenizer.*`` metadata read in full and
built into the pipeline transformers builds for it (``integrations/gguf/gguf_tokenizer_mapping.py``).

``tokenizer.ggml.model`` ``gpt2`` is byte-level BPE (tokens and merges; the split regex follows
``tokenizer.ggml.pre``), ``llama`` is SentencePiece BPE (merges rebuilt from the scores, ``<0xNN>`` byte fallback).
Tokens typed control (3) become special added tokens, user-defined ones (4) plain added tokens.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from influence_tui.core.errors import ModelFormatError
from influence_tui.core.formats import FormatError, GGUFCursor, read_gguf_metadata

__all__ = ["GGUFBackend", "gguf_backend", "read_gguf_tokenizer_metadata"]

_GGUF_ARRAY = 9
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types

# Split regexes by ``tokenizer.ggml.pre``: the pre-tokenizations llama.cpp names, as transformers maps them. A name
# not here (``default``, ``smollm``, ``gpt-2``...) keeps GPT-2's own byte-level regex.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_SPLITS: dict[str, str] = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "dbrx"),
        _LLAMA3_SPLIT,
    ),
    **dict.fromkeys(("jina-v5-nano", "smaug-bpe"), _LLAMA3_SPLIT),
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2_SPLIT),
    "qwen35": _QWEN35_SPLIT,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O_SPLIT),
}


@lru_cache(maxsize=1)
def _byte_alphabet() -> tuple[dict[int, str], re.Pattern[str]]:
    """GPT-2's byte -> printable character map, and a pattern matching any character outside it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + extra)
            extra += 1
    outside = re.compile("[^" + "".join(re.escape(c) for c in spelling.values()) + "]")
    return spelling, outside


def _generate_merges(
    tokens: Sequence[str], vocab: Mapping[str, int], scores: Mapping[str, float]
) -> list[tuple[str, str]]:
    """SentencePiece BPE merges recovered from the vocabulary: every split of a token into two tokens, best score
    first (transformers' ``generate_merges``, so both tokenizers merge in the same order)."""
    merges: list[tuple[str, str, float]] = []
    for piece, score in scores.items():
        local = [
            (piece[:i], piece[i:], score) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab
        ]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


@dataclass(frozen=True)
class GGUFBackend:
    """The Rust tokenizer a GGUF vocabulary builds, with its tokens as the vocabulary spells them."""

    backend: Tokenizer
    tokens: list[str]
    """The tokens, respelled into the byte alphabet where a byte-level vocabulary needs it."""


def gguf_backend(metadata: Mapping[str, Any]) -> GGUFBackend:
    """The pipeline of a GGUF file's ``tokenizer.ggml.*`` metadata, its control and user-defined tokens added.

    Raises :class:`ModelFormatError` for metadata without a tokenizer or with one of a kind not built here."""
    kind = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ModelFormatError("the GGUF file has no tokenizer (no tokenizer.ggml.tokens)")
    types: list[int] = list(metadata.get("tokenizer.ggml.token_type") or ())
    if kind == "gpt2":
        backend, tokens = _byte_level_backend(tokens, metadata, types)
    elif kind == "llama":
        backend = _sentencepiece_backend(tokens, metadata, str(metadata.get("general.architecture") or ""))
    else:
        raise ModelFormatError(
            f"the GGUF tokenizer {kind!r} is not supported natively",
            hint="supported: gpt2 (BPE), llama (SentencePiece)",
        )
    _add_typed_tokens(backend, tokens, types)
    return GGUFBackend(backend, tokens)


def read_gguf_tokenizer_metadata(path: Path) -> dict[str, Any]:
    """A GGUF file's metadata with the ``tokenizer.*`` arrays read in full (the other arrays stepped over).

    Raises :class:`ModelFormatError` when the file cannot be read or is not a GGUF."""
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            _version, _count, metadata = read_gguf_metadata(
                GGUFCursor(buf), lambda key, vtype: vtype != _GGUF_ARRAY or key.startswith("tokenizer.")
            )
    except FormatError as exc:
        raise ModelFormatError(f"{path.name}: {exc}") from exc
    except (OSError, ValueError) as exc:  # mmap of an empty file raises ValueError
        raise ModelFormatError(f"{path.name}: cannot read the file: {exc}") from exc
    return metadata


def _byte_level_backend(
    tokens: list[str], metadata: Mapping[str, Any], types: Sequence[int]
) -> tuple[Tokenizer, list[str]]:
    """GPT-2-style byte-level BPE; returns it and the tokens as the vocabulary spells them.

    A token written with characters outside the byte alphabet is respelled byte by byte, except a control or
    user-defined one: that stays as it is and is matched whole in the text (llama.cpp's reading)."""
    spelling, outside = _byte_alphabet()
    spelled = list(tokens)
    if outside.search("".join(tokens)):  # rare: one scan of the whole vocabulary first
        for index, token in enumerate(tokens):
            if outside.search(token) and (index >= len(types) or types[index] not in (_CONTROL, _USER_DEFINED)):
                spelled[index] = "".join(spelling[b] for b in token.encode("utf-8"))
    vocab = {token: index for index, token in enumerate(spelled)}
    backend = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=_merge_pairs(metadata.get("tokenizer.ggml.merges") or []),
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    split = _PRE_SPLITS.get(str(metadata.get("tokenizer.ggml.pre")))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    return backend, spelled


def _merge_pairs(merges: list[str]) -> list[tuple[str, str]]:
    """``"left right"`` merges as pairs; with one space in each (always, in a byte-level vocabulary) by one split
    of the joined list, else one by one."""
    flat = " ".join(merges).split(" ")
    if len(flat) == 2 * len(merges):
        return list(zip(flat[::2], flat[1::2], strict=True))
    return [(left, right) for left, _, right in (m.partition(" ") for m in merges)]


def _sentencepiece_backend(tokens: list[str], metadata: Mapping[str, Any], architecture: str) -> Tokenizer:
    """SentencePiece BPE with byte fallback: merges from the file or rebuilt from the scores (Gemma: from the order
    of the tokens), and the normalizer/pre-tokenizer/decoder of transformers' Llama, Phi-3 or Gemma tokenizer."""
    gemma = architecture in ("gemma", "gemma2", "gemma3")
    if gemma:  # a token of spaces only is stored as real spaces, looked up as "▁"s
        tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = metadata.get("tokenizer.ggml.merges")
    if merges:
        pairs = _merge_pairs(merges)
    else:
        if gemma:
            scores: Mapping[str, float] = {token: -index for index, token in enumerate(tokens)}
        else:
            raw = metadata.get("tokenizer.ggml.scores")
            if not isinstance(raw, list) or len(raw) != len(tokens):
                raise ModelFormatError("the GGUF SentencePiece tokenizer has neither merges nor scores")
            scores = dict(zip(tokens, raw, strict=True))
        pairs = _generate_merges(tokens, vocab, scores)
    unk = metadata.get("tokenizer.ggml.unknown_token_id")
    backend = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=pairs,
            dropout=None,
            fuse_unk=True,
            byte_fallback=True,
            unk_token=tokens[unk] if gemma and isinstance(unk, int) and 0 <= unk < len(tokens) else None,
        )
    )
    strip: list[decoders.Decoder] = [decoders.Strip(content=" ", left=1)]
    if gemma:
        backend.normalizer = normalizers.Replace(" ", "\u2581")
        backend.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
        strip = []
    elif architecture == "phi3":  # the prefix space comes from a normalizer, not from Metaspace
        backend.normalizer = normalizers.Sequence(
            [normalizers.Prepend(prepend="\u2581"), normalizers.Replace(pattern=" ", content="\u2581")]
        )
    else:
        prefix = metadata.get("tokenizer.ggml.add_space_prefix", True) is not False
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme="first" if prefix else "never", split=False
        )
        strip = strip if prefix else []
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    return backend


def _add_typed_tokens(backend: Tokenizer, tokens: Sequence[str], types: Sequence[int]) -> None:
    """Control tokens (``<|im_end|>``...) become special added tokens and user-defined ones (``<think>``...)
    plain added tokens, so both are matched whole in the text instead of being cut into pieces."""
    typed = [(tokens[i], k) for i, k in enumerate(types[: len(tokens)]) if k in (_CONTROL, _USER_DEFINED)]
    control = [AddedToken(t, normalized=False, special=True) for t, k in typed if k == _CONTROL]
    if control:
        backend.add_special_tokens(control)
    user = [AddedToken(t, normalized=False, special=False) for t, k in typed if k == _USER_DEFINED]
    if user:
        backend.add_tokens(user)
