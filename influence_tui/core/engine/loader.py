"""Load a :class:`LocalModel` into memory: the causal LM and its tokenizer on a device, in a dtype.

Anything transformers can build as a causal LM loads: a safetensors folder (one file or sharded) or a GGUF file
(through transformers' ``gguf_file=``, which dequantizes the weights into the chosen dtype). The chat template
comes with the tokenizer (``chat_template.jinja``, ``tokenizer_config.json`` or the GGUF metadata).

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

import contextlib
import functools
import gc
import importlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from influence_tui.core.config import DEVICES, DTYPES, QUANTIZE_MODES
from influence_tui.core.engine.kvcache import PromptCache
from influence_tui.core.errors import ConfigError, InfluenceError, ModelFormatError
from influence_tui.core.fsutil import read_json_object
from influence_tui.core.types import LoadedModelInfo, LocalModel

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx", "max_sequence_length")
DEFAULT_CONTEXT_LENGTH = 2048
"""Used when neither the model's config nor its library entry gives a context length."""

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
"""Chat templates end a turn with one of these; a chat model must stop on it even when its configs name only
the end-of-text token. Counted as an eos only when it is in the vocabulary and the chat template writes it."""


def _cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 / AMX through oneDNN), not by emulation."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch build without oneDNN
        capability = str(torch.backends.cpu.get_cpu_capability())
        return "AVX512" in capability


# The dtype "auto" picks on CPU. bfloat16 halves the memory and the bytes read per token, which is what bounds
# CPU decoding speed, but only pays where oneDNN has native bf16 kernels; elsewhere float32 is faster.
# bench/decode.py measures float32 against bfloat16 decoding on this machine: set this constant from what it
# reports (it is the one place the CPU default is decided).
CPU_AUTO_DTYPE: torch.dtype = torch.bfloat16 if _cpu_has_native_bf16() else torch.float32


# ------------------------------------------------------------------------------------------ device and dtype


def resolve_device(device: str = "auto", device_index: int = 0) -> torch.device:
    """The torch device for the ``device`` setting: auto is cuda, else mps, else cpu. An unavailable explicit
    device is a :class:`ConfigError` (the setting has a value this machine cannot honour)."""
    name = device.strip().lower()
    if name not in DEVICES:
        raise ConfigError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise ConfigError(
                "device is mps but Apple's Metal backend (MPS) is not available here",
                hint="use --device cpu, or auto to pick what this machine has",
            )
        return torch.device("mps")
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(
            f"device is cuda but {why}",
            hint="use --device cpu, or auto to pick what this machine has",
        )
    count = torch.cuda.device_count()
    if not 0 <= device_index < count:
        raise ConfigError(
            f"device_index is {device_index} but there {'is' if count == 1 else 'are'} {count} CUDA GPU(s)",
            hint=f"set INFLUENCE_DEVICE_INDEX to 0..{count - 1}",
        )
    return torch.device("cuda", device_index)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype for the ``dtype`` setting on ``device``. auto: bfloat16 on CUDA GPUs that support it
    (else float16), float16 on MPS, :data:`CPU_AUTO_DTYPE` on CPU."""
    name = dtype.strip().lower()
    if name not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return CPU_AUTO_DTYPE


def dtype_name(dtype: torch.dtype) -> str:
    """``bfloat16`` for ``torch.bfloat16``."""
    return str(dtype).removeprefix("torch.")


def device_name(device: torch.device) -> str:
    """``cpu``, ``mps``, ``cuda:0``."""
    return f"{device.type}:{device.index}" if device.type == "cuda" and device.index is not None else device.type


# ------------------------------------------------------------------------------------------ the loaded model


def describe_info(info: LoadedModelInfo) -> str:
    """One line for front ends: ``Loaded SmolLM2-135M-Instruct (demo) on cpu (bfloat16) in 12.3 s``, or
    ``(Q4_1 kept 4-bit, float32 activations)`` for a model whose weights stay quantized."""
    how = f"{info.quantization}, {info.dtype} activations" if info.quantization else info.dtype
    return f"Loaded {info.name} on {info.device} ({how}) in {info.load_s:.1f} s"


@dataclass(eq=False)
class LoadedModel:
    """A model in memory, with what the engine chose for it. Owned by the engine thread; :meth:`unload` frees it."""

    model: Any
    """The transformers causal LM, in eval mode (None once unloaded)."""
    tokenizer: Any
    """The transformers tokenizer, carrying the chat template (None once unloaded)."""
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


def release_memory(device: torch.device | None = None) -> None:
    gc.collect()
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if (device is None or device.type == "mps") and _mps_available():
        torch.mps.empty_cache()


# ------------------------------------------------------------------------------------------ checks


def needs_remote_code(folder: Path) -> str | None:
    """The file asking for custom code (``auto_map`` in config.json or tokenizer_config.json), if any."""
    for name in ("config.json", "tokenizer_config.json"):
        if read_json_object(folder / name).get("auto_map"):
            return name
    return None


def check_loadable(local_model: LocalModel) -> None:
    """Refuse what the engine will not load, with a :class:`ModelFormatError` saying why and what to do."""
    name = local_model.name
    if local_model.format == "pytorch-bin":
        raise ModelFormatError(
            f"{name} has only PyTorch pickle weights (.bin); unpickling can run arbitrary code, so Influence never loads them",
            hint="use a safetensors or GGUF version of this model",
        )
    if local_model.format == "unknown":
        problems = "; ".join(local_model.problems) or "no weights found"
        raise ModelFormatError(f"{name} cannot be loaded: {problems}")
    if local_model.format == "gguf-split":
        raise ModelFormatError(
            f"{name} is a split GGUF ({len(local_model.weight_files)} parts), which the transformers GGUF loader cannot read",
            hint="merge the parts into one file with `llama-gguf-split --merge`, or use a single-file GGUF",
        )
    if local_model.format in ("safetensors", "safetensors-sharded"):
        folder = local_model.path
        remote = needs_remote_code(folder)
        if remote:
            raise ModelFormatError(
                f"{name} needs custom code from its model folder (auto_map in {remote}); Influence never runs code from a model folder",
                hint="use a model whose architecture transformers supports natively",
            )
    if not local_model.complete:
        problems = "; ".join(local_model.problems) or "part of its weights is missing"
        raise ModelFormatError(f"{name} is incomplete: {problems}", hint="download it again")
    if not local_model.has_tokenizer:
        where = "in its GGUF metadata" if local_model.gguf_file else "(tokenizer.json or tokenizer.model)"
        raise ModelFormatError(
            f"{name} has no tokenizer {where}",
            hint="download the tokenizer files from the model's repo next to its weights",
        )
    if local_model.problems:
        raise ModelFormatError(f"{name} cannot be loaded: {'; '.join(local_model.problems)}")


_GENERATION_HEADS = ("CausalLM", "LMHead", "ConditionalGeneration")
_NO_GENERATION_SUFFIXES = (
    "Model",
    "ForMaskedLM",
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMultipleChoice",
    "ForPreTraining",
    "ForNextSentencePrediction",
)


def check_generative(local_model: LocalModel) -> None:
    """Refuse a model whose config names only classes that cannot generate text: an encoder (``BertModel``,
    ``...ForMaskedLM``) or a bare base model without its language-model head. transformers would otherwise
    build a causal LM around it with a random head and the chat would be noise."""
    archs = local_model.architectures
    if not archs or any(head in a for a in archs for head in _GENERATION_HEADS):
        return
    if all(a.endswith(_NO_GENERATION_SUFFIXES) for a in archs):
        raise ModelFormatError(
            f"{local_model.name} is a {archs[0]}: an encoder or a base model without a language-model head, which cannot generate text",
            hint="use it for embeddings, or chat with a model whose config names a ...ForCausalLM class",
        )


# ------------------------------------------------------------------------------------------ loading


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
    remote code, safetensors only for folders, ``gguf_file`` for GGUF."""
    kwargs: dict[str, Any] = {"trust_remote_code": False, "local_files_only": True}
    gguf = local_model.gguf_file
    if gguf is not None:
        kwargs["gguf_file"] = gguf.name
        return str(gguf.parent), kwargs
    return str(local_model.path), kwargs


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
        for key in _CONTEXT_KEYS:
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
    """Load ``local_model`` as a causal LM (blocking: seconds to minutes). Refusals and failures are
    :class:`InfluenceError`\\ s; see the module docstring.

    On CPU, a GGUF of a supported architecture keeps its quantized weights in memory and safetensors weights
    are quantized with ``quantize="int8"|"int4"``; both are prepared once and cached under ``cache_dir``
    (default: the user cache dir) so later loads take well under a second. ``quantize="none"`` always loads
    floats through transformers. ``on_status`` gets one-time notes (building kernels, preparing a model).
    """
    check_loadable(local_model)
    check_generative(local_model)
    torch_device = resolve_device(device, device_index)
    torch_dtype = resolve_dtype(dtype, torch_device)
    mode = quantize.strip().lower()
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"quantize {quantize!r} is not one of {', '.join(QUANTIZE_MODES)}")
    from influence_tui.core.engine.quant.prepare import wants_packed

    packed = wants_packed(local_model, mode)
    if packed and torch_device.type != "cpu":
        if mode != "auto":
            raise ConfigError(
                f"quantize {mode} keeps weights packed for the CPU kernels, but the device is {device_name(torch_device)}",
                hint="use --device cpu, or --quantize none on a GPU",
            )
        packed = False  # a GGUF on a GPU: transformers dequantizes it into the GPU dtype
    if packed:
        loaded = _load_packed(local_model, mode, cache_dir, on_status, torch_device)
        if loaded is not None:
            return loaded
        # Neither the fused nor the plain packed modules agree with themselves: transformers' own floats.
        mode = "none"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    location, kwargs = source_args(local_model)
    model: Any = None
    try:
        with quiet_transformers(gguf=local_model.gguf_file is not None):
            tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
            model_kwargs = dict(kwargs, dtype=torch_dtype, device_map={"": torch_device})
            if local_model.gguf_file is None:
                model_kwargs["use_safetensors"] = True
            model = AutoModelForCausalLM.from_pretrained(location, **model_kwargs)
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
    model.eval()
    model.requires_grad_(False)
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
        torch_dtype=torch_dtype,
        mode=mode,
        start=start,
        quantization="",
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


def _load_packed(
    local_model: LocalModel,
    mode: str,
    cache_dir: Path | None,
    on_status: Callable[[str], None] | None,
    torch_device: torch.device,
) -> LoadedModel | None:
    """The packed (and where possible fused) model, self-checked; None when no packed form passes the check
    (the caller falls back to transformers' float model)."""
    from influence_tui.core.engine.quant import kernels
    from influence_tui.core.engine.quant.prepare import load_prepared
    from influence_tui.core.paths import default_cache_dir

    start = time.perf_counter()
    kernels.set_status_callback(on_status)
    try:
        kernels.load_kernels()
        extra = (mode, f"kernels={kernels.unavailable_reason() is None}")
        with quiet_transformers(gguf=local_model.gguf_file is not None):
            prepared = load_prepared(local_model, mode, cache_dir or default_cache_dir(), on_status=on_status)
            runtime = "packed+fused" if prepared.fused else "packed"
            verdict = _self_check(local_model, prepared.model, prepared.tokenizer, runtime, cache_dir, extra=extra)
            if not verdict.ok and prepared.fused:
                _warn(
                    on_status,
                    f"Warning: {local_model.name}: the fused kernels disagree with a full pass under "
                    f"{_versions_note()}; using the unfused modules (slower). `make install` installs the tested set.",
                )
                prepared = load_prepared(
                    local_model, mode, cache_dir or default_cache_dir(), on_status=on_status, fuse=False
                )
                verdict = _self_check(local_model, prepared.model, prepared.tokenizer, "packed", cache_dir, extra=extra)
            if not verdict.ok:
                _warn(
                    on_status,
                    f"Warning: {local_model.name}: the packed weights disagree with a full pass under "
                    f"{_versions_note()}; loading it through transformers as floats (slower, more memory).",
                )
                return None
    except InfluenceError:
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            release_memory(torch_device)
            raise out_of_memory_error(local_model, torch_device, torch.float32) from exc
        if isinstance(exc, ValueError | KeyError | OSError | TypeError):
            raise _format_error(local_model, exc) from exc
        raise
    finally:
        kernels.set_status_callback(None)
    return _loaded(
        local_model,
        prepared.model,
        prepared.tokenizer,
        torch_device=torch_device,
        torch_dtype=torch.float32,
        mode=mode,
        start=start,
        quantization=prepared.describe_weights(local_model),
    )


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
) -> LoadedModel:
    config = model.config
    parameters = _parameter_count(model)
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
