"""Fixtures for the hub and download tests: a loopback Hub serving tiny repos, and settings pointing at it.

The real ``huggingface_hub`` client and our downloader talk HTTP to :class:`tests.hub.hubserver.HubServer`;
nothing is mocked in-process. The repos are built once per session:

- ``tiny/llama-sharded``: a random llama in 2+ safetensors shards with its index and tokenizer, plus files a
  download must skip (``pytorch_model.bin``, ``onnx/model.onnx``, ``README.md``, ``.gitattributes``);
- ``tiny/gguf``: three GGUF quantizations (Q4_0, Q8_0, and F16 split in two parts) and a README;
- ``tiny/blob``: one 1 MiB safetensors file and a config, for the transfer faults; a ``v1`` branch differs.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hub.hubserver import HubServer

LLAMA = "tiny/llama-sharded"
GGUF = "tiny/gguf"
BLOB = "tiny/blob"
GATED = "tiny/gated"
TOKEN = "hf_test_token_with_access"
BLOB_BYTES = 1024 * 1024


def write_gguf(path: Path, quant: str, *, split_max_tensors: int = 0) -> None:
    """A llama-shaped GGUF (2 blocks, 4 heads, 2 KV heads, 64 wide) with ``general.file_type`` set."""
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

    file_types = {"Q4_0": LlamaFileType.MOSTLY_Q4_0, "Q8_0": LlamaFileType.MOSTLY_Q8_0, "F16": LlamaFileType.MOSTLY_F16}
    writer = GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    writer.add_block_count(2)
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_file_type(file_types[quant])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<s>", "a", "b", "ab"])
    rng = np.random.default_rng(len(quant))
    for i in range(4):
        weight = rng.standard_normal((64, 256)).astype(np.float32)
        if quant == "F16":
            writer.add_tensor(f"blk.{i}.ffn_up.weight", weight.astype(np.float16))
        else:
            kind = getattr(GGMLQuantizationType, quant)
            writer.add_tensor(f"blk.{i}.ffn_up.weight", gguf.quants.quantize(weight, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def build_blob_repo(dest: Path, *, seed: int = 1, label: str = "main") -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    dest.mkdir(parents=True, exist_ok=True)
    weight = np.random.default_rng(seed).standard_normal((256, BLOB_BYTES // 1024)).astype(np.float32)
    save_file({"weight": weight}, str(dest / "model.safetensors"))
    config = {"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}
    config["revision_label"] = label  # type: ignore[assignment]
    (dest / "config.json").write_text(json.dumps(config))
    (dest / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    return dest


@pytest.fixture(scope="session")
def repo_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.models import build_tiny_llama

    root = tmp_path_factory.mktemp("hub-repos")
    llama = build_tiny_llama(root / "llama", shards=2)
    (llama / "pytorch_model.bin").write_bytes(os.urandom(50_000))
    (llama / "onnx").mkdir()
    (llama / "onnx" / "model.onnx").write_bytes(os.urandom(40_000))
    (llama / "README.md").write_text("# tiny llama\n")
    (llama / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")

    gguf_dir = root / "gguf"
    gguf_dir.mkdir()
    write_gguf(gguf_dir / "tiny-Q4_0.gguf", "Q4_0")
    write_gguf(gguf_dir / "tiny-Q8_0.gguf", "Q8_0")
    write_gguf(gguf_dir / "tiny-F16.gguf", "F16", split_max_tensors=2)
    (gguf_dir / "README.md").write_text("# tiny gguf\n")

    blob = build_blob_repo(root / "blob")
    blob_v1 = build_blob_repo(root / "blob-v1", seed=2, label="v1")
    return {"llama": llama, "gguf": gguf_dir, "blob": blob, "blob-v1": blob_v1}


@pytest.fixture
def hub(repo_folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A running loopback Hub with the tiny repos; INFLUENCE_MIRROR points at it."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    server = HubServer().start()
    common: dict[str, Any] = {"pipeline_tag": "text-generation"}
    server.add_repo(
        LLAMA,
        repo_folders["llama"],
        downloads=500,
        likes=7,
        tags=["transformers", "safetensors", "llama", "text-generation"],
        library_name="transformers",
        **common,
    )
    server.add_repo(
        GGUF,
        repo_folders["gguf"],
        downloads=900,
        likes=3,
        tags=["gguf", "llama", "text-generation"],
        library_name="gguf",
        gguf={"total": 65536, "architecture": "llama", "context_length": 2048},
        **common,
    )
    server.add_repo(BLOB, repo_folders["blob"], revisions={"v1": repo_folders["blob-v1"]}, downloads=10, **common)
    server.add_repo(GATED, repo_folders["blob"], gated="auto", downloads=5, **common)
    server.tokens.add(TOKEN)
    monkeypatch.setenv("INFLUENCE_MIRROR", server.url)
    yield server
    server.stop()


@pytest.fixture
def hub_settings(hub: HubServer):  # type: ignore[no-untyped-def]
    from influence_tui.core.config import load_settings

    return load_settings()


@pytest.fixture
def manager(hub_settings):  # type: ignore[no-untyped-def]
    """A download manager with short timeouts, so fault tests take fractions of a second."""
    from influence_tui.core.downloads import DownloadManager

    return DownloadManager(hub_settings, stall_timeout_s=0.5, backoff_s=0.02, retries=3, connect_timeout_s=2.0)


def visible(folder: Path) -> list[str]:
    """Names in a folder that the library could see (not dot-names)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def copy_repo(src: Path, dest: Path) -> Path:
    return Path(shutil.copytree(src, dest))


@pytest.fixture
def unused_port() -> int:
    """A 127.0.0.1 port nothing listens on (connections are refused at once)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
