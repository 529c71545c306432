"""Download a model from the Hub: only the files running it needs, several at a time, resumable, verified.

Layout, for ``owner/name`` downloaded into the models dir::

    <models dir>/owner__name/                 the model, once complete (the library lists it)
        .influence-manifest.json              repo id, revision, commit, every file with size and sha256
    <models dir>/.owner__name.download/       staging (hidden: the library skips dot-names)
        model-00001-of-00002.safetensors      verified, waiting for the others
        model-00002-of-00002.safetensors.<hash>.part   still arriving
        .verified.json                        the files verified so far, with their sha256
    <models dir>/.owner__name.assembling/     the verified files and the manifest, just before one rename
    <models dir>/.owner__name.lock            held while a process downloads this repo

Every file is fetched into the staging folder, hashed while it arrives and verified against the Hub's
metadata (sha256 for LFS files, the git blob id for small ones). Only when every file is verified are the
files gathered with the manifest in the hidden assembling folder, which is renamed to the model folder: a
model is never listed half downloaded (the staging design was chosen over marking an in-progress folder:
nothing has to be cleaned up or recognised for the library to stay right after a crash). When the model
folder already exists (a second GGUF quantization, an update), the verified files are moved in one by one and
the manifest is rewritten last. Partial files of other downloads of the same repo stay in staging.

Resume needs no state besides the files: a partial file's name carries the hash it must reach, its size is
where the next request starts (HTTP Range), and its bytes are re-hashed before continuing. A process killed at
any moment leaves a valid prefix on disk. File bytes are fetched with ``httpx`` directly, not with
``hf_hub_download``, which neither resumes across processes from the bytes on disk nor checks sha256.

Where each part lives: ``plan`` (which files), ``verify`` (hashing, `influence verify`), ``staging`` (the folders
above and the final rename), ``transfer`` (one file's HTTP transfer: resume, retry, verify), ``job`` (one download
in background threads, its progress) and ``manager`` (plans downloads and starts their jobs). Callers import
from this package.
"""

from __future__ import annotations

from influence_tui.core.downloads.job import (
    PROGRESS_INTERVAL_S,
    DownloadJob,
    JobSettings,
    ProgressCallback,
    library_name,
)
from influence_tui.core.downloads.manager import DEFAULT_PARALLEL, LOCK_WAIT_S, DownloadManager
from influence_tui.core.downloads.plan import RUNTIME_FILES, RUNTIME_GLOBS, select_files
from influence_tui.core.downloads.staging import (
    PARTIAL_SUFFIX,
    STAGING_SUFFIX,
    VERIFIED_NAME,
    Staging,
    assembly_dir,
    folder_name,
    glob_escape,
    staging_dir,
)
from influence_tui.core.downloads.transfer import (
    DEFAULT_BACKOFF_S,
    DEFAULT_RETRIES,
    DEFAULT_STALL_TIMEOUT_S,
    MAX_BACKOFF_S,
    RetryPolicy,
)
from influence_tui.core.downloads.verify import ContentHasher, file_sha256, verify_folder

__all__ = [
    "DEFAULT_BACKOFF_S",
    "DEFAULT_PARALLEL",
    "DEFAULT_RETRIES",
    "DEFAULT_STALL_TIMEOUT_S",
    "LOCK_WAIT_S",
    "MAX_BACKOFF_S",
    "PARTIAL_SUFFIX",
    "PROGRESS_INTERVAL_S",
    "RUNTIME_FILES",
    "RUNTIME_GLOBS",
    "STAGING_SUFFIX",
    "VERIFIED_NAME",
    "ContentHasher",
    "DownloadJob",
    "DownloadManager",
    "JobSettings",
    "ProgressCallback",
    "RetryPolicy",
    "Staging",
    "assembly_dir",
    "file_sha256",
    "folder_name",
    "glob_escape",
    "library_name",
    "select_files",
    "staging_dir",
    "verify_folder",
]
