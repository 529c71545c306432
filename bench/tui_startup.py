"""Launch-to-first-paint of `influence-tui`: the real entry point in a pseudo-terminal, timed from the moment the
process is started to the moment the chat screen's first frame has been written.

Each run uses a fresh throwaway data dir (no saved chats, so no dialog), and the first paint must not wait for
torch: the demo model starts loading after it. Prints each run and the median:

    .venv/bin/python bench/tui_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = b"F1 Chat"
"""The mode bar's first tab: in the first frame of the chat screen."""


def one_run(columns: int = 120, rows: int = 36, timeout: float = 60.0) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "TERM": "xterm-256color",
            "INFLUENCE_CONFIG_DIR": f"{tmp}/config",
            "INFLUENCE_DATA_DIR": f"{tmp}/data",
            "INFLUENCE_CACHE_DIR": f"{tmp}/cache",
            "HF_HOME": f"{tmp}/hf",
            "HF_HUB_OFFLINE": "1",
        }
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        entry = Path(sys.executable).parent / "influence-tui"
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(entry)],
            stdin=follower,
            stdout=follower,
            stderr=follower,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
        os.close(follower)
        seen = b""
        painted: float | None = None
        try:
            while time.perf_counter() - start < timeout:
                ready, _, _ = select.select([leader], [], [], 0.05)
                if not ready:
                    continue
                try:
                    chunk = os.read(leader, 65536)
                except OSError:
                    break
                seen += chunk
                if MARKER in seen:
                    painted = time.perf_counter() - start
                    break
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            os.close(leader)
        if painted is None:
            raise SystemExit(f"no first paint within {timeout} s; output was: {seen[-400:]!r}")
        return painted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    one_run()  # warm the file cache (bytecode, shared libraries)
    times = []
    for run in range(1, args.runs + 1):
        seconds = one_run()
        times.append(seconds)
        print(f"run {run}: {seconds * 1000:.0f} ms")
    print(f"launch to first paint: median {statistics.median(times) * 1000:.0f} ms over {len(times)} runs")


if __name__ == "__main__":
    main()
