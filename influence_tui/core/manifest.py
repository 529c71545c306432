"""The manifest a download writes into a model folder, last and atomically, once every file is verified.

``<models dir>/<owner>__<name>/.influence-manifest.json`` records the repo id, the revision and commit, and
every file with its size and sha256. The library names a folder holding one by its repo id; `influence
verify` re-hashes the files against it. A folder without a manifest is an ordinary (imported) model folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from influence_tui.core.fsutil import atomic_write_text

MANIFEST_NAME = ".influence-manifest.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class ManifestFile:
    path: str
    """Path inside the model folder (``/``-separated)."""
    size: int
    sha256: str
    repo_path: str
    commit: str
    blob_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "repo_path": self.repo_path,
            "commit": self.commit,
            "blob_id": self.blob_id,
        }


@dataclass(frozen=True)
class Manifest:
    repo_id: str
    revision: str
    commit: str
    endpoint: str
    completed: str
    """ISO 8601 (UTC) time the last download into this folder finished."""
    files: tuple[ManifestFile, ...]

    def file(self, path: str) -> ManifestFile | None:
        return next((f for f in self.files if f.path == path), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "endpoint": self.endpoint,
            "completed": self.completed,
            "files": [f.to_dict() for f in self.files],
        }


MAX_MANIFEST_BYTES = 16 * 2**20
"""A manifest lists a repo's files in a few KiB; a bigger one is not ours and is not read."""


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest; None when it has none or it cannot be read (the folder is then a plain folder).
    Any content at all gives a manifest or None, in time and memory bounded by :data:`MAX_MANIFEST_BYTES`."""
    path = folder / MANIFEST_NAME
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data["files"], list):
            return None
        files = tuple(_manifest_file(f, data) for f in data["files"])
        return Manifest(
            repo_id=str(data["repo_id"]),
            revision=str(data["revision"]),
            commit=str(data["commit"]),
            endpoint=str(data.get("endpoint") or ""),
            completed=str(data.get("completed") or ""),
            files=files,
        )
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested too deep
        return None


def _manifest_file(f: Any, data: dict[str, Any]) -> ManifestFile:
    if not isinstance(f, dict):
        raise TypeError(f)
    size = f["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(size)
    blob_id = f.get("blob_id")
    return ManifestFile(
        path=str(f["path"]),
        size=size,
        sha256=str(f["sha256"]),
        repo_path=str(f.get("repo_path") or f["path"]),
        commit=str(f.get("commit") or data["commit"]),
        blob_id=blob_id if isinstance(blob_id, str) else None,
    )


def manifest_repo_id(folder: Path) -> str | None:
    """The repo id a downloaded folder holds (what the library names it), or None for a plain folder."""
    manifest = read_manifest(folder)
    return manifest.repo_id if manifest else None


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    path = folder / MANIFEST_NAME
    atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2) + "\n")
    return path
