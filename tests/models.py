"""Tiny models built on the fly for tests: a random llama (safetensors + a real `tokenizers` BPE tokenizer with a
chat template; the native runtime loads it), a random GPT-2 with the same tokenizer (an architecture with no
native model: the transformers runtime loads it) and a random BERT encoder. A few hundred KB each; built in well under a second."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Hello, how are you today? I am fine, thank you!",
    "def add(a, b):\n    return a + b\n",
    "Local models run on your own machine, with no cloud and no API key.",
    "Emoji 😀 and CJK 你好世界 and accents café naïve.",
    "user assistant system",
] * 4


def build_tokenizer(vocab_size: int = 400) -> object:
    """A byte-level BPE tokenizer (every byte is a token, so any text round-trips) as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_llama(dest: Path, *, seed: int = 0, context: int = 256, shards: int = 1) -> Path:
    """Save a random 2-layer llama with its tokenizer under ``dest`` and return ``dest``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    vocab = len(tokenizer)  # type: ignore[arg-type]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),  # type: ignore[attr-defined]
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),  # type: ignore[attr-defined]
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.5)  # larger than default init, so greedy decoding is not one repeated token
    dest.mkdir(parents=True, exist_ok=True)
    max_shard = "200KB" if shards > 1 else "1GB"
    model.save_pretrained(dest, safe_serialization=True, max_shard_size=max_shard)
    tokenizer.save_pretrained(dest)  # type: ignore[attr-defined]
    return dest


def build_tiny_gpt2(dest: Path, *, seed: int = 0, context: int = 256) -> Path:
    """Save a random 2-layer GPT-2 (no native model: it loads through transformers) with its tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")  # type: ignore[attr-defined]
    config = GPT2Config(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=context,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.5)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)  # type: ignore[attr-defined]
    return dest


def build_tiny_bert(dest: Path, *, seed: int = 0) -> Path:
    """Save a random 2-layer BERT encoder with a WordPiece tokenizer (sentence-transformers-like folder)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w.strip(".,!?:()").lower() for line in _CORPUS for w in line.split()} - {""})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 builds the WordPiece model from `vocab` (it ignores `vocab_file`); 4.x reads `vocab_file`.
    tokenizer = BertTokenizerFast(vocab_file=str(dest / "vocab.txt"), vocab={t: i for i, t in enumerate(vocab)})
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest
