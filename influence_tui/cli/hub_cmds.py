"""`influence search | info | download | verify`: find models on the Hub, fetch them, check them."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from influence_tui.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, console, print_json, settings_from
from influence_tui.core.hub.text import count, day, duration
from influence_tui.core.memory import describe_machine
from influence_tui.core.units import human_count, human_size

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from influence_tui.cli import AddCommand
    from influence_tui.core.config import Settings
    from influence_tui.core.types import DownloadPlan, DownloadProgress, DownloadResult, HubModelDetails

BAR_DELAY_S = 0.5
"""A progress bar appears only for work that has taken longer than this (cached and tiny files stay quiet)."""
PLAIN_REPORT_EVERY_S = 5.0


# ------------------------------------------------------------------------------------------ search, info


def cmd_search(args: argparse.Namespace) -> int:
    from influence_tui.core.hub import HubClient

    settings = settings_from(args)
    with HubClient(settings) as client:
        models = client.search(
            args.query, author=args.author, limit=args.limit, sort=args.sort, filters=args.filter or ()
        )
    if args.json:
        print_json([m.to_dict() for m in models])
        return EXIT_OK
    from rich import box
    from rich.table import Table
    from rich.text import Text

    out = console()
    if not models:
        out.print("No models found.")
        return EXIT_OK
    table = Table(box=box.SIMPLE_HEAD if out.is_terminal else None, pad_edge=False)
    for column, justify in (
        ("MODEL", "left"),
        ("DOWNLOADS", "right"),
        ("LIKES", "right"),
        ("UPDATED", "left"),
        ("TASK", "left"),
        ("LIBRARY", "left"),
        ("TAGS", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=column != "TAGS")  # type: ignore[arg-type]
    for m in models:
        name = Text(m.id)
        if m.gated:
            name.append(" (gated)", style="yellow")
        shown = {m.pipeline_tag, m.library_name}
        tags = [t for t in m.tags if t not in shown and ":" not in t][:6]
        table.add_row(
            name,
            count(m.downloads),
            count(m.likes),
            day(m.updated),
            m.pipeline_tag or "-",
            m.library_name or "-",
            Text(", ".join(tags), style="dim"),
        )
    out.print(table)
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from influence_tui.core.hub import HubClient

    settings = settings_from(args)
    with HubClient(settings) as client:
        details = client.details(args.repo, args.revision, context=args.context)
    if args.json:
        print_json(details.to_dict())
        return EXIT_OK
    _print_details(console(), details)
    return EXIT_OK


def _print_details(out: Console, d: HubModelDetails) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    m = d.model
    out.print(Text.assemble((m.id, "bold"), f"  revision {d.revision}", f" (commit {(d.commit or '?')[:12]})"))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows = [
        ("author", m.author or "-"),
        ("downloads", f"{count(m.downloads)} (30 days)"),
        ("likes", count(m.likes)),
        ("updated", day(m.updated)),
        ("task", m.pipeline_tag or "-"),
        ("library", m.library_name or "-"),
        ("architecture", d.architecture or "-"),
        ("parameters", f"{d.parameters:,} ({human_count(d.parameters)})" if d.parameters else "-"),
        ("context", f"{d.context_length:,} tokens" if d.context_length else "-"),
        ("formats", ", ".join(d.formats) or "none"),
        ("gated", f"yes ({m.gated}): accept the license on the Hub and set HF_TOKEN" if m.gated else "no"),
    ]
    for key, value in rows:
        grid.add_row(key, Text(value))
    out.print(grid)

    out.print()
    files = Table(title=None, box=box.SIMPLE_HEAD if out.is_terminal else None, pad_edge=False)
    files.add_column("FILE", overflow="fold")
    files.add_column("SIZE", justify="right", no_wrap=True)
    files.add_column("STORAGE", no_wrap=True)
    for f in d.files:
        files.add_row(Text(f.path), human_size(f.size), "lfs" if f.lfs else "git")
    out.print(files)

    where = describe_machine(d.machine)
    if not d.choices:
        out.print(Text("No safetensors or GGUF weights: Influence cannot run this repo.", style="yellow"))
        return
    context = d.choices[0].memory.context if d.choices[0].memory else 0
    out.print(Text(f"Download choices (memory with a {context:,}-token context; this machine: {where})"))
    table = Table(box=box.SIMPLE_HEAD if out.is_terminal else None, pad_edge=False)
    for column, justify in (
        ("CHOICE", "left"),
        ("FILES", "right"),
        ("SIZE", "right"),
        ("KV CACHE", "right"),
        ("MEMORY", "right"),
        ("DEVICE", "left"),
        ("VERDICT", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    styles = {"fits": "green", "tight": "yellow", "won't fit": "red"}
    for c in d.choices:
        mem = c.memory
        table.add_row(
            c.name,
            str(len(c.files)),
            human_size(c.size_bytes),
            ("" if mem.kv_cache_exact else "~") + human_size(mem.kv_cache_bytes) if mem else "-",
            human_size(mem.total_bytes) if mem else "-",
            mem.device if mem else "-",
            Text(mem.verdict, style=styles[mem.verdict]) if mem else "-",
        )
    out.print(table)
    ggufs = [c for c in d.choices if c.kind == "gguf"]
    command = f"influence download {m.id}"
    if ggufs and (len(ggufs) > 1 or len(d.choices) > 1):
        command += f" --quant {ggufs[0].name}"
    out.print(Text(f"Download: {command}", style="dim"))


# ------------------------------------------------------------------------------------------ download


class ProgressView:
    """Renders download progress: rich bars on a terminal (only for files busy over half a second), plain
    lines otherwise. Called from the download's threads."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.live = out.is_terminal
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._total: TaskID | None = None
        self._states: dict[str, str] = {}
        self._last_plain = time.monotonic()

    def __enter__(self) -> ProgressView:
        if self.live:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.out,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, p: DownloadProgress) -> None:
        with self._lock:
            self._render(p)

    def _render(self, p: DownloadProgress) -> None:
        for f in p.files:
            before = self._states.get(f.path)
            self._states[f.path] = f.state
            if f.state == "retrying" and before != "retrying":
                self._line(f"  {f.path}: retrying ({f.message})")
            busy_before = before in ("downloading", "verifying", "retrying")
            if f.state == "done" and busy_before and not self.live and f.elapsed_s > BAR_DELAY_S:
                self._line(f"  done {f.path} ({human_size(f.size)} in {f.elapsed_s:.1f} s)")
        if self._progress is None:
            now = time.monotonic()
            if p.state == "downloading" and now - self._last_plain >= PLAIN_REPORT_EVERY_S:
                self._last_plain = now
                self._line(
                    f"  {p.fraction:4.0%}  {human_size(p.done_bytes)} / {human_size(p.total_bytes)}"
                    f"  {human_size(int(p.speed))}/s  ETA {duration(p.eta_s)}"
                )
            return
        progress = self._progress
        busy = {f.path for f in p.files if f.state in ("downloading", "verifying", "retrying")}
        for f in p.files:
            task = self._tasks.get(f.path)
            if task is None and f.path in busy and f.elapsed_s > BAR_DELAY_S:
                task = self._tasks[f.path] = progress.add_task(f.path, total=f.size, completed=f.done)
            if task is not None:
                progress.update(task, completed=f.done)
        if self._total is None and p.elapsed_s > BAR_DELAY_S and busy and len(p.files) > 1:
            self._total = progress.add_task("total", total=p.total_bytes, completed=p.done_bytes)
        if self._total is not None:
            progress.update(self._total, completed=p.done_bytes)

    def _line(self, text: str) -> None:
        from rich.text import Text

        self.out.print(Text(text))


def cmd_download(args: argparse.Namespace) -> int:
    from influence_tui.core.downloads import DownloadManager, staging_dir
    from influence_tui.core.errors import DownloadCancelled

    settings = settings_from(args)
    manager = DownloadManager(settings, parallel=args.parallel)
    output = Path(args.output).expanduser().absolute() if args.output else None
    plan = manager.plan(args.repo, revision=args.revision, quant=args.quant, include=args.include or (), output=output)
    err = console(stderr=True)
    from rich.text import Text

    err.print(
        Text(
            f"{plan.repo_id} (revision {plan.revision}, commit {plan.commit[:12]}): {len(plan.files)} files, "
            f"{human_size(plan.total_bytes)} -> {plan.folder}"
        )
    )
    try:
        with ProgressView(err) as view:
            result = manager.download(plan, force=args.force, on_progress=view)
    except (KeyboardInterrupt, DownloadCancelled):
        print(
            f"Cancelled. The partial files stay in {staging_dir(plan.folder)}; run the same command to resume.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    _print_result(result, plan, settings, output)
    return EXIT_OK


def _print_result(result: DownloadResult, plan: DownloadPlan, settings: Settings, output: Path | None) -> None:
    if result.fetched_bytes == 0 and result.reused_bytes == plan.total_bytes:
        print(
            f"{result.repo_id} is already downloaded and verified ({len(result.files)} files, {human_size(plan.total_bytes)})."
        )
    else:
        speed = result.fetched_bytes / result.elapsed_s if result.elapsed_s > 0 else 0
        line = (
            f"Downloaded {result.repo_id}: {len(result.files)} files verified, {human_size(result.fetched_bytes)} "
            f"fetched in {result.elapsed_s:.1f} s ({human_size(int(speed))}/s)"
        )
        if result.reused_bytes:
            line += f", {human_size(result.reused_bytes)} already on disk"
        print(line + ".")
    print(f"Model folder: {result.folder}")
    name = result.model_name or str(result.folder)
    quoted = name if " " not in name else f'"{name}"'
    in_models_dir = output is None or output == settings.models_dir.expanduser().absolute()
    prefix = "influence" if in_models_dir else f"influence --models-dir {result.folder.parent}"
    print(f"Chat with it: {prefix} chat --model {quoted}")


# ------------------------------------------------------------------------------------------ verify


def cmd_verify(args: argparse.Namespace) -> int:
    from influence_tui.cli.common import library_from
    from influence_tui.core.downloads import verify_folder

    library = library_from(args)
    model = library.resolve(args.name)
    folder = model.path if model.path.is_dir() else model.path.parent
    checks = verify_folder(folder)
    bad = [c for c in checks if not c.ok]
    if args.json:
        print_json(
            {
                "name": model.name,
                "folder": str(folder),
                "ok": not bad,
                "files": [{"path": c.path, "ok": c.ok, "problem": c.problem} for c in checks],
            }
        )
        return EXIT_ERROR if bad else EXIT_OK
    for c in checks:
        print(f"  ok    {c.path}" if c.ok else f"  BAD   {c.path}: {c.problem}")
    if bad:
        print(
            f"{len(bad)} of {len(checks)} files of {model.name} do not match the manifest; "
            f"`influence download <repo> --force` fetches them again.",
            file=sys.stderr,
        )
        return EXIT_ERROR
    print(f"{model.name}: all {len(checks)} files match their sha256.")
    return EXIT_OK


# ------------------------------------------------------------------------------------------ parser


def _hub_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mirror", dest="hub_endpoint", metavar="URL", help="Hub endpoint or mirror (default: hub_endpoint)"
    )
    p.add_argument("--token", dest="hf_token", metavar="TOKEN", help="HuggingFace token (default: HF_TOKEN)")


def register(add: AddCommand) -> None:
    from influence_tui.core.downloads import DEFAULT_PARALLEL
    from influence_tui.core.hub import DEFAULT_LIMIT, SORTS
    from influence_tui.core.memory import DEFAULT_CONTEXT

    p = add("search", cmd_search, "search the Hub for models")
    p.add_argument("query", nargs="?", metavar="QUERY", help="text the model id contains")
    p.add_argument("--author", help="only models of this user or organization")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"most results (default {DEFAULT_LIMIT})")
    p.add_argument("--sort", choices=tuple(SORTS), default="downloads", help="order, best first (default downloads)")
    p.add_argument(
        "--filter",
        action="append",
        metavar="TAG",
        help="only models with this tag (gguf, text-generation...); repeatable",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    _hub_flags(p)

    p = add("info", cmd_info, "show a Hub model's files, quantizations and whether each fits in memory")
    p.add_argument("repo", metavar="REPO", help="owner/name")
    p.add_argument("--revision", help="branch, tag or commit (default main)")
    p.add_argument(
        "--context",
        type=int,
        default=DEFAULT_CONTEXT,
        help=f"tokens of context to size the KV cache for (default {DEFAULT_CONTEXT})",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    _hub_flags(p)

    p = add("download", cmd_download, "download a model from the Hub (resumable, verified)", aliases=["pull"])
    p.add_argument("repo", metavar="REPO", help="owner/name")
    p.add_argument(
        "--quant", metavar="Q", help="the GGUF quantization to fetch (Q4_K_M, Q8_0...); `influence info` lists them"
    )
    p.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="also fetch the files matching GLOB (e.g. '*.onnx'); repeatable",
    )
    p.add_argument("--revision", help="branch, tag or commit (default main)")
    p.add_argument("--output", metavar="DIR", help="download into DIR/<owner>__<name> (default: the models dir)")
    p.add_argument(
        "--force", action="store_true", help="fetch every file again, dropping partial and earlier downloads"
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        metavar="N",
        help=f"files at a time (default {DEFAULT_PARALLEL})",
    )
    _hub_flags(p)

    p = add("verify", cmd_verify, "re-hash a downloaded model's files against its manifest")
    p.add_argument("name", metavar="NAME", help="a model name as `influence list` shows it, or its folder")
    p.add_argument("--json", action="store_true", help="print JSON")
