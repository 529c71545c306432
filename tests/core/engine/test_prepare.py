"""Prepared models: packed once, cached under ``<cache>/prepared/<key>/``, read back identical; a changed or
damaged cache is prepared again; the loader's ``quantize`` modes and refusals; the ``quantize`` setting and
``--quantize`` on the command line."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from influence_tui.core.engine import loader
from influence_tui.core.engine.loader import load_model
from influence_tui.core.engine.quant.modules import PackedEmbedding, PackedLinear
from influence_tui.core.engine.quant.packed import PackedWeight
from influence_tui.core.engine.quant.prepare import (
    PREPARED_VERSION,
    PreparedModel,
    load_prepared,
    prepared_key,
    prepared_root,
    wants_packed,
)
from influence_tui.core.errors import ConfigError, ModelFormatError
from influence_tui.core.library import DEMO_NAME, gguf_model, inspect_path
from influence_tui.core.types import LocalModel

IDS = list(range(3, 30))


def _local(path: Path) -> LocalModel:
    (model,) = inspect_path(path)
    return model


def _logits(model: Any, ids: list[int] = IDS) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits  # type: ignore[no-any-return]


def _prepare(local: LocalModel, mode: str, cache: Path, messages: list[str] | None = None) -> PreparedModel:
    return load_prepared(local, mode, cache, on_status=None if messages is None else messages.append)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "prepared-cache"


@pytest.fixture
def demo_local(demo_gguf: Path) -> LocalModel:
    return gguf_model(DEMO_NAME, demo_gguf, "demo", [demo_gguf])


# ------------------------------------------------------------------------------------------ the cache


def test_first_load_prepares_and_the_second_reads_the_cache(tiny_llama: Path, cache: Path) -> None:
    local = _local(tiny_llama)
    messages: list[str] = []
    first = _prepare(local, "int8", cache, messages)
    assert not first.from_cache
    assert messages[0] == "Preparing tiny-llama for fast loading (first time only)..."
    assert re.fullmatch(r"Prepared tiny-llama in \d+\.\d s", messages[1]) and len(messages) == 2
    assert first.folder == prepared_root(cache) / prepared_key(local, "int8")
    assert os.listdir(prepared_root(cache)) == [first.folder.name]  # no staging folder left behind
    files = set(os.listdir(first.folder))
    assert {"config.json", "weights.safetensors", "packed.json", "tokenizer.json"} <= files
    described = json.loads((first.folder / "packed.json").read_text())
    assert described["version"] == PREPARED_VERSION
    # the cache keeps transformers' module names (the fused q|k|v and gate|up are made after reading it)
    assert described["packed"]["model.layers.0.self_attn.q_proj.weight"] == {
        "kind": "q8",
        "shape": [64, 64],
        "group": 32,
    }
    assert described["packed"]["model.embed_tokens.weight"]["kind"] == "q8"
    assert first.describe_weights(local) == "int8 (8-bit)"

    again: list[str] = []
    second = _prepare(local, "int8", cache, again)
    assert second.from_cache and again == []
    assert second.folder == first.folder
    assert torch.equal(_logits(second.model), _logits(first.model))
    assert second.weights_bytes == first.weights_bytes
    assert sorted(type(m).__name__ for m in second.model.modules()) == sorted(
        type(m).__name__ for m in first.model.modules()
    )
    tokenizer = second.tokenizer
    assert tokenizer.encode("Hello there") == first.tokenizer.encode("Hello there")
    assert tokenizer.chat_template == first.tokenizer.chat_template


def test_int4_is_prepared_apart_from_int8(tiny_llama: Path, cache: Path) -> None:
    local = _local(tiny_llama)
    int4 = _prepare(local, "int4", cache)
    int8 = _prepare(local, "int8", cache)
    assert not int4.from_cache and not int8.from_cache
    assert int4.folder != int8.folder
    assert int4.describe_weights(local) == "int4 (4-bit)"
    assert int4.weights_bytes < int8.weights_bytes


def test_a_changed_weight_file_is_prepared_again(tiny_llama: Path, cache: Path) -> None:
    local = _local(tiny_llama)
    key = prepared_key(local, "int8")
    assert prepared_key(local, "int8") == key  # stable
    assert prepared_key(local, "int4") != key
    first = _prepare(local, "int8", cache)
    (weights,) = local.weight_files
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touched
    assert prepared_key(local, "int8") != key
    messages: list[str] = []
    second = _prepare(local, "int8", cache, messages)
    assert not second.from_cache and messages[0].startswith("Preparing tiny-llama")
    assert second.folder != first.folder
    assert torch.equal(_logits(second.model), _logits(first.model))  # same bytes, same model


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE: dict[str, Callable[[Path], object]] = {
    "truncated-weights": lambda f: _truncate(f / "weights.safetensors"),
    "empty-weights": lambda f: (f / "weights.safetensors").write_bytes(b""),
    "no-weights": lambda f: (f / "weights.safetensors").unlink(),
    "no-packed-json": lambda f: (f / "packed.json").unlink(),
    "garbage-packed-json": lambda f: (f / "packed.json").write_text("{not json"),
    "list-packed-json": lambda f: (f / "packed.json").write_text("[]"),
    "old-version": lambda f: (f / "packed.json").write_text(json.dumps({"version": 0, "packed": {}})),
    "unknown-kind": lambda f: (f / "packed.json").write_text(
        json.dumps(
            {"version": PREPARED_VERSION, "packed": {"lm_head.weight": {"kind": "q3", "shape": [1, 1], "group": 32}}}
        )
    ),
    "missing-tensor": lambda f: (f / "packed.json").write_text(
        json.dumps(
            {
                "version": PREPARED_VERSION,
                "packed": {"model.extra.weight": {"kind": "q8", "shape": [4, 32], "group": 32}},
            }
        )
    ),
    "no-config": lambda f: (f / "config.json").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_prepared_folder_is_prepared_again(tiny_llama: Path, cache: Path, damage: str) -> None:
    local = _local(tiny_llama)
    first = _prepare(local, "int4", cache)
    want = _logits(first.model)
    DAMAGE[damage](first.folder)
    messages: list[str] = []
    again = _prepare(local, "int4", cache, messages)
    assert not again.from_cache and messages[0].startswith("Preparing tiny-llama")
    assert torch.equal(_logits(again.model), want)
    third = _prepare(local, "int4", cache)
    assert third.from_cache  # the rebuilt folder is good again
    assert torch.equal(_logits(third.model), want)


def test_wants_packed(tiny_llama: Path, demo_local: LocalModel) -> None:
    tiny = _local(tiny_llama)
    assert not wants_packed(tiny, "auto")  # safetensors load as they are
    assert not wants_packed(tiny, "none")
    assert wants_packed(tiny, "int8") and wants_packed(tiny, "int4")
    assert wants_packed(demo_local, "auto")  # a llama GGUF keeps its quantization
    assert not wants_packed(demo_local, "none")
    from dataclasses import replace

    assert not wants_packed(replace(demo_local, architecture="mamba"), "auto")  # transformers dequantizes it


def test_a_gguf_cannot_be_requantized(demo_local: LocalModel, cache: Path) -> None:
    messages: list[str] = []
    with pytest.raises(ModelFormatError) as caught:
        _prepare(demo_local, "int8", cache, messages)
    assert str(caught.value) == (
        f"{DEMO_NAME} is a GGUF file, which keeps its own quantization "
        "(drop --quantize (or use --quantize none to load it as floats))"
    )
    assert messages == []  # nothing was being prepared
    with pytest.raises(ModelFormatError, match="keeps its own quantization") as through_loader:
        load_model(demo_local, device="cpu", quantize="int4", cache_dir=cache)
    assert through_loader.value.hint is not None and "--quantize none" in through_loader.value.hint
    assert not prepared_root(cache).exists() or os.listdir(prepared_root(cache)) == []


# ------------------------------------------------------------------------------------------ the loader


def _packed_modules(model: Any) -> list[Any]:
    return [m for m in model.modules() if isinstance(m, PackedLinear | PackedEmbedding)]


def test_load_model_int4(tiny_llama: Path, cache: Path) -> None:
    local = _local(tiny_llama)
    messages: list[str] = []
    loaded = load_model(local, device="cpu", quantize="Int4 ", cache_dir=cache, on_status=messages.append)
    info = loaded.info
    assert info.quantization == "int4 (4-bit)"
    assert info.dtype == "float32" and info.device == "cpu"
    assert loaded.describe() == f"Loaded tiny-llama on cpu (int4 (4-bit), float32 activations) in {info.load_s:.1f} s"
    assert loaded.quantize == "int4"
    assert info.parameters == local.parameters  # packed matrices counted by their shape
    assert info.context_length == 256 and info.architecture == "llama" and info.has_chat_template
    assert loaded.tokenizer.convert_tokens_to_ids("<|im_end|>") in info.eos_token_ids
    assert loaded.prompt_cache is not None and len(loaded.prompt_cache) == 0
    assert _packed_modules(loaded.model)
    assert {w.kind for w in _packed_weights(loaded.model)} == {"q4"}
    assert [m.split(" in ")[0] for m in messages] == [
        "Preparing tiny-llama for fast loading (first time only)...",
        "Prepared tiny-llama",
    ]
    # the second load reads the cache, says nothing and computes the same
    later: list[str] = []
    again = load_model(local, device="cpu", quantize="int4", cache_dir=cache, on_status=later.append)
    assert later == []
    assert torch.equal(_logits(again.model), _logits(loaded.model))


def _packed_weights(model: Any) -> list[PackedWeight]:
    from influence_tui.core.engine.quant.modules import packed_state

    return [v for v in packed_state(model).values() if isinstance(v, PackedWeight)]


@pytest.mark.parametrize("mode", ["none", "auto"])
def test_none_and_auto_load_safetensors_through_transformers(tiny_llama: Path, cache: Path, mode: str) -> None:
    loaded = load_model(_local(tiny_llama), device="cpu", dtype="float32", quantize=mode, cache_dir=cache)
    assert loaded.info.quantization == ""
    assert loaded.describe() == f"Loaded tiny-llama on cpu (float32) in {loaded.info.load_s:.1f} s"
    assert _packed_modules(loaded.model) == []
    assert any(type(m) is torch.nn.Linear for m in loaded.model.modules())
    assert not prepared_root(cache).exists()
    assert loaded.prompt_cache is not None


def test_the_default_cache_dir_is_the_settings_cache(tiny_llama: Path, isolated_env: Path) -> None:
    load_model(_local(tiny_llama), device="cpu", quantize="int8")
    assert len(os.listdir(isolated_env / "cache" / "prepared")) == 1


def test_a_bad_quantize_value_is_a_config_error(tiny_llama: Path) -> None:
    with pytest.raises(ConfigError, match="quantize 'int3' is not one of auto, none, int8, int4"):
        load_model(_local(tiny_llama), device="cpu", quantize="int3")


def test_packed_weights_on_a_gpu_are_a_config_error(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = _local(tiny_llama)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device is cuda but"):  # no GPU here: the device check comes first
        load_model(local, device="cuda", quantize="int8")
    monkeypatch.setattr(loader, "resolve_device", lambda device, index=0: torch.device("cuda", 0))
    with pytest.raises(ConfigError) as caught:
        load_model(local, device="cuda", dtype="float32", quantize="int8")
    assert str(caught.value) == (
        "quantize int8 keeps weights packed for the CPU kernels, but the device is cuda:0 "
        "(use --device cpu, or --quantize none on a GPU)"
    )


def test_the_runner_reloads_when_the_quantization_changes(tiny_llama: Path, cache: Path) -> None:
    from influence_tui.core.engine.runner import EngineRunner

    local = _local(tiny_llama)
    with EngineRunner() as engine:
        first = engine.load(local, device="cpu", quantize="int8", cache_dir=cache)
        assert first.quantization == "int8 (8-bit)"
        assert engine.load(local, device="cpu", dtype="bfloat16", quantize="int8", cache_dir=cache) is first
        plain = engine.load(local, device="cpu", dtype="float32", quantize="none", cache_dir=cache)
        assert plain is not first and plain.quantization == ""
        int4 = engine.load(local, device="cpu", quantize="int4", cache_dir=cache)
        assert int4.quantization == "int4 (4-bit)"
        assert engine.describe() == loader.describe_info(int4)


# ------------------------------------------------------------------------------------------ settings and CLI


def test_the_quantize_setting(monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> None:
    from influence_tui.core import paths
    from influence_tui.core.config import load_settings

    settings = load_settings()
    assert (settings.quantize, settings.source("quantize")) == ("auto", "default")
    config = paths.config_file()
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('quantize = "int4"\n', encoding="utf-8")
    assert load_settings().quantize == "int4"
    monkeypatch.setenv("INFLUENCE_QUANTIZE", "INT8")
    settings = load_settings()
    assert (settings.quantize, settings.source("quantize")) == ("int8", "environment: INFLUENCE_QUANTIZE")
    settings = load_settings({"quantize": "none"})
    assert (settings.quantize, settings.source("quantize")) == ("none", "command line")
    monkeypatch.setenv("INFLUENCE_QUANTIZE", "int3")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "INFLUENCE_QUANTIZE" in message and "'int3'" in message and "auto, none, int8, int4" in message


def test_generate_with_quantize_int8(tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from influence_tui.cli import main

    args = ["generate", "Hello", "--model", str(tiny_llama), "--quantize", "int8", "-t", "0", "-n", "8", "-v"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out.strip()
    assert "Preparing tiny-llama for fast loading (first time only)..." in err
    assert "Loaded tiny-llama on cpu (int8 (8-bit), float32 activations)" in err
    assert main(args) == 0  # from the cache now, and greedy: the same text
    out2, err2 = capsys.readouterr()
    assert out2 == out
    assert "Preparing" not in err2 and "int8 (8-bit)" in err2
    with pytest.raises(SystemExit):
        main(["generate", "Hello", "--model", str(tiny_llama), "--quantize", "int3"])
    assert "invalid choice: 'int3'" in capsys.readouterr().err
