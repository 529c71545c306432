"""Choosing a repo's files: the safetensors set to load, GGUF files grouped into one choice per quantization."""

from __future__ import annotations

import re
from collections.abc import Sequence

from influence_tui.core.errors import HubError
from influence_tui.core.formats import SPLIT_GGUF, gguf_group_key
from influence_tui.core.types import RepoFile

SAFETENSORS_INDEX = "model.safetensors.index.json"
_QUANT = re.compile(
    r"(?:^|[-._])((?:I?Q|TQ)\d+(?:_[0-9A-Z]+)*|BF16|FP?16|FP?32|MXFP4(?:_MOE)?)(?=$|[-._])", re.IGNORECASE
)
FORMAT_SUFFIXES = {
    ".safetensors": "safetensors",
    ".gguf": "gguf",
    ".bin": "pytorch-bin",
    ".pt": "pytorch-bin",
    ".pth": "pytorch-bin",
    ".onnx": "onnx",
    ".h5": "tensorflow",
    ".msgpack": "flax",
}
"""File suffix -> the weight format a repo offers."""


def suffix(path: str) -> str:
    """``.gguf`` of ``a/b.Q4.GGUF``: the last suffix of the file name, lower-cased."""
    name = path.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def select_safetensors(files: Sequence[RepoFile], shards: Sequence[str] | None, repo_id: str = "") -> list[RepoFile]:
    """The safetensors set to load: the index's shards, else ``model.safetensors``, else the top-level files
    (``consolidated.*`` Mistral-format copies only when nothing else is there)."""
    top = {f.path: f for f in files if "/" not in f.path and f.path.endswith(".safetensors")}
    if shards:
        missing = [s for s in shards if s not in top]
        if missing:
            raise HubError(
                f"{repo_id}: {SAFETENSORS_INDEX} names shards the repo does not have: {', '.join(missing[:5])}"
            )
        return [top[s] for s in shards]
    if "model.safetensors" in top:
        return [top["model.safetensors"]]
    plain = [f for name, f in sorted(top.items()) if not name.startswith("consolidated")]
    return plain or [f for _, f in sorted(top.items())]


def gguf_quant_name(filename: str) -> str | None:
    """The quantization a GGUF file name announces (``Q4_K_M``, ``IQ2_XS``, ``F16``...), or None."""
    name = filename.rsplit("/", 1)[-1]
    split = SPLIT_GGUF.match(name)
    stem = split["stem"] if split else name[: -len(".gguf")] if name.lower().endswith(".gguf") else name
    matches = list(_QUANT.finditer(stem))
    if not matches:
        return None
    quant = matches[-1].group(1).upper()
    return {"FP16": "F16", "FP32": "F32"}.get(quant, quant)


def gguf_groups(files: Sequence[RepoFile]) -> dict[str, list[RepoFile]]:
    """GGUF files grouped into download choices, named by quantization; the parts of a split GGUF form one
    choice. Vision projectors (``mmproj*``) are not a choice of their own."""
    groups: dict[tuple[str, str], list[RepoFile]] = {}
    for f in sorted(files, key=lambda f: f.path):
        folder, _, name = f.path.rpartition("/")
        if not name.lower().endswith(".gguf") or "mmproj" in name.lower():
            continue
        key = (folder, gguf_group_key(name))
        groups.setdefault(key, []).append(f)
    named: dict[str, list[RepoFile]] = {}
    labels = {key: gguf_quant_name(parts[0].path) for key, parts in groups.items()}
    counts: dict[str | None, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    for key, parts in groups.items():
        label = labels[key]
        if label is None or counts[label] > 1:
            first = parts[0].path.rsplit("/", 1)[-1]
            split = SPLIT_GGUF.match(first)
            label = split["stem"] if split else first[: -len(".gguf")]
            if label in named:
                label = parts[0].path[: -len(".gguf")]
        named[label] = parts
    return named


def weight_formats(files: Sequence[RepoFile]) -> list[str]:
    """The weight formats among ``files`` (``gguf``, ``safetensors``, ``pytorch-bin``...), sorted."""
    return sorted({FORMAT_SUFFIXES[s] for f in files if (s := suffix(f.path)) in FORMAT_SUFFIXES})
