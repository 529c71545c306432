"""Planning: which files of a Hub repo running its model needs (config, tokenizer, weights or one GGUF quantization)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import TYPE_CHECKING

from influence_tui.core.errors import DownloadError
from influence_tui.core.hub import gguf_groups
from influence_tui.core.types import DownloadFile, RepoFile
from influence_tui.core.units import human_size

if TYPE_CHECKING:
    from influence_tui.core.hub import HubClient, RepoInfo

#: Small files a model needs beside its weights: config, generation config, tokenizer, chat template,
#: and the sentence-transformers files an embedding model reads.
RUNTIME_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
RUNTIME_GLOBS = ("*_Pooling/config.json", "additional_chat_templates/*.jinja")


def _download_file(f: RepoFile, local: str | None = None) -> DownloadFile:
    return DownloadFile(repo_path=f.path, local_path=local or f.path, size=f.size, sha256=f.sha256, blob_id=f.blob_id)


def select_files(
    client: HubClient, repo: RepoInfo, *, quant: str | None = None, include: Sequence[str] = ()
) -> list[DownloadFile]:
    """What running the repo's model needs: config, tokenizer and chat template files plus the safetensors
    weights (every shard of the index), or exactly one GGUF quantization (every part of a split one, saved
    flat in the model folder). Other weights (.bin, .onnx, .h5, .msgpack...) only when ``include`` names them."""
    repo_id = repo.model.id
    chosen: dict[str, DownloadFile] = {}
    groups = gguf_groups([f for f in repo.files if f.path.lower().endswith(".gguf")])
    has_safetensors = any(f.path.endswith(".safetensors") for f in repo.files)

    def runtime_files() -> None:
        for f in repo.files:
            if f.path in RUNTIME_FILES or any(fnmatch.fnmatch(f.path, g) for g in RUNTIME_GLOBS):
                chosen.setdefault(f.path, _download_file(f))

    available = ", ".join(f"{name} ({human_size(sum(p.size for p in parts))})" for name, parts in groups.items())
    if quant and quant.lower() != "safetensors":
        if not groups:
            raise DownloadError(
                f"{repo_id} has no GGUF files, so --quant {quant} does not apply",
                hint="drop --quant to download its safetensors weights" if has_safetensors else None,
            )
        match = [name for name in groups if name.lower() == quant.lower()]
        if not match:
            raise DownloadError(f"{repo_id} has no GGUF quantization {quant!r}", hint=f"available: {available}")
        for part in groups[match[0]]:
            chosen[part.path] = _download_file(part, local=part.path.rsplit("/", 1)[-1])
    elif has_safetensors:
        runtime_files()
        weights = client.safetensors_files(repo)
        if repo.file("model.safetensors.index.json"):
            index = repo.file("model.safetensors.index.json")
            assert index is not None
            chosen[index.path] = _download_file(index)
        for f in weights:
            chosen[f.path] = _download_file(f)
    elif quant:
        raise DownloadError(f"{repo_id} has no safetensors weights", hint=f"GGUF choices: {available or 'none'}")
    elif len(groups) == 1:
        (parts,) = groups.values()
        for part in parts:
            chosen[part.path] = _download_file(part, local=part.path.rsplit("/", 1)[-1])
    elif groups:
        raise DownloadError(
            f"{repo_id} offers {len(groups)} GGUF quantizations; choose one with --quant",
            hint=f"available: {available}",
        )
    elif not include:
        others = sorted({f.path.rsplit(".", 1)[-1] for f in repo.files if f.path.endswith((".bin", ".pt", ".pth"))})
        what = "only PyTorch pickle weights (.bin), which Influence does not load" if others else "no weights"
        raise DownloadError(
            f"{repo_id} has {what}; look for a safetensors or GGUF version",
            hint="`--include GLOB` downloads named files anyway",
        )
    else:
        runtime_files()
    for pattern in include:
        matched = [
            f
            for f in repo.files
            if fnmatch.fnmatch(f.path, pattern) or fnmatch.fnmatch(f.path.rsplit("/", 1)[-1], pattern)
        ]
        if not matched:
            raise DownloadError(f"--include {pattern!r} matches no file of {repo_id}")
        for f in matched:
            chosen.setdefault(f.path, _download_file(f))
    locals_seen: dict[str, str] = {}
    for planned in chosen.values():
        if planned.local_path in locals_seen:
            raise DownloadError(
                f"{repo_id}: {planned.repo_path} and {locals_seen[planned.local_path]} would both be saved as "
                f"{planned.local_path}"
            )
        locals_seen[planned.local_path] = planned.repo_path
    return sorted(chosen.values(), key=lambda f: f.local_path)
