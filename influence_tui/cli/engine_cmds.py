"""`influence generate | chat | embed`: run a model from the library on this machine."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from influence_tui.cli.common import EXIT_INTERRUPTED, EXIT_OK, console, settings_from
from influence_tui.core.errors import InfluenceError, RemoteError

if TYPE_CHECKING:
    from influence_tui.cli import AddCommand
    from influence_tui.core.chat import ChatEngine
    from influence_tui.core.config import Settings
    from influence_tui.core.engine.runner import TokenStream
    from influence_tui.core.remotes import RemoteModel
    from influence_tui.core.types import LocalModel, SamplingParams


# ---------------------------------------------------------------------------------------- shared


def _resolve_model(settings: Settings, name: str | None = None) -> LocalModel | RemoteModel:
    """The model named (by ``--model`` unless ``name``): ``MODEL@REMOTE``, a library name or a path."""
    from influence_tui.core.library import Library
    from influence_tui.core.remotes import resolve_model

    return resolve_model(Library(settings), name or settings.model)


def _start_engine(
    settings: Settings, quiet: bool = False, name: str | None = None
) -> tuple[ChatEngine, LocalModel | RemoteModel]:
    """Resolve the model, load it on the engine thread (or connect to its remote) and say what was chosen (on
    stderr)."""
    from influence_tui.core.engine.runner import EngineRunner
    from influence_tui.core.remotes import RemoteModel
    from influence_tui.core.types import LoadOptions

    local = _resolve_model(settings, name)
    if isinstance(local, RemoteModel):
        from influence_tui.core.engine.remote import RemoteEngine

        if not quiet:
            print(f"Connecting to {local.name} at {local.remote.url} …", file=sys.stderr, flush=True)
        remote = RemoteEngine(local)
        try:
            remote.load()
        except BaseException:
            remote.close()
            raise
        if not quiet:
            print(remote.describe(), file=sys.stderr, flush=True)
        return remote, local
    if not quiet:
        print(f"Loading {local.name} …", file=sys.stderr, flush=True)
    runner = EngineRunner()
    try:
        runner.load(local, LoadOptions.from_settings(settings), on_status=None if quiet else _status_line)
    except BaseException:
        runner.close()
        raise
    if not quiet:
        print(runner.describe(), file=sys.stderr, flush=True)
    return runner, local


def _status_line(message: str) -> None:
    """One-time notes while loading (building kernels, preparing a model), on stderr."""
    print(message, file=sys.stderr, flush=True)


def _params(settings: Settings, args: argparse.Namespace) -> SamplingParams:
    from influence_tui.core.types import SamplingParams

    return SamplingParams.from_settings(settings, stop=tuple(args.stop or ()))


def _pieces(stream: TokenStream) -> Iterator[str]:
    for event in stream:
        if event.text:
            yield event.text


def print_reply(stream: TokenStream, *, markdown: bool) -> tuple[str, bool]:
    """Print a reply as it streams; Ctrl+C cancels the reply, not the program. Returns (text, interrupted).

    On a terminal with ``markdown`` the text is a live Markdown render refreshed a few times a second;
    otherwise each piece is written as it comes (scripts and pipes). An error while the reply streams (a
    remote that breaks off) is raised with the text so far in its ``partial_text``.
    """
    parts: list[str] = []
    try:
        if markdown:
            from rich.live import Live
            from rich.markdown import Markdown

            with Live(Markdown(""), console=console(), refresh_per_second=8, vertical_overflow="visible") as live:
                for piece in _pieces(stream):
                    parts.append(piece)
                    live.update(Markdown("".join(parts)))
        else:
            for piece in _pieces(stream):
                parts.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        return "".join(parts), False
    except InfluenceError as exc:
        if isinstance(exc, RemoteError):
            exc.partial_text = "".join(parts)
        raise
    except KeyboardInterrupt:
        stream.cancel()
        parts.extend(_pieces(stream))  # drain to the final event: the engine is free and the stats known
        return "".join(parts), True


# ---------------------------------------------------------------------------------------- generate


def cmd_generate(args: argparse.Namespace) -> int:
    from influence_tui.core.chat import is_remote

    settings = settings_from(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise InfluenceError("the prompt is empty", hint="give PROMPT, or - to read it from stdin")
    params = _params(settings, args)
    runner, _local = _start_engine(settings, quiet=not args.verbose and not sys.stderr.isatty())
    try:
        stream: TokenStream
        if args.raw and is_remote(runner):
            stream = runner.start_completion(prompt, params, threading.Event())
        elif args.raw and not is_remote(runner):
            stream = runner.submit(runner.encode(prompt, add_special_tokens=True), params, threading.Event())
        else:
            from influence_tui.core.chat import start_reply
            from influence_tui.core.sessions import ChatSession

            session = ChatSession(system_prompt=args.system, params=params)
            session.add_user(prompt)
            reply = start_reply(runner, session, threading.Event())
            if reply.plan.warning:
                print(f"warning: {reply.plan.warning}", file=sys.stderr)
            stream = reply.stream
        markdown = sys.stdout.isatty() and not args.plain
        try:
            _text, interrupted = print_reply(stream, markdown=markdown)
        finally:
            if not markdown:
                sys.stdout.write("\n")
                sys.stdout.flush()
        if args.verbose and stream.stats is not None:
            from influence_tui.core.slash import format_stats

            print(format_stats(stream.stats), file=sys.stderr)
        return EXIT_INTERRUPTED if interrupted else EXIT_OK
    finally:
        runner.close()


# ---------------------------------------------------------------------------------------- chat


_CHAT_BANNER = "Chatting with {name}. /help lists commands, /quit (or Ctrl+D) leaves, Ctrl+C stops a reply."


def _read_message(prompt: str) -> str | None:
    """One user message: a line, or several between triple quotes (\"\"\" ... \"\"\"). None at end of input."""
    try:
        line = input(prompt)
    except EOFError:
        return None
    if not line.strip().startswith('"""'):
        return line
    lines = [line.strip()[3:]]
    while True:
        if lines[-1].rstrip().endswith('"""') and (len(lines) > 1 or len(lines[0].strip()) > 0):
            lines[-1] = lines[-1].rstrip()[:-3]
            return "\n".join(lines).strip("\n")
        try:
            lines.append(input("... "))
        except EOFError:
            return "\n".join(lines)


def cmd_chat(args: argparse.Namespace) -> int:
    from influence_tui.core import slash
    from influence_tui.core.chat import finish_reply, is_remote, start_reply
    from influence_tui.core.sessions import ChatSession, load_session
    from influence_tui.core.store import ChatStore

    settings = settings_from(args)
    params = _params(settings, args)
    reopen: str | None = None
    if args.session:
        session = load_session(Path(args.session), defaults=params)
        if args.system:
            session.set_system_prompt(args.system)
        if not args.model:
            reopen = session.model  # a chat with a remote model continues with it
    runner, local = _start_engine(settings, name=_remote_name(reopen))
    try:
        if not args.session:
            session = ChatSession.from_settings(settings, model=local.name, system_prompt=args.system)
            session.params = params
        store: ChatStore | None
        try:
            store = ChatStore.for_sessions_dir(settings.sessions_dir).open()
        except InfluenceError as exc:
            print(f"warning: this chat is not saved: {exc}", file=sys.stderr)
            store = None
        interactive = sys.stdin.isatty()
        if interactive:
            print(_CHAT_BANNER.format(name=local.name))
            if is_remote(runner):
                print(f"Your messages are sent to {runner.model.host}: this chat leaves this machine.")
            if session.messages:
                print(f"Resumed {len(session.messages)} messages from {args.session}.")
        prompt = ">>> " if interactive else ""
        warned: set[str] = set()
        while True:
            try:
                line = _read_message(prompt)
            except KeyboardInterrupt:
                print("\n(use /quit or Ctrl+D to leave)")
                continue
            if line is None:
                break
            if not line.strip():
                continue
            result = slash.run(line, session, store=store)
            if result is not None:
                if result.session is not None:
                    session = result.session
                if result.message:
                    print(result.message)
                if result.action is slash.SlashAction.QUIT:
                    break
                if result.action is not slash.SlashAction.RETRY:
                    continue
            else:
                session.add_user(line)
            if store is not None:
                store.autosave(session)  # the message is kept even if the reply never comes
            try:
                reply = start_reply(runner, session, threading.Event())
            except InfluenceError as exc:
                print(f"error: {exc}", file=sys.stderr)
                continue
            if reply.plan.warning and reply.plan.warning not in warned:
                warned.add(reply.plan.warning)
                print(f"warning: {reply.plan.warning}", file=sys.stderr)
            if reply.plan.dropped_notice:
                print(reply.plan.dropped_notice, file=sys.stderr)
            try:
                text, interrupted = print_reply(reply.stream, markdown=False)
            except RemoteError as exc:
                if not exc.partial_text:
                    print(f"error: {exc}", file=sys.stderr)
                    continue
                print("\n[interrupted]")
                print(f"error: {exc}", file=sys.stderr)
                finish_reply(session, exc.partial_text, None, store)
                continue
            print("\n[stopped]" if interrupted else "")
            finish_reply(session, text, reply.stream.stats, store)
    finally:
        runner.close()
        if args.save_on_exit:
            path = session.save(Path(args.save_on_exit), overwrite=True)
            print(f"Saved the conversation to {path}", file=sys.stderr)
    return EXIT_OK


def _remote_name(name: str | None) -> str | None:
    """``name`` when it names a model of a configured remote (a saved chat's model), else None."""
    if name is None:
        return None
    from influence_tui.core.remotes import load_remotes, split_model_ref

    return name if split_model_ref(name, load_remotes()) is not None else None


# ---------------------------------------------------------------------------------------- embed


def cmd_embed(args: argparse.Namespace) -> int:
    from influence_tui.core.engine.embed import Embedder

    settings = settings_from(args)
    texts = list(args.texts)
    if texts == ["-"]:
        texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not texts:
        raise InfluenceError("nothing to embed", hint="give one or more TEXT arguments, or - to read lines from stdin")
    from influence_tui.core.remotes import RemoteModel

    local = _resolve_model(settings)
    if isinstance(local, RemoteModel):
        raise InfluenceError(
            f"{local.name} is a remote model: embeddings are made here only", hint="give a local model with --model"
        )
    embedder = Embedder.load(local, device=settings.device, device_index=settings.device_index, dtype=settings.dtype)
    vectors = embedder.embed(texts)
    data = {
        "model": local.name,
        "dimensions": embedder.dimensions,
        "embeddings": [{"text": text, "embedding": vector} for text, vector in zip(texts, vectors, strict=True)],
    }
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    return EXIT_OK


# ---------------------------------------------------------------------------------------- parser


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-m",
        "--model",
        metavar="NAME|PATH",
        help="model from `influence list` (MODEL@REMOTE for a remote's), or a path (default: the demo model)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="where to run (default: auto)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), help="weights dtype (default: auto)")
    p.add_argument(
        "--quantize",
        choices=("auto", "none", "int8", "int4"),
        help="weights kept quantized on CPU (default: auto, a GGUF keeps its own; none: floats)",
    )


def _sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults from `influence config`)")
    g.add_argument("-n", "--max-tokens", type=str, metavar="N", help="most tokens to generate")
    g.add_argument("-t", "--temperature", type=str, metavar="T", help="0 is greedy")
    g.add_argument("--top-p", type=str, metavar="P")
    g.add_argument("--top-k", type=str, metavar="K", help="0 or off: no top-k")
    g.add_argument("--min-p", type=str, metavar="P")
    g.add_argument("--repeat-penalty", type=str, metavar="R", help="1 is off")
    g.add_argument("--seed", type=str, metavar="S", help="for reproducible sampling")
    g.add_argument("--stop", action="append", metavar="S", help="stop before this text (repeatable)")


def register(add: AddCommand) -> None:
    p = add("generate", cmd_generate, "generate a reply to one prompt", aliases=["run"])
    p.add_argument("prompt", metavar="PROMPT", help="the prompt; - reads it from stdin")
    _model_args(p)
    _sampling_args(p)
    p.add_argument("--system", metavar="TEXT", help="system prompt")
    p.add_argument("--raw", action="store_true", help="send PROMPT as is, without the chat template")
    p.add_argument("--plain", action="store_true", help="plain text even on a terminal (no Markdown rendering)")
    p.add_argument("-v", "--verbose", action="store_true", help="print what was loaded and the speed figures on stderr")

    p = add("chat", cmd_chat, "chat in the terminal, line by line (slash commands: /help)")
    _model_args(p)
    _sampling_args(p)
    p.add_argument("--system", metavar="TEXT", help="system prompt")
    p.add_argument("--session", metavar="FILE", help="resume a saved conversation")
    p.add_argument("--save-on-exit", metavar="FILE", help="save the conversation to FILE when leaving")

    p = add("embed", cmd_embed, "print embedding vectors of texts as JSON")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="texts to embed; - reads one per line from stdin")
    _model_args(p)
