"""The loader: safetensors (single and sharded) and GGUF models, device and dtype choice, and every refusal."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from influence_tui.core.engine import devices, loader
from influence_tui.core.engine.loader import (
    CPU_AUTO_DTYPE,
    check_loadable,
    eos_token_ids,
    load_model,
    resolve_device,
    resolve_dtype,
)
from influence_tui.core.errors import ConfigError, InfluenceError, ModelFormatError
from influence_tui.core.library import inspect_path
from influence_tui.core.types import LocalModel
from tests.models import build_tiny_llama


def _local(path: Path) -> LocalModel:
    (model,) = inspect_path(path)
    return model


def _logits(model: object, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits  # type: ignore[operator, no-any-return]


# ------------------------------------------------------------------------------------------ loading


def test_loads_a_safetensors_folder(tiny_llama: Path) -> None:
    local = _local(tiny_llama)
    loaded = load_model(local)

    info = loaded.info
    assert info.name == "tiny-llama"
    assert info.path == tiny_llama
    assert info.device == "cpu"
    assert info.dtype == loader.dtype_name(CPU_AUTO_DTYPE)
    assert info.context_length == 256
    assert info.parameters == local.parameters
    assert info.architecture == "llama"
    assert info.has_chat_template
    im_end = loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in info.eos_token_ids
    assert info.load_s > 0
    assert not loaded.model.training
    assert all(not p.requires_grad for p in loaded.model.parameters())
    assert next(loaded.model.parameters()).dtype == CPU_AUTO_DTYPE
    assert info.runtime == "native"
    assert loaded.describe() == f"Loaded tiny-llama on cpu ({info.dtype}; native runtime) in {info.load_s:.1f} s"
    assert loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    ).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("quantize", ["auto", "int8"])
def test_an_architecture_without_a_native_model_loads_through_transformers(tiny_gpt2: Path, quantize: str) -> None:
    from influence_tui.core.engine.generate import generate_stream
    from influence_tui.core.types import SamplingParams

    loaded = load_model(_local(tiny_gpt2), device="cpu", quantize=quantize)
    assert loaded.info.runtime == "transformers"
    assert loaded.info.architecture == "gpt2"
    assert type(loaded.model).__name__ == "GPT2LMHeadModel"
    assert "transformers runtime" in loaded.describe()
    assert loaded.info.quantization == ("int8" if quantize == "int8" else "")
    ids = loaded.tokenizer.encode("Hello, how are you", add_special_tokens=False)
    events = list(
        generate_stream(
            loaded.model,
            loaded.tokenizer,
            ids,
            SamplingParams(temperature=0.0, max_tokens=6, repeat_penalty=1.0),
            eos_token_ids=(),
            context_length=loaded.info.context_length,
        )
    )
    assert events[-1].stats is not None and events[-1].stats.generated_tokens == 6


def test_explicit_cpu_float32(tiny_llama: Path) -> None:
    loaded = load_model(_local(tiny_llama), device="cpu", dtype="float32")
    assert (loaded.info.device, loaded.info.dtype) == ("cpu", "float32")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}


def test_sharded_folder_loads_the_same_weights(tiny_llama: Path, tmp_path: Path) -> None:
    sharded = build_tiny_llama(tmp_path / "sharded", shards=3)
    local = _local(sharded)
    assert local.format == "safetensors-sharded"
    assert len(local.weight_files) == 3

    one = load_model(_local(tiny_llama), dtype="float32")
    three = load_model(local, dtype="float32")

    assert three.info.parameters == one.info.parameters
    ids = one.tokenizer.encode("Hello, how are you today?")
    assert torch.equal(_logits(one.model, ids), _logits(three.model, ids))


def test_unload_releases_the_model(tiny_llama: Path) -> None:
    import gc
    import weakref

    loaded = load_model(_local(tiny_llama))
    ref = weakref.ref(loaded.model)
    loaded.unload()
    gc.collect()
    assert ref() is None
    assert not loaded.loaded
    assert loaded.tokenizer is None


@pytest.mark.slow
def test_demo_gguf(demo_loaded: loader.LoadedModel) -> None:
    info = demo_loaded.info
    assert info.name == "SmolLM2-135M-Instruct (demo)"
    assert info.architecture == "llama"
    assert info.device == "cpu"
    assert info.has_chat_template
    assert info.context_length == 8192
    assert 130_000_000 < info.parameters < 140_000_000
    im_end = demo_loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in info.eos_token_ids
    assert info.quantization == "Q4_1 kept 4-bit" and info.dtype == "float32"
    assert demo_loaded.describe().startswith(
        "Loaded SmolLM2-135M-Instruct (demo) on cpu (Q4_1 kept 4-bit, float32 activations; native runtime) in "
    )
    print(demo_loaded.describe())

    # The weights kept 4-bit are the real model: it knows its geography.
    tokenizer = demo_loaded.tokenizer
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer.encode(text + "The capital of France is", add_special_tokens=False)
    next_id = int(_logits(demo_loaded.model, ids)[0, -1].argmax())
    assert tokenizer.decode([next_id]).strip() == "Paris"


# ------------------------------------------------------------------------------------------ device and dtype


def test_auto_device_is_cpu_without_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu", 3) == torch.device("cpu")


def test_auto_device_prefers_cuda_then_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", 1) == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="device_index is 2 but there are 2 CUDA GPU"):
        resolve_device("cuda", 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")


def test_unavailable_explicit_device_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    with pytest.raises(ConfigError, match="device is cuda but") as cuda:
        resolve_device("cuda")
    assert "--device cpu" in str(cuda.value)
    with pytest.raises(ConfigError, match="device is mps but"):
        resolve_device("mps")
    with pytest.raises(ConfigError, match="not one of"):
        resolve_device("tpu")


def test_dtype_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda", 0), torch.device("mps")
    assert resolve_dtype("auto", cpu) == CPU_AUTO_DTYPE
    assert resolve_dtype("float32", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("float16", cuda) == torch.float16
    assert resolve_dtype("auto", mps) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", cuda) == torch.float16
    with pytest.raises(ConfigError, match="not one of"):
        resolve_dtype("int8", cpu)


def test_cpu_auto_dtype_is_float32_or_bfloat16() -> None:
    assert CPU_AUTO_DTYPE in (torch.bfloat16, torch.float32)
    assert isinstance(devices._cpu_has_native_bf16(), bool)


# ------------------------------------------------------------------------------------------ eos ids


def test_eos_ids_gather_every_source() -> None:
    vocab = {"<|eot_id|>": 7, "<|im_end|>": 9, "<|end_of_text|>": 5, "hello": 11}
    model = SimpleNamespace(
        generation_config=SimpleNamespace(eos_token_id=[5, 6]), config=SimpleNamespace(eos_token_id=5)
    )
    tokenizer = SimpleNamespace(
        eos_token_id=5,
        chat_template="{{ message['content'] + '<|eot_id|>' }}",
        get_vocab=lambda: vocab,
    )
    # <|im_end|> is in the vocab but the template never writes it: not an end of turn for this model.
    assert eos_token_ids(model, tokenizer) == (5, 6, 7)

    base = SimpleNamespace(eos_token_id=None, chat_template=None, get_vocab=lambda: vocab)
    assert eos_token_ids(SimpleNamespace(generation_config=None, config=None), base) == ()


# ------------------------------------------------------------------------------------------ refusals


def _refusal(local: LocalModel) -> str:
    with pytest.raises(ModelFormatError) as caught:
        load_model(local)
    return str(caught.value)


def test_refuses_pickle_only_weights(tiny_llama: Path) -> None:
    (tiny_llama / "model.safetensors").unlink()
    (tiny_llama / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    message = _refusal(_local(tiny_llama))
    assert "pickle" in message
    assert "arbitrary code" in message
    assert "safetensors or GGUF" in message


def test_refuses_models_that_need_remote_code(tiny_llama: Path) -> None:
    config = json.loads((tiny_llama / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (tiny_llama / "config.json").write_text(json.dumps(config))
    marker = tiny_llama / "ran.txt"
    (tiny_llama / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")

    local = _local(tiny_llama)
    message = _refusal(local)
    assert "auto_map" in message
    assert "never runs code" in message
    # The loader reads config.json itself: a LocalModel that lost its problems is still refused.
    assert "auto_map" in _refusal(replace(local, problems=()))
    assert not marker.exists()


def test_refuses_an_unknown_architecture(tiny_llama: Path) -> None:
    config = json.loads((tiny_llama / "config.json").read_text())
    config["model_type"] = "frobnicator"
    (tiny_llama / "config.json").write_text(json.dumps(config))
    message = _refusal(_local(tiny_llama))
    assert "'frobnicator'" in message
    assert "upgrade transformers" in message


def test_refuses_a_known_architecture_transformers_cannot_generate_with(tiny_llama: Path) -> None:
    config = json.loads((tiny_llama / "config.json").read_text())
    config.update(model_type="t5", architectures=["T5ForConditionalGeneration"])
    (tiny_llama / "config.json").write_text(json.dumps(config))
    message = _refusal(_local(tiny_llama))
    assert "model_type 't5' is not a causal language model" in message


def test_refuses_an_encoder(tiny_bert: Path) -> None:
    message = _refusal(_local(tiny_bert))
    assert "BertModel" in message
    assert "cannot generate text" in message


def test_refuses_a_model_without_tokenizer(tiny_llama: Path) -> None:
    (tiny_llama / "tokenizer.json").unlink()
    message = _refusal(_local(tiny_llama))
    assert "no tokenizer" in message


def test_refuses_a_model_missing_a_shard(tmp_path: Path) -> None:
    sharded = build_tiny_llama(tmp_path / "sharded", shards=3)
    missing = sorted(sharded.glob("model-*.safetensors"))[1]
    missing.unlink()
    local = _local(sharded)
    assert not local.complete
    message = _refusal(local)
    assert "incomplete" in message
    assert missing.name in message


def test_refuses_split_gguf(tmp_path: Path) -> None:
    parts = (tmp_path / "m-00001-of-00002.gguf", tmp_path / "m-00002-of-00002.gguf")
    local = LocalModel(name="m", path=parts[0], source="path", format="gguf-split", weight_files=parts)
    with pytest.raises(ModelFormatError, match="split GGUF"):
        check_loadable(local)


@pytest.mark.parametrize("runtime", ["native", "transformers"])
def test_out_of_memory_suggests_something_smaller(
    tiny_llama: Path, tiny_gpt2: Path, monkeypatch: pytest.MonkeyPatch, runtime: str
) -> None:
    import transformers

    from influence_tui.core.engine.weights import safetensors as native_safetensors

    def failing(error: BaseException) -> Any:
        def load(*args: object, **kwargs: object) -> None:
            raise error

        return load

    def patch(error: BaseException) -> None:
        if runtime == "native":
            monkeypatch.setattr(native_safetensors, "load_safetensors_model", failing(error))
        else:
            monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", failing(error))

    model = _local(tiny_llama if runtime == "native" else tiny_gpt2)
    patch(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(InfluenceError) as caught:
        load_model(model, dtype="float32")
    assert "not enough memory" in str(caught.value)
    assert "float16 or bfloat16" in str(caught.value)

    patch(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory"))
    with pytest.raises(InfluenceError) as caught:
        load_model(model, dtype="bfloat16")
    assert not isinstance(caught.value, ModelFormatError)
    assert "smaller quantization" in str(caught.value)


def test_never_trusts_remote_code_or_reads_pickles(
    tiny_llama: Path, tiny_gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    seen: dict[str, object] = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args: object, **kwargs: object) -> object:
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    gpt2 = Path(shutil.copytree(tiny_gpt2, tmp_path / "gpt2"))  # the transformers runtime
    for folder in (gpt2, tiny_llama):
        # A stray pickle next to the safetensors is never read (here it is not even a pickle).
        shutil.copy(folder / "config.json", folder / "pytorch_model.bin")
    load_model(_local(gpt2))
    assert seen["trust_remote_code"] is False
    assert seen["use_safetensors"] is True
    assert seen["local_files_only"] is True
    assert load_model(_local(tiny_llama)).info.runtime == "native"  # reads *.safetensors only


def test_the_library_names_each_models_runtime(tiny_llama: Path, tiny_gpt2: Path) -> None:
    assert _local(tiny_llama).runtime == "native"
    assert _local(tiny_gpt2).runtime == "transformers"
    pickled = replace(_local(tiny_llama), format="pytorch-bin")
    assert pickled.runtime is None
