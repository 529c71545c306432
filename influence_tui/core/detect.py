"""What a model folder or file on disk is: its format, weight files, tokenizer, chat template and context
length, from headers and small metadata files only (a safetensors header, a GGUF header and tensor table,
``config.json``, ``tokenizer_config.json``). A missing or broken file becomes a problem on that one model
(``LocalModel.problems``), never an exception."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from influence_tui.core.errors import ModelNotFoundError
from influence_tui.core.formats import (
    CONTEXT_LENGTH_KEYS,
    SPLIT_GGUF,
    FormatError,
    GGUFHeader,
    gguf_group_key,
    read_gguf_header,
    read_safetensors_header,
)
from influence_tui.core.fsutil import tree_size
from influence_tui.core.types import LocalModel, ModelSource

__all__ = ["PICKLE_SUFFIXES", "gguf_groups", "gguf_model", "inspect_folder", "inspect_path"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
"""Weight files Influence never loads: unpickling can run arbitrary code."""


def _read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path.name} is unreadable ({exc.__class__.__name__}: {exc})"


def _context_from_config(config: dict[str, Any]) -> int | None:
    for scope in (config, config.get("text_config") or {}):
        if not isinstance(scope, dict):
            continue
        for key in CONTEXT_LENGTH_KEYS:
            value = scope.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config, _ = _read_json(folder / "tokenizer_config.json")
    return isinstance(config, dict) and bool(config.get("chat_template"))


def _dominant(counts: dict[str, int]) -> str | None:
    return max(counts, key=lambda k: counts[k]) if counts else None


class _FolderInfo:
    """config.json / tokenizer facts of a model folder, read once and shared by all its weight sets."""

    def __init__(self, folder: Path) -> None:
        self.problems: list[str] = []
        config, error = _read_json(folder / "config.json")
        if error:
            self.problems.append(error)
        self.config: dict[str, Any] = config if isinstance(config, dict) else {}
        self.has_config = (folder / "config.json").is_file()
        self.architecture: str | None = self.config.get("model_type")
        archs = self.config.get("architectures") or ()
        self.architectures = tuple(str(a) for a in archs) if isinstance(archs, list) else ()
        self.context_length = _context_from_config(self.config)
        self.has_tokenizer = any((folder / f).is_file() for f in _TOKENIZER_FILES)
        self.has_chat_template = _has_chat_template(folder)
        if self.config.get("auto_map"):
            self.problems.append(
                "needs custom code from the model repo (auto_map); Influence never runs code from a model folder"
            )


def _safetensors_model(
    name: str, folder: Path, source: ModelSource, info: _FolderInfo, files: list[Path]
) -> LocalModel:
    problems = list(info.problems)
    index_path = folder / "model.safetensors.index.json"
    weight_files: list[Path]
    complete = True
    if index_path.is_file():
        fmt = "safetensors-sharded"
        index, error = _read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if error or not isinstance(weight_map, dict):
            problems.append(error or f"{index_path.name} has no weight_map")
            weight_files = sorted(p for p in files if p.suffix == ".safetensors")
        else:
            shard_names = sorted(set(map(str, weight_map.values())))
            weight_files = [folder / s for s in shard_names]
            missing = [s for s in shard_names if not (folder / s).is_file()]
            if missing:
                complete = False
                problems.append(f"missing {len(missing)} of {len(shard_names)} shards: {', '.join(missing)}")
    else:
        fmt = "safetensors"
        weight_files = sorted(p for p in files if p.suffix == ".safetensors")
        if len(weight_files) > 1:
            fmt = "safetensors-sharded"
    parameters = 0
    dtypes: dict[str, int] = {}
    for shard in weight_files:
        if not shard.is_file():
            continue
        try:
            header = read_safetensors_header(shard)
        except FormatError as exc:
            problems.append(str(exc))  # names the file
            complete = False
            continue
        parameters += header.parameters
        for dtype, count in header.dtypes.items():
            dtypes[dtype] = dtypes.get(dtype, 0) + count
    if not info.has_config:
        problems.append("no config.json next to the weights")
    elif not info.architecture:
        problems.append("config.json has no model_type")
    if not info.has_tokenizer:
        problems.append("no tokenizer (tokenizer.json or tokenizer.model)")
    return LocalModel(
        name=name,
        path=folder,
        source=source,
        format=fmt,  # type: ignore[arg-type]
        quantization=_dominant(dtypes),
        architecture=info.architecture,
        architectures=info.architectures,
        parameters=parameters or None,
        context_length=info.context_length,
        size_bytes=tree_size(folder),
        has_tokenizer=info.has_tokenizer,
        has_chat_template=info.has_chat_template,
        complete=complete,
        problems=tuple(problems),
        weight_files=tuple(weight_files),
    )


def gguf_groups(files: Iterable[Path]) -> list[list[Path]]:
    """GGUF files grouped into models: a split model's parts form one group, ordered by part number."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(files):
        groups.setdefault(gguf_group_key(path.name), []).append(path)
    return list(groups.values())


def gguf_model(
    name: str, path: Path, source: ModelSource, parts: list[Path], folder_info: _FolderInfo | None = None
) -> LocalModel:
    """Describe one GGUF model (a single file or the parts of a split file) from its header."""
    problems: list[str] = []
    complete = True
    fmt = "gguf"
    first = parts[0]
    match = SPLIT_GGUF.match(first.name)
    if match:
        fmt = "gguf-split"
        total = int(match["total"])
        expected = [first.with_name(f"{match['stem']}-{i:05d}-of-{match['total']}.gguf") for i in range(1, total + 1)]
        missing = [p.name for p in expected if not p.is_file()]
        if missing:
            complete = False
            problems.append(f"missing {len(missing)} of {total} GGUF parts: {', '.join(missing)}")
        parts = [p for p in expected if p.is_file()]
        first = parts[0] if parts else first
    header: GGUFHeader | None = None
    parameters = 0
    for part in parts:
        try:
            part_header = read_gguf_header(part)
        except FormatError as exc:
            problems.append(str(exc))  # names the file
            complete = False
            continue
        parameters += part_header.parameters
        if part == first:
            header = part_header  # metadata lives in the first part
    size = 0
    for part in parts:
        try:
            size += part.stat().st_size
        except OSError as exc:
            problems.append(f"{part.name}: {exc.strerror}")
    return LocalModel(
        name=name,
        path=path,
        source=source,
        format=fmt,  # type: ignore[arg-type]
        quantization=header.quantization if header else None,
        architecture=header.architecture if header else (folder_info.architecture if folder_info else None),
        architectures=folder_info.architectures if folder_info else (),
        parameters=parameters or None,
        context_length=header.context_length if header else None,
        size_bytes=size,
        has_tokenizer=bool(header and "tokenizer.ggml.model" in header.metadata),
        has_chat_template=bool(header and header.chat_template),
        complete=complete,
        problems=tuple(problems),
        weight_files=tuple(parts),
    )


def inspect_folder(folder: Path, name: str, source: ModelSource) -> list[LocalModel]:
    """Every model a folder holds: its safetensors weights, each GGUF (or split GGUF), or its problem."""
    try:
        files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    except OSError as exc:
        return [
            LocalModel(
                name=name,
                path=folder,
                source=source,
                format="unknown",
                problems=(f"cannot read folder: {exc.strerror}",),
            )
        ]
    info = _FolderInfo(folder)
    models: list[LocalModel] = []
    if any(p.suffix == ".safetensors" for p in files) or (folder / "model.safetensors.index.json").is_file():
        models.append(_safetensors_model(name, folder, source, info, files))
    groups = gguf_groups(p for p in files if p.suffix.lower() == ".gguf")
    for parts in groups:
        model = gguf_model(name, folder, source, parts, info)
        models.append(model)
    if len(models) > 1:
        models = _name_variants(name, models)
    if not models:
        pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            problem = "only PyTorch pickle weights (.bin), which Influence does not load for safety: use a safetensors or GGUF version"
            fmt = "pytorch-bin"
        else:
            problem = "no weights found (.safetensors or .gguf)"
            fmt = "unknown"
        models.append(
            LocalModel(
                name=name,
                path=folder,
                source=source,
                format=fmt,  # type: ignore[arg-type]
                architecture=info.architecture,
                architectures=info.architectures,
                context_length=info.context_length,
                size_bytes=tree_size(folder),
                has_tokenizer=info.has_tokenizer,
                has_chat_template=info.has_chat_template,
                complete=False,
                problems=(*info.problems, problem),
                weight_files=tuple(pickles),
            )
        )
    return models


def _name_variants(base: str, models: list[LocalModel]) -> list[LocalModel]:
    """Several weight sets in one folder: the safetensors one keeps the base name, each GGUF gets ``base:QUANT``."""
    quants = [m.quantization for m in models if m.format.startswith("gguf")]
    named: list[LocalModel] = []
    for model in models:
        if not model.format.startswith("gguf"):
            named.append(model)
            continue
        tag = model.quantization if model.quantization and quants.count(model.quantization) == 1 else None
        if tag is None:
            first = model.weight_files[0].name if model.weight_files else "gguf"
            tag = SPLIT_GGUF.sub(r"\g<stem>", first).removesuffix(".gguf")
        named.append(replace(model, name=f"{base}:{tag}"))
    return named


def inspect_path(path: Path, name: str | None = None, source: ModelSource = "path") -> list[LocalModel]:
    """Describe whatever is at ``path``: a model folder or a GGUF file."""
    path = path.expanduser()
    if path.is_dir():
        return inspect_folder(path, name or path.name, source)
    if path.is_file() and path.suffix.lower() == ".gguf":
        parts = [path]
        match = SPLIT_GGUF.match(path.name)
        if match:
            parts = sorted(path.parent.glob(f"{match['stem']}-*-of-{match['total']}.gguf"))
        model_name = name or (match["stem"] if match else path.stem)
        return [gguf_model(model_name, path, source, parts)]
    if path.is_file():
        raise ModelNotFoundError(
            f"{path} is not a model: give a .gguf file or a model folder (config.json + .safetensors)"
        )
    raise ModelNotFoundError(f"no such file or folder: {path}")
