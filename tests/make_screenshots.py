"""Write screenshots/ from the real app (never hand-edited): `make screenshots`.

Runs the app headless at fixed sizes in a throwaway data dir that holds the demo model (and whatever else a
screen needs), saves Textual's SVG, and turns it into PNG when `rsvg-convert` (librsvg2-bin) is installed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "screenshots"


async def _library(size: tuple[int, int], name: str) -> Path:
    from influence_tui.core.config import load_settings
    from influence_tui.tui.app import InfluenceApp

    app = InfluenceApp(load_settings())
    async with app.run_test(size=size) as pilot:
        await pilot.pause(0.5)
        await app.workers.wait_for_complete()
        await pilot.pause(1.0)  # DataTable sizes its columns on the next refresh
        return Path(app.save_screenshot(filename=f"{name}.svg", path=str(OUT)))


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for var in ("INFLUENCE_CONFIG_DIR", "INFLUENCE_DATA_DIR", "INFLUENCE_CACHE_DIR", "HF_HOME"):
            os.environ[var] = str(Path(tmp) / var.lower())
        os.environ["HF_HUB_OFFLINE"] = "1"
        shots = [asyncio.run(_library((80, 24), "library-80x24")), asyncio.run(_library((120, 34), "library-120x34"))]
    converter = shutil.which("rsvg-convert")
    for svg in shots:
        if converter:
            subprocess.run([converter, str(svg), "-o", str(svg.with_suffix(".png"))], check=True)
        print(f"wrote {svg}" + (f" and {svg.with_suffix('.png').name}" if converter else ""))


if __name__ == "__main__":
    main()
