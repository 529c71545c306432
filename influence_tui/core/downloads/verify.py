"""Hashing: the sha256 (and git blob id) of bytes as they arrive; `influence verify`'s re-check of a model folder."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from influence_tui.core.errors import DownloadError
from influence_tui.core.manifest import read_manifest
from influence_tui.core.types import DownloadFile, FileCheck

BLOCK = 4 * 2**20


class ContentHasher:
    """sha256 of the content, and for git files the blob id (sha1 of ``blob <size>\\0`` + content)."""

    def __init__(self, file: DownloadFile) -> None:
        self.file = file
        self.reset()

    def reset(self) -> None:
        file = self.file
        self.sha256 = hashlib.sha256()
        self.git: Any = None
        if file.sha256 is None and file.blob_id and len(file.blob_id) == 40:
            self.git = hashlib.sha1(f"blob {file.size}\0".encode(), usedforsecurity=False)
        self.count = 0

    def update(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)
        self.count += len(data)

    def check(self, file: DownloadFile) -> str | None:
        """None when the content is the expected one, else what differs."""
        if file.sha256 is not None:
            got = self.sha256.hexdigest()
            return None if got == file.sha256.lower() else f"sha256 {got[:16]}… instead of {file.sha256[:16]}…"
        if self.git is not None:
            got = self.git.hexdigest()
            return None if got == file.blob_id else f"git blob id {got[:12]} instead of {file.blob_id!s:.12}"
        return None


def hash_prefix(path: Path, hasher: ContentHasher, length: int, cancel: threading.Event | None = None) -> None:
    """Feed the first ``length`` bytes of ``path`` to ``hasher`` (fewer when ``cancel`` is set)."""
    with open(path, "rb") as fh:
        remaining = length
        while remaining > 0:
            block = fh.read(min(BLOCK, remaining))
            if not block or (cancel is not None and cancel.is_set()):
                break
            hasher.update(block)
            remaining -= len(block)


def file_sha256(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return digest.hexdigest()


def verify_folder(folder: Path, on_bytes: Callable[[int], None] | None = None) -> list[FileCheck]:
    """Re-hash a downloaded model's files against its manifest; one :class:`FileCheck` per file."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise DownloadError(
            f"{folder} has no download manifest, so there is nothing to check it against",
            hint="`influence verify` checks models that `influence download` fetched",
        )
    checks: list[FileCheck] = []
    for entry in manifest.files:
        path = folder / entry.path
        if not path.is_file():
            checks.append(FileCheck(entry.path, False, "missing"))
            continue
        size = path.stat().st_size
        if size != entry.size:
            checks.append(FileCheck(entry.path, False, f"size is {size:,} bytes, expected {entry.size:,}"))
            continue
        try:
            digest = file_sha256(path, on_bytes)
        except OSError as exc:
            checks.append(FileCheck(entry.path, False, f"unreadable: {exc.strerror or exc}"))
            continue
        if digest != entry.sha256:
            checks.append(FileCheck(entry.path, False, f"sha256 is {digest[:16]}…, expected {entry.sha256[:16]}…"))
        else:
            checks.append(FileCheck(entry.path, True))
    return checks
