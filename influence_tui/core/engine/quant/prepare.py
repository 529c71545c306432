"""Prepared models: packed weights built once from a GGUF or safetensors model, cached for fast loads.

The first load of a model in a packed form reads it the slow way (transformers' GGUF metadata parser and
tokenizer conversion, or float safetensors quantized on load) and writes what it built to
``<cache dir>/prepared/<key>/``: ``config.json``, the tokenizer files and ``weights.safetensors`` with every
packed matrix (``<name>.qweight`` / ``.scales`` / ``.mins``) and float tensor, described by ``packed.json``.
Later loads memory-map that file and build the model around it in well under a second.

The key covers the weight files' identity (path, size, modification time), the quantization asked for and
:data:`PREPARED_VERSION`, so a changed file or a new packing format is prepared again, never read stale.
A half-written folder is never used: it is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from influence_tui.core.engine.quant.fused import fuse_model
from influence_tui.core.engine.quant.modules import build_packed_model, packed_state, quantize_model_weights
from influence_tui.core.engine.quant.packed import KINDS, PackedWeight
from influence_tui.core.engine.selfcheck import files_identity, library_versions
from influence_tui.core.errors import ModelFormatError
from influence_tui.core.types import LocalModel

PREPARED_VERSION = 1
_KIND_BITS = {"q4": "4-bit", "q8": "8-bit", "f16": "16-bit", "bf16": "16-bit", "f32": "32-bit"}
QUANTIZE_MODES = ("auto", "none", "int8", "int4")
"""auto: a GGUF keeps its file's quantization, safetensors load as they are; none: always float
(transformers' own loading); int8 / int4: linear weights quantized on load (any source)."""


@dataclass
class PreparedModel:
    model: Any
    tokenizer: Any
    from_cache: bool
    folder: Path
    weights_bytes: int
    """Bytes of packed and float weights in memory."""
    quantize: str = "auto"
    fused: int = 0
    """Modules replaced by fused ones (0: the packed modules in transformers' model as they are)."""

    def describe_weights(self, local_model: LocalModel) -> str:
        """``Q4_1 GGUF kept 4-bit`` / ``int8 (8-bit)``: how the weights sit in memory, for load messages."""
        by_kind: dict[str, int] = {}
        for value in packed_state(self.model).values():
            if isinstance(value, PackedWeight):
                by_kind[value.kind] = by_kind.get(value.kind, 0) + value.nbytes
        main = max(by_kind, key=lambda k: by_kind[k]) if by_kind else "f32"
        bits = _KIND_BITS[main]
        if local_model.gguf_file is not None:
            return f"{local_model.quantization or 'GGUF'} kept {bits}"
        return f"{self.quantize} ({bits})"


def prepared_root(cache_dir: Path) -> Path:
    return cache_dir / "prepared"


def prepared_key(local_model: LocalModel, quantize: str) -> str:
    """Identity of what a prepared folder was built from: the weight files, the quantization, the packing
    format, and the versions of the libraries that wrote its content (transformers writes its config and
    converts the tokenizer, tokenizers serializes it, gguf and torch convert the weights)."""
    versions = [f"{k}={v}" for k, v in sorted(library_versions().items())]
    parts = [f"v{PREPARED_VERSION}", quantize, *versions, *files_identity(local_model.weight_files)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def wants_packed(local_model: LocalModel, quantize: str) -> bool:
    """Whether ``quantize`` asks for the packed path for this model (else transformers loads it as floats)."""
    if quantize == "none":
        return False
    if quantize in ("int8", "int4"):
        return True
    if local_model.gguf_file is None:
        return False
    from influence_tui.core.engine.quant.gguf_weights import supports_gguf_architecture

    return supports_gguf_architecture(local_model.architecture or "")


# ------------------------------------------------------------------------------------------ save / read


def _save(folder: Path, model: Any, tokenizer: Any) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    described: dict[str, Any] = {}
    for name, value in packed_state(model).items():
        if isinstance(value, PackedWeight):
            described[name] = {"kind": value.kind, "shape": list(value.shape), "group": value.group}
            for part, tensor in value.tensors().items():
                tensors[f"{name}.{part}"] = tensor.contiguous()
        else:
            tensors[name] = value.contiguous()
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=parent))
    try:
        model.config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        save_file(tensors, str(staging / "weights.safetensors"))
        (staging / "packed.json").write_text(json.dumps({"version": PREPARED_VERSION, "packed": described}))
        try:
            os.replace(staging, folder)
        except OSError:  # another process prepared it meanwhile: theirs is as good
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _read(folder: Path) -> dict[str, PackedWeight | torch.Tensor]:
    from safetensors.torch import load_file

    meta = json.loads((folder / "packed.json").read_text())
    if meta.get("version") != PREPARED_VERSION:
        raise ValueError("prepared with another version")
    tensors = load_file(str(folder / "weights.safetensors"))
    out: dict[str, PackedWeight | torch.Tensor] = {}
    for name, info in meta["packed"].items():
        kind = info["kind"]
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind}")
        out[name] = PackedWeight(
            kind,
            (int(info["shape"][0]), int(info["shape"][1])),
            tensors.pop(f"{name}.qweight"),
            tensors.pop(f"{name}.scales", None),
            tensors.pop(f"{name}.mins", None),
            int(info["group"]),
        )
    out.update(tensors)
    return out


# ------------------------------------------------------------------------------------------ build


def _from_gguf(local_model: LocalModel) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoTokenizer

    from influence_tui.core.engine.loader import quiet_transformers, source_args
    from influence_tui.core.engine.quant.gguf_weights import read_gguf_weights

    assert local_model.gguf_file is not None
    location, kwargs = source_args(local_model)
    with quiet_transformers(gguf=True):
        config = AutoConfig.from_pretrained(location, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    result = read_gguf_weights(local_model.gguf_file, config)
    weights = result.tensors
    return build_packed_model(config, weights), tokenizer


def _from_safetensors(local_model: LocalModel, quantize: str) -> tuple[Any, Any]:
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from influence_tui.core.engine.loader import quiet_transformers, source_args

    location, kwargs = source_args(local_model)
    with quiet_transformers():
        config = AutoConfig.from_pretrained(location, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    with init_empty_weights(include_buffers=False):
        skeleton = AutoModelForCausalLM.from_config(config)
    linear_names = {f"{n}.weight" for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)}
    embed = skeleton.get_input_embeddings()
    linear_names |= {f"{n}.weight" for n, m in skeleton.named_modules() if m is embed}
    expected = set(skeleton.state_dict())
    del skeleton
    weights: dict[str, PackedWeight | torch.Tensor] = {}
    for path in sorted(local_model.weight_files):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                key = name if name in expected else _strip_prefix(name, expected)
                if key is None:
                    continue
                tensor = handle.get_tensor(name)
                weights.update(quantize_model_weights({key: tensor}, linear_names, quantize))
    return build_packed_model(config, weights), tokenizer


def _strip_prefix(name: str, expected: set[str]) -> str | None:
    """Checkpoint names sometimes lack or add the ``model.`` prefix; None for tensors the model has no use for."""
    for candidate in (f"model.{name}", name.removeprefix("model.")):
        if candidate in expected:
            return candidate
    return None


def load_prepared(
    local_model: LocalModel,
    quantize: str,
    cache_dir: Path,
    *,
    on_status: Callable[[str], None] | None = None,
    fuse: bool = True,
) -> PreparedModel:
    """The packed model for ``local_model``: from the cache when prepared before, else built and cached.
    ``fuse=False`` leaves transformers' attention, MLP and norm modules in place (the self-check's fallback)."""
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoTokenizer

    from influence_tui.core.engine.loader import quiet_transformers

    if local_model.gguf_file is not None and quantize != "auto":
        raise ModelFormatError(
            f"{local_model.name} is a GGUF file, which keeps its own quantization",
            hint="drop --quantize (or use --quantize none to load it as floats)",
        )
    folder = prepared_root(cache_dir) / prepared_key(local_model, quantize)
    if (folder / "packed.json").is_file():
        try:
            with quiet_transformers():
                config = AutoConfig.from_pretrained(folder, local_files_only=True)
                tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = build_packed_model(config, _read(folder))
            fused = fuse_model(model) if fuse else 0
            return PreparedModel(model, tokenizer, True, folder, _weights_bytes(model), quantize, fused)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError, ModelFormatError):
            pass  # damaged (a truncated file, a hand-edited packed.json) or stale: prepare it again
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)  # else the finished folder could not be renamed over it
    if on_status is not None:
        on_status(f"Preparing {local_model.name} for fast loading (first time only)...")
    start = time.perf_counter()
    if local_model.gguf_file is not None:
        model, tokenizer = _from_gguf(local_model)
    else:
        model, tokenizer = _from_safetensors(local_model, quantize)
    _save(folder, model, tokenizer)
    fused = fuse_model(model) if fuse else 0  # after saving: the cache keeps transformers' module names
    if on_status is not None:
        on_status(f"Prepared {local_model.name} in {time.perf_counter() - start:.1f} s")
    return PreparedModel(model, tokenizer, False, folder, _weights_bytes(model), quantize, fused)


def _weights_bytes(model: Any) -> int:
    total = 0
    for value in packed_state(model).values():
        total += value.nbytes if isinstance(value, PackedWeight) else value.numel() * value.element_size()
    return total
