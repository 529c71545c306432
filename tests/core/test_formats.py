"""Header readers: the real demo GGUF, GGUFs written by the `gguf` package, safetensors, and broken files."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from influence_tui.core.formats import (
    GGML_TYPE_NAMES,
    GGML_TYPE_SIZES,
    FormatError,
    read_gguf_header,
    read_safetensors_header,
)
from tests.model_files import GGUF_PARAMETERS, write_gguf

# ----------------------------------------------------------------------------------------------- GGUF


def test_demo_gguf_header(demo_gguf: Path) -> None:
    header = read_gguf_header(demo_gguf)
    assert header.version == 3
    assert header.architecture == "llama"
    assert header.metadata["general.file_type"] == 3
    assert header.quantization == "Q4_1"
    assert header.parameters == 134_515_008
    assert header.context_length == 8192
    assert header.chat_template is not None
    assert "<|im_start|>" in header.chat_template
    assert header.tensor_count == 272 == sum(header.tensor_types.values())
    assert header.tensor_types["Q4_1"] > header.tensor_types["F32"]
    # the big tokenizer arrays are stepped over (their length kept), not decoded
    assert header.metadata["tokenizer.ggml.tokens"] == 49152
    assert header.metadata["tokenizer.ggml.model"] == "gpt2"


@pytest.fixture(scope="module")
def demo_reader(demo_gguf: Path) -> Any:
    """The demo read by the `gguf` package's own reader (seconds: it decodes every tokenizer array)."""
    from gguf import GGUFReader

    return GGUFReader(demo_gguf)


def test_demo_gguf_matches_the_gguf_package(demo_gguf: Path, demo_reader: Any) -> None:
    reader = demo_reader
    header = read_gguf_header(demo_gguf)
    assert header.parameters == sum(int(t.n_elements) for t in reader.tensors)
    assert header.tensor_count == len(reader.tensors)
    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    assert header.tensor_types == counts


@pytest.mark.parametrize("quant", ["Q8_0", "F16", "F32"])
def test_written_gguf_with_file_type(tmp_path: Path, quant: str) -> None:
    path = write_gguf(tmp_path / f"m-{quant}.gguf", quant, context=2048, chat_template="{{ hi }}")
    header = read_gguf_header(path)
    assert header.architecture == "llama"
    assert header.quantization == quant
    assert header.parameters == GGUF_PARAMETERS
    assert header.context_length == 2048
    assert header.chat_template == "{{ hi }}"
    assert header.metadata["tokenizer.ggml.model"] == "gpt2"


@pytest.mark.parametrize("quant", ["Q8_0", "F16"])
def test_quantization_falls_back_to_dominant_tensor_type(tmp_path: Path, quant: str) -> None:
    path = write_gguf(tmp_path / "m.gguf", quant, file_type=False)
    header = read_gguf_header(path)
    assert "general.file_type" not in header.metadata
    assert header.tensor_types == {quant: 2, "F32": 1}
    assert header.quantization == quant  # the F32 norm never names the file's quantization


def test_all_f32_without_file_type_is_f32(tmp_path: Path) -> None:
    header = read_gguf_header(write_gguf(tmp_path / "m.gguf", "F32", file_type=False))
    assert header.quantization == "F32"


def test_gguf_without_optional_metadata(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", "F16", context=None, chat_template=None, tokenizer=False)
    header = read_gguf_header(path)
    assert header.context_length is None
    assert header.chat_template is None
    assert "tokenizer.ggml.model" not in header.metadata
    assert header.parameters == GGUF_PARAMETERS


def test_other_architecture_context_key(tmp_path: Path) -> None:
    header = read_gguf_header(write_gguf(tmp_path / "m.gguf", "F16", arch="qwen2", context=32768))
    assert header.architecture == "qwen2"
    assert header.context_length == 32768


def _copy_prefix(source: Path, dest: Path, size: int) -> Path:
    with open(source, "rb") as src:
        dest.write_bytes(src.read(size))
    return dest


@pytest.mark.parametrize("size", [3, 10, 20, 4096, 200_000])
def test_truncated_demo_gguf_header(demo_gguf: Path, tmp_path: Path, size: int) -> None:
    path = _copy_prefix(demo_gguf, tmp_path / "cut.gguf", size)
    with pytest.raises(FormatError, match="truncated"):
        read_gguf_header(path)


def test_gguf_cut_in_its_tensor_table(demo_gguf: Path, demo_reader: Any, tmp_path: Path) -> None:
    data_offset = demo_reader.data_offset
    path = _copy_prefix(demo_gguf, tmp_path / "cut.gguf", data_offset - 100)
    with pytest.raises(FormatError, match="truncated"):
        read_gguf_header(path)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_gguf_cut_in_its_tensor_data(demo_gguf: Path, tmp_path: Path, keep: float) -> None:
    """An interrupted copy or download: the header is whole but the weights are not."""
    size = demo_gguf.stat().st_size
    path = _copy_prefix(demo_gguf, tmp_path / "cut.gguf", int(size * keep))
    with pytest.raises(FormatError, match="truncated"):
        read_gguf_header(path)


def test_written_gguf_missing_its_last_bytes(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", "Q8_0")
    data = path.read_bytes()
    read_gguf_header(path)  # whole: fine
    path.write_bytes(data[:-1])
    with pytest.raises(FormatError, match="truncated"):
        read_gguf_header(path)


def test_type_sizes_match_the_gguf_package() -> None:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    for type_id, name in GGML_TYPE_NAMES.items():
        assert GGMLQuantizationType(type_id).name == name
        assert GGML_TYPE_SIZES[type_id] == tuple(GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]), name


def test_bad_magic(demo_gguf: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGML" + b"\x00" * 64)
    with pytest.raises(FormatError, match="not a GGUF file"):
        read_gguf_header(path)


def test_safetensors_file_is_not_gguf(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "model.gguf"
    save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(path))
    with pytest.raises(FormatError, match="not a GGUF file"):
        read_gguf_header(path)


def test_empty_gguf(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.touch()
    with pytest.raises(FormatError, match="empty"):
        read_gguf_header(path)


def test_unsupported_gguf_version(tmp_path: Path) -> None:
    path = tmp_path / "v9.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0))
    with pytest.raises(FormatError, match="unsupported GGUF version 9"):
        read_gguf_header(path)


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="cannot read"):
        read_gguf_header(tmp_path / "nope.gguf")


def test_gguf_with_absurd_string_length(tmp_path: Path) -> None:
    path = tmp_path / "huge.gguf"
    # one key/value whose key claims to be 2**60 bytes long
    path.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**60) + b"general.architecture")
    with pytest.raises(FormatError, match="truncated"):
        read_gguf_header(path)


def test_unknown_gguf_value_type(tmp_path: Path) -> None:
    key = b"general.weird"
    path = tmp_path / "weird.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, len(key)) + key + struct.pack("<I", 99) + b"\0" * 8)
    with pytest.raises(FormatError, match="unknown GGUF value type 99"):
        read_gguf_header(path)


# ----------------------------------------------------------------------------------------------- safetensors


def _save_safetensors(path: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.numpy import save_file

    tensors = {
        "embed.weight": np.zeros((10, 4), dtype=np.float16),
        "layer.weight": np.zeros((4, 4), dtype=np.float16),
        "norm.weight": np.ones(4, dtype=np.float32),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_safetensors_header(tmp_path: Path) -> None:
    header = read_safetensors_header(_save_safetensors(tmp_path / "m.safetensors", {"format": "pt"}))
    assert header.parameters == 10 * 4 + 4 * 4 + 4
    assert header.dtypes == {"F16": 2, "F32": 1}
    assert header.metadata == {"format": "pt"}


def test_tiny_llama_parameter_count(tiny_llama_template: Path) -> None:
    from safetensors import safe_open

    path = tiny_llama_template / "model.safetensors"
    with safe_open(str(path), "np") as fh:
        expected = sum(int(np.prod(fh.get_slice(k).get_shape())) for k in fh.keys())  # noqa: SIM118
    header = read_safetensors_header(path)
    assert header.parameters == expected
    assert set(header.dtypes) == {"F32"}


@pytest.mark.parametrize("cut", [4, 8, 40, -1])
def test_truncated_safetensors(tmp_path: Path, cut: int) -> None:
    path = _save_safetensors(tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(FormatError, match="truncated"):
        read_safetensors_header(path)


def test_empty_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.touch()
    with pytest.raises(FormatError, match="truncated"):
        read_safetensors_header(path)


def test_safetensors_header_not_json(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    body = b"{not json}"
    path.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(FormatError, match="not valid JSON"):
        read_safetensors_header(path)


def test_safetensors_tensor_without_shape(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    body = json.dumps({"w": {"dtype": "F32"}}).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(FormatError, match="no shape/dtype"):
        read_safetensors_header(path)


@pytest.mark.parametrize(
    "tensor",
    [
        {"dtype": "F32", "shape": 5, "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": ["a"], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": "x"},
        {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]},
    ],
)
def test_safetensors_malformed_tensor_entry(tmp_path: Path, tensor: dict[str, object]) -> None:
    path = tmp_path / "m.safetensors"
    body = json.dumps({"w": tensor}).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 4)
    with pytest.raises(FormatError, match="tensor 'w' has a malformed"):
        read_safetensors_header(path)


def test_safetensors_metadata_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    body = json.dumps({"__metadata__": "text", "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 4)
    header = read_safetensors_header(path)
    assert (header.parameters, header.metadata) == (1, {})


def test_gguf_is_not_safetensors(demo_gguf: Path, tmp_path: Path) -> None:
    path = _copy_prefix(demo_gguf, tmp_path / "model.safetensors", 1 << 20)
    with pytest.raises(FormatError, match="not safetensors"):
        read_safetensors_header(path)
