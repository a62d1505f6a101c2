"""The `rxnn` command line. `rxnn --help` lists the commands; each has its own `--help`."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from rxnn_runtime.demo import run_demo

    run_demo(max_new_tokens=args.max_new_tokens)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rxnn", description="Reactive Transformers: models, runtime, training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="scripted conversation: RxT beside a stateless decoder, per-turn costs")
    demo.add_argument("--max-new-tokens", type=int, default=24, help="answer budget per turn (default 24)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "max_new_tokens", 1) < 1:
        parser.error(f"--max-new-tokens={args.max_new_tokens} must be >= 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
