"""Search the HuggingFace Hub (or a mirror) and describe a repo: its files, its weight formats, every GGUF
quantization as a separate choice, and whether each choice fits in this machine's memory.

The API calls go through ``huggingface_hub.HfApi``; the few small files read to describe a repo
(``config.json``, a safetensors index, the first bytes of a GGUF) are fetched with ``httpx`` from the same
resolve URLs a download uses. Every failure a user can cause or fix becomes a :class:`HubError`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from influence_tui import __version__
from influence_tui.core.errors import GatedRepoError, HubError, HubUnreachableError, InfluenceError
from influence_tui.core.types import (
    HubModel,
    HubModelDetails,
    MachineMemory,
    MemoryEstimate,
    QuantChoice,
    RepoFile,
    Verdict,
)

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
DEFAULT_CONTEXT = 4096
"""Context (tokens) the memory estimate sizes the KV cache for."""
KV_BYTES_PER_VALUE = 2
"""The KV cache is kept in 16-bit floats."""
OVERHEAD_FIXED = 256 * 2**20
"""Runtime memory beside weights and KV cache (interpreter, torch, activations)..."""
OVERHEAD_FRACTION = 0.05
"""...plus this share of the weights."""
FITS_SHARE = 0.8
"""A choice *fits* when it needs at most this share of the free memory, is *tight* up to all of it."""
API_TIMEOUT_S = 10.0

SAFETENSORS_INDEX = "model.safetensors.index.json"
_SPLIT_GGUF = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)
_QUANT = re.compile(
    r"(?:^|[-._])((?:I?Q|TQ)\d+(?:_[0-9A-Z]+)*|BF16|FP?16|FP?32|MXFP4(?:_MOE)?)(?=$|[-._])", re.IGNORECASE
)
_FORMAT_SUFFIXES = {
    ".safetensors": "safetensors",
    ".gguf": "gguf",
    ".bin": "pytorch-bin",
    ".pt": "pytorch-bin",
    ".pth": "pytorch-bin",
    ".onnx": "onnx",
    ".h5": "tensorflow",
    ".msgpack": "flax",
}


# ------------------------------------------------------------------------------------------ errors


def _network_error(exc: BaseException) -> bool:
    """A failure to reach the server at all (refused, DNS, timeout, reset), whichever HTTP library raised it."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names & {"TransportError", "NetworkError", "TimeoutException", "ConnectError", "ConnectionError", "Timeout"}
    ) or isinstance(exc, OSError)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = re.search(r"\[Errno -?\d+\] ([^\]\)']+)", text)
    if match:
        text = match.group(1)
    return text[:120].rstrip(". ").lower()


def unreachable(endpoint: str, exc: BaseException) -> HubUnreachableError:
    return HubUnreachableError(
        f"cannot reach the Hub at {endpoint}: {_reason(exc)}",
        hint="check the network connection; a mirror can be set with --mirror URL or INFLUENCE_MIRROR",
    )


def gated_error(repo_id: str, endpoint: str, token_given: bool) -> GatedRepoError:
    url = f"{endpoint}/{repo_id}"
    if token_given:
        return GatedRepoError(
            f"{repo_id} is gated and this token has no access to it yet",
            hint=f"accept its license at {url} with the account the token belongs to, then retry",
        )
    return GatedRepoError(
        f"{repo_id} is gated: accept its license at {url}, then set HF_TOKEN (or pass --token) to a token of that account",
        hint="tokens: https://huggingface.co/settings/tokens",
    )


def not_found(repo_id: str, endpoint: str) -> HubError:
    return HubError(
        f"no model repo {repo_id!r} on {endpoint}",
        hint="check the name with `influence search`; a private repo needs HF_TOKEN or --token",
    )


def revision_not_found(repo_id: str, revision: str | None) -> HubError:
    return HubError(f"{repo_id} has no revision {revision!r}", hint="give a branch, a tag or a commit with --revision")


def http_error(
    response: httpx.Response, *, repo_id: str, revision: str | None, path: str | None, endpoint: str, token_given: bool
) -> HubError:
    """The :class:`HubError` for a failed resolve request (the Hub's ``X-Error-Code`` says which)."""
    code = response.headers.get("X-Error-Code", "")
    status = response.status_code
    if code == "GatedRepo":
        return gated_error(repo_id, endpoint, token_given)
    if code == "RevisionNotFound":
        return revision_not_found(repo_id, revision)
    if code == "EntryNotFound" or (status == 404 and path and code != "RepoNotFound"):
        return HubError(f"{repo_id} has no file {path!r} at revision {revision or 'main'}")
    if code == "RepoNotFound" or status == 404:
        return not_found(repo_id, endpoint)
    if status in (401, 403):
        what = "rejected the token" if token_given else "refused access"
        return HubError(f"{endpoint} {what} for {repo_id} (HTTP {status})", hint="check HF_TOKEN / --token")
    message = response.headers.get("X-Error-Message") or response.reason_phrase
    return HubError(f"{endpoint} answered HTTP {status} ({message}) for {repo_id}" + (f"/{path}" if path else ""))


@contextmanager
def hub_errors(
    endpoint: str, repo_id: str | None = None, revision: str | None = None, token_given: bool = False
) -> Iterator[None]:
    """Turn huggingface_hub's and httpx's exceptions into :class:`HubError` s with a message a user can act on."""
    from huggingface_hub import errors as hf

    entry_not_found = tuple(
        cls for cls in (getattr(hf, "RemoteEntryNotFoundError", None), getattr(hf, "EntryNotFoundError", None)) if cls
    )
    repo = repo_id or "?"
    try:
        yield
    except InfluenceError:
        raise
    except hf.OfflineModeIsEnabled:
        raise HubUnreachableError(
            "offline mode is on (HF_HUB_OFFLINE is set), so the Hub is not contacted",
            hint="unset HF_HUB_OFFLINE to search and download",
        ) from None
    except hf.GatedRepoError:
        raise gated_error(repo, endpoint, token_given) from None
    except hf.RevisionNotFoundError:
        raise revision_not_found(repo, revision) from None
    except entry_not_found as exc:
        raise HubError(f"{repo}: {str(exc).splitlines()[0]}") from None
    except hf.RepositoryNotFoundError:
        raise not_found(repo, endpoint) from None
    except hf.HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        raise HubError(f"{endpoint} answered HTTP {status} for {repo}: {str(exc).strip().splitlines()[0]}") from None
    except Exception as exc:
        if _network_error(exc):
            raise unreachable(endpoint, exc) from None
        raise


# ------------------------------------------------------------------------------------------ the client


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
                metadata = gguf_prefix_metadata(prefix)
                shape = kv_shape_from_gguf(metadata)
                architecture = architecture or metadata.get("general.architecture")
                context_length = context_length or shape.get("context")
            except (GatedRepoError, HubError):
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
        formats = sorted({_FORMAT_SUFFIXES[s] for f in repo.files if (s := _suffix(f.path)) in _FORMAT_SUFFIXES})
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


def search_models(settings: Settings, query: str | None = None, **kw: Any) -> list[HubModel]:
    """:meth:`HubClient.search` with the settings' endpoint and token."""
    with HubClient(settings) as client:
        return client.search(query, **kw)


def model_details(settings: Settings, repo_id: str, revision: str | None = None, **kw: Any) -> HubModelDetails:
    """:meth:`HubClient.details` with the settings' endpoint and token."""
    with HubClient(settings) as client:
        return client.details(repo_id, revision, **kw)


# ------------------------------------------------------------------------------------------ choosing files


def _suffix(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def select_safetensors(files: Sequence[RepoFile], shards: Sequence[str] | None, repo_id: str = "") -> list[RepoFile]:
    """The safetensors set to load: the index's shards, else ``model.safetensors``, else the top-level files
    (``consolidated.*`` Mistral-format copies only when nothing else is there)."""
    top = {f.path: f for f in files if "/" not in f.path and f.path.endswith(".safetensors")}
    if shards:
        missing = [s for s in shards if s not in top]
        if missing:
            raise HubError(
                f"{repo_id}: {SAFETENSORS_INDEX} names shards the repo does not have: {', '.join(missing[:5])}"
            )
        return [top[s] for s in shards]
    if "model.safetensors" in top:
        return [top["model.safetensors"]]
    plain = [f for name, f in sorted(top.items()) if not name.startswith("consolidated")]
    return plain or [f for _, f in sorted(top.items())]


def gguf_quant_name(filename: str) -> str | None:
    """The quantization a GGUF file name announces (``Q4_K_M``, ``IQ2_XS``, ``F16``...), or None."""
    name = filename.rsplit("/", 1)[-1]
    split = _SPLIT_GGUF.match(name)
    stem = split["stem"] if split else name[: -len(".gguf")] if name.lower().endswith(".gguf") else name
    matches = list(_QUANT.finditer(stem))
    if not matches:
        return None
    quant = matches[-1].group(1).upper()
    return {"FP16": "F16", "FP32": "F32"}.get(quant, quant)


def gguf_groups(files: Sequence[RepoFile]) -> dict[str, list[RepoFile]]:
    """GGUF files grouped into download choices, named by quantization; the parts of a split GGUF form one
    choice. Vision projectors (``mmproj*``) are not a choice of their own."""
    groups: dict[tuple[str, str], list[RepoFile]] = {}
    for f in sorted(files, key=lambda f: f.path):
        folder, _, name = f.path.rpartition("/")
        if not name.lower().endswith(".gguf") or "mmproj" in name.lower():
            continue
        split = _SPLIT_GGUF.match(name)
        key = (folder, f"{split['stem']}-of-{split['total']}" if split else name)
        groups.setdefault(key, []).append(f)
    named: dict[str, list[RepoFile]] = {}
    labels = {key: gguf_quant_name(parts[0].path) for key, parts in groups.items()}
    counts: dict[str | None, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    for key, parts in groups.items():
        label = labels[key]
        if label is None or counts[label] > 1:
            first = parts[0].path.rsplit("/", 1)[-1]
            split = _SPLIT_GGUF.match(first)
            label = split["stem"] if split else first[: -len(".gguf")]
            if label in named:
                label = parts[0].path[: -len(".gguf")]
        named[label] = parts
    return named


# ------------------------------------------------------------------------------------------ memory

GGUF_PREFIX_BYTES = 1 << 20
"""How much of a GGUF file `influence info` reads to learn the model's shape (the metadata comes first)."""


def machine_memory(*, probe_gpu: bool = True, device_index: int = 0) -> MachineMemory:
    """Free RAM (psutil) and, when a CUDA GPU is visible, free VRAM. torch is asked only when it is already
    imported or an NVIDIA driver is present, so describing a model on a CPU machine never loads torch."""
    import psutil

    vm = psutil.virtual_memory()
    vram_total = vram_free = None
    gpu_name = None
    nvidia = os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None
    if "torch" in sys.modules or (probe_gpu and nvidia):
        try:
            import torch

            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info(device_index)
                vram_free, vram_total = int(free), int(total)
                gpu_name = str(torch.cuda.get_device_name(device_index))
        except Exception:  # no usable GPU is not an error here
            vram_total = vram_free = None
    return MachineMemory(
        ram_total=int(vm.total),
        ram_available=int(vm.available),
        vram_total=vram_total,
        vram_free=vram_free,
        gpu_name=gpu_name,
    )


def kv_shape_from_config(config: dict[str, Any]) -> dict[str, int]:
    """``layers``, ``kv_heads``, ``head_dim`` (and ``context``) from a transformers config.json."""
    scope = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    assert isinstance(scope, dict)

    def first(*keys: str) -> int | None:
        for key in keys:
            value = scope.get(key, config.get(key))
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    layers = first("num_hidden_layers", "n_layer", "num_layers", "n_layers")
    heads = first("num_attention_heads", "n_head", "num_heads")
    kv_heads = first("num_key_value_heads", "num_kv_heads", "n_head_kv") or heads
    hidden = first("hidden_size", "n_embd", "d_model")
    head_dim = first("head_dim") or (hidden // heads if hidden and heads else None)
    shape: dict[str, int] = {}
    if layers and kv_heads and head_dim:
        shape = {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim}
    context = first("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")
    if context:
        shape["context"] = context
    return shape


def kv_shape_from_gguf(metadata: dict[str, Any]) -> dict[str, int]:
    """The same shape from GGUF metadata (``<arch>.block_count``, ``<arch>.attention.head_count_kv``...)."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        return {}

    def get(key: str) -> int | None:
        value = metadata.get(f"{arch}.{key}")
        if isinstance(value, list):  # per-layer values (some architectures): take the largest
            value = max((v for v in value if isinstance(v, int)), default=None)
        return value if isinstance(value, int) and value > 0 else None

    layers = get("block_count")
    heads = get("attention.head_count")
    kv_heads = get("attention.head_count_kv") or heads
    hidden = get("embedding_length")
    head_dim = get("attention.key_length") or (hidden // heads if hidden and heads else None)
    shape: dict[str, int] = {}
    if layers and kv_heads and head_dim:
        shape = {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim}
    context = get("context_length")
    if context:
        shape["context"] = context
    return shape


def kv_cache_bytes(shape: dict[str, int], context: int) -> int:
    """Keys and values for ``context`` tokens in every layer, 16-bit."""
    return 2 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * context * KV_BYTES_PER_VALUE


def verdict(needed: int, available: int) -> Verdict:
    if needed <= FITS_SHARE * available:
        return "fits"
    if needed <= available:
        return "tight"
    return "won't fit"


def estimate_memory(
    weights_bytes: int,
    shape: dict[str, int],
    context: int,
    machine: MachineMemory,
    parameters: int | None = None,
) -> MemoryEstimate:
    """Weights + KV cache at ``context`` tokens + runtime overhead, on the GPU when it fits there, else the CPU.

    Without the model's shape the KV cache is estimated at 2.5e-5 bytes per parameter per token (the middle of
    current GQA models, 0.5B to 8B), parameters being counted or guessed from 16-bit weights."""
    exact = {"layers", "kv_heads", "head_dim"} <= shape.keys()
    if exact:
        kv = kv_cache_bytes(shape, context)
    else:
        params = parameters or weights_bytes // 2
        kv = int(2.5e-5 * params * context)
    overhead = OVERHEAD_FIXED + int(OVERHEAD_FRACTION * weights_bytes)
    needed = weights_bytes + kv + overhead
    if machine.vram_free is not None:
        on_gpu = verdict(needed, machine.vram_free)
        if on_gpu != "won't fit":
            return MemoryEstimate(weights_bytes, kv, overhead, context, "cuda", machine.vram_free, on_gpu, exact)
    return MemoryEstimate(
        weights_bytes,
        kv,
        overhead,
        context,
        "cpu",
        machine.ram_available,
        verdict(needed, machine.ram_available),
        exact,
    )


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_prefix_metadata(buf: bytes) -> dict[str, Any]:
    """The metadata found in the first bytes of a GGUF file: scalars and strings up to where ``buf`` ends
    (arrays are stepped over). Never raises on a truncated buffer; raises HubError on a file that is not GGUF."""
    if buf[:4] != b"GGUF" or len(buf) < 24:
        raise HubError("not a GGUF file")
    pos = 24  # magic, version, tensor count, kv count
    (kv_count,) = struct.unpack_from("<Q", buf, 16)
    found: dict[str, Any] = {}

    def string(at: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", buf, at)
        end = at + 8 + length
        if end > len(buf):
            raise IndexError
        return buf[at + 8 : end].decode("utf-8", errors="replace"), end

    try:
        for _ in range(kv_count):
            key, pos = string(pos)
            (vtype,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            if vtype == _GGUF_STRING:
                found[key], pos = string(pos)
            elif vtype == _GGUF_ARRAY:
                item_type, count = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                if item_type == _GGUF_STRING:
                    for _ in range(count):
                        _, pos = string(pos)
                elif item_type in _GGUF_SCALARS:
                    fmt = _GGUF_SCALARS[item_type]
                    width = struct.calcsize(fmt)
                    if count <= 4096 and pos + width * count <= len(buf):
                        found[key] = list(struct.unpack_from(f"<{count}{fmt[1]}", buf, pos))
                    pos += width * count
                else:
                    break  # nested arrays: nothing we need lies past them
            elif vtype in _GGUF_SCALARS:
                fmt = _GGUF_SCALARS[vtype]
                (found[key],) = struct.unpack_from(fmt, buf, pos)
                pos += struct.calcsize(fmt)
            else:
                break
            if pos > len(buf):
                break
    except (IndexError, struct.error):
        pass
    return found
