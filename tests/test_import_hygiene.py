"""The core imports no UI or server package; the CLI and TUI import no torch; listing models reads headers only.

Each check runs in a fresh interpreter, so modules imported by other tests cannot hide a stray import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.model_files import make_cache_repo, write_gguf

UI_AND_SERVER = ("textual", "rich", "fastapi", "uvicorn", "starlette")
HEAVY = ("torch", "transformers", "accelerate", "safetensors.torch")


def loaded_after(code: str, watch: tuple[str, ...]) -> list[str]:
    """Run ``code`` in a fresh interpreter; return which of ``watch`` (or their submodules) ended up imported."""
    probe = (
        "import json, sys\n"
        f"{code}\n"
        f"watch = {list(watch)!r}\n"
        "print(json.dumps(sorted({w for w in watch for m in sys.modules if m == w or m.startswith(w + '.')})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=dict(os.environ), timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_the_probe_sees_imports() -> None:
    assert loaded_after("import rich.text", UI_AND_SERVER) == ["rich"]


@pytest.mark.parametrize(
    "module",
    [
        "influence_tui.core",
        "influence_tui.core.config",
        "influence_tui.core.library",
        "influence_tui.core.formats",
        "influence_tui.core.types",
        "influence_tui.core.errors",
        "influence_tui.core.paths",
    ],
)
def test_core_imports_no_ui_or_server(module: str) -> None:
    assert loaded_after(f"import {module}", UI_AND_SERVER + HEAVY) == []


def test_scanning_the_library_imports_no_ui_or_torch(tiny_llama: Path, models_dir: Path) -> None:
    shutil.move(tiny_llama, models_dir / "tiny-llama")
    code = (
        "from influence_tui.core.config import load_settings\n"
        "from influence_tui.core.library import Library\n"
        "models = Library(load_settings()).models()\n"
        "assert {m.name for m in models} >= {'tiny-llama'}, models\n"
    )
    assert loaded_after(code, UI_AND_SERVER + HEAVY) == []


@pytest.mark.parametrize("module", ["influence_tui.cli", "influence_tui.tui.app"])
def test_front_ends_import_no_torch(module: str) -> None:
    assert loaded_after(f"import {module}", HEAVY) == []


def test_influence_list_imports_no_torch(tiny_llama: Path, models_dir: Path, isolated_env: Path) -> None:
    """`influence list` over a safetensors folder, a GGUF and an HF-cache model reads headers only."""
    shutil.copytree(tiny_llama, models_dir / "tiny-llama")
    write_gguf(models_dir / "tiny-q8.gguf", "Q8_0")
    make_cache_repo(isolated_env / "hf" / "hub", "acme/tiny", sorted(p for p in tiny_llama.iterdir() if p.is_file()))
    code = (
        "import contextlib, io\n"
        "from influence_tui.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    assert main(['list']) == 0\n"
        "for name in ('tiny-llama', 'tiny-q8', 'acme/tiny', 'SmolLM2-135M-Instruct (demo)'):\n"
        "    assert name in out.getvalue(), out.getvalue()\n"
    )
    assert loaded_after(code, (*HEAVY, "textual")) == []
