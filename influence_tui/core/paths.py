"""Where Influence keeps its files, from platformdirs, each overridable by an environment variable.

The settings layer (``config.py``) decides the final models and sessions dirs; this module only knows the
platform defaults and the config dir, which must be known before any config file can be read.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import PlatformDirs

APP_NAME = "influence"

_dirs = PlatformDirs(APP_NAME, appauthor=False)


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser() if value else default


def config_dir() -> Path:
    """Holds ``config.toml``. ``INFLUENCE_CONFIG_DIR`` overrides it."""
    return _env_path("INFLUENCE_CONFIG_DIR", Path(_dirs.user_config_dir))


def config_file() -> Path:
    return config_dir() / "config.toml"


def data_dir() -> Path:
    """Root of what Influence stores for the user. ``INFLUENCE_DATA_DIR`` overrides it."""
    return _env_path("INFLUENCE_DATA_DIR", Path(_dirs.user_data_dir))


def default_models_dir() -> Path:
    return data_dir() / "models"


def default_sessions_dir() -> Path:
    return data_dir() / "sessions"


def default_cache_dir() -> Path:
    """Scratch space (partial downloads, compiled kernels). ``INFLUENCE_CACHE_DIR`` overrides it."""
    return _env_path("INFLUENCE_CACHE_DIR", Path(_dirs.user_cache_dir))


def hf_hub_cache_dir() -> Path:
    """The HuggingFace hub cache, resolved as huggingface_hub does (HF_HUB_CACHE, then HF_HOME/hub).

    Read from the environment on every call (huggingface_hub's own constant is frozen at import time).
    """
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    hf_home = os.environ.get("HF_HOME")
    if hf_home:
        return Path(hf_home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"
