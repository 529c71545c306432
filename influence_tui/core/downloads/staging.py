"""A download's folders on disk: the model folder's name, staging (partial and verified files), the final rename."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from influence_tui.core.fsutil import atomic_write_text, remove_path
from influence_tui.core.manifest import MANIFEST_NAME, Manifest, write_manifest
from influence_tui.core.types import DownloadFile

STAGING_SUFFIX = ".download"
PARTIAL_SUFFIX = ".part"
VERIFIED_NAME = ".verified.json"


def folder_name(repo_id: str) -> str:
    """``owner/name`` -> ``owner__name``: one flat folder per repo."""
    return repo_id.replace("/", "__")


def staging_dir(folder: Path) -> Path:
    return folder.parent / f".{folder.name}{STAGING_SUFFIX}"


def assembly_dir(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.assembling"


def lock_path(folder: Path) -> Path:
    """The lock file held while a process downloads into ``folder``."""
    return folder.parent / f".{folder.name}.lock"


def file_size(path: Path) -> int:
    """The size of ``path``, 0 when it is not there."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def content_key(f: DownloadFile) -> str:
    """What identifies the content a file must have: its sha256, else its git blob id, else its size."""
    return f.sha256 or f.blob_id or f"size:{f.size}"


def same_content(sha256: str | None, blob_id: str | None, size: int, f: DownloadFile) -> bool:
    if size != f.size:
        return False
    if f.sha256 is not None:
        return sha256 == f.sha256
    return f.blob_id is not None and blob_id == f.blob_id


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


class Staging:
    """The hidden staging folder of one model folder: partial files (named by the content they must reach), the
    verified files and ``.verified.json``, their record. Safe to use from the job's several threads."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = staging_dir(folder)
        self._lock = threading.Lock()

    def partial(self, f: DownloadFile) -> Path:
        """Where ``f``'s bytes arrive: its name, then the start of its content key."""
        tag = content_key(f).replace(":", "")[:16]
        return self.path / f"{f.local_path}.{tag}{PARTIAL_SUFFIX}"

    def partials(self, local: str) -> Iterable[Path]:
        """Every partial file of ``local``, of whatever content."""
        path = self.path / local
        if not path.parent.is_dir():
            return []
        return path.parent.glob(f"{glob_escape(path.name)}.*{PARTIAL_SUFFIX}")

    def staged(self, f: DownloadFile) -> Path:
        """Where ``f`` waits once verified."""
        return self.path / f.local_path

    # -- the record of verified files

    def verified(self) -> dict[str, dict[str, Any]]:
        """``local path -> {"key", "sha256", "size"}`` of the files verified so far."""
        try:
            data = json.loads((self.path / VERIFIED_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):  # a damaged record: the files are hashed again
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): v for k, v in data.items() if isinstance(v, dict)}

    def record_verified(self, f: DownloadFile, digest: str) -> None:
        with self._lock:
            data = self.verified()
            data[f.local_path] = {"key": content_key(f), "sha256": digest, "size": f.size}
            atomic_write_text(self.path / VERIFIED_NAME, json.dumps(data, indent=1))

    # -- putting files in place

    def recover_assembly(self) -> None:
        """After a process was killed while putting the files in place: they go back to staging."""
        assembly = assembly_dir(self.folder)
        if not assembly.is_dir():
            return
        for path in assembly.rglob("*"):
            if path.is_file() and path.name != MANIFEST_NAME:
                back = self.path / path.relative_to(assembly)
                back.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, back)
        remove_path(assembly)

    def install(self, files: Sequence[DownloadFile], manifest: Manifest) -> None:
        """Every file is verified: put them and the manifest where the library sees them.

        A new model folder is gathered in a hidden folder and renamed: the model appears whole, in one rename (the
        staging folder may hold partial files of other downloads of this repo, which stay for later). Into an
        existing folder (a second quantization, an update) each file moves on its own, complete and verified, and
        the manifest goes last."""
        folder = self.folder
        if not folder.exists():
            assembly = assembly_dir(folder)
            remove_path(assembly)
            self._move(files, assembly)
            write_manifest(assembly, manifest)
            os.replace(assembly, folder)
        else:
            self._move(files, folder)
            write_manifest(folder, manifest)
        leftovers = [p for p in self.path.rglob("*") if p.is_file() and p.name != VERIFIED_NAME]
        if not leftovers:
            remove_path(self.path)

    def _move(self, files: Sequence[DownloadFile], dest: Path) -> None:
        moved = []
        for f in files:
            staged = self.staged(f)
            if staged.is_file():
                target = dest / f.local_path
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
                moved.append(f.local_path)
        with self._lock:
            verified = self.verified()
            if any(verified.pop(local, None) for local in moved):
                atomic_write_text(self.path / VERIFIED_NAME, json.dumps(verified, indent=1))
