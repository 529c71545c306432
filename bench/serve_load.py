"""Many clients at once against a real server: ``influence serve`` beside llama.cpp's server, in one run.

Each system runs as its own server process (real uvicorn): ``influence serve --parallel N`` and, when
``llama-cpp-python`` is installed, ``python -m llama_cpp.server`` on the same GGUF (``--interrupt_requests
False``, so a new request waits instead of cutting off the running one). For each number of clients in
``--clients`` (default ``1,8``), that many clients of the official ``openai`` package stream chat completions
at the same moment (``max_tokens`` = ``--tokens``, greedy, a different question each, so no prompt is served
from a cache), ``--rounds`` times; a warm-up request comes first. Figures per row:

* aggregate tok/s: every completion token of the round(s) over their wall time (tokens as the server's
  ``usage`` reports them, else one per streamed chunk);
* median TTFT: from sending a request to its first content chunk, over every request;
* median latency: from sending a request to its last chunk;
* x 1 client: aggregate tok/s over the same system's single-client figure in this run.

The issue's targets (issue 13, demo model): with 8 clients, aggregate tok/s >= 4x the single-client figure and
median TTFT <= 2x the single-client one; they are printed at the end with met / MISSED. Both servers get
``--threads`` threads. Run it on an otherwise quiet machine: every figure is a timing.

    python bench/serve_load.py                                  # the demo, 1 vs 8 clients, ours and llama.cpp
    python bench/serve_load.py --clients 1,4,8 --tokens 64 --rounds 2
    python bench/serve_load.py --model ~/models/tinyllama-1b-q4_0.gguf --systems ours --json /tmp/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOPICS = [
    "the history of Paris",
    "how bread is made",
    "the planets of the solar system",
    "why the sky is blue",
    "a cat who learns to fly",
    "the rules of chess",
    "how a bicycle works",
    "the life of bees",
    "a journey across the desert",
    "the invention of the printing press",
    "how rain forms",
    "a lighthouse keeper's day",
    "the oceans of the world",
    "how computers add numbers",
    "a dragon who loves tea",
    "the first flight of the Wright brothers",
    "how volcanoes erupt",
    "a robot learning to paint",
    "the seasons of the year",
    "how trains run on time",
]
SYSTEM_NAMES = {"ours": "ours", "llamacpp": "llama.cpp"}
READY_TIMEOUT_S = 300


@dataclass(frozen=True)
class Row:
    system: str
    clients: int
    requests: int
    tokens: int
    wall_s: float
    aggregate_tok_s: float
    median_ttft_s: float
    median_latency_s: float


@dataclass(frozen=True)
class _Reply:
    tokens: int
    ttft_s: float
    latency_s: float


# ------------------------------------------------------------------------------------------ servers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A server process on a free port of 127.0.0.1, ready once its model answers."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.name = name
        self.port = port
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(command, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, model: str) -> None:
        import httpx

        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}); log: {self.log}")
            try:
                reply = httpx.post(
                    f"{self.base_url}/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
                    timeout=60,
                )
                if reply.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} was not ready after {READY_TIMEOUT_S} s; log: {self.log}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._out.close()


def _env(threads: int, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": str(threads),
            "INFLUENCE_CONFIG_DIR": str(home / "config"),
            "INFLUENCE_DATA_DIR": str(home / "data"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def model_gguf(parser: argparse.ArgumentParser, model: str) -> Path:
    """The GGUF file ``--model`` names: the installed demo for ``demo``, else the path given."""
    if model != "demo":
        return Path(model).expanduser().resolve()
    from influence_tui.core.library import demo_model_file

    found = demo_model_file()
    if found is None:
        parser.error("the demo model is not installed (make install installs it)")
    return found


def start_ours(model: str, gguf: Path, threads: int, parallel: int, home: Path) -> tuple[Server, str]:
    port = _free_port()
    command = [sys.executable, "-m", "influence_tui", "serve", "--model", model, "--port", str(port)]
    command += ["--parallel", str(parallel)]
    server = Server("ours", command, _env(threads, home), port, home / "ours.log")
    return server, _served_id(model, gguf)


def _served_id(model: str, gguf: Path) -> str:
    from influence_tui.core.library import DEMO_NAME, gguf_model
    from influence_tui.core.model_ids import model_id

    if model == "demo":
        return model_id(gguf_model(DEMO_NAME, gguf, "demo", [gguf]))
    return model


def start_llamacpp(gguf: Path, threads: int, home: Path) -> tuple[Server, str]:
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port)]
    command += ["--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "4096"]
    command += ["--interrupt_requests", "False", "--model_alias", "model"]
    return Server("llama.cpp", command, _env(threads, home), port, home / "llamacpp.log"), "model"


# ------------------------------------------------------------------------------------------ load


async def _one(client: Any, model: str, question: str, tokens: int) -> _Reply:
    sent = time.perf_counter()
    first = 0.0
    chunks = 0
    usage = None
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"Write a long story about {question}."}],
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            if not first:
                first = time.perf_counter()
    done = time.perf_counter()
    return _Reply(usage if usage is not None else chunks, (first or done) - sent, done - sent)


async def _load(base_url: str, model: str, clients: int, *, rounds: int, tokens: int, offset: int) -> Row:
    import openai

    replies: list[_Reply] = []
    wall = 0.0
    async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600) as client:
        for r in range(rounds):
            questions = [TOPICS[(offset + r * clients + i) % len(TOPICS)] for i in range(clients)]
            start = time.perf_counter()
            replies += await asyncio.gather(*(_one(client, model, q, tokens) for q in questions))
            wall += time.perf_counter() - start
    total = sum(r.tokens for r in replies)
    return Row(
        system="",
        clients=clients,
        requests=len(replies),
        tokens=total,
        wall_s=wall,
        aggregate_tok_s=total / wall if wall else 0.0,
        median_ttft_s=statistics.median(r.ttft_s for r in replies),
        median_latency_s=statistics.median(r.latency_s for r in replies),
    )


def measure(server: Server, model: str, clients: list[int], rounds: int, tokens: int) -> list[Row]:
    server.wait_ready(model)
    rows = []
    for i, n in enumerate(clients):
        # The single client runs as many requests as the largest batch would, one after another.
        per_round = max(clients) // n if n == 1 else 1
        row = asyncio.run(_load(server.base_url, model, n, rounds=rounds * per_round, tokens=tokens, offset=i * 7))
        rows.append(Row(**{**asdict(row), "system": server.name}))
        print(f"  {server.name}: {n} client(s): {row.aggregate_tok_s:.1f} tok/s", file=sys.stderr, flush=True)
    return rows


# ------------------------------------------------------------------------------------------ report


def report(rows: list[Row]) -> str:
    single = {r.system: r.aggregate_tok_s for r in rows if r.clients == 1}
    single_ttft = {r.system: r.median_ttft_s for r in rows if r.clients == 1}
    header = (
        "| system | clients | requests | tokens | wall | aggregate tok/s | median TTFT | median latency "
        "| x 1 client | TTFT ÷ 1 client |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        x = f"{r.aggregate_tok_s / single[r.system]:.2f}x" if single.get(r.system) else ""
        t = f"{r.median_ttft_s / single_ttft[r.system]:.2f}x" if single_ttft.get(r.system) else ""
        lines.append(
            f"| {r.system} | {r.clients} | {r.requests} | {r.tokens} | {r.wall_s:.1f} s | {r.aggregate_tok_s:.1f} "
            f"| {r.median_ttft_s * 1000:.0f} ms | {r.median_latency_s:.2f} s | {x} | {t} |"
        )
    return "\n".join(lines)


def targets(rows: list[Row]) -> list[str]:
    ours = {r.clients: r for r in rows if r.system == "ours"}
    if 1 not in ours or 8 not in ours:
        return []
    speedup = ours[8].aggregate_tok_s / ours[1].aggregate_tok_s
    ttft = ours[8].median_ttft_s / ours[1].median_ttft_s
    out = [
        f"8 clients: aggregate {speedup:.2f}x one client's (target >= 4x): {'met' if speedup >= 4 else 'MISSED'}",
        f"8 clients: median TTFT {ttft:.2f}x one client's (target <= 2x): {'met' if ttft <= 2 else 'MISSED'}",
    ]
    peer = {r.clients: r for r in rows if r.system == "llama.cpp"}
    if 8 in peer:
        out.append(f"8 clients: ours {ours[8].aggregate_tok_s / peer[8].aggregate_tok_s:.2f}x llama.cpp's server")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", help="demo, or a GGUF file (default: demo)")
    parser.add_argument("--clients", default="1,8", help="client counts, comma-separated (default: 1,8)")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens of each request (default: 128)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per client count (default: 1)")
    parser.add_argument("--parallel", type=int, default=8, help="influence serve --parallel (default: 8)")
    parser.add_argument("--threads", type=int, default=2, help="threads of each server (default: 2)")
    parser.add_argument("--systems", default="ours,llamacpp", help="ours, llamacpp (default: both)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # stop the servers on the way out

    clients = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    gguf = model_gguf(parser, args.model)
    if "llamacpp" in systems and importlib.util.find_spec("llama_cpp") is None:
        print("llama-cpp-python is not installed: llama.cpp's server is left out", file=sys.stderr)
        systems.remove("llamacpp")

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        home = Path(scratch)
        for system in systems:
            if system == "ours":
                server, model = start_ours(
                    args.model if args.model == "demo" else str(gguf), gguf, args.threads, args.parallel, home
                )
            else:
                server, model = start_llamacpp(gguf, args.threads, home)
            try:
                rows += measure(server, model, clients, args.rounds, args.tokens)
            finally:
                server.stop()

    print(
        f"\n{gguf.name}, {args.tokens} greedy tokens per request, {args.threads} threads, "
        f"influence serve --parallel {args.parallel}\n"
    )
    print(report(rows))
    for line in targets(rows):
        print(line)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
