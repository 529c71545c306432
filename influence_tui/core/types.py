"""Frozen dataclasses shared by every front end (TUI, CLI, server)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ModelFormat = Literal["safetensors", "safetensors-sharded", "gguf", "gguf-split", "pytorch-bin", "unknown"]
ModelSource = Literal["models-dir", "hf-cache", "demo", "path"]

#: Formats the engine can load.
LOADABLE_FORMATS: frozenset[str] = frozenset({"safetensors", "safetensors-sharded", "gguf", "gguf-split"})

SOURCE_LABELS: dict[str, str] = {
    "models-dir": "models dir",
    "hf-cache": "HF cache",
    "demo": "demo",
    "path": "path",
}


@dataclass(frozen=True)
class LocalModel:
    """A model on disk, described from its headers and metadata files (weights are never loaded to list it)."""

    name: str
    """Stable name: ``owner/repo`` for hub models, the folder or file name otherwise; ``base:QUANT`` when a
    folder holds several GGUF files."""
    path: Path
    """The model folder, or the GGUF file itself for a loose GGUF."""
    source: ModelSource
    format: ModelFormat
    quantization: str | None = None
    """GGUF quantization type (from the header), or the dominant safetensors dtype."""
    architecture: str | None = None
    """``model_type`` from config.json, or ``general.architecture`` from a GGUF header."""
    architectures: tuple[str, ...] = ()
    """transformers class names from config.json (e.g. ``LlamaForCausalLM``)."""
    parameters: int | None = None
    context_length: int | None = None
    size_bytes: int = 0
    has_tokenizer: bool = False
    has_chat_template: bool = False
    complete: bool = True
    """False when a part of the weights (a shard, a GGUF split) is missing."""
    problems: tuple[str, ...] = ()
    """What is wrong with the model, one sentence each; empty when it can be loaded."""
    weight_files: tuple[Path, ...] = ()
    """The files holding the weights (every shard, every GGUF part)."""
    linked: bool = False
    """Imported with ``--link``: the models dir holds a link, the files stay where they were."""
    revision: str | None = None
    """Commit hash of an HF-cache snapshot."""

    @property
    def gguf_file(self) -> Path | None:
        """The (first) GGUF file, for loaders that take one."""
        if self.format in ("gguf", "gguf-split") and self.weight_files:
            return self.weight_files[0]
        return None

    @property
    def loadable(self) -> bool:
        return self.format in LOADABLE_FORMATS and self.complete and not self.problems

    @property
    def runtime(self) -> str | None:
        """``native`` (our own model code: the llama family, from GGUF or safetensors) or ``transformers``;
        None for weights Influence does not load (pickles, unknown files)."""
        if self.format not in LOADABLE_FORMATS:
            return None
        from influence_tui.core.runtimes import runtime_for

        return runtime_for(self.format, self.architecture)

    @property
    def format_label(self) -> str:
        """``GGUF/Q4_1``, ``safetensors/BF16``, ``safetensors (3 shards)/F16``..."""
        names = {
            "safetensors": "safetensors",
            "safetensors-sharded": f"safetensors×{len(self.weight_files)}",
            "gguf": "GGUF",
            "gguf-split": f"GGUF×{len(self.weight_files)}",
            "pytorch-bin": ".bin (unsupported)",
            "unknown": "unknown",
        }
        label = names[self.format]
        return f"{label}/{self.quantization}" if self.quantization else label

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``influence list --json``, the server's model lists)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "source": self.source,
            "format": self.format,
            "quantization": self.quantization,
            "architecture": self.architecture,
            "architectures": list(self.architectures),
            "parameters": self.parameters,
            "context_length": self.context_length,
            "size_bytes": self.size_bytes,
            "has_tokenizer": self.has_tokenizer,
            "has_chat_template": self.has_chat_template,
            "runtime": self.runtime,
            "complete": self.complete,
            "loadable": self.loadable,
            "problems": list(self.problems),
            "weight_files": [str(p) for p in self.weight_files],
            "linked": self.linked,
            "revision": self.revision,
        }


@dataclass(frozen=True)
class ImportResult:
    model: LocalModel
    copied_bytes: int
    linked: bool
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ generation

FinishReason = Literal["stop", "length", "cancelled", "error"]
Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model: built once from the settings (:meth:`from_settings`) by every front end and handed
    to the engine as it is."""

    device: str = "auto"
    """``auto`` (cuda, then mps, then cpu), ``cpu``, ``cuda`` or ``mps``."""
    device_index: int = 0
    dtype: str = "auto"
    """``auto``, ``float32``, ``bfloat16`` or ``float16`` (packed weights compute in float32 whatever it is)."""
    quantize: str = "auto"
    """``auto`` (a GGUF as stored), ``none`` (floats), ``int8`` / ``int4`` (safetensors quantized on load)."""
    cache_dir: Path | None = None
    """Where the self-check keeps its verdicts (None: the user cache dir)."""

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> LoadOptions:
        values = {
            "device": settings.device,
            "device_index": settings.device_index,
            "dtype": settings.dtype,
            "quantize": settings.quantize,
            "cache_dir": settings.cache_dir,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~influence_tui.core.engine.loader.load_model`."""
        return {
            "device": self.device,
            "device_index": self.device_index,
            "dtype": self.dtype,
            "quantize": self.quantize,
            "cache_dir": self.cache_dir,
        }


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. Defaults match the settings' defaults; ``None`` switches a filter off."""

    temperature: float = 0.7
    """0 means greedy decoding."""
    top_p: float = 0.9
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float = 1.1
    """1.0 means off. Divides positive and multiplies negative logits of tokens already in the context."""
    repeat_last_n: int = 64
    """How many recent tokens the repetition penalty looks at (0: the whole context)."""
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()
    """Stop strings: generation ends before the first one (it is never emitted)."""
    grammar: Grammar | None = None
    """Constrained output: only text of this grammar can be generated (see ``core.engine.constrain``)."""
    logprobs: int | None = None
    """None: no log probabilities; N (0 to 20): each token's, with the N most likely alternatives."""

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> SamplingParams:
        values = {
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "top_k": settings.top_k,
            "min_p": settings.min_p,
            "repeat_penalty": settings.repeat_penalty,
            "max_tokens": settings.max_tokens,
            "seed": settings.seed,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "stop" in values:
            values["stop"] = tuple(values["stop"])
        return cls(**values)


@dataclass(frozen=True)
class Grammar:
    """A checked llguidance grammar document (JSON text); build one with ``core.engine.constrain``."""

    document: str
    kind: str
    """``json_object``, ``json_schema``, ``lark`` or ``regex``."""


@dataclass(frozen=True)
class GenerationStats:
    """Figures for one request."""

    prompt_tokens: int
    generated_tokens: int
    time_to_first_token_s: float
    """From the request starting (prefill included) to the first token being sampled."""
    decode_tokens_per_s: float
    """Generated tokens after the first, per second of decoding."""
    total_s: float
    finish_reason: FinishReason
    prompt_tokens_per_s: float = 0.0
    load_s: float = 0.0
    """Seconds spent loading the model for this request (0 when it was already loaded)."""
    cached_prompt_tokens: int = 0
    """Leading prompt tokens whose KV cache was reused from an earlier request (not prefilled again)."""


@dataclass(frozen=True)
class TokenEvent:
    """One step of a token stream: a piece of text (possibly empty), and on the last event, the stats."""

    text: str
    token_id: int | None = None
    stats: GenerationStats | None = None
    """Set on the final event only."""
    logprob: float | None = None
    """The token's log probability under the model (when the request asked for logprobs)."""
    top_logprobs: tuple[tuple[int, float], ...] = ()
    """The most likely tokens at this step and their log probabilities, most likely first."""

    @property
    def done(self) -> bool:
        return self.stats is not None


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str
    timestamp: str = ""
    """ISO 8601, UTC."""


@dataclass(frozen=True)
class LoadedModelInfo:
    """What the engine chose when loading a model, for the CLI, the TUI and the server to show."""

    name: str
    path: Path
    device: str
    dtype: str
    load_s: float
    context_length: int
    parameters: int
    architecture: str
    has_chat_template: bool
    eos_token_ids: tuple[int, ...] = ()
    quantization: str = ""
    """How the weights are kept in memory when not plain ``dtype`` floats: ``Q4_1 kept 4-bit``, ``int8``..."""
    runtime: str = "transformers"
    """``native`` (our own model code) or ``transformers``."""


# ------------------------------------------------------------------------------------------ hub, downloads

Verdict = Literal["fits", "tight", "won't fit"]
DownloadState = Literal["queued", "downloading", "verifying", "retrying", "done", "cached", "failed", "cancelled"]


@dataclass(frozen=True)
class HubModel:
    """One model repo on the Hub, as a search lists it."""

    id: str
    """``owner/name``."""
    author: str | None = None
    downloads: int | None = None
    """Downloads over the last 30 days."""
    likes: int | None = None
    updated: str | None = None
    """Last commit, ISO 8601 (UTC)."""
    created: str | None = None
    tags: tuple[str, ...] = ()
    pipeline_tag: str | None = None
    library_name: str | None = None
    gated: str | None = None
    """``"auto"`` or ``"manual"`` when the license must be accepted first; None when open."""
    private: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "author": self.author,
            "downloads": self.downloads,
            "likes": self.likes,
            "updated": self.updated,
            "created": self.created,
            "tags": list(self.tags),
            "pipeline_tag": self.pipeline_tag,
            "library_name": self.library_name,
            "gated": self.gated,
            "private": self.private,
        }


@dataclass(frozen=True)
class RepoFile:
    """One file of a Hub repo, with what is needed to fetch and check it."""

    path: str
    """Path inside the repo (``/``-separated)."""
    size: int
    sha256: str | None = None
    """sha256 of the content, for files stored with Git LFS (all weights); None for small git files."""
    blob_id: str | None = None
    """Git object id (sha1 of ``blob <size>\\0<content>`` for a git file; of the LFS pointer for an LFS file)."""

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "blob_id": self.blob_id}


@dataclass(frozen=True)
class MachineMemory:
    """Memory free on this machine now (RAM always; VRAM when a CUDA GPU is visible to torch)."""

    ram_total: int
    ram_available: int
    vram_total: int | None = None
    vram_free: int | None = None
    gpu_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ram_total": self.ram_total,
            "ram_available": self.ram_available,
            "vram_total": self.vram_total,
            "vram_free": self.vram_free,
            "gpu_name": self.gpu_name,
        }


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory one download choice needs to run (weights + KV cache at ``context`` tokens + runtime overhead)."""

    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    context: int
    device: Literal["cuda", "cpu"]
    """Where it would run: the GPU when it fits there, else the CPU."""
    available_bytes: int
    """Free VRAM (device cuda) or available RAM (device cpu)."""
    verdict: Verdict
    kv_cache_exact: bool = True
    """False when the model's shape was unknown and the KV cache was estimated from its size."""

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights_bytes": self.weights_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "overhead_bytes": self.overhead_bytes,
            "total_bytes": self.total_bytes,
            "context": self.context,
            "device": self.device,
            "available_bytes": self.available_bytes,
            "verdict": self.verdict,
            "kv_cache_exact": self.kv_cache_exact,
        }


@dataclass(frozen=True)
class QuantChoice:
    """One thing a user can download to run a repo: its safetensors weights, or one GGUF quantization."""

    name: str
    """``safetensors`` or the quantization (``Q4_K_M``, ``Q8_0``, ``F16``...), as ``--quant`` takes it."""
    kind: Literal["safetensors", "gguf"]
    files: tuple[str, ...]
    """The weight files (every shard, every part of a split GGUF)."""
    size_bytes: int
    memory: MemoryEstimate | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "files": list(self.files),
            "size_bytes": self.size_bytes,
            "memory": self.memory.to_dict() if self.memory else None,
        }


@dataclass(frozen=True)
class HubModelDetails:
    """Everything `influence info` shows about a repo at one revision."""

    model: HubModel
    revision: str
    commit: str | None
    files: tuple[RepoFile, ...]
    formats: tuple[str, ...]
    """Weight formats offered: ``safetensors``, ``gguf``, ``pytorch-bin``, ``onnx``..."""
    choices: tuple[QuantChoice, ...]
    machine: MachineMemory
    parameters: int | None = None
    context_length: int | None = None
    architecture: str | None = None

    def choice(self, name: str) -> QuantChoice | None:
        folded = [c for c in self.choices if c.name.lower() == name.lower()]
        return folded[0] if folded else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.model.to_dict(),
            "revision": self.revision,
            "commit": self.commit,
            "files": [f.to_dict() for f in self.files],
            "formats": list(self.formats),
            "parameters": self.parameters,
            "context_length": self.context_length,
            "architecture": self.architecture,
            "choices": [c.to_dict() for c in self.choices],
            "machine": self.machine.to_dict(),
        }


@dataclass(frozen=True)
class DownloadFile:
    """One file a download will fetch: where it comes from, where it goes, what it must hash to."""

    repo_path: str
    local_path: str
    """Path inside the model folder (``/``-separated); GGUF files lose any repo subfolder."""
    size: int
    sha256: str | None = None
    """Expected sha256 (LFS files). Git files are checked against ``blob_id`` instead."""
    blob_id: str | None = None


@dataclass(frozen=True)
class DownloadPlan:
    """What a download will fetch, decided before any byte of a weight file is fetched."""

    repo_id: str
    revision: str
    commit: str
    folder: Path
    """The model folder: ``<models dir>/<owner>__<name>``."""
    files: tuple[DownloadFile, ...]
    endpoint: str
    quant: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class FileProgress:
    """One file of a running download."""

    path: str
    size: int
    done: int = 0
    """Bytes on disk (resumed bytes included)."""
    state: DownloadState = "queued"
    speed: float = 0.0
    """Bytes per second over the last few seconds."""
    attempt: int = 0
    """Retries so far."""
    message: str | None = None
    """Why the file is retrying or failed."""
    elapsed_s: float = 0.0
    """Seconds since this file started downloading in this run."""


@dataclass(frozen=True)
class DownloadProgress:
    """A snapshot of a download, delivered to progress callbacks (at most ~10 times a second per file)."""

    repo_id: str
    files: tuple[FileProgress, ...]
    state: DownloadState
    done_bytes: int
    total_bytes: int
    fetched_bytes: int
    """Bytes received over the network in this run (resumed and cached bytes excluded)."""
    speed: float
    """Bytes per second over the last few seconds."""
    eta_s: float | None
    elapsed_s: float
    changed: str | None = None
    """The file this event is about (None for whole-download events)."""

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 1.0


@dataclass(frozen=True)
class DownloadResult:
    repo_id: str
    revision: str
    commit: str
    folder: Path
    files: tuple[str, ...]
    """Local paths of the files the plan named (all present and verified now)."""
    fetched_bytes: int
    """Bytes received over the network in this run."""
    reused_bytes: int
    """Bytes already on disk: complete files from an earlier run, and resumed partial files."""
    elapsed_s: float
    model_name: str | None = None
    """The model's name in the library (``owner/name``, or ``owner/name:QUANT`` beside other GGUFs)."""


@dataclass(frozen=True)
class FileCheck:
    """One file of `influence verify`."""

    path: str
    ok: bool
    problem: str | None = None
