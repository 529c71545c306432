"""Text embeddings: one unit-length vector per text.

From an encoder (the BERT family, as sentence-transformers lays it out: ``1_Pooling/config.json`` says how to
pool, ``sentence_bert_config.json`` the longest input) or from a causal LM (the mean of its last hidden
states). Pooling follows the attention mask, so padding never changes a text's vector; every vector is L2
normalised, so a dot product is a cosine similarity.

Models load with ``trust_remote_code=False`` and from safetensors or GGUF only, with the same refusals as
chat models (:func:`~influence_tui.core.engine.loader.check_loadable`). An :class:`Embedder` is used from one
thread at a time; where an :class:`~influence_tui.core.engine.runner.EngineRunner` owns torch, run it there
(``runner.run(lambda: embedder.embed(texts))``).
"""

from __future__ import annotations

import copy
import inspect
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from influence_tui.core.engine import hf, loader
from influence_tui.core.errors import InfluenceError, ModelFormatError
from influence_tui.core.fsutil import read_json_object
from influence_tui.core.types import LocalModel

Pooling = Literal["mean", "cls", "lasttoken"]

_MAX_REASONABLE_LENGTH = 1_000_000
"""Tokenizers without a limit report ``model_max_length`` as a huge number; anything above this is "unset"."""
DEFAULT_MAX_LENGTH = 512


def sentence_transformers_pooling(folder: Path) -> Pooling | None:
    """The pooling a sentence-transformers folder asks for (``1_Pooling/config.json``), or None if it says none."""
    pooling_dir = folder / "1_Pooling"
    for module in _read_json_list(folder / "modules.json"):
        if str(module.get("type", "")).endswith("Pooling") and module.get("path"):
            pooling_dir = folder / str(module["path"])
    config = read_json_object(pooling_dir / "config.json")
    if not config:
        return None
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_lasttoken"):
        return "lasttoken"
    return "mean"


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def _max_length(tokenizer: Any, config: Any, folder: Path | None) -> int:
    limits: list[int] = []
    if folder is not None:
        declared = read_json_object(folder / "sentence_bert_config.json").get("max_seq_length")
        if isinstance(declared, int) and declared > 0:
            limits.append(declared)
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < _MAX_REASONABLE_LENGTH:
        limits.append(model_max)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    return min(limits) if limits else DEFAULT_MAX_LENGTH


class Embedder:
    """A model that turns texts into unit vectors. Build it with :meth:`load` or :meth:`from_loaded`."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        device: torch.device,
        pooling: Pooling = "mean",
        max_length: int = DEFAULT_MAX_LENGTH,
        load_s: float = 0.0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.pooling: Pooling = pooling
        self.max_length = max_length
        self.load_s = load_s
        accepted = inspect.signature(model.forward).parameters
        self._inputs = {"input_ids", "attention_mask", "token_type_ids"} & set(accepted)
        self._extra: dict[str, Any] = {"use_cache": False} if "use_cache" in accepted else {}
        hidden = getattr(model.config, "hidden_size", None)
        self._dimensions: int | None = hidden if isinstance(hidden, int) else None

    # -- building

    @classmethod
    def load(
        cls, local_model: LocalModel, *, device: str = "auto", device_index: int = 0, dtype: str = "auto"
    ) -> Embedder:
        """Load an encoder or a causal LM for embeddings. ``dtype="auto"`` is float32 on CPU (embedding models
        are small and their vectors are compared to a few decimals) and the loader's choice on a GPU."""
        loader.check_loadable(local_model)
        torch_device = loader.resolve_device(device, device_index)
        torch_dtype = torch.float32 if dtype == "auto" and torch_device.type == "cpu" else None
        if torch_dtype is None:
            torch_dtype = loader.resolve_dtype(dtype, torch_device)
        if local_model.gguf_file is not None:
            loaded = loader.load_model(
                local_model, device=device, device_index=device_index, dtype=loader.dtype_name(torch_dtype)
            )
            return cls.from_loaded(loaded)
        from transformers import AutoModel, AutoTokenizer

        start = time.perf_counter()
        location, kwargs = hf.source_args(local_model)
        try:
            with hf.quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
                model = AutoModel.from_pretrained(
                    location, **kwargs, dtype=torch_dtype, device_map={"": torch_device}, use_safetensors=True
                )
        except InfluenceError:
            raise
        except Exception as exc:
            if loader.is_out_of_memory(exc):
                loader.release_memory(torch_device)
                raise loader.out_of_memory_error(local_model, torch_device, torch_dtype) from exc
            if isinstance(exc, ValueError | KeyError | OSError | TypeError):
                arch = local_model.architecture or "unknown"
                raise ModelFormatError(
                    f"{local_model.name} (model_type {arch!r}) cannot be loaded for embeddings: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__}"
                ) from exc
            raise
        model.eval()
        model.requires_grad_(False)
        folder = local_model.path
        pooling = sentence_transformers_pooling(folder) or "mean"
        return cls(
            model,
            _padding_tokenizer(tokenizer),
            name=local_model.name,
            device=torch_device,
            pooling=pooling,
            max_length=_max_length(tokenizer, model.config, folder),
            load_s=time.perf_counter() - start,
        )

    @classmethod
    def from_loaded(cls, loaded: loader.LoadedModel) -> Embedder:
        """Embeddings from a causal LM already loaded for chat: the mean of its last hidden states (the
        decoder without its LM head; the model's memory is shared, not copied)."""
        if not loaded.loaded:
            raise InfluenceError(f"{loaded.info.name} has been unloaded")
        base = getattr(loaded.model, "base_model", None) or loaded.model
        return cls(
            base,
            _padding_tokenizer(copy.deepcopy(loaded.tokenizer)),
            name=loaded.info.name,
            device=loaded.torch_device,
            pooling="mean",
            max_length=min(loaded.info.context_length, _max_length(loaded.tokenizer, loaded.model.config, None)),
            load_s=loaded.info.load_s,
        )

    # -- using

    @property
    def dimensions(self) -> int:
        """The length of every vector."""
        if self._dimensions is None:
            self._dimensions = len(self.embed(["dimensions"])[0])
        return self._dimensions

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> list[list[float]]:
        """One unit vector per text, in order. Texts longer than the model's limit are truncated."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        vectors: list[list[float]] = []
        for start in range(0, len(texts), batch_size):
            vectors.extend(self._embed_batch(list(texts[start : start + batch_size])))
        return vectors

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the model reads for ``texts`` (each cut to the model's limit, as :meth:`embed` cuts it)."""
        if hasattr(self.model, "last_hidden_state"):  # a native chat model: one text at a time
            return sum(len(self._native_ids(text)) for text in texts)
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return sum(len(ids) for ids in encoded)

    def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        if hasattr(self.model, "last_hidden_state"):
            return [self._embed_native(text) for text in texts]
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        inputs = {key: value.to(self.device) for key, value in batch.items() if key in self._inputs}
        mask = batch["attention_mask"].to(self.device)
        with torch.inference_mode():
            output = self.model(**inputs, **self._extra)
            hidden = output.last_hidden_state.float()
            pooled = pool(hidden, mask, self.pooling)
            unit = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        result: list[list[float]] = unit.cpu().tolist()
        return result

    def _embed_native(self, text: str) -> list[float]:
        """One text through a native chat model (which takes no padded batches): the mean of its last hidden
        states."""
        ids = self._native_ids(text) or [0]
        with torch.inference_mode():
            hidden = self.model.last_hidden_state(torch.tensor([ids], device=self.device)).float()
            unit = torch.nn.functional.normalize(hidden.mean(dim=1), p=2, dim=-1)
        vector: list[float] = unit[0].cpu().tolist()
        return vector

    def _native_ids(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=True)][: self.max_length]

    def unload(self) -> None:
        """Drop the model (if it was shared with a chat model, that one stays loaded)."""
        self.model = None
        self.tokenizer = None
        loader.release_memory(self.device)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: Pooling = "mean") -> torch.Tensor:
    """(batch, tokens, dim) hidden states and a (batch, tokens) attention mask -> (batch, dim)."""
    if how == "cls":
        return hidden[:, 0]
    if how == "lasttoken":
        last = (mask.sum(dim=1) - 1).clamp(min=0)  # right padding: the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _padding_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer set to pad on the right (a causal LM's often has no pad token: its eos stands in)."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelFormatError("the tokenizer has neither a pad nor an eos token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
