"""Load a :class:`LocalModel` into memory: the causal LM and its tokenizer on a device, in a dtype.

Two runtimes (:func:`~influence_tui.core.engine.models.runtime_of` says which a model gets):

* **native**: the llama family (llama, mistral, qwen2/3, qwen3_moe, gemma2/3, phi3) on our own model code
  (:mod:`.models`), straight from a GGUF file (weights kept packed for the CPU kernels) or a safetensors
  folder, with our tokenizer and chat-template rendering (:mod:`.tokenizer`): transformers is not imported;
* **transformers**: any other causal LM through ``AutoModelForCausalLM`` (:mod:`.hf`), and a native model
  whose file asks for what the native code does not compute, or that fails its self-check.

What is refused before loading is checked in :mod:`.checks`; the device and dtype a setting names are resolved
in :mod:`.devices`. Every load ends with a self-check (:mod:`.selfcheck`: one pass against prefill-then-decode
through the cache).

What is refused, each with a :class:`ModelFormatError` that says why and what to do instead:

* pickle weights (``.bin``, ``.pt``): unpickling can run arbitrary code;
* models that need their own code (``auto_map`` in ``config.json``): ``trust_remote_code`` is always False,
  so no code from a model folder ever runs;
* architectures this transformers does not know, incomplete models (a missing shard), models without a
  tokenizer, split GGUF files.

Running out of memory while loading is an :class:`InfluenceError` that suggests a smaller model or dtype.
This module imports torch; only the engine imports it, never a front end at start-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from influence_tui.core.config import QUANTIZE_MODES
from influence_tui.core.engine.checks import check_generative, check_loadable
from influence_tui.core.engine.devices import (
    CPU_AUTO_DTYPE,
    device_name,
    dtype_name,
    release_memory,
    resolve_device,
    resolve_dtype,
)
from influence_tui.core.engine.kvcache import PromptCache
from influence_tui.core.errors import ConfigError, InfluenceError, ModelFormatError
from influence_tui.core.formats import CONTEXT_LENGTH_KEYS
from influence_tui.core.types import LoadedModelInfo, LocalModel

__all__ = [  # the checks and the device/dtype functions are re-exported: callers import them from here
    "CPU_AUTO_DTYPE",
    "DEFAULT_CONTEXT_LENGTH",
    "END_OF_TURN_TOKENS",
    "LoadedModel",
    "check_loadable",
    "describe_info",
    "dtype_name",
    "eos_token_ids",
    "is_out_of_memory",
    "load_model",
    "out_of_memory_error",
    "release_memory",
    "resolve_device",
    "resolve_dtype",
]
DEFAULT_CONTEXT_LENGTH = 2048
"""Used when neither the model's config nor its library entry gives a context length."""

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
"""Chat templates end a turn with one of these; a chat model must stop on it even when its configs name only
the end-of-text token. Counted as an eos only when it is in the vocabulary and the chat template writes it."""


# ------------------------------------------------------------------------------------------ the loaded model


def describe_info(info: LoadedModelInfo) -> str:
    """One line for front ends: ``Loaded Qwen2-0.5B on cpu (bfloat16; native runtime) in 1.3 s``, or
    ``(Q4_1 kept 4-bit, float32 activations; native runtime)`` for a model whose weights stay quantized."""
    how = f"{info.quantization}, {info.dtype} activations" if info.quantization else info.dtype
    return f"Loaded {info.name} on {info.device} ({how}; {info.runtime} runtime) in {info.load_s:.1f} s"


@dataclass(eq=False)
class LoadedModel:
    """A model in memory, with what the engine chose for it. Owned by the engine thread; :meth:`unload` frees it."""

    model: Any
    """The causal LM, in eval mode: a native :class:`~.models.base.CausalLM` or a transformers model (None
    once unloaded)."""
    tokenizer: Any
    """The tokenizer, carrying the chat template: a :class:`~.tokenizer.NativeTokenizer` or transformers'
    (None once unloaded)."""
    info: LoadedModelInfo
    local_model: LocalModel
    torch_device: torch.device = field(repr=False)
    torch_dtype: torch.dtype = field(repr=False)
    quantize: str = "auto"
    prompt_cache: PromptCache | None = field(default=None, repr=False)
    """KV caches of recent sequences, reused by the next request that starts the same way."""

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def describe(self) -> str:
        return describe_info(self.info)

    def is_same(
        self, local_model: LocalModel, device: torch.device, dtype: torch.dtype, quantize: str = "auto"
    ) -> bool:
        """Whether loading ``local_model`` on ``device`` in ``dtype`` with ``quantize`` would give this model
        again."""
        return (
            self.loaded
            and self.local_model.path == local_model.path
            and self.local_model.weight_files == local_model.weight_files
            and self.torch_device == device
            and (self.torch_dtype == dtype or bool(self.info.quantization))
            and self.quantize == quantize
        )

    def unload(self) -> None:
        """Drop the model and tokenizer and give their memory back (collect, then empty the GPU cache)."""
        self.model = None
        self.tokenizer = None
        if self.prompt_cache is not None:
            self.prompt_cache.clear()
        release_memory(self.torch_device)


# ------------------------------------------------------------------------------------------ loading


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "not enough memory" in text or "out of memory" in text or "can't allocate memory" in text
    )


def out_of_memory_error(local_model: LocalModel, device: torch.device, dtype: torch.dtype) -> InfluenceError:
    smaller = "float16 or bfloat16" if dtype == torch.float32 else "a smaller quantization (e.g. a Q4 GGUF)"
    return InfluenceError(
        f"not enough memory on {device_name(device)} to load {local_model.name} in {dtype_name(dtype)}",
        hint=f"try {smaller}, a smaller model, or close other programs using the {device.type.upper()} memory",
    )


def _format_error(local_model: LocalModel, exc: Exception) -> ModelFormatError:
    arch = local_model.architecture or "unknown"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    text = str(exc)
    if "does not recognize this architecture" in text:
        return ModelFormatError(
            f"{local_model.name}: this transformers does not know model_type {arch!r}",
            hint="upgrade transformers (pip install -U transformers) or use a model of a supported architecture",
        )
    if "Unrecognized configuration class" in text:
        return ModelFormatError(
            f"{local_model.name}: model_type {arch!r} is not a causal language model transformers can generate with",
            hint="Influence chats with decoder-only (causal LM) models such as Llama, Qwen, SmolLM",
        )
    if "is not supported yet" in text and local_model.gguf_file is not None:
        return ModelFormatError(
            f"{local_model.name}: transformers cannot read GGUF files of architecture {arch!r}",
            hint="use the safetensors version of this model, or upgrade transformers",
        )
    return ModelFormatError(f"{local_model.name} (model_type {arch!r}) could not be loaded: {first_line}")


def _context_length(config: Any, local_model: LocalModel) -> int:
    scopes = [config, getattr(config, "text_config", None)]
    for scope in scopes:
        if scope is None:
            continue
        for key in CONTEXT_LENGTH_KEYS:
            value = getattr(scope, key, None)
            if isinstance(value, int) and value > 0:
                return value
    return local_model.context_length or DEFAULT_CONTEXT_LENGTH


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list | tuple):
        return [int(v) for v in value if isinstance(v, int)]
    return []


def eos_token_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """Every token that ends a reply: the generation config's eos (an int or a list), the model config's, the
    tokenizer's, and for chat models the end-of-turn token their template writes (``<|im_end|>``...)."""
    ids: list[int] = []
    generation_config = getattr(model, "generation_config", None)
    ids += _as_ids(getattr(generation_config, "eos_token_id", None))
    ids += _as_ids(getattr(getattr(model, "config", None), "eos_token_id", None))
    ids += _as_ids(getattr(tokenizer, "eos_token_id", None))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates
        template = "\n".join(str(t) for t in template.values())
    if isinstance(template, str) and template:
        vocab: dict[str, int] = tokenizer.get_vocab()
        ids += [vocab[token] for token in END_OF_TURN_TOKENS if token in vocab and token in template]
    return tuple(dict.fromkeys(i for i in ids if i >= 0))


def load_model(
    local_model: LocalModel,
    *,
    device: str = "auto",
    device_index: int = 0,
    dtype: str = "auto",
    quantize: str = "auto",
    cache_dir: Path | None = None,
    on_status: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Load ``local_model`` as a causal LM (blocking: well under a second for a small native model, minutes
    for a big transformers one). Refusals and failures are :class:`InfluenceError`\\ s; see the module docstring.

    A model of a native family (:func:`~.models.runtime_of`) is built by our own model code straight from its
    file: a GGUF keeps its quantized weights packed on the CPU (dequantized to ``dtype`` floats on a GPU),
    safetensors load as floats or, with ``quantize="int8"|"int4"`` on the CPU, quantized as they are read.
    Anything else, and a native model that fails its self-check, loads through transformers. ``cache_dir``
    (default: the user cache dir) keeps the self-check's verdicts; ``on_status`` gets one-time notes
    (building kernels, a fallback).
    """
    check_loadable(local_model)
    check_generative(local_model)
    torch_device = resolve_device(device, device_index)
    torch_dtype = resolve_dtype(dtype, torch_device)
    mode = quantize.strip().lower()
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"quantize {quantize!r} is not one of {', '.join(QUANTIZE_MODES)}")
    if local_model.gguf_file is not None and mode in ("int8", "int4"):
        raise ModelFormatError(
            f"{local_model.name} is a GGUF file, which keeps its own quantization",
            hint="drop --quantize (or use --quantize none to load it as floats)",
        )
    if mode in ("int8", "int4") and torch_device.type != "cpu":
        raise ConfigError(
            f"quantize {mode} keeps weights packed for the CPU kernels, but the device is {device_name(torch_device)}",
            hint="use --device cpu, or --quantize none on a GPU",
        )
    from influence_tui.core.engine.models import runtime_of

    if runtime_of(local_model) == "native":
        loaded = _load_native(
            local_model,
            mode,
            torch_device=torch_device,
            torch_dtype=torch_dtype,
            cache_dir=cache_dir,
            on_status=on_status,
        )
        if loaded is not None:
            return loaded
    return _load_transformers(local_model, mode, torch_device, torch_dtype, cache_dir)


def _load_native(
    local_model: LocalModel,
    mode: str,
    *,
    torch_device: torch.device,
    torch_dtype: torch.dtype,
    cache_dir: Path | None,
    on_status: Callable[[str], None] | None,
) -> LoadedModel | None:
    """The native model, self-checked; None (after a warning) when the file asks for something the native
    code does not compute or the check fails: the caller then loads it through transformers."""
    from influence_tui.core.engine.quant import kernels
    from influence_tui.core.engine.tokenizer import NativeTokenizer
    from influence_tui.core.engine.weights import load_native

    start = time.perf_counter()
    gguf = local_model.gguf_file
    # Packed GGUF weights compute in float32 on the CPU kernels; on a GPU the GGUF is dequantized to floats.
    if gguf is not None and torch_device.type != "cpu":
        mode = "none"
    packed = (gguf is not None and mode == "auto") or mode in ("int8", "int4")
    compute_dtype = torch.float32 if packed else torch_dtype
    kernels.set_status_callback(on_status)
    try:
        if torch_device.type == "cpu":
            kernels.load_kernels()
        if gguf is not None:
            tokenizer = NativeTokenizer.from_gguf(gguf)
            model = load_native(gguf, gguf=True, quantize=mode, dtype=compute_dtype)
        else:
            tokenizer = NativeTokenizer.from_folder(local_model.path)
            model = load_native(local_model.path, gguf=False, quantize=mode, dtype=compute_dtype)
        if torch_device.type != "cpu":
            model.to(torch_device)
    except ModelFormatError as exc:
        _warn(on_status, f"Note: {local_model.name}: {exc.message}; loading it through transformers instead.")
        return None
    except InfluenceError:
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            release_memory(torch_device)
            raise out_of_memory_error(local_model, torch_device, compute_dtype) from exc
        if isinstance(exc, ValueError | KeyError | OSError | TypeError):
            raise _format_error(local_model, exc) from exc
        raise
    finally:
        kernels.set_status_callback(None)
    extra = (mode, str(torch_device), str(compute_dtype), f"kernels={kernels.unavailable_reason() is None}")
    verdict = _self_check(local_model, model, tokenizer, "native", cache_dir, extra=extra)
    if not verdict.ok:
        del model
        release_memory(torch_device)
        _warn(
            on_status,
            f"Warning: {local_model.name}: the native model disagrees with itself ({verdict.describe()}); "
            "loading it through transformers instead (slower, more memory). Please report this.",
        )
        return None
    return _loaded(
        local_model,
        model,
        tokenizer,
        torch_device=torch_device,
        torch_dtype=compute_dtype,
        mode=mode,
        start=start,
        quantization=_describe_packed(model, local_model) if packed else "",
        runtime="native",
    )


def _describe_packed(model: Any, local_model: LocalModel) -> str:
    """``Q4_1 kept 4-bit``, ``int8``...: how the packed weights sit in memory."""
    kinds = model.packed_kinds()
    main = max(kinds, key=lambda k: kinds[k]) if kinds else ""
    if local_model.gguf_file is not None and local_model.quantization:
        bits = {"q4": "4-bit", "q8": "8-bit", "f16": "16-bit", "bf16": "16-bit", "f32": "32-bit"}.get(main, main)
        return f"{local_model.quantization} kept {bits}"
    return {"q8": "int8", "q4": "int4"}.get(main, main)


def _load_transformers(
    local_model: LocalModel, mode: str, torch_device: torch.device, torch_dtype: torch.dtype, cache_dir: Path | None
) -> LoadedModel:
    from influence_tui.core.engine.hf import load_transformers

    start = time.perf_counter()
    model: Any = None
    try:
        model, tokenizer = load_transformers(local_model, device=torch_device, dtype=torch_dtype, quantize=mode)
    except InfluenceError:
        raise
    except Exception as exc:
        model = None
        if is_out_of_memory(exc):
            release_memory(torch_device)
            raise out_of_memory_error(local_model, torch_device, torch_dtype) from exc
        if isinstance(exc, ValueError | KeyError | OSError | TypeError):
            raise _format_error(local_model, exc) from exc
        raise
    packed = mode in ("int8", "int4")
    verdict = _self_check(
        local_model, model, tokenizer, "transformers", cache_dir, extra=(mode, str(torch_device), str(torch_dtype))
    )
    if not verdict.ok:
        del model
        release_memory(torch_device)
        raise _inconsistent_error(local_model, verdict)
    return _loaded(
        local_model,
        model,
        tokenizer,
        torch_device=torch_device,
        torch_dtype=torch.float32 if packed else torch_dtype,
        mode=mode,
        start=start,
        quantization=mode if packed else "",
        runtime="transformers",
    )


def _self_check(
    local_model: LocalModel,
    model: Any,
    tokenizer: Any,
    runtime: str,
    cache_dir: Path | None,
    *,
    extra: tuple[str, ...],
) -> Any:
    """:func:`selfcheck.verify` for this model (its verdict cached in the user cache dir)."""
    from influence_tui.core.engine import selfcheck
    from influence_tui.core.paths import default_cache_dir

    return selfcheck.verify(
        model,
        tokenizer,
        runtime=runtime,
        identity=selfcheck.files_identity(local_model.weight_files),
        cache_dir=cache_dir or default_cache_dir(),
        extra=extra,
    )


def _versions_note() -> str:
    """``transformers 5.24.0 (this Influence supports >=4.56,<5.24)``: what to name when a check fails."""
    from influence_tui.core.engine.selfcheck import library_versions, supported_range

    version = library_versions(["transformers"])["transformers"]
    supported = supported_range("transformers")
    return f"transformers {version}" + (
        f" (this Influence is tested with transformers{supported})" if supported else ""
    )


def _inconsistent_error(local_model: LocalModel, verdict: Any) -> InfluenceError:
    from influence_tui.core.engine.selfcheck import supported_range

    supported = supported_range("transformers") or "<5.24"
    return InfluenceError(
        f"{local_model.name}: decoding through the KV cache gives other results than a full pass under "
        f"{_versions_note()}, so its replies would be wrong ({verdict.describe()})",
        hint=f"install the tested versions (make install), or pip install 'transformers{supported}'",
    )


def _warn(on_status: Callable[[str], None] | None, message: str) -> None:
    if on_status is not None:
        on_status(message)
    else:
        logging.getLogger("influence_tui").warning(message)


def _loaded(
    local_model: LocalModel,
    model: Any,
    tokenizer: Any,
    *,
    torch_device: torch.device,
    torch_dtype: torch.dtype,
    mode: str,
    start: float,
    quantization: str,
    runtime: str,
) -> LoadedModel:
    config = model.config
    parameters = model.parameter_count() if hasattr(model, "parameter_count") else _parameter_count(model)
    info = LoadedModelInfo(
        name=local_model.name,
        path=local_model.gguf_file or local_model.path,
        device=device_name(torch_device),
        dtype=dtype_name(torch_dtype),
        load_s=time.perf_counter() - start,
        context_length=_context_length(config, local_model),
        parameters=parameters,
        architecture=str(getattr(config, "model_type", None) or local_model.architecture or "unknown"),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        eos_token_ids=eos_token_ids(model, tokenizer),
        quantization=quantization,
        runtime=runtime,
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        info=info,
        local_model=local_model,
        torch_device=torch_device,
        torch_dtype=torch_dtype,
        quantize=mode,
        prompt_cache=PromptCache(),
    )


def _parameter_count(model: Any) -> int:
    """Weights in the model, packed matrices counted by their shape."""
    from influence_tui.core.engine.quant.modules import packed_state
    from influence_tui.core.engine.quant.packed import PackedWeight

    total = 0
    for value in packed_state(model).values():
        total += value.shape[0] * value.shape[1] if isinstance(value, PackedWeight) else value.numel()
    return total
