"""Header-only readers for the weight formats we list: GGUF and safetensors.

Nothing here loads weights or imports torch: a GGUF header is parsed field by field (arrays of strings are
stepped over by their lengths) and a safetensors header is the JSON blob at the start of the file. Both
readers raise :class:`FormatError` (naming the file) on truncated or malformed input so the library can show
the problem on that one model instead of crashing. Every count and length is checked against the bytes left
before it is used, so a malformed file fails in time and memory bounded by its size (fuzzed in
``tests/core/test_format_fuzz.py``). The GGUF tensor table reader is shared with the engine's GGUF weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from influence_tui.core.ggml import GGML_TYPE_NAMES, GGML_TYPE_SIZES, GGUF_FILE_TYPE_NAMES

__all__ = [  # the ggml tables are re-exported: engine code imports them from here
    "CONTEXT_LENGTH_KEYS",
    "GGML_MAX_DIMS",
    "GGML_TYPE_NAMES",
    "GGML_TYPE_SIZES",
    "GGUF_FILE_TYPE_NAMES",
    "GGUF_MAGIC",
    "MAX_ELEMENTS",
    "SPLIT_GGUF",
    "FormatError",
    "GGUFCursor",
    "GGUFHeader",
    "GGUFTables",
    "GGUFTensor",
    "SafetensorsHeader",
    "gguf_group_key",
    "read_gguf_header",
    "read_gguf_metadata",
    "read_gguf_prefix_metadata",
    "read_gguf_tables",
    "read_safetensors_header",
]

GGUF_MAGIC = b"GGUF"
SPLIT_GGUF = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)
"""The name of one part of a split GGUF (llama.cpp's ``gguf-split``): ``<stem>-00001-of-00003.gguf``."""

CONTEXT_LENGTH_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "n_ctx",
    "max_sequence_length",
)
"""The ``config.json`` keys that state a model's context length, in the order they are looked up (the library
scan, the loader and the memory estimate all read this one list)."""


def gguf_group_key(name: str) -> str:
    """What the parts of one split GGUF share (``<stem>-of-00003``); any other file name is its own key."""
    split = SPLIT_GGUF.match(name)
    return f"{split['stem']}-of-{split['total']}" if split else name


GGML_MAX_DIMS = 4
"""A ggml tensor has 1 to 4 dimensions."""
MAX_ELEMENTS = 2**63 - 1
"""No tensor has more elements than a signed 64-bit count (ggml's ``int64_t ne``)."""
_MAX_NESTING = 8
"""Arrays of arrays deeper than this are refused (no real file has more than one level)."""

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

# Metadata keys whose values are large and never needed for listing; stepped over, not decoded.
_SKIPPED_ARRAYS = (
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
)


_U64 = struct.Struct("<Q")


class FormatError(ValueError):
    """A weight file's header is truncated or malformed; the message starts with the file's name when known."""

    def __init__(self, reason: str, path: Path | None = None) -> None:
        super().__init__(f"{path.name}: {reason}" if path is not None else reason)
        self.reason = reason
        """What is wrong, without the file's name."""
        self.path = path


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


class GGUFCursor:
    """A read position in a GGUF file's bytes; every read checks the bytes are there (:class:`FormatError` if not)."""

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

    def value(self, vtype: int, keep: bool = True, depth: int = 0) -> Any:
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
                    if depth >= _MAX_NESTING:
                        raise FormatError(f"GGUF arrays nested more than {_MAX_NESTING} deep at byte {self.pos}")
                    # each nested array takes at least 12 bytes, so the file's size bounds the loop
                    return [self.value(_ARRAY, keep, depth + 1) for _ in range(count)]
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
    """Read a GGUF file's metadata and tensor table without touching its tensor data; a malformed file raises
    :class:`FormatError` naming it, in time and memory bounded by the file's size."""
    try:
        with open(path, "rb") as fh:
            if fh.seek(0, 2) == 0:
                raise FormatError("file is empty", path)
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse_gguf(buf)
    except FormatError as exc:
        if exc.path is not None:
            raise
        raise FormatError(exc.reason, path) from None
    except OSError as exc:
        raise FormatError(f"cannot read file: {exc.strerror or exc}", path) from exc


def read_gguf_metadata(cur: GGUFCursor, keep: Callable[[str, int], bool]) -> tuple[int, int, dict[str, Any]]:
    """From the start of a GGUF file: check magic and version, read the metadata (values for which
    ``keep(key, value_type)`` is false are stepped over, their lengths stored in their place) and return the version,
    the tensor count and the metadata; the cursor is left at the tensor table."""
    version, tensor_count, kv_count = _read_preamble(cur)
    metadata: dict[str, Any] = {}
    _read_values(cur, kv_count, keep, metadata)
    return version, tensor_count, metadata


def _read_preamble(cur: GGUFCursor) -> tuple[int, int, int]:
    cur.need(4)
    if bytes(cur.buf[0:4]) != GGUF_MAGIC:
        raise FormatError("not a GGUF file (bad magic)")
    cur.pos = 4
    version = cur.u32()
    if version not in (2, 3):
        raise FormatError(f"unsupported GGUF version {version}")
    return version, cur.u64(), cur.u64()


def _read_values(cur: GGUFCursor, kv_count: int, keep: Callable[[str, int], bool], into: dict[str, Any]) -> None:
    # every key/value takes at least 12 bytes: a count near 2**64 ends at the end of the file, not in hours
    for _ in range(kv_count):
        key = cur.string()
        vtype = cur.u32()
        into[key] = cur.value(vtype, keep=keep(key, vtype))


def read_gguf_prefix_metadata(buf: bytes) -> dict[str, Any]:
    """The metadata found in the first bytes of a GGUF file (what the Hub client fetches of a remote one): every
    value that ends inside ``buf``, up to the first one that does not; the tokenizer's arrays are left out. Raises
    :class:`FormatError` when ``buf`` is not the start of a GGUF file."""
    cur = GGUFCursor(buf)
    _version, _tensor_count, kv_count = _read_preamble(cur)
    found: dict[str, Any] = {}
    with contextlib.suppress(FormatError):  # truncated (or malformed past here): what was read whole is kept
        _read_values(cur, kv_count, lambda key, _vtype: key not in _SKIPPED_ARRAYS, found)
    return {key: value for key, value in found.items() if key not in _SKIPPED_ARRAYS}


@dataclass(frozen=True)
class GGUFTensor:
    """One entry of a GGUF file's tensor table."""

    name: str
    dims: tuple[int, ...]
    """In GGUF order: ``ne[0]``, the length of a row, first."""
    ggml_type: int
    offset: int
    """From the start of the tensor data (:attr:`GGUFTables.data_start`)."""


@dataclass(frozen=True)
class GGUFTables:
    """A GGUF file's metadata and tensor table, checked to lie inside the file."""

    version: int
    metadata: dict[str, Any]
    tensors: tuple[GGUFTensor, ...]
    data_start: int
    """Where the tensor data starts: the end of the table, aligned to ``general.alignment``."""
    size: int
    """The file's size."""


def read_gguf_tables(buf: mmap.mmap | bytes, keep: Callable[[str, int], bool]) -> GGUFTables:
    """Parse the metadata (see :func:`read_gguf_metadata` for ``keep``) and the tensor table of the GGUF file in
    ``buf``. Raises :class:`FormatError` for a truncated or malformed file: a tensor with no or more than
    :data:`GGML_MAX_DIMS` dimensions or more than :data:`MAX_ELEMENTS` elements, or whose data (of a ggml type
    :data:`GGML_TYPE_SIZES` knows) would run past the end of the file."""
    cur = GGUFCursor(buf)
    version, tensor_count, metadata = read_gguf_metadata(cur, keep)
    tensors: list[GGUFTensor] = []
    # every entry takes at least 24 bytes: a count near 2**64 ends at the end of the file
    for _ in range(tensor_count):
        name = cur.string()
        n_dims = cur.u32()
        if not 1 <= n_dims <= GGML_MAX_DIMS:
            raise FormatError(f"tensor {name!r} has {n_dims} dimensions (GGUF allows 1 to {GGML_MAX_DIMS})")
        cur.need(8 * n_dims)
        dims = struct.unpack_from(f"<{n_dims}Q", cur.buf, cur.pos)
        cur.pos += 8 * n_dims
        if math.prod(dims) > MAX_ELEMENTS:
            raise FormatError(f"tensor {name!r} claims {' x '.join(map(str, dims))} elements, more than any file holds")
        tensors.append(GGUFTensor(name, dims, cur.u32(), cur.u64()))
    alignment = metadata.get("general.alignment")
    alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
    data_start = cur.pos + (-cur.pos % alignment)
    if tensors and data_start > cur.size:
        raise FormatError(
            f"file is truncated: its tensor data starts at byte {data_start} (alignment {alignment}), "
            f"the file has {cur.size}"
        )
    for tensor in tensors:
        block = GGML_TYPE_SIZES.get(tensor.ggml_type)
        nbytes = math.prod(tensor.dims) // block[0] * block[1] if block else 0
        end = data_start + tensor.offset + nbytes
        if end > cur.size:
            raise FormatError(
                f"file is truncated: tensor {tensor.name!r} runs past the end of the file "
                f"(to byte {end}, the file has {cur.size})"
            )
    return GGUFTables(version, metadata, tuple(tensors), data_start, cur.size)


def _parse_gguf(buf: mmap.mmap | bytes) -> GGUFHeader:
    tables = read_gguf_tables(buf, lambda key, _vtype: key not in _SKIPPED_ARRAYS)
    parameters = 0
    tensor_types: dict[str, int] = {}
    for tensor in tables.tensors:
        parameters += math.prod(tensor.dims)
        type_name = GGML_TYPE_NAMES.get(tensor.ggml_type, f"type{tensor.ggml_type}")
        tensor_types[type_name] = tensor_types.get(type_name, 0) + 1
    return GGUFHeader(tables.version, tables.metadata, len(tables.tensors), parameters, tensor_types)


@dataclass(frozen=True)
class SafetensorsHeader:
    parameters: int
    dtypes: dict[str, int]  # dtype -> number of tensors
    metadata: dict[str, str]


_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Read the JSON header of a .safetensors file and count the parameters it declares; a malformed file raises
    :class:`FormatError` naming it."""
    try:
        return _read_safetensors_header(path)
    except FormatError as exc:
        raise FormatError(exc.reason, path) from None


def _count(value: Any) -> int:
    """A dimension or an offset: a JSON integer from 0 to :data:`MAX_ELEMENTS`."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ELEMENTS:
        raise ValueError(value)
    return value


def _elements(dims: list[int]) -> int:
    """The product of ``dims``, refused past :data:`MAX_ELEMENTS` (without multiplying a million huge numbers)."""
    if 0 in dims:
        return 0
    count = 1
    for d in dims:
        count *= d
        if count > MAX_ELEMENTS:
            raise ValueError(dims)
    return count


def _read_safetensors_header(path: Path) -> SafetensorsHeader:
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
    except RecursionError:  # "[[[[...": nested deeper than the parser goes
        raise FormatError("header is not valid JSON: nested too deep") from None
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
            shape = info["shape"]
            if not isinstance(shape, list):
                raise TypeError(shape)
            count = _elements([_count(d) for d in shape])
            offsets = info.get("data_offsets") or [0, 0]
            if not isinstance(offsets, list) or len(offsets) != 2:
                raise TypeError(offsets)
            start, end = _count(offsets[0]), _count(offsets[1])
            if start > end:
                raise ValueError(offsets)
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
