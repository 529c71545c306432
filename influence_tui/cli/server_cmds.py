"""`influence serve | ps`: the OpenAI- and Ollama-compatible HTTP server, in the foreground or the background.

``serve`` binds first (so a busy port fails at once), starts answering, and loads the model on the engine
thread meanwhile (/health says ``loading``). ``serve --detach`` starts the same command as a background
process with its output in a log file, waits until /health says ``ok`` (or shows the log's tail if the
process dies) and prints the URL. Each server keeps a small record in the data dir; ``ps`` lists them (and asks
each one's /health what runs inside) and ``serve --stop`` stops one. SIGTERM, Ctrl+C and ``--stop`` stop a
server gracefully (:mod:`~influence_tui.server.lifecycle`): no new requests, ``--grace`` seconds for the running
ones, then they end with "abort".
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from influence_tui.cli.common import EXIT_OK, SETTING_FLAGS
from influence_tui.cli.server_ps import cmd_ps, fetch_health
from influence_tui.core.errors import InfluenceError

if TYPE_CHECKING:
    from influence_tui.cli import AddCommand
    from influence_tui.core.config import Settings
    from influence_tui.core.remotes import Remote
    from influence_tui.core.types import LocalModel
    from influence_tui.server.registry import ServerRecord

API_KEY_ENV = "INFLUENCE_API_KEY"
READY_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 20.0
"""How long ``serve --stop`` waits, beyond the server's grace period, before it kills it."""


class _Stopped(Exception):
    """SIGTERM or Ctrl+C after the server shut down gracefully."""


def _resolve_model(settings: Settings) -> LocalModel:
    from influence_tui.core.library import Library

    library = Library(settings)
    return library.resolve(settings.model) if settings.model else library.default()


def _api_key(args: argparse.Namespace) -> str | None:
    return args.api_key or os.environ.get(API_KEY_ENV, "").strip() or None


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (IPv4 or IPv6 as the address says), or a clear error."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise InfluenceError(
            f"cannot listen on {host}: {exc.strerror}", hint="give --host an address of this machine"
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InfluenceError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="another server may be using the port (`influence ps` lists Influence's); choose another --port",
        ) from None
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def _request_log() -> Iterator[None]:
    """The server's log lines (one per request) on stderr while it runs."""
    logger = logging.getLogger("influence.server")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


# ---------------------------------------------------------------------------------------- serve


def _serve_settings(args: argparse.Namespace) -> Settings:
    """The settings with this command's flags on top, ``--parallel`` included (``download`` has a flag of that
    name for another thing, so it is not among the shared setting flags)."""
    from influence_tui.core.config import load_settings

    flags: dict[str, object] = {name: getattr(args, name, None) for name in SETTING_FLAGS}
    flags["parallel"] = getattr(args, "parallel", None)
    flags["shutdown_grace"] = getattr(args, "grace", None)
    flags["keep_alive"] = getattr(args, "keep_alive", None)
    flags["max_loaded_memory"] = getattr(args, "memory_budget", None)
    flags["max_loaded_models"] = getattr(args, "max_models", None)
    return load_settings(flags)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _serve_settings(args)
    if args.stop:
        return _stop(settings, port_given=args.port is not None)
    api_key = _api_key(args)
    local = _resolve_model(settings)
    if not local.loadable:  # say why before binding or detaching (the loader knows the reason)
        from influence_tui.core.engine.loader import check_loadable

        check_loadable(local)
    from influence_tui.server.registry import bind_warning

    warning = bind_warning(settings.host, api_key)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    upstreams = _upstreams(args.upstream or ())
    if args.detach:
        return _detach(args, settings, local, api_key)
    return _serve(settings, local, api_key, list(args.cors or ()), upstreams)


def _upstreams(names: Sequence[str]) -> list[Remote]:
    """The remotes named by ``--upstream`` (each once), or a clear error for a name not configured."""
    if not names:
        return []
    from influence_tui.core.remotes import load_remotes

    remotes = load_remotes()
    missing = [name for name in names if name not in remotes]
    if missing:
        raise InfluenceError(
            f"there is no remote named {missing[0]}",
            hint=f"remotes: {', '.join(remotes) or 'none yet'} (`influence remote add NAME URL` adds one)",
        )
    return [remotes[name] for name in dict.fromkeys(names)]


def _serve(
    settings: Settings, local: LocalModel, api_key: str | None, cors: list[str], upstreams: Sequence[Remote] = ()
) -> int:
    import uvicorn

    from influence_tui.core.engine.runner import EngineRunner
    from influence_tui.server import registry
    from influence_tui.server.app import create_app, server_state
    from influence_tui.server.lifecycle import GracefulServer

    sock = _bind(settings.host, settings.port)
    port = int(sock.getsockname()[1])
    url = registry.client_url(settings.host, port)
    runner = EngineRunner(
        max_batch=settings.parallel,
        queue_limit=settings.queue_limit,
        prefill_chunk=settings.prefill_chunk,
        prompt_cache_mib=settings.prompt_cache_mib,
    )
    failures: list[BaseException] = []
    server: GracefulServer | None = None

    def load() -> None:
        print(f"Loading {local.name} …", file=sys.stderr, flush=True)
        from influence_tui.core.types import LoadOptions

        runner.load(local, LoadOptions.from_settings(settings))

    def load_failed(exc: BaseException) -> None:
        failures.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(
        runner,
        local,
        load=load,
        on_load_failure=load_failed,
        settings=settings,
        api_key=api_key,
        cors_origins=cors,
        upstreams=upstreams,
    )
    state = server_state(app)
    state.url = url
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=5, lifespan="on", server_header=False
    )
    server = GracefulServer(config, state, grace_s=settings.shutdown_grace)
    record = registry.write_record(
        url=url,
        host=settings.host,
        port=port,
        model=local.name,
        log=os.environ.get(registry.LOG_ENV) or None,
        detached=bool(os.environ.get(registry.LOG_ENV)),
        api_key=api_key is not None,
        shutdown_grace=settings.shutdown_grace,
    )
    print(
        f"Influence serves {local.name} at {url} (OpenAI API: {url}/v1, Ollama API: {url}); Ctrl+C stops it",
        file=sys.stderr,
        flush=True,
    )
    for remote in upstreams:
        print(
            f"… and the models of {remote.name} ({remote.api_base}) as MODEL@{remote.name}: their requests leave this machine",
            file=sys.stderr,
            flush=True,
        )

    def stop(signum: int, frame: Any) -> None:
        raise _Stopped

    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    try:
        with _request_log():
            server.run(sockets=[sock])
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        registry.remove_record(record.pid)
        runner.close()
        sock.close()
    if failures:
        raise InfluenceError(f"could not load {local.name}: {failures[0]}")
    grace = settings.shutdown_grace
    aborted = f" ({server.aborted} request(s) aborted after {grace:g} s of grace)" if server.aborted else ""
    print(f"Server stopped.{aborted}", file=sys.stderr, flush=True)
    return EXIT_OK


# ---------------------------------------------------------------------------------------- detach


def _child_command(args: argparse.Namespace, settings: Settings) -> list[str]:
    command = [sys.executable, "-m", "influence_tui"]
    if args.models_dir:
        command += ["--models-dir", str(args.models_dir)]
    command += ["serve", "--host", settings.host, "--port", str(settings.port), "--parallel", str(settings.parallel)]
    command += ["--grace", f"{settings.shutdown_grace:g}"]
    for flag, value in (
        ("--keep-alive", args.keep_alive),
        ("--memory-budget", args.memory_budget),
        ("--max-models", args.max_models),
    ):
        if value is not None:
            command += [flag, str(value)]
    if args.model:
        command += ["--model", args.model]
    for flag, value in (("--device", args.device), ("--dtype", args.dtype), ("--quantize", args.quantize)):
        if value:
            command += [flag, value]
    for origin in args.cors or ():
        command += ["--cors", origin]
    for name in args.upstream or ():
        command += ["--upstream", name]
    return command


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _detach(args: argparse.Namespace, settings: Settings, local: LocalModel, api_key: str | None) -> int:
    from influence_tui.server import registry

    folder = registry.servers_dir()
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"serve-{settings.port}.log"
    env = dict(os.environ)
    env[registry.LOG_ENV] = str(log_path)
    if api_key:
        env[API_KEY_ENV] = api_key  # never on the command line, where `ps` would show it
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            _child_command(args, settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    print(f"Starting the server for {local.name} (pid {process.pid}, log {log_path}) …", file=sys.stderr, flush=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    path = registry.record_path(process.pid)
    try:
        while True:
            code = process.poll()
            if code is not None:
                tail = _tail(log_path)
                if tail:
                    print(tail, file=sys.stderr)
                raise InfluenceError(
                    f"the server exited (code {code}) before it was ready", hint=f"the log is {log_path}"
                )
            record = registry.read_record(path) if path.exists() else None
            health = fetch_health(record.url, timeout=1.0) if record else None
            if record is not None and health is not None and health.get("status") == "ok":
                print(record.url)
                print(
                    f"Serving {record.model} at {record.url} (pid {record.pid}); "
                    "`influence ps` shows it, `influence serve --stop` stops it",
                    file=sys.stderr,
                )
                return EXIT_OK
            if time.monotonic() > deadline:
                raise InfluenceError(
                    f"the server (pid {process.pid}) is not ready after {READY_TIMEOUT_S:.0f} s; it keeps loading",
                    hint=f"`influence ps` shows when it is; the log is {log_path}",
                )
            time.sleep(0.2)
    except KeyboardInterrupt:
        process.terminate()
        raise


# ---------------------------------------------------------------------------------------- stop


def _stop_one(record: ServerRecord) -> bool:
    """SIGTERM, then wait; SIGKILL if it will not go. Returns whether it had to be killed."""
    from influence_tui.server import registry

    try:
        os.kill(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        registry.remove_record(record.pid)
        return False
    deadline = time.monotonic() + record.shutdown_grace + STOP_TIMEOUT_S
    while registry.is_running(record):
        if time.monotonic() > deadline:
            kill = getattr(signal, "SIGKILL", signal.SIGTERM)
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, kill)
            registry.remove_record(record.pid)
            return True
        time.sleep(0.1)
    registry.remove_record(record.pid)
    return False


def _stop(settings: Settings, *, port_given: bool) -> int:
    from influence_tui.server import registry

    records = registry.running_servers()
    if port_given:
        records = [r for r in records if r.port == settings.port]
    if not records:
        where = f" on port {settings.port}" if port_given else ""
        print(f"No Influence server is running{where}.", file=sys.stderr)
        return EXIT_OK
    if len(records) > 1:
        raise InfluenceError(
            f"{len(records)} servers are running; choose one with --port",
            hint=", ".join(f"{r.url} (pid {r.pid})" for r in records),
        )
    record = records[0]
    killed = _stop_one(record)
    waited = record.shutdown_grace + STOP_TIMEOUT_S
    how = f"killed (it did not stop within {waited:.0f} s)" if killed else "stopped"
    print(f"Server at {record.url} (pid {record.pid}, {record.model}) {how}.")
    return EXIT_OK


# ---------------------------------------------------------------------------------------- parser


def register(add: AddCommand) -> None:
    p = add(
        "serve",
        cmd_serve,
        "serve a model over HTTP with OpenAI- and Ollama-compatible APIs",
        aliases=["deploy"],
    )
    p.add_argument(
        "-m", "--model", metavar="NAME|PATH", help="model from `influence list`, or a path (default: the demo model)"
    )
    p.add_argument("--host", metavar="ADDR", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", metavar="PORT", help="port to listen on (default: 8080)")
    p.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"require `Authorization: Bearer KEY` on every route but /health (or set {API_KEY_ENV})",
    )
    p.add_argument(
        "--cors", action="append", metavar="ORIGIN", help="allow browser requests from ORIGIN (repeatable; * for any)"
    )
    p.add_argument(
        "--upstream",
        action="append",
        metavar="REMOTE",
        help="also serve this remote's models as MODEL@REMOTE (repeatable; `influence remote add` names one)",
    )
    p.add_argument(
        "--parallel",
        metavar="N",
        help="generate up to N requests at once, batched (default: 8; 1: one after another)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="where to run (default: auto)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), help="weights dtype (default: auto)")
    p.add_argument(
        "--quantize",
        choices=("auto", "none", "int8", "int4"),
        help="weights kept quantized on CPU (default: auto, a GGUF keeps its own; none: floats)",
    )
    p.add_argument(
        "--keep-alive",
        metavar="DURATION",
        help="how long a model loaded on demand stays loaded when idle (5m, 1h, 300, -1 forever, 0; default 5m); "
        "set, it applies to the --model one too, which otherwise stays loaded",
    )
    p.add_argument(
        "--memory-budget",
        metavar="SIZE",
        help="memory the loaded models may take together (8GiB, 512MiB; default: 3/4 of the machine's RAM); "
        "the least recently used idle model is unloaded to make room",
    )
    p.add_argument(
        "--max-models", type=int, metavar="N", help="at most N models loaded at once (default 0: no limit but memory)"
    )
    p.add_argument(
        "--grace",
        metavar="SECONDS",
        help="on SIGTERM/Ctrl+C/--stop, let running requests finish this long, then abort them (default: 10)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--detach", action="store_true", help="run in the background (log and pid file in the data dir); print the URL"
    )
    mode.add_argument(
        "--stop", action="store_true", help="stop the server running in the background (--port picks one of several)"
    )

    p = add("ps", cmd_ps, "show the servers that run and the model each one serves")
    p.add_argument("--json", action="store_true", help="print JSON")
