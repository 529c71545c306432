"""The hub and download core stay light: no UI, server or torch imports, and no HTTP library until used."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.hub.conftest import GGUF
from tests.hub.hubserver import HubServer

UI_SERVER_HEAVY = ("textual", "rich", "fastapi", "uvicorn", "starlette", "torch", "transformers")


def loaded_after(code: str, watch: tuple[str, ...]) -> list[str]:
    probe = (
        "import json, sys\n"
        f"{code}\n"
        f"watch = {list(watch)!r}\n"
        "print(json.dumps(sorted({w for w in watch for m in sys.modules if m == w or m.startswith(w + '.')})))\n"
    )
    env = dict(os.environ)
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_importing_hub_and_downloads_is_light() -> None:
    code = "import influence_tui.core.hub, influence_tui.core.downloads, influence_tui.core.manifest"
    assert loaded_after(code, (*UI_SERVER_HEAVY, "httpx", "huggingface_hub", "psutil")) == []


def test_describing_a_model_imports_no_ui_or_torch(hub: HubServer) -> None:
    code = (
        "from influence_tui.core.config import load_settings\n"
        "from influence_tui.core.hub import model_details\n"
        f"details = model_details(load_settings(), {GGUF!r})\n"
        "assert len(details.choices) == 3, details.choices\n"
    )
    # httpx itself imports rich (for its own command line), so rich is not watched once bytes are fetched;
    # torch is asked for free VRAM only where an NVIDIA driver is present
    watch = tuple(m for m in UI_SERVER_HEAVY if m != "rich")
    if os.path.exists("/proc/driver/nvidia/version"):
        watch = tuple(m for m in watch if m not in ("torch", "transformers"))
    assert loaded_after(code, watch) == []
