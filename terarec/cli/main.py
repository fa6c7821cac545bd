"""``terarec`` entry point: finds every subcommand module in ``terarec.cli`` and dispatches.

Each module ``terarec/cli/<name>.py`` defines ``register(subparsers)``, which adds its parser
and sets ``func`` to its ``run(args)``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import terarec.cli
from terarec.errors import TerarecError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="terarec",
        description="Train and serve recommendation models with huge embedding tables "
                    "(HugeCTR-compatible).",
    )
    parser.add_argument("--version", action="version", version=f"terarec {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(terarec.cli.__path__), key=lambda m: m.name):
        if info.name == "main" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"terarec.cli.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def _version() -> str:
    import terarec

    return terarec.__version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except TerarecError as exc:
        print(f"terarec {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
