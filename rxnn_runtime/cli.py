"""The `rxnn` command line. `rxnn --help` lists the commands; each has its own `--help`.

Exit codes: 0 ok, 2 usage error (argparse), 1 runtime failure (one line on stderr: ``rxnn CMD: error: ...``).

    rxnn demo                                  scripted conversation, per-turn costs
    rxnn serve [--host H] [--port P] [--model PATH] [--store URL] [--device D]
    rxnn chat [--model PATH] [--store URL] [--session ID] [--max-new-tokens N] [--device D]
    rxnn --version

More commands come from installed plugins (entry-point group ``rxnn.commands``), e.g. ``rxnn train`` from
``training``: this package never imports ``training`` itself.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import uuid
from pathlib import Path
from typing import Any

from rxt.atomic_io import atomic_write_bytes

MAX_NEW_TOKENS = 1024  # rxnn_runtime.messages.MAX_NEW_TOKENS_LIMIT
DISTRIBUTION = "rxnn-runtime"


class CliError(RuntimeError):
    """A runtime failure reported as one line on stderr with exit code 1."""


def _demo(args: argparse.Namespace) -> int:
    from rxnn_runtime.demo import run_demo

    run_demo(max_new_tokens=args.max_new_tokens)
    return 0


def package_version() -> str:
    """The installed distribution's version, else (a source tree on the path) the package's ``__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        from rxnn_runtime import __version__

        return __version__


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(value: str) -> str:
    """``--device``: ``cpu``, ``cuda`` or ``cuda:N``, and present on this machine (else a usage error, exit 2)."""
    import torch

    kind, _, index = value.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise ValueError(f"--device={value!r} must be cpu, cuda or cuda:N")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device={value}: CUDA is not available on this machine (use --device cpu)")
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise ValueError(f"--device={value}: this machine has {count} CUDA device(s), 0..{count - 1}")
    return value


def load_parts(model_path: str | None, device: str, store_url: str | None = None,
               retention: Any = None) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, store)``: the model (a directory or Hub repo id with its own tokenizer; None: the
    packaged default, else an untrained nano, with a NOTE on stderr) on ``device``, and the session store. Module
    level, so `rxnn serve --engine-process` hands it to its child process by name (`EngineSpec.factory`)."""
    from rxt.tokenizer import RxTokenizer

    if model_path:
        from rxt.hub import tokenizer_for
        from rxt.model import RxT

        try:  # one resolver (rxt.resolve): an existing directory, else a Hub repo id; its own tokenizer with it
            model = RxT.from_pretrained(model_path)
            tokenizer, note = tokenizer_for(model, model_path)
        except Exception as exc:
            raise CliError(f"cannot load model {model_path}: {_one_line(exc)}") from exc
        if note:
            print(f"NOTE: {note}", file=sys.stderr)
    else:
        from rxnn_runtime.demo import default_model

        tokenizer = RxTokenizer.default()
        model, trained = default_model(tokenizer)
        if not trained:
            print("NOTE: UNTRAINED model (seeded random init): answers are noise.", file=sys.stderr)
    return model.to(device), tokenizer, _open_store(store_url, retention)


def _load_reactive(args: argparse.Namespace):
    """The model, tokenizer and store of ``args`` (`load_parts`) as a connected lane: a `ReactiveModel` here, or
    with ``--engine-process`` an `EngineProcess` (the lane in a child process, apart from the server's loop)."""
    parts = (args.model, args.device, args.store, _retention(args))
    if getattr(args, "engine_process", False):
        from rxnn_runtime.engine_process import EngineProcess, EngineProcessError, EngineSpec

        engine = EngineProcess(EngineSpec(load_parts, parts))
        try:
            engine.connect()
        except EngineProcessError as exc:
            raise CliError(_one_line(exc)) from exc
        return engine
    from rxnn_runtime.reactive_model import ReactiveModel

    model, tokenizer, store = load_parts(*parts)
    reactive = ReactiveModel(model, tokenizer, store=store)
    reactive.connect()
    return reactive


def _retention(args: argparse.Namespace):
    """`Retention` from ``--session-limit`` / ``--session-ttl`` (serve only), or None for the store's default."""
    limit, ttl = getattr(args, "session_limit", None), getattr(args, "session_ttl", None)
    if limit is None and ttl is None:
        return None
    from rxnn_runtime.stores import Retention

    try:
        return Retention(max_sessions=limit, idle_seconds=ttl)
    except ValueError as exc:
        raise CliError(_one_line(exc)) from exc


def _open_store(url: str | None, retention: Any = None):
    if url is None or url == "memory://":
        from rxnn_runtime.stores import InMemoryStore

        return InMemoryStore(retention)
    from rxnn_runtime.stores import open_store

    try:
        return open_store(url, retention)
    except Exception as exc:
        raise CliError(f"cannot open store {url}: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    try:
        from rxnn_runtime.server.app import run_server
    except ImportError as exc:
        raise CliError(f"the server module is not available: {_one_line(exc)}") from exc
    reactive = _load_reactive(args)

    def listening(url: str) -> None:  # the real address (the port chosen when --port 0), for people and scripts
        print(f"rxnn serve: listening on {url}", flush=True)

    async def serve() -> None:
        task = asyncio.ensure_future(run_server(reactive, host=args.host, port=args.port, api_key=args.api_key,
                                                allowed_origins=args.allowed_origin, on_listening=listening))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(serve())
    finally:
        reactive.wait_idle(timeout=10)
        reactive.dispose()
    return 0


def _save_session(reactive: Any, session_id: str, directory: str) -> Path:
    """Write the session's committed state to DIR/<session>.rxs atomically (temp file, fsync, rename)."""
    from rxnn_runtime.stores import SessionState

    reactive.wait_idle(timeout=60)
    state = reactive.session_state(session_id)
    if state is None:  # nothing committed yet: the initial memory
        stm = reactive.model.initial_memory(1)[:, 0].detach().cpu()
        state = SessionState(session_id=session_id, stm=stm)
    return atomic_write_bytes(Path(directory) / f"{session_id}.rxs", state.to_bytes())


def _chat_turn(reactive: Any, session_id: str, text: str, max_new_tokens: int, out) -> None:
    """Send one query and stream its tokens to ``out`` until the turn's terminal event (through the session
    facade, so the CLI crosses from the lane like every other client: the one Rx-to-asyncio bridge)."""
    import asyncio

    from rxnn_runtime.events import AnswerDone, Cancelled, Error, Token
    from rxnn_runtime.messages import GenerationOptions

    session = reactive.session(session_id)
    query = session.query(text, GenerationOptions(max_new_tokens=max_new_tokens))

    async def run() -> None:
        out.write("rxt> ")
        out.flush()
        async for event in session.events(query):
            if isinstance(event, Token):
                out.write(event.text)
                out.flush()
            elif isinstance(event, AnswerDone):
                out.write("\n")
                out.flush()
            elif isinstance(event, Error):
                out.write("\n")
                print(f"rxnn chat: error: {event.code}: {event.message}", file=sys.stderr)
            elif isinstance(event, Cancelled):
                out.write("\n(cancelled)\n")

    try:
        asyncio.run(asyncio.wait_for(run(), timeout=600))
    except TimeoutError:
        raise CliError("no answer within 600 s") from None


def _chat(args: argparse.Namespace) -> int:
    from rxnn_runtime.messages import InvalidMessage, Reset

    session_id = args.session or f"chat-{uuid.uuid4().hex[:12]}"
    try:
        Reset(session_id)  # validates the id
    except InvalidMessage as exc:
        raise CliError(f"--session {session_id!r}: {exc}") from exc
    reactive = _load_reactive(args)
    out = sys.stdout
    interactive = sys.stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):  # input() then edits lines and keeps a history (not on Windows)
            import readline  # noqa: F401
    try:
        state = reactive.session_state(session_id)
        turns = state.turns if state else 0
        print(f"session {session_id} ({turns} turns in memory). Commands: /reset, /save DIR, /quit", file=out)
        while True:
            out.flush()
            try:  # input(): readline's line editing on a terminal; plain lines from a pipe
                line = input("you> " if interactive else "")
            except EOFError:  # end of input (Ctrl-D or the pipe closed): a clean exit
                break
            text = line.strip()
            if not text:
                continue
            if text == "/quit":
                break
            if text == "/reset":
                reactive.submit(Reset(session_id))
                reactive.wait_idle(timeout=60)
                print("(session reset: memory cleared)", file=out)
            elif text == "/save" or text.startswith("/save "):
                directory = text[len("/save"):].strip()
                if not directory:
                    print("rxnn chat: usage: /save DIR", file=sys.stderr)
                    continue
                try:
                    path = _save_session(reactive, session_id, directory)
                except OSError as exc:  # a bad directory: say so, keep chatting
                    print(f"rxnn chat: error: cannot save to {directory}: {_one_line(exc)}", file=sys.stderr)
                    continue
                print(f"(session saved to {path})", file=out)
            elif text.startswith("/"):
                print(f"rxnn chat: unknown command {text.split()[0]} (use /reset, /save DIR, /quit)",
                      file=sys.stderr)
            else:
                _chat_turn(reactive, session_id, text, args.max_new_tokens, out)
        reactive.wait_idle(timeout=60)  # let the last memory update commit (it is saved in the store)
    finally:
        reactive.dispose()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rxnn", description="Reactive Transformers: models, runtime, training.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="scripted conversation: RxT beside a stateless decoder, per-turn costs")
    demo.add_argument("--max-new-tokens", type=int, default=24, help="answer budget per turn (default 24)")
    demo.set_defaults(func=_demo)

    model_help = ("model directory (save_pretrained) or Hub repo id owner/name, loaded with its own tokenizer; "
                  "default: the packaged model, else an untrained nano")
    store_help = "session store: memory:// (default), a directory, or redis://HOST:PORT/DB"
    device_help = "torch device for the model: cpu, cuda or cuda:N (default: cuda when available, else cpu)"
    serve = sub.add_parser("serve", help="websocket + web chat server (binds 127.0.0.1 by default)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 = any free port)")
    serve.add_argument("--model", metavar="PATH", help=model_help)
    serve.add_argument("--store", metavar="URL", help=store_help)
    serve.add_argument("--device", help=device_help)
    serve.add_argument("--api-key", "--token", metavar="KEY", dest="api_key",
                       help="require this key (HTTP: Authorization: Bearer KEY; websocket: header, ?api_key= or a "
                       "first auth frame); default $RXNN_API_KEY, else none")
    serve.add_argument("--allowed-origin", metavar="ORIGIN", action="append", default=[],
                       help="a browser origin (scheme://host[:port]) allowed besides the server's own; repeatable")
    serve.add_argument("--session-limit", metavar="N", type=int,
                       help="keep at most N idle sessions (memory: default 1024; directory: delete the oldest)")
    serve.add_argument("--engine-process", action="store_true",
                       help="run the model's lane in a process of its own, apart from the server's event loop (each "
                       "then has a Python interpreter to itself; slower to start)")
    serve.add_argument("--session-ttl", metavar="SECONDS", type=float,
                       help="drop sessions idle for SECONDS (memory: default 3600; directory/redis: delete/expire)")
    serve.set_defaults(func=_serve)

    chat = sub.add_parser(
        "chat", help="terminal chat that streams tokens (reads stdin lines: scriptable)",
        description="Terminal chat. Lines from stdin are queries; /reset clears the session's memory, "
        "/save DIR writes the session's memory to DIR/<session>.rxs, /quit (or end of input) exits.",
    )
    chat.add_argument("--model", metavar="PATH", help=model_help)
    chat.add_argument("--store", metavar="URL", help=store_help)
    chat.add_argument("--device", help=device_help)
    chat.add_argument("--session", metavar="ID", help="session id (default: a new random one)")
    chat.add_argument("--max-new-tokens", type=int, default=64, help="answer budget per turn (default 64)")
    chat.set_defaults(func=_chat)
    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: Any) -> None:
    """Commands registered by other installed packages (``rxnn train`` from ``training``) through the
    entry-point group ``rxnn.commands``: each value is a ``register(subparsers)`` callable. A plugin that fails to
    load still appears, and says why when run."""
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group="rxnn.commands"), key=lambda e: e.name):
        try:
            entry.load()(sub)
        except Exception as exc:
            reason = f"command {entry.name!r} is unavailable ({entry.value}: {type(exc).__name__}: {_one_line(exc)})"
            try:
                broken = sub.add_parser(entry.name, help=f"(unavailable: {_one_line(exc)})", add_help=False)
            except argparse.ArgumentError:  # it registered its name before failing
                continue
            broken.add_argument("rest", nargs=argparse.REMAINDER)
            broken.set_defaults(func=lambda _args, reason=reason: _raise(CliError(reason)))


def _raise(exc: Exception) -> int:
    raise exc


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "max_new_tokens", 1) < 1:
        parser.error(f"--max-new-tokens={args.max_new_tokens} must be >= 1")
    if args.command == "chat" and args.max_new_tokens > MAX_NEW_TOKENS:
        parser.error(f"--max-new-tokens={args.max_new_tokens} must be <= {MAX_NEW_TOKENS}")
    if args.command == "serve" and not 0 <= args.port <= 65535:
        parser.error(f"--port={args.port} must be in 0..65535")
    if args.command in ("serve", "chat"):
        try:
            args.device = default_device() if args.device is None else check_device(args.device)
        except ValueError as exc:
            parser.error(str(exc))
    try:
        return args.func(args)
    except CliError as exc:
        print(f"rxnn {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print(f"rxnn {args.command}: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
