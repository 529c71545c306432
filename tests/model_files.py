"""Model files laid out for tests: GGUFs written by the `gguf` package (so header tests do not depend on our own
reader) and HuggingFace-cache folders laid out as huggingface_hub lays them out."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

COMMIT = "0123456789abcdef0123456789abcdef01234567"

#: Elements in the weights of one file written by :func:`write_gguf`: two 64x64 matrices and a 64-wide norm.
GGUF_PARAMETERS = 2 * 64 * 64 + 64


def write_gguf(
    path: Path,
    quant: str = "Q8_0",
    *,
    arch: str = "llama",
    file_type: bool = True,
    context: int | None = 2048,
    chat_template: str | None = "{{ messages }}",
    tokenizer: bool = True,
    split_max_tensors: int = 0,
) -> Path:
    """Write a GGUF with two 64x64 weights in ``quant`` (Q8_0, F16 or F32) plus an F32 norm; return ``path``."""
    import gguf
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    if context is not None:
        writer.add_context_length(context)
    if file_type:
        writer.add_file_type(
            {"Q8_0": LlamaFileType.MOSTLY_Q8_0, "F16": LlamaFileType.MOSTLY_F16, "F32": LlamaFileType.ALL_F32}[quant]
        )
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(["<s>", "a", "b", "ab"])
    rng = np.random.default_rng(0)
    for i in range(2):
        weight = rng.standard_normal((64, 64)).astype(np.float32)
        if quant == "Q8_0":
            writer.add_tensor(
                f"blk.{i}.ffn_up.weight",
                gguf.quants.quantize(weight, GGMLQuantizationType.Q8_0),
                raw_dtype=GGMLQuantizationType.Q8_0,
            )
        elif quant == "F16":
            writer.add_tensor(f"blk.{i}.ffn_up.weight", weight.astype(np.float16))
        else:
            writer.add_tensor(f"blk.{i}.ffn_up.weight", weight)
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def make_cache_repo(hub: Path, repo_id: str, files: list[Path], commit: str = COMMIT) -> Path:
    """Lay out ``files`` as huggingface_hub does: blobs named by hash, a snapshot of links to them, refs/main."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    for file in files:
        data = file.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot
