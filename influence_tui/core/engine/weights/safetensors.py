"""A safetensors folder as a native model: config.json to :class:`ModelConfig`, tensors through ``safe_open``.

Every ``*.safetensors`` file the folder's ``model.safetensors.index.json`` names (else every one in the folder)
is opened memory-mapped and its tensors read one at a time, so quantizing on load (``int8`` / ``int4``: each
linear matrix to q8 / q4 blocks of 32, as :func:`~.modules.quantize_model_weights` does) never holds the
float model in memory. Names are normalized to the HF causal LM's (``model.`` added where a checkpoint of the
base model lacks it, a Gemma 3 multimodal checkpoint's language model taken, its vision tower left); a tied
LM head is the embedding, whatever the checkpoint carries under ``lm_head``.
``auto`` and ``none`` keep the floats, in ``dtype``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from influence_tui.core.engine.models.base import CausalLM
from influence_tui.core.engine.models.config import ModelConfig
from influence_tui.core.engine.models.layers import ConsumedWeights
from influence_tui.core.engine.models.registry import build_model
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


def load_safetensors_model(
    folder: Path, *, quantize: str = "auto", dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[CausalLM, ModelConfig]:
    """(the model, its config) for the checkpoint in ``folder`` (see the module docstring). Quantized models
    compute in float32 on the CPU kernels; float ones in ``dtype`` on ``device``."""
    from safetensors import safe_open

    folder = Path(folder)
    if quantize not in QUANTIZE:
        raise ModelFormatError(f"quantize {quantize!r} is not one of {', '.join(QUANTIZE)}")
    packed = quantize in ("int8", "int4")
    target = torch.device(device)
    if packed and target.type != "cpu":
        raise ModelFormatError(f"quantize {quantize} keeps weights packed for the CPU kernels, not {target}")
    config = ModelConfig.from_hf_config(read_json_object(folder / "config.json"))
    float_dtype = torch.float32 if packed else dtype  # packed models keep norms and biases in float32
    tensors = ConsumedWeights()
    for file in weight_files(folder):
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                key = hf_name(name)
                if key is None or (key == "lm_head.weight" and config.tie_word_embeddings):
                    continue
                tensor = handle.get_tensor(name)
                if packed and _is_linear(key, tensor):
                    tensors.update(quantize_model_weights({key: tensor}, {key}, quantize))
                else:
                    tensors[key] = tensor.to(device=target, dtype=float_dtype) if tensor.is_floating_point() else tensor
    if not config.tie_word_embeddings and "lm_head.weight" not in tensors:
        raise ModelFormatError(f"{folder.name}: config.json unties the embeddings but the weights have no lm_head")
    model = build_model(config, tensors, dtype=dtype)
    return model, config
