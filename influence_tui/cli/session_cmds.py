"""``influence sessions``: the saved chats of the chat store (the same ones the TUI's conversations pane shows).

``list`` and ``search`` print a table (``--json`` for JSON), ``show`` prints a chat's branch shown, ``export``
writes it as Markdown or as the JSON session format (``/load`` and ``influence chat --session`` read it), ``rm``
deletes it. A chat is named by its id or any unique start of it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from influence_tui.cli.common import EXIT_OK, console, print_json, settings_from

if TYPE_CHECKING:
    from influence_tui.cli import AddCommand
    from influence_tui.core.store import ChatStore, ChatSummary


def _store(args: argparse.Namespace) -> ChatStore:
    from influence_tui.core.store import ChatStore

    return ChatStore.for_sessions_dir(settings_from(args).sessions_dir).open()


def _when(iso: str) -> str:
    from influence_tui.core.export import local_time

    return local_time(iso)


def _table(chats: list[ChatSummary], extra: dict[str, str] | None = None) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    out = console()
    table = Table(box=box.SIMPLE_HEAD if out.is_terminal else None, pad_edge=False)
    for column, justify in (("ID", "left"), ("UPDATED", "left"), ("MSGS", "right"), ("MODEL", "left")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("TITLE" if extra is None else "MATCH", overflow="fold")
    for chat in chats:
        text = chat.title if extra is None else extra.get(chat.id, chat.title)
        table.add_row(chat.id, _when(chat.updated_at), str(chat.message_count), Text(chat.model or "-"), Text(text))
    out.print(table)


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    chats = list(store.list(limit=args.limit))
    if args.json:
        print_json([asdict(chat) for chat in chats])
        return EXIT_OK
    if not chats:
        console().print(f"No saved chats yet in {store.path}.")
        return EXIT_OK
    _table(chats)
    total = store.count()
    if total > len(chats):
        print(f"… {total - len(chats)} older (--limit N shows more)", file=sys.stderr)
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    hits = _store(args).search(args.text, limit=args.limit)
    if args.json:
        print_json(
            [
                {
                    **asdict(hit.chat),
                    "snippet": hit.snippet.text,
                    "spans": [list(span) for span in hit.snippet.spans],
                }
                for hit in hits
            ]
        )
        return EXIT_OK
    if not hits:
        console().print(f"No chat matches {args.text!r}.")
        return EXIT_OK
    _table([hit.chat for hit in hits], {hit.chat.id: hit.snippet.text for hit in hits})
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from influence_tui.core.export import chat_markdown

    session = _store(args).load(args.id)
    if args.json:
        print_json(session.to_dict())
        return EXIT_OK
    sys.stdout.write(chat_markdown(session))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from influence_tui.core.export import chat_markdown

    session = _store(args).load(args.id)
    text = (
        chat_markdown(session)
        if args.format == "md"
        else json.dumps(session.to_dict(), indent=2, ensure_ascii=False) + "\n"
    )
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return EXIT_OK
    path = Path(args.output).expanduser()
    if args.format == "json":
        written = session.save(path)  # never overwrites a file that is not a session
    else:
        from influence_tui.core.export import export_markdown

        written = export_markdown(session, path)
    print(f"Exported “{session.display_title}” to {written}", file=sys.stderr)
    return EXIT_OK


def cmd_rm(args: argparse.Namespace) -> int:
    store = _store(args)
    summary = store.summary(args.id)
    if not args.yes and sys.stdin.isatty():
        answer = input(f"Delete “{summary.title}” ({summary.message_count} messages)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Kept.", file=sys.stderr)
            return EXIT_OK
    store.delete(summary.id)
    print(f"Deleted “{summary.title}” ({summary.id})", file=sys.stderr)
    return EXIT_OK


def register(add: AddCommand) -> None:
    p = add("sessions", lambda _args: _usage(p), "list, search, show, export or delete the saved chats")
    sub = p.add_subparsers(dest="sessions_command", metavar="ACTION", title="actions")

    def action(name: str, func: object, help_text: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
        q.set_defaults(func=func)
        return q

    q = action("list", cmd_list, "the saved chats, last updated first")
    q.add_argument("--limit", type=int, default=50, metavar="N", help="at most N chats (default: 50)")
    q.add_argument("--json", action="store_true", help="print JSON")
    q = action("search", cmd_search, "the chats whose messages hold every word of TEXT")
    q.add_argument("text", metavar="TEXT")
    q.add_argument("--limit", type=int, default=50, metavar="N", help="at most N chats (default: 50)")
    q.add_argument("--json", action="store_true", help="print JSON")
    q = action("show", cmd_show, "print a chat (the branch shown) as Markdown")
    q.add_argument("id", metavar="ID")
    q.add_argument("--json", action="store_true", help="print it in the JSON session format")
    q = action("export", cmd_export, "write a chat as Markdown or as a JSON session file")
    q.add_argument("id", metavar="ID")
    q.add_argument("--format", choices=("md", "json"), default="md", help="md (default) or json (what /load reads)")
    q.add_argument("-o", "--output", metavar="FILE", help="the file to write (default: standard output)")
    q = action("rm", cmd_rm, "delete a chat and all its branches")
    q.add_argument("id", metavar="ID")
    q.add_argument("-y", "--yes", action="store_true", help="do not ask first")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
