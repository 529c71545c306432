"""A safetensors folder as a native model: config.json to :class:`ModelConfig`, tensors read from the files.

Every ``*.safetensors`` file the folder's ``model.safetensors.index.json`` names (else every one in the folder)
is read one tensor at a time (:func:`read_tensors`: a sequential read each, no memory map), so quantizing on
load (``int8`` / ``int4``: each linear matrix to q8 / q4 blocks of 32, as
:func:`~.modules.quantize_model_weights` does) never holds the float model in memory. Names are normalized to the HF causal LM's (``model.`` added where a checkpoint of the
base model lacks it, a Gemma 3 multimodal checkpoint's language model taken, its vision tower left); a tied
LM head is the embedding, whatever the checkpoint carries under ``lm_head``.
``auto`` and ``none`` keep the floats, in ``dtype``.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from influence_tui.core.engine.models.base import CausalLM
from influence_tui.core.engine.models.config import ModelConfig
from influence_tui.core.engine.models.layers import ConsumedWeights
from influence_tui.core.engine.models.registry import build_model
from influence_tui.core.engine.models.sources import hf_config
from influence_tui.core.engine.quant.modules import quantize_model_weights
from influence_tui.core.errors import ModelFormatError
from influence_tui.core.fsutil import read_json_object

QUANTIZE = ("auto", "none", "int8", "int4")
_SKIPPED = ("rotary_emb.inv_freq", "rotary_emb.original_inv_freq")


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's files: those its index names, else every ``*.safetensors`` in ``folder``."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelFormatError(f"{index} cannot be read: {exc}") from exc
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelFormatError(f"{folder.name} is incomplete: missing {', '.join(missing[:3])}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelFormatError(f"{folder} has no .safetensors weights")
    return files


_TEXT_PREFIXES = {
    "model.language_model.": "model.",  # a Gemma 3 multimodal checkpoint, transformers 5's names
    "language_model.model.": "model.",  # the same, transformers 4's names
    "language_model.lm_head.": "lm_head.",
}
_VISION = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


def hf_name(name: str) -> str | None:
    """The causal LM's name for checkpoint tensor ``name``; None for tensors the model does not use (rotary
    buffers, a multimodal checkpoint's vision tower)."""
    if name.endswith(_SKIPPED) or name.startswith(_VISION):
        return None
    for prefix, replacement in _TEXT_PREFIXES.items():
        if name.startswith(prefix):
            return replacement + name.removeprefix(prefix)
    if name.startswith(("model.", "lm_head.")):
        return name
    return f"model.{name}"


def _is_linear(name: str, tensor: torch.Tensor) -> bool:
    return (
        tensor.dim() == 2
        and name.endswith(".weight")
        and ("_proj." in name or "embed_tokens" in name or name == "lm_head.weight")
    )


def _wanted(key: str | None, config: ModelConfig) -> bool:
    return key is not None and not (key == "lm_head.weight" and config.tie_word_embeddings)


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 2**20
"""The safetensors format's own limit on the JSON header (100 MB)."""


def read_tensors(path: Path, *, keep: Callable[[str], bool] = lambda _name: True) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of one safetensors file (those ``keep`` accepts), in file order, each read with one
    sequential read into memory of its own: no memory map, so the file's pages never count in the process's
    memory and a load peaks at what it keeps (``safe_open`` maps the file: a 2 GB checkpoint quantized on load
    peaked at the file plus the result). The header is checked before anything is allocated; what does not
    fit the format is a :class:`ModelFormatError` naming the file."""

    def bad(why: str) -> ModelFormatError:
        return ModelFormatError(f"{path.name} is not a valid safetensors file: {why}")

    try:
        with open(path, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise bad("shorter than its 8-byte header length")
            (length,) = struct.unpack("<Q", head)
            if length > min(_MAX_HEADER, size - 8):
                raise bad(f"a header of {length} bytes in a file of {size}")
            try:
                header = json.loads(fh.read(length))
            except ValueError as exc:
                raise bad(f"its header is not JSON ({exc})") from None
            if not isinstance(header, dict):
                raise bad("its header is not a JSON object")
            base = 8 + length
            entries: list[tuple[int, int, str, torch.dtype, list[int]]] = []
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                if not isinstance(entry, dict):
                    raise bad(f"{name!r} is not described by an object")
                dtype = _DTYPES.get(str(entry.get("dtype")))
                shape, offsets = entry.get("shape"), entry.get("data_offsets")
                if dtype is None:
                    raise bad(f"{name!r} has dtype {entry.get('dtype')!r}")
                if not (isinstance(shape, list) and all(isinstance(d, int) and 0 <= d < 2**40 for d in shape)):
                    raise bad(f"{name!r} has shape {shape!r}")
                if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
                    raise bad(f"{name!r} has data_offsets {offsets!r}")
                begin, end = offsets
                nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
                if not 0 <= begin <= end <= size - base or end - begin != nbytes:
                    raise bad(f"{name!r} lies at {begin}..{end} (needs {nbytes} bytes of {size - base})")
                if keep(name):
                    entries.append((begin, end, name, dtype, shape))
            for begin, end, name, dtype, shape in sorted(entries):
                buffer = bytearray(end - begin)
                fh.seek(base + begin)
                if fh.readinto(buffer) != end - begin:
                    raise bad(f"{name!r} is cut short")
                tensor = torch.frombuffer(buffer, dtype=torch.uint8) if buffer else torch.empty(0, dtype=torch.uint8)
                yield name, tensor.view(dtype).reshape(shape)
    except OSError as exc:
        raise ModelFormatError(f"{path.name} cannot be read: {exc}") from exc


def load_safetensors_model(
    folder: Path, *, quantize: str = "auto", dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[CausalLM, ModelConfig]:
    """(the model, its config) for the checkpoint in ``folder`` (see the module docstring). Quantized models
    compute in float32 on the CPU kernels; float ones in ``dtype`` on ``device``."""
    folder = Path(folder)
    if quantize not in QUANTIZE:
        raise ModelFormatError(f"quantize {quantize!r} is not one of {', '.join(QUANTIZE)}")
    packed = quantize in ("int8", "int4")
    target = torch.device(device)
    if packed and target.type != "cpu":
        raise ModelFormatError(f"quantize {quantize} keeps weights packed for the CPU kernels, not {target}")
    config = hf_config(read_json_object(folder / "config.json"))
    float_dtype = torch.float32 if packed else dtype  # packed models keep norms and biases in float32
    tensors = ConsumedWeights()
    for file in weight_files(folder):
        for name, tensor in read_tensors(file, keep=lambda n: _wanted(hf_name(n), config)):
            key = hf_name(name)
            assert key is not None
            if packed and _is_linear(key, tensor):
                tensors.update(quantize_model_weights({key: tensor}, {key}, quantize))
            else:
                tensors[key] = tensor.to(device=target, dtype=float_dtype) if tensor.is_floating_point() else tensor
    if not config.tie_word_embeddings and "lm_head.weight" not in tensors:
        raise ModelFormatError(f"{folder.name}: config.json unties the embeddings but the weights have no lm_head")
    model = build_model(config, tensors, dtype=dtype)
    return model, config
