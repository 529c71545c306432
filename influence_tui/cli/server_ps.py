"""`influence ps`: the servers that run (from their records) and what runs inside each (from its /health)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from influence_tui.cli.common import EXIT_ERROR, EXIT_OK, console, print_json

PS_TIMEOUT_S = 1.0
"""How long ``ps`` waits for each server's /health."""


def fetch_health(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """A server's /health answer, or None when it does not answer (in ``timeout`` seconds) with JSON."""
    import httpx

    try:
        response = httpx.get(f"{url}/health", timeout=timeout)
        data = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _uptime(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _inside(health: dict[str, Any] | None) -> dict[str, Any]:
    """What runs inside a server, from its /health: requests running and waiting, the models in memory (a
    pool's ``models`` when it reports them, else the one it serves once loaded)."""
    requests = health.get("requests") if health else None
    requests = requests if isinstance(requests, dict) else {}
    models: list[str] = []
    listed = health.get("models") if health else None
    if isinstance(listed, list):
        models = [str(m.get("name", m.get("model", "?"))) if isinstance(m, dict) else str(m) for m in listed]
    elif health and health.get("loaded"):
        models = [str(health.get("model"))]
    return {
        "running": int(requests.get("running", 0) or 0),
        "waiting": int(requests.get("waiting", 0) or 0),
        "models_loaded": models,
    }


def cmd_ps(args: argparse.Namespace) -> int:
    from influence_tui.server import registry

    rows: list[dict[str, Any]] = []
    for record in registry.running_servers():
        health = fetch_health(record.url, timeout=PS_TIMEOUT_S)
        status = str(health.get("status")) if health else "not answering"
        uptime = float(health["uptime_s"]) if health and "uptime_s" in health else time.time() - record.started_at
        rows.append(
            {
                **record.to_dict(),
                "status": status,
                "uptime_s": round(uptime, 1),
                "loaded": health.get("loaded") if health else None,
                "error": health.get("error") if health else None,
                **_inside(health),
            }
        )
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print("No Influence server is running. `influence serve --detach` starts one in the background.")
        return EXIT_OK
    from rich import box
    from rich.table import Table
    from rich.text import Text

    out = console()
    table = Table(box=box.SIMPLE_HEAD if out.is_terminal else None, pad_edge=False)
    for column in ("PID", "URL", "MODEL", "STATUS", "RUNNING", "WAITING", "LOADED", "UPTIME", "LOG"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        answering = row["status"] != "not answering"
        table.add_row(
            str(row["pid"]),
            Text(row["url"]),
            Text(row["model"]),
            Text(row["status"] if row["status"] != "ok" else "ready"),
            str(row["running"]) if answering else "-",
            str(row["waiting"]) if answering else "-",
            Text(", ".join(row["models_loaded"]) or "-"),
            _uptime(row["uptime_s"]),
            Text(row["log"] or "(foreground)"),
        )
    out.print(table)
    for row in rows:
        if row["error"]:
            out.print(Text(f"{row['url']}: {row['error']}"))
    return EXIT_OK if all(r["status"] != "error" for r in rows) else EXIT_ERROR
