"""Header-only readers for the weight formats we list: GGUF and safetensors.

Nothing here loads weights or imports torch: a GGUF header is parsed field by field (arrays of strings are
stepped over by their lengths) and a safetensors header is the JSON blob at the start of the file. Both
readers raise :class:`FormatError` on truncated or malformed input so the library can show the problem
on that one model instead of crashing.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"

# GGUF metadata value types (gguf spec).
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(13)
_SCALAR_FORMATS = {
    _UINT8: "<B",
    _INT8: "<b",
    _UINT16: "<H",
    _INT16: "<h",
    _UINT32: "<I",
    _INT32: "<i",
    _FLOAT32: "<f",
    _BOOL: "<?",
    _UINT64: "<Q",
    _INT64: "<q",
    _FLOAT64: "<d",
}

# ggml tensor types (ggml.h), used to name the dominant weight type of a file.
GGML_TYPE_NAMES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    9: "Q8_1",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    15: "Q8_K",
    16: "IQ2_XXS",
    17: "IQ2_XS",
    18: "IQ3_XXS",
    19: "IQ1_S",
    20: "IQ4_NL",
    21: "IQ3_S",
    22: "IQ2_S",
    23: "IQ4_XS",
    24: "I8",
    25: "I16",
    26: "I32",
    27: "I64",
    28: "F64",
    29: "IQ1_M",
    30: "BF16",
    34: "TQ1_0",
    35: "TQ2_0",
    39: "MXFP4",
}

# (elements per block, bytes per block) of each ggml type, to know where a file's tensor data must end.
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 40),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    16: (256, 66),
    17: (256, 74),
    18: (256, 98),
    19: (256, 50),
    20: (32, 18),
    21: (256, 110),
    22: (256, 82),
    23: (256, 136),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    29: (256, 56),
    30: (1, 2),
    34: (256, 54),
    35: (256, 66),
    39: (32, 17),
}

# llama.cpp's `general.file_type` (enum llama_ftype): the quantization a file was made with.
GGUF_FILE_TYPE_NAMES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}

# Metadata keys whose values are large and never needed for listing; stepped over, not decoded.
_SKIPPED_ARRAYS = (
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
)


_U64 = struct.Struct("<Q")


class FormatError(ValueError):
    """A weight file's header is truncated or malformed."""


@dataclass(frozen=True)
class GGUFHeader:
    """What the library needs from a GGUF file, read from its header alone."""

    version: int
    metadata: dict[str, Any]
    tensor_count: int
    parameters: int
    tensor_types: dict[str, int]  # ggml type name -> number of tensors of that type

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return str(value) if value is not None else None

    @property
    def context_length(self) -> int | None:
        arch = self.architecture
        value = self.metadata.get(f"{arch}.context_length") if arch else None
        return int(value) if isinstance(value, int) else None

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) and value.strip() else None

    @property
    def quantization(self) -> str:
        """The file's quantization: `general.file_type` when present, else the commonest tensor type."""
        file_type = self.metadata.get("general.file_type")
        if isinstance(file_type, int) and file_type in GGUF_FILE_TYPE_NAMES:
            return GGUF_FILE_TYPE_NAMES[file_type]
        quantized = {k: v for k, v in self.tensor_types.items() if k not in ("F32",)}
        pool = quantized or self.tensor_types
        return max(pool, key=lambda k: pool[k]) if pool else "unknown"


class _Cursor:
    __slots__ = ("buf", "pos", "size")

    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)

    def need(self, n: int) -> None:
        if self.pos + n > self.size:
            raise FormatError(f"header is truncated at byte {self.pos} (needs {n} more, file has {self.size})")

    def unpack(self, fmt: str, n: int) -> Any:
        self.need(n)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def u32(self) -> int:
        return int(self.unpack("<I", 4))

    def u64(self) -> int:
        return int(self.unpack("<Q", 8))

    def string(self) -> str:
        length = self.u64()
        self.need(length)
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        return bytes(raw).decode("utf-8", errors="replace")

    def strings(self, count: int) -> list[str]:
        """``count`` strings in a row (a vocabulary: 150k of them), read in one tight loop."""
        buf, pos, size = self.buf, self.pos, self.size
        length = _U64.unpack_from
        out: list[str] = []
        append = out.append
        for _ in range(count):
            if pos + 8 > size:
                raise FormatError(f"header is truncated at byte {pos}")
            start = pos + 8
            pos = start + length(buf, pos)[0]
            if pos > size:
                raise FormatError(f"header is truncated at byte {start} (needs {pos - start} more, file has {size})")
            append(buf[start:pos].decode("utf-8", errors="replace"))  # a slice of mmap or bytes is bytes
        self.pos = pos
        return out

    def skip_strings(self, count: int) -> None:
        buf, pos, size = self.buf, self.pos, self.size
        unpack_from = struct.unpack_from
        for _ in range(count):
            if pos + 8 > size:
                raise FormatError(f"header is truncated at byte {pos}")
            pos += 8 + unpack_from("<Q", buf, pos)[0]
        if pos > size:
            raise FormatError(f"header is truncated at byte {size}")
        self.pos = pos

    def value(self, vtype: int, keep: bool = True) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.u32()
            count = self.u64()
            if item_type == _STRING:
                if not keep:
                    self.skip_strings(count)
                    return count
                return self.strings(count)
            fmt = _SCALAR_FORMATS.get(item_type)
            if fmt is None:
                if item_type == _ARRAY:
                    return [self.value(_ARRAY, keep) for _ in range(count)]
                raise FormatError(f"unknown GGUF array item type {item_type}")
            width = struct.calcsize(fmt)
            self.need(width * count)
            if not keep:
                self.pos += width * count
                return count
            values = list(struct.unpack_from(f"<{count}{fmt[1]}", self.buf, self.pos))
            self.pos += width * count
            return values
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is None:
            raise FormatError(f"unknown GGUF value type {vtype}")
        return self.unpack(fmt, struct.calcsize(fmt))


def read_gguf_header(path: Path) -> GGUFHeader:
    """Read a GGUF file's metadata and tensor table without touching its tensor data."""
    try:
        with open(path, "rb") as fh:
            if fh.seek(0, 2) == 0:
                raise FormatError("file is empty")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse_gguf(_Cursor(buf))
    except OSError as exc:
        raise FormatError(f"cannot read file: {exc.strerror or exc}") from exc


def read_gguf_metadata(cur: _Cursor, keep: Callable[[str, int], bool]) -> tuple[int, int, dict[str, Any]]:
    """From the start of a GGUF file: check magic and version, read the metadata (values for which
    ``keep(key, value_type)`` is false are stepped over, stored as None) and return the version, the tensor count and the metadata;
    the cursor is left at the tensor table."""
    cur.need(4)
    if bytes(cur.buf[0:4]) != GGUF_MAGIC:
        raise FormatError("not a GGUF file (bad magic)")
    cur.pos = 4
    version = cur.u32()
    if version not in (2, 3):
        raise FormatError(f"unsupported GGUF version {version}")
    tensor_count = cur.u64()
    kv_count = cur.u64()
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cur.string()
        vtype = cur.u32()
        metadata[key] = cur.value(vtype, keep=keep(key, vtype))
    return version, tensor_count, metadata


def _parse_gguf(cur: _Cursor) -> GGUFHeader:
    version, tensor_count, metadata = read_gguf_metadata(cur, lambda key, _vtype: key not in _SKIPPED_ARRAYS)
    parameters = 0
    tensor_types: dict[str, int] = {}
    data_end = 0  # end of the last tensor, relative to the start of the tensor data
    for _ in range(tensor_count):
        cur.string()  # tensor name
        n_dims = cur.u32()
        cur.need(8 * n_dims)
        dims = struct.unpack_from(f"<{n_dims}Q", cur.buf, cur.pos)
        cur.pos += 8 * n_dims
        ggml_type = cur.u32()
        offset = cur.u64()
        elements = math.prod(dims)
        parameters += elements
        type_name = GGML_TYPE_NAMES.get(ggml_type, f"type{ggml_type}")
        tensor_types[type_name] = tensor_types.get(type_name, 0) + 1
        block = GGML_TYPE_SIZES.get(ggml_type)
        data_end = max(data_end, offset + (elements // block[0] * block[1] if block else 0))
    if data_end:
        alignment = metadata.get("general.alignment")
        alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
        needed = cur.pos + (-cur.pos % alignment) + data_end
        if needed > cur.size:
            raise FormatError(f"file is truncated: its tensors need {needed} bytes, the file has {cur.size}")
    return GGUFHeader(version, metadata, tensor_count, parameters, tensor_types)


@dataclass(frozen=True)
class SafetensorsHeader:
    parameters: int
    dtypes: dict[str, int]  # dtype -> number of tensors
    metadata: dict[str, str]


_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Read the JSON header of a .safetensors file and count the parameters it declares."""
    try:
        with open(path, "rb") as fh:
            file_size = fh.seek(0, 2)
            fh.seek(0)
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise FormatError("file is truncated (no header length)")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_SAFETENSORS_HEADER or 8 + length > file_size:
                raise FormatError("header length is larger than the file; the file is truncated or not safetensors")
            raw = fh.read(length)
    except OSError as exc:
        raise FormatError(f"cannot read file: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    parameters = 0
    dtypes: dict[str, int] = {}
    data_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or "shape" not in info or "dtype" not in info:
            raise FormatError(f"tensor {name!r} has no shape/dtype")
        dtype = info["dtype"]
        try:
            count = math.prod(int(d) for d in info["shape"])
            end = int((info.get("data_offsets") or [0, 0])[1])
        except (TypeError, ValueError, IndexError):
            raise FormatError(f"tensor {name!r} has a malformed shape or data_offsets") from None
        if not isinstance(dtype, str):
            raise FormatError(f"tensor {name!r} has a malformed dtype")
        parameters += count
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
        data_end = max(data_end, end)
    if 8 + length + data_end > file_size:
        raise FormatError(f"file is truncated: header declares {8 + length + data_end} bytes, file has {file_size}")
    meta = header.get("__metadata__")
    meta = meta if isinstance(meta, dict) else {}
    return SafetensorsHeader(parameters, dtypes, {str(k): str(v) for k, v in meta.items()})
