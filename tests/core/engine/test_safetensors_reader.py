"""Our safetensors reader (sequential reads, no memory map): the same tensors as the safetensors library, and a
clear ModelFormatError naming the file for every malformed header, before anything big is allocated."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from influence_tui.core.engine.weights.safetensors import read_tensors
from influence_tui.core.errors import ModelFormatError


def test_reads_what_the_safetensors_library_reads(tmp_path: Path) -> None:
    tensors = {
        "a.weight": torch.randn(7, 5),
        "b.bias": torch.randn(3).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "empty": torch.zeros(0, 4, dtype=torch.float16),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    ours = dict(read_tensors(path))
    reference = load_file(str(path))
    assert set(ours) == set(reference)
    for name, tensor in reference.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor)
    assert set(dict(read_tensors(path, keep=lambda n: n != "c"))) == {"a.weight", "b.bias", "empty"}


def _file(tmp_path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        (b"", b"", 2**63, "a header of"),
        (b"{not json", b"", None, "not JSON"),
        ([1, 2], b"", None, "not a JSON object"),
        ({"t": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, None, "dtype"),
        ({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, None, "shape"),
        ({"t": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 4]}}, b"\0" * 4, None, "shape"),
        ({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, None, "lies at"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8, None, "lies at"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": "0-4"}}, b"\0" * 4, None, "data_offsets"),
        ({"t": "F32"}, b"", None, "not described"),
    ],
)
def test_a_malformed_file_is_a_format_error_naming_it(
    tmp_path: Path, header: object, data: bytes, length: int | None, message: str
) -> None:
    path = _file(tmp_path, header, data, length)
    with pytest.raises(ModelFormatError, match=message) as caught:
        list(read_tensors(path))
    assert "bad.safetensors" in str(caught.value)


def test_a_file_shorter_than_its_length_field(tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(ModelFormatError, match=r"tiny\.safetensors.*8-byte"):
        list(read_tensors(path))
