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


@dataclass(frozen=True)
class TokenEvent:
    """One step of a token stream: a piece of text (possibly empty), and on the last event, the stats."""

    text: str
    token_id: int | None = None
    stats: GenerationStats | None = None
    """Set on the final event only."""

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
