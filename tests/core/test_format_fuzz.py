"""The readers of untrusted weight files, fuzzed: every malformed GGUF or safetensors header fails fast, in
bounded time and memory, with a FormatError (ModelFormatError for the engine's GGUF tensor table) naming the
file, and `influence list` shows such a file as a problem instead of failing the scan.

The GGUF files are built field by field from values chosen to break readers: lengths and counts near 2**63,
``n_dims`` above 4, dimension products past 2**63, alignment 2**30, offsets past the end, unknown array element
types, nested arrays, and a 43-byte file (gguf-py 0.19 hangs on one).
"""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from influence_tui.core.engine.quant.gguf_weights import _read_table
from influence_tui.core.errors import ModelFormatError
from influence_tui.core.formats import (
    FormatError,
    read_gguf_header,
    read_gguf_prefix_metadata,
    read_safetensors_header,
)

TIME_LIMIT_S = 1.0
"""What any one of these small files may take to be read or refused."""
MEMORY_LIMIT = 16 * 2**20
"""Python allocations while reading one (a reader that trusts a count allocates gigabytes)."""

FUZZ = settings(
    max_examples=300,
    deadline=None,  # the time is asserted by `bounded`, with the memory
    derandomize=True,  # the same cases on every run: a failure here is reproducible, never flaky
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
WIDTHS = {U8: 1, I8: 1, U16: 2, I16: 2, U32: 4, I32: 4, F32: 4, BOOL: 1, U64: 8, I64: 8, F64: 8}


# ------------------------------------------------------------------------------------------ building files


def s(text: bytes | str) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def tensor(name: str, dims: tuple[int, ...], ggml_type: int = 0, offset: int = 0, n_dims: int | None = None) -> bytes:
    n = len(dims) if n_dims is None else n_dims
    return (
        s(name)
        + struct.pack("<I", n)
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def gguf(
    kvs: tuple[bytes, ...] = (),
    tensors: tuple[bytes, ...] = (),
    data: bytes = b"",
    *,
    version: int = 3,
    kv_count: int | None = None,
    tensor_count: int | None = None,
    align: int = 32,
) -> bytes:
    """A GGUF file: the header, the key/values and the tensor table as given, then (when there are tensors or
    data) padding to ``align`` and ``data``; the counts are the real ones unless given."""
    head = b"GGUF" + struct.pack(
        "<IQQ",
        version,
        len(tensors) if tensor_count is None else tensor_count,
        len(kvs) if kv_count is None else kv_count,
    )
    body = head + b"".join(kvs) + b"".join(tensors)
    if not (tensors or data):
        return body
    return body + b"\0" * (-len(body) % align) + data


def nested_arrays(depth: int) -> bytes:
    """An array of one array of one array... ``depth`` deep, ending in an empty u8 array."""
    return struct.pack("<IQ", ARRAY, 1) * depth + struct.pack("<IQ", U8, 0)


# ------------------------------------------------------------------------------------------ checking readers


@contextmanager
def bounded(what: str) -> Iterator[None]:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert elapsed < TIME_LIMIT_S, f"{what} took {elapsed:.2f} s"
        assert peak < MEMORY_LIMIT, f"{what} allocated {peak / 2**20:.0f} MiB"


def check_gguf(path: Path, *, must_fail: bool = False) -> list[str]:
    """Read ``path`` with both GGUF readers; each either succeeds or fails with an error naming the file.
    Returns the errors' messages."""
    errors: list[str] = []
    with bounded(f"read_gguf_header({path.name})"):
        try:
            read_gguf_header(path)
        except FormatError as exc:
            assert exc.path == path and str(exc).startswith(f"{path.name}: "), exc
            errors.append(str(exc))
    with bounded(f"_read_table({path.name})"):
        try:
            _read_table(path)
        except ModelFormatError as exc:
            assert exc.message.startswith(f"{path.name}: "), exc
            errors.append(exc.message)
    if must_fail:
        assert len(errors) == 2, f"{path.name} was read without an error: {errors}"
    return errors


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------------ the known traps

NEAR_2_63 = (2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1)
ALIGN = "general.alignment"

BAD_GGUFS: dict[str, bytes] = {
    "kv count 2**63": gguf(kv_count=2**63),
    "kv count 2**64-1 with one real entry": gguf((kv("a", U8, b"\1"),), kv_count=2**64 - 1),
    "tensor count 2**63": gguf(tensor_count=2**63),
    "key length 2**63": gguf(kv_count=1) + struct.pack("<Q", 2**63) + b"key",
    "string value length 2**64-1": gguf((s("k") + struct.pack("<IQ", STRING, 2**64 - 1) + b"abc",)),
    "2**63 strings": gguf((kv("k", ARRAY, struct.pack("<IQ", STRING, 2**63) + s("a") * 3),)),
    "2**63 tokens (stepped over)": gguf((kv("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, 2**63)),)),
    "2**63 u8": gguf((kv("k", ARRAY, struct.pack("<IQ", U8, 2**63) + b"\0" * 16),)),
    "2**61 u64 (a byte count that wraps)": gguf((kv("k", ARRAY, struct.pack("<IQ", U64, 2**61) + b"\0" * 16),)),
    "array of type 13": gguf((kv("k", ARRAY, struct.pack("<IQ", 13, 1) + b"\0" * 8),)),
    "array of type 2**32-1": gguf((kv("k", ARRAY, struct.pack("<IQ", 2**32 - 1, 1) + b"\0" * 8),)),
    "value of type 99": gguf((kv("k", 99, b"\0" * 8),)),
    "arrays nested 10,000 deep": gguf((kv("k", ARRAY, nested_arrays(10_000)),)),
    "2**63 nested arrays": gguf((kv("k", ARRAY, struct.pack("<IQ", ARRAY, 2**63) + struct.pack("<IQ", U8, 0) * 4),)),
    "version 1": gguf(version=1),
    "version 2**32-1": gguf(version=2**32 - 1),
    "n_dims 0": gguf(tensors=(tensor("t", (), n_dims=0),), data=b"\0" * 64),
    "n_dims 5": gguf(tensors=(tensor("t", (1, 1, 1, 1, 1)),), data=b"\0" * 64),
    "n_dims 2**32-1": gguf(tensors=(tensor("t", (1, 1), n_dims=2**32 - 1),), data=b"\0" * 64),
    "dims 2**32 x 2**32 x 2**32": gguf(tensors=(tensor("t", (2**32, 2**32, 2**32)),), data=b"\0" * 64),
    "dims (2**63, 2)": gguf(tensors=(tensor("t", (2**63, 2)),), data=b"\0" * 64),
    "dims 2**64-1 x4": gguf(tensors=(tensor("t", (2**64 - 1,) * 4),), data=b"\0" * 64),
    "alignment 2**30": gguf((kv(ALIGN, U32, struct.pack("<I", 2**30)),), (tensor("t", (4,)),), b"\0" * 64),
    "alignment 2**63 (u64)": gguf((kv(ALIGN, U64, struct.pack("<Q", 2**63)),), (tensor("t", (4,)),), b"\0" * 64),
    "offset 2**63": gguf(tensors=(tensor("t", (4,), offset=2**63),), data=b"\0" * 64),
    "offset past the end, unknown type": gguf(tensors=(tensor("t", (4,), ggml_type=99, offset=4096),), data=b"\0" * 64),
    "data past the end": gguf(tensors=(tensor("t", (64,), offset=0),), data=b"\0" * 64),
    "43 bytes": gguf(tensor_count=2**63)[:24] + s("abc") + struct.pack("<II", 2**32 - 1, 0),
    "43 bytes of a string array": (gguf(kv_count=1) + s("k") + struct.pack("<IIQ", ARRAY, STRING, 2**63 - 1))[:43],
    "only the magic": b"GGUF",
    "empty": b"",
}


def test_the_43_byte_files_are_43_bytes() -> None:
    assert len(BAD_GGUFS["43 bytes"]) == len(BAD_GGUFS["43 bytes of a string array"]) == 43


@pytest.mark.parametrize("case", list(BAD_GGUFS))
def test_a_malformed_gguf_fails_fast_naming_the_file(tmp_path: Path, case: str) -> None:
    path = write(tmp_path / "bad.gguf", BAD_GGUFS[case])
    check_gguf(path, must_fail=True)


def test_the_messages_say_what_is_wrong(tmp_path: Path) -> None:
    def error(case: str) -> str:
        return check_gguf(write(tmp_path / "bad.gguf", BAD_GGUFS[case]), must_fail=True)[0]

    assert "truncated" in error("kv count 2**63")
    assert "has 5 dimensions" in error("n_dims 5")
    assert "more than any file holds" in error("dims 2**32 x 2**32 x 2**32")
    assert "alignment 1073741824" in error("alignment 2**30")
    assert "past the end of the file" in error("offset 2**63")
    assert "past the end of the file" in error("data past the end")
    assert "nested more than" in error("arrays nested 10,000 deep")
    assert "unknown GGUF array item type 13" in error("array of type 13")


def test_a_good_gguf_still_reads(tmp_path: Path) -> None:
    """The traps are refused, not everything: a small well-formed file with each kind of value reads."""
    kvs = (
        kv("general.architecture", STRING, s("llama")),
        kv(ALIGN, U32, struct.pack("<I", 64)),
        kv("llama.block_count", U32, struct.pack("<I", 2)),
        kv("per_layer", ARRAY, struct.pack("<IQ", I32, 2) + struct.pack("<ii", 3, -4)),
        kv("nested", ARRAY, nested_arrays(3)),
        kv("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, 2) + s("a") + s("b")),
    )
    data = gguf(kvs, (tensor("blk.0.w", (4, 2)),), b"\0" * 32, align=64)  # 8 float32
    path = write(tmp_path / "good.gguf", data)
    header = read_gguf_header(path)
    assert (header.architecture, header.parameters, header.metadata["per_layer"]) == ("llama", 8, [3, -4])
    metadata, infos, size = _read_table(path)
    assert metadata["llama.block_count"] == 2 and infos[0].shape == (2, 4) and size == len(data)
    assert read_gguf_prefix_metadata(data)["general.architecture"] == "llama"


def test_every_prefix_of_a_real_gguf_fails_cleanly(demo_gguf: Path, tmp_path: Path) -> None:
    data = demo_gguf.read_bytes()[:4096]
    for cut in (*range(0, 64), 100, 1000, 4095):
        check_gguf(write(tmp_path / "cut.gguf", data[:cut]), must_fail=True)
        if cut >= 24:  # the preamble is there: what lies whole in the prefix is read
            assert isinstance(read_gguf_prefix_metadata(data[:cut]), dict)


# ------------------------------------------------------------------------------------------ generated files

u64s = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 5, 8, 31, 32, 2**30, 2**31, 2**32 - 1, 2**32, 2**62, *NEAR_2_63]),
    st.integers(0, 2**64 - 1),
)
u32s = st.one_of(st.integers(0, 40), st.sampled_from([2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))
small_bytes = st.binary(max_size=48)


@st.composite
def values(draw: st.DrawFn) -> tuple[int, bytes]:
    """A GGUF metadata value: a scalar, a string (its length may lie) or an array (its count and element type may)."""
    kind = draw(st.sampled_from(["scalar", "scalar", "string", "array", "array", "junk"]))
    if kind == "scalar":
        vtype = draw(st.sampled_from(sorted(WIDTHS)))
        return vtype, draw(st.binary(min_size=WIDTHS[vtype], max_size=WIDTHS[vtype]))
    if kind == "string":
        text = draw(small_bytes)
        length = draw(st.one_of(st.just(len(text)), u64s))
        return STRING, struct.pack("<Q", length) + text
    if kind == "array":
        item_type = draw(st.one_of(st.integers(0, 14), u32s))
        count = draw(st.one_of(st.integers(0, 4), u64s))
        if item_type == ARRAY and draw(st.booleans()):
            payload = nested_arrays(draw(st.integers(0, 20)))
        elif item_type == STRING:
            payload = b"".join(s(t) for t in draw(st.lists(small_bytes, max_size=4)))
        else:
            payload = draw(small_bytes)
        return ARRAY, struct.pack("<IQ", item_type, count) + payload
    return draw(u32s), draw(small_bytes)


@st.composite
def ggufs(draw: st.DrawFn) -> bytes:
    keys = st.sampled_from([ALIGN, "general.architecture", "llama.block_count", "tokenizer.ggml.tokens", "k"])
    kvs = [kv(draw(keys), *draw(values())) for _ in range(draw(st.integers(0, 4)))]
    if draw(st.booleans()):
        alignment = draw(st.sampled_from([0, 1, 3, 7, 32, 4096, 2**30, 2**32 - 1]))
        kvs.insert(0, kv(ALIGN, U32, struct.pack("<I", alignment)))
    tensors = []
    for i in range(draw(st.integers(0, 3))):
        n_dims = draw(st.one_of(st.integers(0, 6), u32s))
        dims = tuple(
            draw(st.lists(st.one_of(st.integers(0, 64), u64s), min_size=min(n_dims, 6), max_size=min(n_dims, 6)))
        )
        tensors.append(
            tensor(
                f"blk.{i}.w",
                dims,
                draw(st.one_of(st.integers(0, 40), u32s)),
                draw(st.one_of(st.integers(0, 256), u64s)),
                n_dims,
            )
        )
    data = gguf(
        tuple(kvs),
        tuple(tensors),
        draw(st.binary(max_size=512)),
        version=draw(st.sampled_from([3] * 8 + [2, 1, 4])),  # mostly one the readers take
        kv_count=draw(st.one_of(st.none(), st.none(), st.none(), u64s)),  # mostly the real count
        tensor_count=draw(st.one_of(st.none(), st.none(), st.none(), u64s)),
    )
    if draw(st.integers(0, 2)) == 0:  # cut short
        data = data[: draw(st.integers(0, len(data)))]
    return data


@FUZZ
@given(data=ggufs())
def test_generated_ggufs_fail_cleanly(tmp_path: Path, data: bytes) -> None:
    check_gguf(write(tmp_path / "fuzz.gguf", data))
    with bounded("read_gguf_prefix_metadata"):
        try:
            read_gguf_prefix_metadata(data)
        except FormatError as exc:
            assert exc.path is None  # bytes from the Hub: the caller says which file


@FUZZ
@given(data=st.binary(max_size=256))
def test_random_bytes_after_the_magic_fail_cleanly(tmp_path: Path, data: bytes) -> None:
    check_gguf(write(tmp_path / "fuzz.gguf", b"GGUF\3\0\0\0" + data))


# ------------------------------------------------------------------------------------------ safetensors


def safetensors(header: Any, *, data: bytes = b"\0" * 16, length: int | None = None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + data


def check_safetensors(path: Path, *, must_fail: bool = False) -> str | None:
    with bounded(f"read_safetensors_header({path.name})"):
        try:
            read_safetensors_header(path)
        except FormatError as exc:
            assert exc.path == path and str(exc).startswith(f"{path.name}: "), exc
            return str(exc)
    assert not must_fail, f"{path.name} was read without an error"
    return None


def w(**fields: Any) -> dict[str, Any]:
    return {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16], **fields}}


BAD_SAFETENSORS: dict[str, bytes] = {
    "header length 2**63": safetensors(w(), length=2**63),
    "header length 2**64-1": safetensors(w(), length=2**64 - 1),
    "shape near 2**63": safetensors(w(shape=[2**63])),
    "shape product past 2**63": safetensors(w(shape=[2**32, 2**32])),
    "a million dims of 2**62": safetensors(w(shape=[2**62] * 100_000), data=b""),
    "negative dim": safetensors(w(shape=[-1])),
    "bool dim": safetensors(w(shape=[True])),
    "float dim": safetensors(w(shape=[1.5])),
    "string shape": safetensors(w(shape="44")),
    "offsets backwards": safetensors(w(data_offsets=[16, 0])),
    "offsets past the end": safetensors(w(data_offsets=[0, 2**63 - 1])),
    "three offsets": safetensors(w(data_offsets=[0, 4, 16])),
    "nested 100,000 deep": safetensors(b"[" * 100_000 + b"]" * 100_000),
    "not an object": safetensors([1, 2, 3]),
    "not JSON": safetensors(b"\xff\xfe{"),
    "entry without dtype": safetensors({"w": {"shape": [1]}}),
    "43 bytes": safetensors(b'{"w":{"dtype":"F32","shape":[9],"data_offs', data=b"")[:43],
}


@pytest.mark.parametrize("case", list(BAD_SAFETENSORS))
def test_a_malformed_safetensors_fails_fast_naming_the_file(tmp_path: Path, case: str) -> None:
    check_safetensors(write(tmp_path / "bad.safetensors", BAD_SAFETENSORS[case]), must_fail=True)


json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
entries = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "BF16", "I8"]) | json_values,
        "shape": st.lists(st.integers(0, 8) | st.sampled_from([0, 2**31, *NEAR_2_63]) | json_values, max_size=5)
        | json_values,
        "data_offsets": st.lists(st.integers(0, 64) | st.sampled_from(NEAR_2_63) | json_values, max_size=3)
        | json_values,
    },
)


@FUZZ
@given(
    header=st.dictionaries(st.sampled_from(["w", "b", "__metadata__"]), entries | json_values, max_size=3),
    data=st.binary(max_size=64),
    length=st.one_of(st.none(), u64s),
)
def test_generated_safetensors_fail_cleanly(tmp_path: Path, header: Any, data: bytes, length: int | None) -> None:
    check_safetensors(write(tmp_path / "fuzz.safetensors", safetensors(header, data=data, length=length)))


@FUZZ
@given(data=st.binary(max_size=256))
def test_random_safetensors_bytes_fail_cleanly(tmp_path: Path, data: bytes) -> None:
    check_safetensors(write(tmp_path / "fuzz.safetensors", data))


# ------------------------------------------------------------------------------------------ influence list


def test_influence_list_shows_each_bad_file_as_a_problem(
    capsys: pytest.CaptureFixture[str], models_dir: Path, tiny_llama: Path
) -> None:
    from influence_tui.cli import main

    names: dict[str, str] = {}
    for i, case in enumerate(BAD_GGUFS):
        if BAD_GGUFS[case]:  # an empty file is no model at all
            names[f"bad-{i:02d}"] = f"bad-{i:02d}.gguf"
            write(models_dir / f"bad-{i:02d}.gguf", BAD_GGUFS[case])
    for i, case in enumerate(BAD_SAFETENSORS):
        folder = models_dir / f"broken-{i:02d}"
        folder.mkdir()
        for f in ("config.json", "tokenizer.json"):
            (folder / f).write_bytes((tiny_llama / f).read_bytes())
        write(folder / "model.safetensors", BAD_SAFETENSORS[case])
        names[folder.name] = "model.safetensors"
    start = time.perf_counter()
    assert main(["list", "--json"]) == 0
    elapsed = time.perf_counter() - start
    listed: dict[str, Any] = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    for name, file in names.items():
        assert name in listed, sorted(listed)
        problems: list[str] = listed[name]["problems"]
        assert any(p.startswith(f"{file}: ") for p in problems), (name, problems)
    assert elapsed < 30, f"listing {len(names)} bad files took {elapsed:.0f} s"
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "bad-00 !" in out and "broken-00 !" in out, out
