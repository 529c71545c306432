"""The download manifest and the staging folder's record of verified files, fuzzed: whatever a folder holds
under those names, reading it gives a manifest (or a record) or nothing, fast, and never an exception; a model
folder with a damaged manifest is still listed, as a plain folder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from influence_tui.core.downloads import Staging
from influence_tui.core.manifest import MANIFEST_NAME, Manifest, ManifestFile, read_manifest, write_manifest

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
file_entries = st.fixed_dictionaries(
    {},
    optional={
        "path": st.text(max_size=8) | json_values,
        "size": st.integers(-2, 2**64) | json_values,
        "sha256": st.text(max_size=8) | json_values,
        "repo_path": json_values,
        "commit": json_values,
        "blob_id": json_values,
    },
)
manifests = st.fixed_dictionaries(
    {},
    optional={
        "format": json_values,
        "repo_id": st.text(max_size=8) | json_values,
        "revision": json_values,
        "commit": json_values,
        "endpoint": json_values,
        "completed": json_values,
        "files": st.lists(file_entries | json_values, max_size=4) | json_values,
    },
)

GOOD = Manifest(
    repo_id="acme/tiny",
    revision="main",
    commit="c" * 40,
    endpoint="https://example.org",
    completed="2026-01-01T00:00:00Z",
    files=(ManifestFile("model.safetensors", 10, "a" * 64, "model.safetensors", "c" * 40),),
)


def read_bounded(folder: Path) -> Manifest | None:
    start = time.perf_counter()
    found = read_manifest(folder)
    assert time.perf_counter() - start < 1.0
    return found


@FUZZ
@given(data=manifests | json_values)
def test_any_json_is_a_manifest_or_none(tmp_path: Path, data: Any) -> None:
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    found = read_bounded(tmp_path)
    if found is not None:
        assert all(isinstance(f.size, int) and f.size >= 0 for f in found.files)
        assert all(f.blob_id is None or isinstance(f.blob_id, str) for f in found.files)


@FUZZ
@given(data=st.binary(max_size=256))
def test_any_bytes_are_a_manifest_or_none(tmp_path: Path, data: bytes) -> None:
    (tmp_path / MANIFEST_NAME).write_bytes(data)
    read_bounded(tmp_path)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser goes
        b'{"files": ["a"], "repo_id": "x", "revision": "main", "commit": "c"}',  # a file that is not an object
        b'{"files": {"a": 1}, "repo_id": "x", "revision": "main", "commit": "c"}',
        b'{"files": [{"path": "a", "size": true, "sha256": "s"}], "repo_id": "x", "revision": "m", "commit": "c"}',
        b"\xff\xfe",
    ],
)
def test_damaged_manifests_are_none(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / MANIFEST_NAME).write_bytes(raw)
    assert read_bounded(tmp_path) is None


def test_a_written_manifest_reads_back(tmp_path: Path) -> None:
    write_manifest(tmp_path, GOOD)
    assert read_bounded(tmp_path) == GOOD


@FUZZ
@given(data=json_values | st.dictionaries(st.text(max_size=8), json_values, max_size=4))
def test_any_verified_record_reads_as_records(tmp_path: Path, data: Any) -> None:
    staging = Staging(tmp_path / "owner__name")
    staging.path.mkdir(parents=True, exist_ok=True)
    (staging.path / ".verified.json").write_text(json.dumps(data), encoding="utf-8")
    records = staging.verified()
    assert all(isinstance(k, str) and isinstance(v, dict) for k, v in records.items())


def test_a_folder_with_a_damaged_manifest_is_listed(models_dir: Path, tiny_llama: Path) -> None:
    from influence_tui.core.config import load_settings
    from influence_tui.core.library import Library

    folder = models_dir / "acme__tiny"
    tiny_llama.rename(folder)
    (folder / MANIFEST_NAME).write_bytes(b'{"files": ["not an object"], "repo_id": "acme/tiny"}')
    names = {m.name for m in Library(load_settings()).models()}
    assert "acme__tiny" in names, names
