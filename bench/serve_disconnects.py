"""Clients that leave mid-reply: many requests at once against ``influence serve``, random ones disconnecting.

The issue's target (issue 13): 64 requests, streamed and not, random ones disconnecting part-way; every request
that completes gets exactly the text it gets alone (greedy), and the server's resident memory is back within 5%
of its idle level afterwards.

The server runs as its own process (``influence serve --parallel N``, the demo model by default). First each
question is asked alone, one after another (its solo text); the server's RSS is then read (idle: the model
loaded, the prompt cache holding those conversations, up to its bound). Then ``--requests`` requests start at
the same moment, each on a client of its own, half of them streamed; a share (``--leave``) of them disconnect:
a streamed one after a random number of chunks, one that is not streamed after a random delay (it may
complete first, and is then checked as a completed one). Once the server says nothing runs or waits, its RSS
is read again, and the prompt cache's size from /metrics both times: the cache may fill on towards its bound
(``prompt_cache_mib``) during the run, memory kept on purpose, so the RSS growth is shown both as it is and
beside the cache's own growth. Exit status 1 when a completed text differs from its solo text, the server is
not idle afterwards, or the RSS beside the prompt cache grew more than 5%.

    python bench/serve_disconnects.py                          # the demo, 64 requests, 8 at once
    python bench/serve_disconnects.py --requests 128 --parallel 4 --json /tmp/disconnects.json

:func:`run` and :func:`solo` take any server's URL (the tests use them on a server in a thread).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve_load import TOPICS, model_gguf, start_ours  # noqa: E402

RSS_TARGET = 0.05
"""How far above its idle RSS the server may stay after the run."""


@dataclass(frozen=True)
class Outcome:
    index: int
    question: int
    stream: bool
    leave: bool
    """Whether this client meant to disconnect."""
    completed: bool
    """Whether it read a whole answer (one that meant to leave may complete first)."""
    text: str
    finish: str | None


def questions(count: int = len(TOPICS)) -> list[str]:
    return [f"Tell me about {topic}." for topic in TOPICS[:count]]


def _body(model: str, question: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    messages = [{"role": "user", "content": question}]
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": stream}


def solo(
    base_url: str, model: str, asked: list[str], max_tokens: int, headers: dict[str, str] | None = None
) -> list[str]:
    """Each question alone, one after another: its greedy text."""
    import httpx

    texts = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=300) as http:
        for question in asked:
            reply = http.post("/v1/chat/completions", json=_body(model, question, max_tokens, False))
            reply.raise_for_status()
            texts.append(reply.json()["choices"][0]["message"]["content"])
    return texts


async def _one(
    base_url: str,
    model: str,
    index: int,
    question: int,
    text: str,
    *,
    stream: bool,
    leave_after: float | None,
    max_tokens: int,
    headers: dict[str, str] | None,
) -> Outcome:
    """One client on its own connection; ``leave_after``: chunks (streamed) or seconds (not) before it leaves."""
    import httpx

    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=300) as http:
        body = _body(model, text, max_tokens, stream)
        if not stream:
            try:
                if leave_after is None:
                    reply = await http.post("/v1/chat/completions", json=body)
                else:
                    reply = await asyncio.wait_for(http.post("/v1/chat/completions", json=body), leave_after)
            except asyncio.TimeoutError:
                return Outcome(index, question, stream, True, False, "", None)
            reply.raise_for_status()
            choice = reply.json()["choices"][0]
            return Outcome(
                index,
                question,
                stream,
                leave_after is not None,
                True,
                choice["message"]["content"],
                choice["finish_reason"],
            )
        parts: list[str] = []
        finish = None
        chunks = 0
        async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
            reply.raise_for_status()
            async for line in reply.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                choices = json.loads(line[len("data: ") :]).get("choices") or []
                if not choices:
                    continue
                parts.append(choices[0]["delta"].get("content") or "")
                finish = choices[0].get("finish_reason") or finish
                chunks += 1
                if leave_after is not None and chunks >= leave_after and finish is None:
                    return Outcome(index, question, stream, True, False, "".join(parts), None)
        return Outcome(index, question, stream, leave_after is not None, finish is not None, "".join(parts), finish)


async def _all(
    base_url: str,
    model: str,
    asked: list[str],
    *,
    requests: int,
    seed: int,
    max_tokens: int,
    leave: float,
    leave_s: tuple[float, float],
    headers: dict[str, str] | None,
) -> list[Outcome]:
    rng = random.Random(seed)
    jobs = []
    for index in range(requests):
        question = rng.randrange(len(asked))
        stream = index % 2 == 0
        leave_after: float | None = None
        if rng.random() < leave:
            leave_after = float(rng.randint(1, max(1, max_tokens // 2))) if stream else rng.uniform(*leave_s)
        jobs.append(
            _one(
                base_url,
                model,
                index,
                question,
                asked[question],
                stream=stream,
                leave_after=leave_after,
                max_tokens=max_tokens,
                headers=headers,
            )
        )
    return list(await asyncio.gather(*jobs))


def run(
    base_url: str,
    model: str,
    asked: list[str],
    *,
    requests: int = 64,
    seed: int = 0,
    max_tokens: int = 48,
    leave: float = 0.4,
    leave_s: tuple[float, float] = (0.2, 3.0),
    headers: dict[str, str] | None = None,
) -> list[Outcome]:
    """``requests`` clients at once, each asking one of ``asked`` (chosen at random with ``seed``); a ``leave``
    share of them disconnect part-way (a non-streamed one after ``leave_s`` seconds, drawn uniformly)."""
    return asyncio.run(
        _all(
            base_url,
            model,
            asked,
            requests=requests,
            seed=seed,
            max_tokens=max_tokens,
            leave=leave,
            leave_s=leave_s,
            headers=headers,
        )
    )


def mismatches(outcomes: list[Outcome], alone: list[str]) -> list[Outcome]:
    """The completed requests whose text is not their question's solo text."""
    return [o for o in outcomes if o.completed and o.text != alone[o.question]]


def wait_idle(base_url: str, timeout: float = 60.0, headers: dict[str, str] | None = None) -> bool:
    """Whether the server's /health says nothing runs or waits (within ``timeout`` seconds)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        requests = httpx.get(f"{base_url}/health", headers=headers, timeout=10).json().get("requests", {})
        if requests.get("running") == 0 and requests.get("waiting") == 0:
            return True
        time.sleep(0.1)
    return False


def prompt_cache_bytes(base_url: str, headers: dict[str, str] | None = None) -> float:
    """What the server's prompt caches hold (``influence:prompt_cache_usage_bytes`` summed over its models)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", headers=headers, timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "influence:prompt_cache_usage_bytes"
    )


def main(argv: list[str] | None = None) -> int:
    import httpx
    import psutil

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", help="a model of the library or a path (default: the demo)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens of each request")
    parser.add_argument("--leave", type=float, default=0.4, help="share of the clients that disconnect")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    gguf = model_gguf(parser, args.model)
    with tempfile.TemporaryDirectory() as home:
        server, served = start_ours(
            args.model if args.model == "demo" else str(gguf), gguf, args.threads, args.parallel, Path(home)
        )
        try:
            server.wait_ready(served)
            base = f"http://127.0.0.1:{server.port}"
            process = psutil.Process(server.process.pid)
            asked = questions()
            started = time.perf_counter()
            alone = solo(base, served, asked, args.tokens)
            solo_s = time.perf_counter() - started
            time.sleep(1.0)
            idle_rss = process.memory_info().rss
            idle_cache = prompt_cache_bytes(base)
            started = time.perf_counter()
            outcomes = run(
                base,
                served,
                asked,
                requests=args.requests,
                seed=args.seed,
                max_tokens=args.tokens,
                leave=args.leave,
                leave_s=(0.2, max(0.3, 0.8 * solo_s / len(asked))),
            )
            wall_s = time.perf_counter() - started
            idle_again = wait_idle(base)
            time.sleep(1.0)
            after_rss = process.memory_info().rss
            after_cache = prompt_cache_bytes(base)
            health = httpx.get(f"{base}/health", timeout=10).json()
        finally:
            server.stop()
    wrong = mismatches(outcomes, alone)
    completed = [o for o in outcomes if o.completed]
    growth = after_rss / idle_rss - 1
    net = (after_rss - (after_cache - idle_cache)) / idle_rss - 1
    figures = {
        "requests": len(outcomes),
        "streamed": sum(o.stream for o in outcomes),
        "meant_to_leave": sum(o.leave for o in outcomes),
        "left": sum(not o.completed for o in outcomes),
        "completed": len(completed),
        "completed_equal_to_solo": len(completed) - len(wrong),
        "wall_s": round(wall_s, 2),
        "idle_rss_mib": round(idle_rss / 2**20, 1),
        "after_rss_mib": round(after_rss / 2**20, 1),
        "rss_growth": round(growth, 4),
        "idle_prompt_cache_mib": round(idle_cache / 2**20, 1),
        "after_prompt_cache_mib": round(after_cache / 2**20, 1),
        "rss_growth_beside_the_prompt_cache": round(net, 4),
        "server_idle_after": idle_again,
        "health_requests_after": health.get("requests"),
        "outcomes": [asdict(o) for o in outcomes],
    }
    print(
        f"{figures['requests']} requests ({figures['streamed']} streamed): {figures['left']} left part-way, "
        f"{figures['completed']} completed, {figures['completed_equal_to_solo']} of them equal to their solo text; "
        f"{wall_s:.1f} s"
    )
    print(
        f"server RSS idle {figures['idle_rss_mib']} MiB, after {figures['after_rss_mib']} MiB "
        f"({growth:+.1%}; target within {RSS_TARGET:.0%}); idle again: {idle_again}"
    )
    print(
        f"prompt cache idle {figures['idle_prompt_cache_mib']} MiB, after {figures['after_prompt_cache_mib']} MiB "
        f"(bounded by prompt_cache_mib); RSS growth beside it {net:+.1%}"
    )
    for outcome in wrong:
        print(f"  request {outcome.index} (question {outcome.question}) differs: {outcome.text!r}")
    print(f"target, RSS within {RSS_TARGET:.0%} of idle: " + ("met" if growth <= RSS_TARGET else "MISSED"))
    print(f"target, RSS within {RSS_TARGET:.0%} beside the prompt cache: " + ("met" if net <= RSS_TARGET else "MISSED"))
    met = not wrong and net <= RSS_TARGET and idle_again
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
