"""The native tokenizer and chat-template renderer, with transformers as the oracle.

Token ids and decoded text must equal transformers' for the demo GGUF (byte-level BPE), tiny SentencePiece GGUFs
written here (llama, phi3, gemma2 pipelines), synthetic byte-level GGUFs for the split regexes of
``tokenizer.ggml.pre``, and a ``tokenizer.json`` folder. Prompts rendered from the real chat templates under
``tests/data/chat_templates/`` must equal ``apply_chat_template(..., tokenize=False)``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import pytest

from influence_tui.core.engine.chat_template import compile_template, render_chat
from influence_tui.core.engine.tokenizer import NativeTokenizer, read_gguf_tokenizer_metadata
from influence_tui.core.errors import ModelFormatError

TEMPLATES = Path(__file__).resolve().parents[2] / "data" / "chat_templates"

CORPUS = [
    "Hello world",
    "Hello, how are you today? I am fine, thank you!",
    " leading space",
    "trailing space ",
    "  two spaces and   three",
    "tabs\tand\t\ttabs",
    "new\nlines\n\n\nand\r\nCRLF",
    "\n\n",
    " ",
    "",
    "café naïve façade Ünïcödé",
    "你好世界, こんにちは, 안녕하세요",
    "emoji 😀 🚀 👩‍👩‍👧 🇫🇷",
    "def add(a, b):\n    return a + b  # sum\n",
    "for (int i = 0; i < n; ++i) { x[i] = y[i] * 2; }",
    "1234567890 3.14159 -42 1e-5 0xFF",
    "I'm, you're, he's, we'll, they'd, it've",
    "UPPER lower MiXeD",
    "<|im_start|>user\nhi<|im_end|>\n",
    "text<|im_end|>text <|endoftext|> end",
    "<s> not special in byte-level </s>",
    "\u00a0non-breaking\u2003em space\u200bzero width",
]


def _transformers_gguf(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _assert_same_tokenization(native: NativeTokenizer, oracle: Any, texts: list[str], *, roundtrip: bool) -> None:
    for text in texts:
        for special in (True, False):
            ids = native.encode(text, add_special_tokens=special)
            assert ids == oracle.encode(text, add_special_tokens=special), (text, special)
            for skip in (True, False):
                assert native.decode(ids, skip_special_tokens=skip) == oracle.decode(ids, skip_special_tokens=skip)
        if roundtrip:
            assert native.decode(native.encode(text, add_special_tokens=False)) == text


def _assert_same_attributes(native: NativeTokenizer, oracle: Any) -> None:
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert getattr(native, name) == getattr(oracle, name), name
        assert getattr(native, name + "_id") == getattr(oracle, name + "_id"), name
    assert len(native) == len(oracle)
    assert native.vocab_size == oracle.vocab_size
    assert native.get_vocab() == oracle.get_vocab()
    assert native.all_special_ids == oracle.all_special_ids
    assert native.chat_template == oracle.chat_template
    ids = list(range(0, len(native), max(1, len(native) // 200)))
    assert native.convert_ids_to_tokens(ids) == oracle.convert_ids_to_tokens(ids)
    assert native.convert_ids_to_tokens(ids[1]) == oracle.convert_ids_to_tokens(ids[1])


# ------------------------------------------------------------------------------------------ the demo GGUF


@pytest.fixture(scope="module")
def demo_pair(demo_gguf: Path) -> tuple[NativeTokenizer, Any]:
    return NativeTokenizer.from_gguf(demo_gguf), _transformers_gguf(demo_gguf)


def test_demo_gguf_ids_and_text_match_transformers(demo_pair: tuple[NativeTokenizer, Any]) -> None:
    native, oracle = demo_pair
    _assert_same_tokenization(native, oracle, CORPUS, roundtrip=True)


def test_demo_gguf_attributes_match_transformers(demo_pair: tuple[NativeTokenizer, Any]) -> None:
    native, oracle = demo_pair
    _assert_same_attributes(native, oracle)
    assert native.model_max_length == 8192  # the GGUF's context length (transformers reports "unlimited")
    assert native.eos_token_ids == (2,)
    assert native.add_bos_token is False


def test_demo_gguf_chat_template_tokenized_matches_transformers(demo_pair: tuple[NativeTokenizer, Any]) -> None:
    native, oracle = demo_pair
    conversation = [{"role": "user", "content": "Hi there 😀"}, {"role": "assistant", "content": "Hello!"}]
    for prompt in (True, False):
        text = native.apply_chat_template(conversation, add_generation_prompt=prompt, tokenize=False)
        assert text == oracle.apply_chat_template(conversation, add_generation_prompt=prompt, tokenize=False)
        ids = native.apply_chat_template(conversation, add_generation_prompt=prompt)
        assert ids == oracle.apply_chat_template(
            conversation, add_generation_prompt=prompt, tokenize=True, return_dict=False
        )


def test_from_gguf_accepts_a_metadata_mapping(demo_gguf: Path, demo_pair: tuple[NativeTokenizer, Any]) -> None:
    metadata = read_gguf_tokenizer_metadata(demo_gguf)
    assert isinstance(metadata["tokenizer.ggml.tokens"], list)
    native = NativeTokenizer.from_gguf(metadata)
    assert native.encode(CORPUS[1]) == demo_pair[0].encode(CORPUS[1])


def test_demo_gguf_loads_fast(demo_gguf: Path) -> None:
    best = min(_timed(lambda: NativeTokenizer.from_gguf(demo_gguf)) for _ in range(3))
    print(f"\ndemo GGUF tokenizer (49,152 tokens): {best * 1000:.0f} ms from the file")
    assert best < 1.0  # about 0.08 s here; the bound leaves room for a loaded CI machine


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_no_transformers_import(demo_gguf: Path) -> None:
    code = (
        "import sys\n"
        "from influence_tui.core.engine.tokenizer import NativeTokenizer\n"
        f"tok = NativeTokenizer.from_gguf({str(demo_gguf)!r})\n"
        "tok.apply_chat_template([{'role': 'user', 'content': 'hi'}], add_generation_prompt=True)\n"
        "tok.decode(tok.encode('hello'))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'torch'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------------------------------ written GGUFs


def _write_gguf(path: Path, arch: str, tokenizer: Callable[[Any], None]) -> Path:
    """A GGUF with just enough of a model for transformers to read its config, and the given tokenizer keys."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(256)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    tokenizer(writer)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _sentencepiece_vocab(specials: list[str]) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-like vocabulary: ``specials`` (unk/bos/eos...), the 256 ``<0xNN>`` byte tokens, pieces
    learned on a small corpus (``▁`` marks a word start) scored by rank, and control and user-defined tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    learner.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(vocab_size=400, show_progress=False))
    pieces = [p for p, _ in sorted(learner.get_vocab().items(), key=lambda kv: kv[1])]
    tokens = [*specials, *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [2 if t == "<unk>" else 3 for t in specials] + [6] * 256 + [1] * len(pieces)
    scores = [0.0] * (len(specials) + 256) + [-float(i) for i in range(len(pieces))]
    for token, kind in (("<|im_start|>", 3), ("<|im_end|>", 3), ("<think>", 4), ("</think>", 4)):
        tokens.append(token)
        types.append(kind)
        scores.append(0.0)
    return tokens, scores, types


@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma2"])
def test_sentencepiece_gguf_matches_transformers(tmp_path: Path, arch: str) -> None:
    gemma = arch.startswith("gemma")  # Gemma's own special tokens (its tokenizer adds them when missing)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] if gemma else ["<unk>", "<s>", "</s>"]
    tokens, scores, types = _sentencepiece_vocab(specials)

    def tokenizer(writer: Any) -> None:
        writer.add_vocab_size(len(tokens))
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(tokens.index("<bos>" if gemma else "<s>"))
        writer.add_eos_token_id(tokens.index("<eos>" if gemma else "</s>"))
        writer.add_unk_token_id(tokens.index("<unk>"))
        if gemma:
            writer.add_pad_token_id(0)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(True)
        writer.add_chat_template((TEMPLATES / "google-gemma-2-2b-it.jinja").read_text(encoding="utf-8"))

    path = _write_gguf(tmp_path / f"{arch}.gguf", arch, tokenizer)
    native, oracle = NativeTokenizer.from_gguf(path), _transformers_gguf(path)
    texts = [*CORPUS, "<think>plan</think> answer", "x</s>y<s>z<unk><bos><mask>", "<0x41> written out"]
    _assert_same_tokenization(native, oracle, texts, roundtrip=False)
    _assert_same_attributes(native, oracle)
    assert native.encode("Hello")[0] == native.bos_token_id  # add_bos_token
    assert native.decode(native.encode("Hello world 😀", add_special_tokens=False)) == "Hello world 😀"


def _byte_level_vocab(size: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """A synthetic byte-level BPE vocabulary of ``size`` tokens: the 256 byte characters, then random merges of
    tokens already there (every merge valid), after three control tokens."""
    from tokenizers import pre_tokenizers

    rng = random.Random(seed)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *alphabet]
    seen = set(tokens)
    merges: list[str] = []
    while len(tokens) < size:
        left = tokens[rng.randrange(3, len(tokens))]
        right = tokens[rng.randrange(3, min(len(tokens), 5000))]
        if len(left) + len(right) > 12 or left + right in seen:
            continue
        seen.add(left + right)
        tokens.append(left + right)
        merges.append(f"{left} {right}")
    return tokens, merges


def _write_byte_level_gguf(path: Path, size: int, pre: str) -> Path:
    tokens, merges = _byte_level_vocab(size)

    def tokenizer(writer: Any) -> None:
        writer.add_vocab_size(len(tokens))
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types([3, 3, 3, *([1] * (len(tokens) - 3))])
        writer.add_token_merges(merges)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(False)

    return _write_gguf(path, "qwen2", tokenizer)


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "default"])
def test_byte_level_pre_tokenizers_match_transformers(tmp_path: Path, pre: str) -> None:
    path = _write_byte_level_gguf(tmp_path / f"{pre}.gguf", 8000, pre)
    native, oracle = NativeTokenizer.from_gguf(path), _transformers_gguf(path)
    _assert_same_tokenization(native, oracle, CORPUS, roundtrip=True)
    _assert_same_attributes(native, oracle)


def test_150k_vocabulary_loads_fast(tmp_path: Path) -> None:
    path = _write_byte_level_gguf(tmp_path / "big.gguf", 150_000, "qwen2")
    reads, builds = [], []
    for _ in range(3):
        start = time.perf_counter()
        metadata = read_gguf_tokenizer_metadata(path)
        middle = time.perf_counter()
        native = NativeTokenizer.from_gguf(metadata)
        reads.append(middle - start)
        builds.append(time.perf_counter() - middle)
    print(f"\n150k GGUF tokenizer: metadata {min(reads) * 1000:.0f} ms + build {min(builds) * 1000:.0f} ms")
    assert len(native) == 150_000
    assert native.decode(native.encode(CORPUS[12])) == CORPUS[12]
    assert min(builds) < 1.5  # about 0.25 s here; the bound leaves room for a loaded CI machine


def test_gguf_without_tokenizer_is_a_format_error(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "bare.gguf", "llama", lambda writer: None)
    with pytest.raises(ModelFormatError, match="no tokenizer"):
        NativeTokenizer.from_gguf(path)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ModelFormatError):
        NativeTokenizer.from_gguf(tmp_path / "junk.gguf")


# ------------------------------------------------------------------------------------------ folders


@pytest.fixture(scope="module")
def demo_folder(demo_pair: tuple[NativeTokenizer, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo-tokenizer")
    demo_pair[1].save_pretrained(str(folder))
    return folder


def _transformers_folder(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_folder_matches_transformers(demo_folder: Path) -> None:
    native, oracle = NativeTokenizer.from_folder(demo_folder), _transformers_folder(demo_folder)
    _assert_same_tokenization(native, oracle, CORPUS, roundtrip=True)
    _assert_same_attributes(native, oracle)
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert native.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False) == (
        oracle.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    )


def test_tiny_test_model_folder_matches_transformers(tmp_path: Path) -> None:
    """The tokenizer of the tiny llama the other engine tests load natively (``tests/models.py``)."""
    from tests.models import build_tokenizer

    build_tokenizer().save_pretrained(str(tmp_path))  # type: ignore[attr-defined]
    native, oracle = NativeTokenizer.from_folder(tmp_path), _transformers_folder(tmp_path)
    _assert_same_tokenization(native, oracle, CORPUS, roundtrip=True)
    _assert_same_attributes(native, oracle)
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert native.apply_chat_template(conversation) == oracle.apply_chat_template(conversation, return_dict=False)


def test_folder_config_variants_match_transformers(demo_folder: Path, tmp_path: Path) -> None:
    """AddedToken dicts, a post-processor adding BOS (the config's add_bos/add_eos do not override it, as in
    transformers), model_max_length, chat_template.jinja over the config's, special_tokens_map.json,
    generation_config.json's eos list."""
    from tokenizers import Tokenizer, processors

    folder = tmp_path / "variant"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_bytes((demo_folder / "tokenizer_config.json").read_bytes())
    backend = Tokenizer.from_file(str(demo_folder / "tokenizer.json"))
    backend.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", pair="<|im_start|> $A <|im_start|> $B", special_tokens=[("<|im_start|>", 1)]
    )
    backend.save(str(folder / "tokenizer.json"))
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.update(
        bos_token={"__type": "AddedToken", "content": "<|im_start|>", "lstrip": False, "rstrip": False},
        eos_token="<|im_end|>",
        add_bos_token=False,
        add_eos_token=True,
        model_max_length=2048,
        chat_template="{{ 'from the config' }}",
    )
    config.pop("added_tokens_decoder", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<|endoftext|>"}), encoding="utf-8")
    template = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}), encoding="utf-8")

    native, oracle = NativeTokenizer.from_folder(folder), _transformers_folder(folder)
    _assert_same_tokenization(native, oracle, CORPUS, roundtrip=False)
    _assert_same_attributes(native, oracle)
    assert native.model_max_length == oracle.model_max_length == 2048
    assert native.encode("hi") == [native.bos_token_id, 6004]
    assert native.add_bos_token and not native.add_eos_token
    assert native.chat_template == template
    assert native.eos_token_ids == (2, 0)
    native.pad_token = native.eos_token
    assert native.pad_token_id == native.eos_token_id


def test_folder_named_templates(demo_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "named"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((demo_folder / "tokenizer.json").read_bytes())
    templates = [{"name": "default", "template": "{{ 'plain' }}"}, {"name": "tool_use", "template": "{{ 'tools' }}"}]
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": templates}), encoding="utf-8")
    native = NativeTokenizer.from_folder(folder)
    conversation = [{"role": "user", "content": "hi"}]
    assert native.apply_chat_template(conversation, tokenize=False) == "plain"
    assert native.apply_chat_template(conversation, tools=[_WEATHER], tokenize=False) == "tools"
    assert native.apply_chat_template(conversation, chat_template="tool_use", tokenize=False) == "tools"
    assert native.eos_token is None and native.eos_token_ids == ()


def test_folder_without_tokenizer_json_is_a_format_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(ModelFormatError, match=r"tokenizer\.json"):
        NativeTokenizer.from_folder(tmp_path)


# ------------------------------------------------------------------------------------------ chat templates

_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}

_CONVERSATIONS: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "system-user": (
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
        {"add_generation_prompt": True},
    ),
    "multi-turn": (
        [
            {"role": "user", "content": "Hello! 你好 😀"},
            {"role": "assistant", "content": "Hi, how can I help?"},
            {"role": "user", "content": "Write `print(1)`\nin Python."},
        ],
        {"add_generation_prompt": True},
    ),
    "assistant-last": (
        [
            {"role": "user", "content": "Say yes."},
            {"role": "assistant", "content": "Yes.", "tool_calls": None},
        ],
        {"add_generation_prompt": False},
    ),
    "tools": (
        [
            {"role": "system", "content": "You can look up the weather."},
            {"role": "user", "content": "Weather in Zürich?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call12345",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": '{"temp": 21}'},
        ],
        {"add_generation_prompt": True, "tools": [_WEATHER]},
    ),
    "thinking-on": (
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "Two plus two is four."},
            {"role": "user", "content": "And 3+3?"},
        ],
        {"add_generation_prompt": True, "enable_thinking": True},
    ),
    "thinking-off": (
        [{"role": "user", "content": "2+2?"}],
        {"add_generation_prompt": True, "enable_thinking": False},
    ),
}

_SPECIAL_TOKENS = {
    "HuggingFaceTB-SmolLM2-135M-Instruct": ("<|im_start|>", "<|im_end|>"),
    "meta-llama-Llama-3.1-8B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": ("<|begin_of_text|>", "<|im_end|>"),
    "Qwen-Qwen2.5-7B-Instruct": (None, "<|im_end|>"),
    "Qwen-Qwen3-0.6B": (None, "<|im_end|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>"),
    "google-gemma-2-2b-it": ("<bos>", "<eos>"),
    "microsoft-Phi-3.5-mini-instruct": ("<s>", "<|endoftext|>"),
}


def test_every_stored_template_is_covered() -> None:
    assert sorted(p.stem for p in TEMPLATES.glob("*.jinja")) == sorted(_SPECIAL_TOKENS)


def _outcome(render: Callable[[], Any]) -> tuple[str, str]:
    """The rendered text, or the error the template raised (``raise_exception``, or a TypeError of a template
    that needs ``tools``): both renderers must fail alike."""
    try:
        return "ok", render()
    except (jinja2.TemplateError, TypeError) as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("conversation", sorted(_CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(_SPECIAL_TOKENS))
def test_chat_templates_render_like_transformers(
    name: str, conversation: str, demo_pair: tuple[NativeTokenizer, Any]
) -> None:
    native, oracle = demo_pair
    template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    messages, options = _CONVERSATIONS[conversation]
    bos, eos = _SPECIAL_TOKENS[name]
    kwargs = {**options, "chat_template": template, "bos_token": bos, "eos_token": eos, "tokenize": False}
    expected = _outcome(lambda: oracle.apply_chat_template(messages, **kwargs))
    assert _outcome(lambda: native.apply_chat_template(messages, **kwargs)) == expected
    if name in ("Qwen-Qwen2.5-7B-Instruct", "meta-llama-Llama-3.1-8B-Instruct") and conversation == "tools":
        assert expected[0] == "ok" and "get_weather" in expected[1] and "Zürich" in expected[1]
    if name == "Qwen-Qwen3-0.6B" and conversation == "thinking-off":
        assert expected == ("ok", "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_compiled_once() -> None:
    source = "{{ messages[0]['content'] }}"
    assert compile_template(source) is compile_template(source)


def test_sandbox_helpers() -> None:
    messages = [{"role": "user", "content": "ü"}]
    assert render_chat("{{ messages[0] | tojson }}", messages) == '{"role": "user", "content": "ü"}'
    assert render_chat("{{ messages[0] | tojson(indent=2, sort_keys=True) }}", messages).startswith('{\n  "content"')
    assert render_chat("{% generation %}kept{% endgeneration %}", messages) == "kept"
    assert (
        render_chat("{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}", messages) == "01"
    )
    assert render_chat("{{ strftime_now('%Y') | length }}", messages) == "4"
    assert render_chat("{{ flag }}|{{ messages | length }}", messages, flag="on") == "on|1"
    with pytest.raises(jinja2.TemplateError, match="no system"):
        render_chat("{{ raise_exception('no system') }}", messages)
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat("{% set ns = namespace(_x=1) %}", messages)
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", messages)
    with pytest.raises(ValueError, match="empty"):
        render_chat("x", [])
