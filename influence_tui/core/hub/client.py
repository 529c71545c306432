"""The Hub client: one endpoint and token; search, a repo's files at a revision, small file reads, a model's details."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from influence_tui import __version__
from influence_tui.core.errors import GatedRepoError, HubError
from influence_tui.core.formats import FormatError, read_gguf_prefix_metadata
from influence_tui.core.hub.errors import http_error, hub_errors, unreachable
from influence_tui.core.hub.files import SAFETENSORS_INDEX, gguf_groups, select_safetensors, weight_formats
from influence_tui.core.memory import (
    DEFAULT_CONTEXT,
    estimate_memory,
    kv_shape_from_config,
    kv_shape_from_gguf,
    machine_memory,
)
from influence_tui.core.types import HubModel, HubModelDetails, MachineMemory, QuantChoice, RepoFile

if TYPE_CHECKING:
    import httpx
    from huggingface_hub import HfApi

    from influence_tui.core.config import Settings

#: `influence search --sort` values -> ``HfApi.list_models(sort=...)``; every sort is descending.
SORTS: dict[str, str] = {
    "downloads": "downloads",
    "likes": "likes",
    "updated": "last_modified",
    "trending": "trending_score",
    "created": "created_at",
}
DEFAULT_LIMIT = 20
API_TIMEOUT_S = 10.0
GGUF_PREFIX_BYTES = 1 << 20
"""How much of a GGUF file `influence info` reads to learn the model's shape (the metadata comes first)."""


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.replace(microsecond=0).isoformat() + "Z"


def _hub_model(info: Any) -> HubModel:
    gated = getattr(info, "gated", None)
    author = getattr(info, "author", None) or (info.id.split("/")[0] if "/" in info.id else None)
    return HubModel(
        id=info.id,
        author=author,
        downloads=getattr(info, "downloads", None),
        likes=getattr(info, "likes", None),
        updated=_iso(getattr(info, "last_modified", None)),
        created=_iso(getattr(info, "created_at", None)),
        tags=tuple(getattr(info, "tags", None) or ()),
        pipeline_tag=getattr(info, "pipeline_tag", None),
        library_name=getattr(info, "library_name", None),
        gated=str(gated) if gated else None,
        private=bool(getattr(info, "private", False)),
    )


@dataclass(frozen=True)
class RepoInfo:
    """A repo at one revision: the model card facts, the commit and every file with its size and hashes."""

    model: HubModel
    revision: str
    commit: str
    files: tuple[RepoFile, ...]
    parameters: int | None = None
    gguf: dict[str, Any] = field(default_factory=dict)
    """The Hub's GGUF summary (``total``, ``architecture``, ``context_length``), when it gives one."""

    def file(self, path: str) -> RepoFile | None:
        return next((f for f in self.files if f.path == path), None)


class HubClient:
    """One endpoint and token; HfApi for the API, a small httpx client for file bytes. Close it when done."""

    def __init__(
        self,
        settings: Settings,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        timeout: float = API_TIMEOUT_S,
    ) -> None:
        self.endpoint = (endpoint or settings.hub_endpoint).rstrip("/")
        self.token = token if token is not None else settings.hf_token
        self.timeout = timeout
        self._api: HfApi | None = None
        self._http: httpx.Client | None = None
        self._reachable = False

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    @property
    def api(self) -> HfApi:
        if self._api is None:
            from huggingface_hub import HfApi

            self._api = HfApi(endpoint=self.endpoint, token=self.token, library_name="influence")
        return self._api

    @property
    def token_given(self) -> bool:
        """A token will be sent: given, set in the environment, or saved by `hf auth login`."""
        if self.token:
            return True
        from huggingface_hub import get_token

        return bool(get_token())

    def headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        headers = dict(build_hf_headers(token=self.token, library_name="influence", library_version=__version__))
        headers["Accept-Encoding"] = "identity"  # sizes and byte ranges are of the stored bytes
        return headers

    def http(self) -> httpx.Client:
        """The client for small file reads (following redirects to the CDN; the token is dropped when the
        host changes)."""
        import httpx

        if self._http is None:
            self._http = httpx.Client(headers=self.headers(), follow_redirects=True, timeout=self.timeout)
        return self._http

    def errors(self, repo_id: str | None = None, revision: str | None = None) -> Any:
        return hub_errors(self.endpoint, repo_id, revision, token_given=bool(self.token))

    def check_reachable(self) -> None:
        """Fail at once when the endpoint does not answer: huggingface_hub retries list calls on network
        errors for ~20 s, far too long to say "no network". Any HTTP answer counts as reachable."""
        import httpx

        if self._reachable:
            return
        try:
            self.http().head(f"{self.endpoint}/api/models", params={"limit": "1"})
        except httpx.TransportError as exc:
            raise unreachable(self.endpoint, exc) from None
        self._reachable = True

    # -- API

    def search(
        self,
        query: str | None = None,
        *,
        author: str | None = None,
        limit: int = DEFAULT_LIMIT,
        sort: str = "downloads",
        filters: Sequence[str] = (),
    ) -> list[HubModel]:
        """Models matching ``query`` (a substring of the id), best first by ``sort`` (a key of :data:`SORTS`)."""
        if sort not in SORTS:
            raise HubError(f"unknown sort {sort!r}", hint=f"one of {', '.join(SORTS)}")
        if limit < 1:
            raise HubError("--limit must be at least 1")
        expand = [
            "author",
            "downloads",
            "likes",
            "lastModified",
            "createdAt",
            "tags",
            "pipeline_tag",
            "library_name",
            "gated",
            "private",
        ]
        self.check_reachable()
        with self.errors():
            found = self.api.list_models(
                search=query or None,
                author=author or None,
                filter=list(filters) or None,
                sort=SORTS[sort],
                limit=limit,
                expand=expand,
            )
            return [_hub_model(info) for info in found]

    def repo_info(self, repo_id: str, revision: str | None = None) -> RepoInfo:
        """The repo at ``revision`` (default: main) with every file's size and LFS sha256."""
        repo_id = repo_id.strip().strip("/")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise HubError(f"{repo_id!r} is not a repo id", hint="repo ids look like owner/name, e.g. Qwen/Qwen3-0.6B")
        with self.errors(repo_id, revision):
            info = self.api.model_info(repo_id, revision=revision, files_metadata=True, timeout=self.timeout)
            commit = info.sha or revision or "main"
            files: list[RepoFile] = []
            siblings = info.siblings or []
            if siblings and all(s.size is not None for s in siblings):
                for s in siblings:
                    lfs = s.lfs
                    files.append(
                        RepoFile(
                            path=s.rfilename, size=int(s.size), sha256=lfs.sha256 if lfs else None, blob_id=s.blob_id
                        )
                    )
            else:  # a mirror that does not give file metadata with the model info: ask for the tree
                for entry in self.api.list_repo_tree(repo_id, recursive=True, revision=commit):
                    if hasattr(entry, "size"):
                        lfs = entry.lfs
                        files.append(
                            RepoFile(
                                path=entry.path,
                                size=int(entry.size),
                                sha256=lfs.sha256 if lfs else None,
                                blob_id=entry.blob_id,
                            )
                        )
        safetensors = getattr(info, "safetensors", None)
        gguf = getattr(info, "gguf", None)
        parameters = None
        if safetensors is not None and getattr(safetensors, "total", None):
            parameters = int(safetensors.total)
        elif isinstance(gguf, dict) and isinstance(gguf.get("total"), int):
            parameters = int(gguf["total"])
        return RepoInfo(
            model=_hub_model(info),
            revision=revision or "main",
            commit=commit,
            files=tuple(sorted(files, key=lambda f: f.path)),
            parameters=parameters,
            gguf=gguf if isinstance(gguf, dict) else {},
        )

    # -- files

    def file_url(self, repo_id: str, path: str, revision: str) -> str:
        from huggingface_hub import hf_hub_url

        return str(hf_hub_url(repo_id, path, revision=revision, endpoint=self.endpoint))

    def get_bytes(self, repo_id: str, path: str, revision: str, *, limit: int | None = None) -> bytes:
        """A small file (or its first ``limit`` bytes) from the repo."""
        import httpx

        headers = {"Range": f"bytes=0-{limit - 1}"} if limit else {}
        chunks: list[bytes] = []
        got = 0
        try:
            with self.http().stream("GET", self.file_url(repo_id, path, revision), headers=headers) as response:
                if response.status_code >= 400:
                    raise http_error(
                        response,
                        repo_id=repo_id,
                        revision=revision,
                        path=path,
                        endpoint=self.endpoint,
                        token_given=bool(self.token),
                    )
                for chunk in response.iter_raw():
                    chunks.append(chunk)
                    got += len(chunk)
                    if limit and got >= limit:
                        break  # a server that ignores Range: stop reading anyway
        except httpx.TransportError as exc:
            raise unreachable(self.endpoint, exc) from None
        data = b"".join(chunks)
        return data[:limit] if limit else data

    def get_json(self, repo_id: str, path: str, revision: str) -> Any:
        raw = self.get_bytes(repo_id, path, revision)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise HubError(f"{repo_id}/{path} is not valid JSON") from None

    # -- description

    def safetensors_files(self, repo: RepoInfo) -> list[RepoFile]:
        """The safetensors weights a model loads: the shards of its index, or its single file."""
        shards: list[str] | None = None
        if repo.file(SAFETENSORS_INDEX):
            index = self.get_json(repo.model.id, SAFETENSORS_INDEX, repo.commit)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if isinstance(weight_map, dict):
                shards = sorted(set(map(str, weight_map.values())))
        return select_safetensors(repo.files, shards, repo.model.id)

    def details(
        self,
        repo_id: str,
        revision: str | None = None,
        *,
        context: int = DEFAULT_CONTEXT,
        machine: MachineMemory | None = None,
    ) -> HubModelDetails:
        """Files, formats, every download choice with a memory estimate and a fit verdict for this machine."""
        repo = self.repo_info(repo_id, revision)
        machine = machine or machine_memory()
        shape: dict[str, int] = {}
        architecture: str | None = repo.gguf.get("architecture") if repo.gguf else None
        context_length = repo.gguf.get("context_length") if repo.gguf else None
        if repo.file("config.json"):
            try:  # a gated repo without access still gets its file list and sizes described
                config = self.get_json(repo.model.id, "config.json", repo.commit)
            except GatedRepoError:
                config = None
            if isinstance(config, dict):
                shape = kv_shape_from_config(config)
                architecture = architecture or config.get("model_type")
                context_length = context_length or shape.get("context")
        groups = gguf_groups([f for f in repo.files if f.path.lower().endswith(".gguf")])
        if not shape and groups:
            first = min(groups.values(), key=lambda parts: sum(p.size for p in parts))[0]
            try:
                prefix = self.get_bytes(repo.model.id, first.path, repo.commit, limit=GGUF_PREFIX_BYTES)
                metadata = read_gguf_prefix_metadata(prefix)
                shape = kv_shape_from_gguf(metadata)
                architecture = architecture or metadata.get("general.architecture")
                context_length = context_length or shape.get("context")
            except (GatedRepoError, HubError, FormatError):
                shape = {}
        kv_context = min(context, context_length) if isinstance(context_length, int) and context_length > 0 else context
        choices: list[QuantChoice] = []
        weights: list[RepoFile] = []
        if any(f.path.endswith(".safetensors") for f in repo.files):
            try:
                weights = self.safetensors_files(repo)
            except GatedRepoError:  # the index cannot be read: count every top-level shard
                weights = select_safetensors(repo.files, None, repo.model.id)
        if weights:
            size = sum(f.size for f in weights)
            choices.append(
                QuantChoice(
                    name="safetensors",
                    kind="safetensors",
                    files=tuple(f.path for f in weights),
                    size_bytes=size,
                    memory=estimate_memory(size, shape, kv_context, machine, repo.parameters),
                )
            )
        gguf_choices = []
        for name, parts in groups.items():
            size = sum(p.size for p in parts)
            gguf_choices.append(
                QuantChoice(
                    name=name,
                    kind="gguf",
                    files=tuple(p.path for p in parts),
                    size_bytes=size,
                    memory=estimate_memory(size, shape, kv_context, machine, repo.parameters),
                )
            )
        choices.extend(sorted(gguf_choices, key=lambda c: (c.size_bytes, c.name)))
        formats = weight_formats(repo.files)
        return HubModelDetails(
            model=repo.model,
            revision=repo.revision,
            commit=repo.commit,
            files=repo.files,
            formats=tuple(formats),
            choices=tuple(choices),
            machine=machine,
            parameters=repo.parameters,
            context_length=context_length if isinstance(context_length, int) else None,
            architecture=str(architecture) if architecture else None,
        )


def model_details(settings: Settings, repo_id: str, revision: str | None = None, **kw: Any) -> HubModelDetails:
    """:meth:`HubClient.details` with the settings' endpoint and token."""
    with HubClient(settings) as client:
        return client.details(repo_id, revision, **kw)
