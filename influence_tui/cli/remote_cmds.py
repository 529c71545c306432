"""`influence remote add | list | show | rm | test`: named remote engines (vLLM, llama.cpp's server, Ollama, ...)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from influence_tui.cli.common import EXIT_ERROR, EXIT_OK, console, print_json
from influence_tui.core.errors import ConfigError, InfluenceError, RemoteError

if TYPE_CHECKING:
    from influence_tui.cli import AddCommand
    from influence_tui.core.remotes import Remote


def _remote(name: str) -> Remote:
    from influence_tui.core.remotes import load_remotes

    remotes = load_remotes()
    if name not in remotes:
        known = ", ".join(remotes) or "none yet"
        raise ConfigError(f"there is no remote named {name}", hint=f"remotes: {known}; `influence remote add NAME URL`")
    return remotes[name]


def cmd_remote_add(args: argparse.Namespace) -> int:
    from influence_tui.core import remotes

    name = remotes.check_name(args.name)
    url = remotes.check_url(args.url)
    existing = remotes.load_remotes()
    if name in existing and not args.replace:
        raise ConfigError(f"there is already a remote named {name}", hint="add --replace to change it")
    env = None if args.api_key_env is None else remotes.check_key_env(args.api_key_env)
    remote = remotes.Remote(
        name=name,
        url=url,
        kind=args.kind or "openai",
        api_key_env=env,
        connect_timeout_s=remotes.CONNECT_TIMEOUT_S if args.connect_timeout is None else args.connect_timeout,
        read_timeout_s=remotes.READ_TIMEOUT_S if args.read_timeout is None else args.read_timeout,
    )
    remote = remotes.remote_from_table(name, remote.to_table(), "the command line")  # the same checks as the file's
    if args.kind is None:
        from dataclasses import replace

        from influence_tui.core.engine.remote_http import detect_kind

        try:
            kind = detect_kind(remote)
        except RemoteError as exc:
            raise RemoteError(
                f"could not tell what {url} is: {exc.message}",
                hint=f"{exc.hint + '; ' if exc.hint else ''}or give --kind openai|ollama to add it without asking",
                reason=exc.reason,
            ) from None
        remote = replace(remote, kind=kind)
    path = remotes.save_remote(remote, replace=args.replace)
    key = f", key from ${env}" if env else ""
    print(f"Added remote {name}: {remote.kind} API at {remote.api_base}{key} (saved in {path})")
    if env and remote.key_status().endswith("(not set)"):
        print(f"warning: ${env} is not set in this shell; requests to {name} need it", file=sys.stderr)
    print(f"Its models: influence list --remote · chat: influence chat --model MODEL@{name}")
    return EXIT_OK


def cmd_remote_list(args: argparse.Namespace) -> int:
    from influence_tui.core.remotes import load_remotes

    remotes = list(load_remotes().values())
    if args.json:
        print_json([r.to_dict() for r in remotes])
        return EXIT_OK
    if not remotes:
        print("No remotes yet. `influence remote add NAME URL` adds one (e.g. a vLLM server: http://HOST:8000/v1).")
        return EXIT_OK
    from rich import box
    from rich.table import Table
    from rich.text import Text

    out = console()
    table = Table(box=box.SIMPLE_HEAD if out.is_terminal else None, pad_edge=False)
    for column in ("NAME", "KIND", "URL", "KEY"):
        table.add_column(column, no_wrap=True)
    for remote in remotes:
        table.add_row(Text(remote.name), remote.kind, Text(remote.url), Text(remote.key_status()))
    out.print(table)
    return EXIT_OK


def cmd_remote_show(args: argparse.Namespace) -> int:
    from influence_tui.core.remote_catalog import list_remote

    remote = _remote(args.name)
    listing = list_remote(remote, timeout_s=min(10.0, remote.read_timeout_s))
    if args.json:
        print_json(
            {
                **remote.to_dict(),
                "reachable": listing.ok,
                "error": listing.error,
                "models": [m.to_dict() for m in listing.models],
            }
        )
        return EXIT_OK if listing.ok else EXIT_ERROR
    from rich.table import Table
    from rich.text import Text

    out = console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows = [
        ("name", remote.name),
        ("url", remote.url),
        ("kind", f"{remote.kind} (requests go to {remote.api_base})"),
        ("api key", remote.key_status()),
        ("timeouts", f"connect {remote.connect_timeout_s:g} s, between chunks {remote.read_timeout_s:g} s"),
    ]
    if remote.kind == "openai":
        extras = {None: "when the server is known to take them", True: "always", False: "never"}[remote.extras]
        rows.append(("top_k/min_p/repeat_penalty", f"sent {extras}"))
    else:
        rows.append(("num_ctx", str(remote.num_ctx) if remote.num_ctx else "the model's own, else up to 8192"))
    for key, value in rows:
        grid.add_row(key, Text(value))
    if listing.ok:
        names = ", ".join(m.model_id for m in listing.models) or "(none)"
        grid.add_row("models", Text(f"{len(listing.models)}: {names}"))
    else:
        grid.add_row(Text("unreachable", style="bold red"), Text(listing.error or ""))
    out.print(grid)
    return EXIT_OK if listing.ok else EXIT_ERROR


def cmd_remote_rm(args: argparse.Namespace) -> int:
    from influence_tui.core.remotes import delete_remote

    remote = _remote(args.name)
    path = delete_remote(remote.name)
    print(f"Removed remote {remote.name} ({remote.url}) from {path}")
    return EXIT_OK


def cmd_remote_test(args: argparse.Namespace) -> int:
    from influence_tui.core.engine.remote_http import RemoteClient

    remote = _remote(args.name)
    client = RemoteClient(remote)
    started = time.perf_counter()
    try:
        models = client.list_models()
        if args.model:
            client.model_details(args.model)
    except InfluenceError as exc:
        print(f"{remote.name}: FAILED after {time.perf_counter() - started:.2f} s: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        client.close()
    elapsed = time.perf_counter() - started
    key = f"key from ${remote.api_key_env} accepted" if remote.api_key_env else "no key"
    served = f"{len(models)} model{'s' if len(models) != 1 else ''}"
    print(
        f"{remote.name}: ok · {remote.kind} API at {remote.api_base} · {served} · {key} · answered in {elapsed * 1000:.0f} ms"
    )
    if args.model:
        print(f"{args.model}@{remote.name} is served there.")
    return EXIT_OK


def register(add: AddCommand) -> None:
    p = add("remote", lambda args: _usage(p), "name remote engines (vLLM, SGLang, llama.cpp, Ollama...) to chat with")
    sub = p.add_subparsers(dest="remote_command", metavar="ACTION", title="actions")

    def action(name: str, func: object, help_text: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
        q.set_defaults(func=func)
        return q

    q = action("add", cmd_remote_add, "add a remote (its kind is detected unless given)")
    q.add_argument("name", metavar="NAME", help="what to call it: models are then MODEL@NAME")
    q.add_argument("url", metavar="URL", help="e.g. http://gpu:8000/v1 (vLLM), http://host:11434 (Ollama)")
    q.add_argument("--kind", choices=("openai", "ollama"), help="its API (default: detected by asking it)")
    q.add_argument(
        "--api-key-env", metavar="VAR", help="the environment variable holding its API key (never stored itself)"
    )
    q.add_argument("--connect-timeout", type=float, metavar="S", help="seconds to wait for a connection (default 5)")
    q.add_argument(
        "--read-timeout", type=float, metavar="S", help="seconds it may stay silent mid-answer (default 120)"
    )
    q.add_argument("--replace", action="store_true", help="replace a remote of the same name")

    q = action("list", cmd_remote_list, "list the remotes (no network)")
    q.add_argument("--json", action="store_true", help="print JSON")

    q = action("show", cmd_remote_show, "show a remote's settings and the models it serves now")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--json", action="store_true", help="print JSON")

    q = action("rm", cmd_remote_rm, "remove a remote from the config")
    q.add_argument("name", metavar="NAME")

    q = action("test", cmd_remote_test, "check that a remote answers and accepts the key")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--model", metavar="MODEL", help="also check that it serves MODEL")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_OK
