"""The transformers runtime: every causal LM that has no native model loads through ``AutoModelForCausalLM``.

It is the fallback of :func:`~influence_tui.core.engine.loader.load_model` (architectures the native models do
not cover, and a native load that fails its self-check), and the reference the parity tests compare the native
models against. Only public API is used: ``from_pretrained`` with local files only and no remote code, the
tokenizer's own chat template, and for ``--quantize int8|int4`` on the CPU an empty model from
``from_config`` whose ``nn.Linear`` and embedding modules are swapped for packed ones
(:func:`~influence_tui.core.engine.quant.modules.build_packed_model`), each matrix quantized as it is read.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Iterator
from typing import Any

import torch

from influence_tui.core.engine.quant.modules import build_packed_model, quantize_model_weights
from influence_tui.core.engine.quant.packed import PackedWeight
from influence_tui.core.types import LocalModel


@contextlib.contextmanager
def quiet_transformers(*, gguf: bool = False) -> Iterator[None]:
    """No progress bars and no warnings on stderr while loading: a TUI owns the terminal.

    transformers' GGUF reader draws its own tqdm bar, which its progress-bar switch does not reach; for a GGUF
    load that bar is switched off for the duration (loads run on the engine thread only, one at a time).
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    gguf_module: Any = None
    gguf_tqdm: Any = None
    if gguf:
        gguf_module = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
        gguf_tqdm = getattr(gguf_module, "tqdm", None)
        if gguf_tqdm is not None:
            gguf_module.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_module.tqdm = gguf_tqdm
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def source_args(local_model: LocalModel) -> tuple[str, dict[str, Any]]:
    """The ``from_pretrained`` location and the keyword arguments every load passes: local files only, no
    remote code, ``gguf_file`` for GGUF."""
    kwargs: dict[str, Any] = {"trust_remote_code": False, "local_files_only": True}
    gguf = local_model.gguf_file
    if gguf is not None:
        kwargs["gguf_file"] = gguf.name
        return str(gguf.parent), kwargs
    return str(local_model.path), kwargs


def load_tokenizer(local_model: LocalModel) -> Any:
    from transformers import AutoTokenizer

    location, kwargs = source_args(local_model)
    with quiet_transformers(gguf=local_model.gguf_file is not None):
        return AutoTokenizer.from_pretrained(location, **kwargs)


def load_transformers(
    local_model: LocalModel, *, device: torch.device, dtype: torch.dtype, quantize: str
) -> tuple[Any, Any]:
    """(the causal LM in eval mode, its tokenizer). ``quantize`` ``int8`` / ``int4`` (CPU, safetensors) packs
    the linear weights as they are read; anything else loads floats in ``dtype`` on ``device``."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(local_model)
    if quantize in ("int8", "int4") and local_model.gguf_file is None:
        model = _quantized_on_load(local_model, quantize)
    else:
        location, kwargs = source_args(local_model)
        model_kwargs = dict(kwargs, dtype=dtype, device_map={"": device})
        if local_model.gguf_file is None:
            model_kwargs["use_safetensors"] = True
        with quiet_transformers(gguf=local_model.gguf_file is not None):
            model = AutoModelForCausalLM.from_pretrained(location, **model_kwargs)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def _quantized_on_load(local_model: LocalModel, quantize: str) -> Any:
    """The model with every linear matrix (and the embedding) packed as ``quantize``, never holding the float
    model: an empty skeleton names the linears, each checkpoint tensor is quantized as it is read."""
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    location, kwargs = source_args(local_model)
    with quiet_transformers():
        config = AutoConfig.from_pretrained(location, **kwargs)
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
                weights.update(quantize_model_weights({key: handle.get_tensor(name)}, linear_names, quantize))
    return build_packed_model(config, weights)


def _strip_prefix(name: str, expected: set[str]) -> str | None:
    """Checkpoint names sometimes lack or add the ``model.`` prefix; None for tensors the model has no use for."""
    for candidate in (f"model.{name}", name.removeprefix("model.")):
        if candidate in expected:
            return candidate
    return None
