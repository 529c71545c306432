"""What the engine refuses to load, checked before loading: pickle weights, model-folder code, incomplete or
tokenizer-less models, encoders that cannot generate text."""

from __future__ import annotations

from pathlib import Path

from influence_tui.core.errors import ModelFormatError
from influence_tui.core.fsutil import read_json_object
from influence_tui.core.types import LocalModel

__all__ = ["check_generative", "check_loadable", "needs_remote_code"]


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
