"""`influence list | show | rm | import | config | tui`: the model library and the settings."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from influence_tui.cli.common import EXIT_OK, console, library_from, print_json, settings_from
from influence_tui.core.errors import InfluenceError, ModelNotFoundError
from influence_tui.core.units import human_count, human_size

if TYPE_CHECKING:
    from influence_tui.cli import AddCommand
    from influence_tui.core.types import LocalModel


_RUNTIME_NOTES = {
    "native": "native (Influence's own model code, straight from the file)",
    "transformers": "transformers (an architecture without a native model)",
}


def cmd_list(args: argparse.Namespace) -> int:
    from influence_tui.core.remote_catalog import list_remotes
    from influence_tui.core.remotes import load_remotes

    models: list[LocalModel] = library_from(args).models() if not args.remote else []
    remotes = load_remotes() if not args.local else {}
    listings = list_remotes(remotes.values())  # in parallel, a few seconds at most each
    remote_models = [model for listing in listings for model in listing.models]
    if args.json:
        print_json([m.to_dict() for m in models] + [m.to_dict() for m in remote_models])
        for listing in listings:
            if listing.error:
                print(f"warning: {listing.error}", file=sys.stderr)
        return EXIT_OK
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from influence_tui.core.types import SOURCE_LABELS

    out = console()
    if not models and not listings:
        if args.remote:
            out.print("No remotes yet. `influence remote add NAME URL` adds one.")
        else:
            out.print("No models yet. `influence import PATH` adds a GGUF file or model folder.")
        return EXIT_OK
    table = Table(box=box.SIMPLE_HEAD if out.is_terminal else None, pad_edge=False)
    for column, justify in (
        ("NAME", "left"),
        ("FORMAT", "left"),
        ("ARCH", "left"),
        ("RUNTIME", "left"),
        ("PARAMS", "right"),
        ("CONTEXT", "right"),
        ("SIZE", "right"),
        ("SOURCE", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for m in models:
        name = Text(m.name)
        if not m.loadable:
            name.append(" !", style="bold red")
        source = SOURCE_LABELS[m.source] + (" (link)" if m.linked else "")
        table.add_row(  # header fields are text from disk: Text, never markup
            name,
            Text(m.format_label),
            Text(m.architecture or "-"),
            m.runtime or "-",
            human_count(m.parameters),
            str(m.context_length) if m.context_length else "-",
            human_size(m.size_bytes),
            source,
        )
    for r in remote_models:  # names and details come from the remote: Text, never markup
        table.add_row(
            Text(r.name),
            Text(r.format_label),
            Text(r.family or "-"),
            "remote",
            Text(r.parameters or "-"),
            str(r.context_length) if r.context_length else "-",
            human_size(r.size_bytes) if r.size_bytes else "-",
            Text(f"remote {r.host}"),
        )
    if models or remote_models:
        out.print(table)
    for m in models:
        for problem in m.problems:
            out.print(Text.assemble(("! ", "bold red"), (m.name, "bold"), f": {problem}"))
    for listing in listings:
        if listing.error:
            out.print(
                Text.assemble(("! ", "bold red"), (f"@{listing.remote.name}", "bold"), f" unreachable: {listing.error}")
            )
        elif not listing.models:
            out.print(Text(f"@{listing.remote.name} ({listing.remote.host}) serves no models"))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from influence_tui.core.remotes import load_remotes, split_model_ref

    if split_model_ref(args.name, load_remotes()) is not None:
        return _show_remote(args)
    model: LocalModel = library_from(args).resolve(args.name)
    if args.json:
        print_json(model.to_dict())
        return EXIT_OK
    from rich.table import Table
    from rich.text import Text

    from influence_tui.core.types import SOURCE_LABELS

    out = console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows: list[tuple[str, str]] = [
        ("name", model.name),
        ("path", str(model.path) + (" (link)" if model.linked else "")),
        ("source", SOURCE_LABELS[model.source]),
        ("format", model.format),
        ("quantization", model.quantization or "-"),
        ("architecture", model.architecture or "-"),
        ("classes", ", ".join(model.architectures) or "-"),
        ("runtime", _RUNTIME_NOTES.get(model.runtime or "", "-")),
        ("parameters", f"{model.parameters:,} ({human_count(model.parameters)})" if model.parameters else "-"),
        ("context length", str(model.context_length or "-")),
        ("size", f"{human_size(model.size_bytes)} ({model.size_bytes:,} bytes)"),
        ("tokenizer", "yes" if model.has_tokenizer else "no"),
        ("chat template", "yes" if model.has_chat_template else "no"),
        ("complete", "yes" if model.complete else "no"),
        ("loadable", "yes" if model.loadable else "no"),
    ]
    if model.revision:
        rows.append(("revision", model.revision))
    for key, value in rows:
        grid.add_row(key, Text(value))
    for i, path in enumerate(model.weight_files):
        grid.add_row("weights" if i == 0 else "", Text(str(path)))
    for problem in model.problems:
        grid.add_row(Text("problem", style="bold red"), Text(problem))
    out.print(grid)
    return EXIT_OK


def _show_remote(args: argparse.Namespace) -> int:
    from influence_tui.core.engine.remote import RemoteEngine
    from influence_tui.core.remote_catalog import RemoteCatalog

    found = RemoteCatalog().model(args.name)
    assert found is not None
    with RemoteEngine(found) as engine:
        info = engine.load()
        model = engine.model
    if args.json:
        print_json(model.to_dict())
        return EXIT_OK
    rows = [
        ("name", model.name),
        ("remote", f"{model.remote.name} ({model.remote.kind} API at {model.remote.api_base})"),
        ("model", model.model_id),
        ("context length", str(info.context_length or "unknown")),
        ("api key", model.remote.key_status()),
        ("privacy", f"chats with it are sent to {model.host}"),
    ]
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, Text(value))
    console().print(grid)
    return EXIT_OK


def cmd_rm(args: argparse.Namespace) -> int:
    library = library_from(args)
    try:
        model: LocalModel = library.get(args.name)
    except ModelNotFoundError:
        # `rm demo` or `rm smollm2`: explain why a model outside the models dir cannot be removed
        match = library.resolve(args.name)
        if match.source == "models-dir":
            raise
        model = match
    library.check_removable(model)
    what = f"{model.name} ({human_size(model.size_bytes)}{', a link' if model.linked else ''}) at {model.path}"
    if not args.yes:
        if not sys.stdin.isatty():
            raise InfluenceError(f"not removing {model.name} without confirmation", hint="add --yes to remove it")
        answer = input(f"Remove {what}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("Nothing removed.")
            return EXIT_OK
    removed = library.remove(model)
    print(f"Removed {model.name}: " + ", ".join(str(p) for p in removed))
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    library = library_from(args)
    result = library.import_model(Path(args.path), name=args.name, link=args.link)
    model = result.model
    how = "Linked" if result.linked else f"Copied {human_size(result.copied_bytes)}"
    print(f"{how}: {model.name} ({model.format_label}) -> {model.path}")
    for problem in model.problems:
        print(f"! {problem}", file=sys.stderr)
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    from influence_tui.core import config, paths

    action = args.action
    if action == "path":
        print(paths.config_file())
        return EXIT_OK
    if action == "set":
        if args.key is None or args.value is None:
            raise InfluenceError("usage: influence config set KEY VALUE")
        written = config.write_setting(args.key, args.value)
        print(f"{args.key} = {args.value}  (saved in {written})")
        return EXIT_OK
    if action == "unset":
        if args.key is None:
            raise InfluenceError("usage: influence config unset KEY")
        written = config.write_setting(args.key, None)
        print(f"{args.key} removed from {written}")
        return EXIT_OK
    settings = settings_from(args)
    if args.json:
        print_json(
            {
                name: {
                    "value": None
                    if getattr(settings, name) is None
                    else (
                        config.display_value(settings, name)
                        if config.is_secret(name)
                        else _jsonable(getattr(settings, name))
                    ),
                    "source": settings.source(name),
                    "env": list(config.setting_env_vars(name)),
                }
                for name in config.SETTING_NAMES
            }
        )
        return EXIT_OK
    from rich import box
    from rich.table import Table
    from rich.text import Text

    out = console()
    table = Table(box=box.SIMPLE_HEAD if out.is_terminal else None, pad_edge=False)
    table.add_column("SETTING", no_wrap=True)
    table.add_column("VALUE", overflow="fold")
    table.add_column("SOURCE", overflow="fold")
    table.add_column("ENV", overflow="fold", style="dim")
    for name in config.SETTING_NAMES:
        source = settings.source(name)
        table.add_row(
            name,
            Text(config.display_value(settings, name), style="" if source == "default" else "bold"),
            Text(source),
            ", ".join(config.setting_env_vars(name)),
        )
    out.print(table)
    out.print(Text(f"config file: {paths.config_file()}", style="dim"))
    return EXIT_OK


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def cmd_tui(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from influence_tui.tui.app import InfluenceApp

    InfluenceApp(settings).run()
    return EXIT_OK


def register(add: AddCommand) -> None:
    p = add("list", cmd_list, "list the models on disk and those of the remotes", aliases=["ls"])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--remote", action="store_true", help="only the remotes' models (MODEL@REMOTE)")
    where.add_argument("--local", action="store_true", help="only the models on this machine (no network)")

    p = add("show", cmd_show, "show everything known about one model")
    p.add_argument("name", metavar="NAME", help="a model name (or a unique part of one) or a path")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("rm", cmd_rm, "remove a model from the models dir", aliases=["remove"])
    p.add_argument("name", metavar="NAME", help="the model's name as `influence list` shows it")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    p = add("import", cmd_import, "add a GGUF file or a model folder to the library")
    p.add_argument("path", metavar="PATH", help="a .gguf file or a folder with config.json and .safetensors")
    p.add_argument("--name", help="name in the library (default: the file or folder name)")
    p.add_argument("--link", action="store_true", help="link to the files instead of copying them")

    p = add("config", cmd_config, "show settings with their sources, or change the config file")
    p.add_argument(
        "action",
        nargs="?",
        choices=("show", "path", "set", "unset"),
        default="show",
        help="show (default): every setting, its value and source; path: the config file; "
        "set KEY VALUE / unset KEY: edit the config file",
    )
    p.add_argument("key", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("value", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("tui", cmd_tui, "start the full-screen app (same as influence-tui)")
    p.add_argument("--model", metavar="NAME|PATH", help="model to chat with")
