"""Entry point: `caltrain <command> ...`. Errors of caltrain's hierarchy, bad arguments and unreadable or
unwritable files become one readable line on stderr and exit code 2, never a traceback.

Command modules import only argparse-level code at the top; what a command needs (torch, the HTTP client, ...)
is imported when it runs, so `caltrain --help` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from caltrain.errors import CaltrainError

# Each module defines `register(subparsers)`, which adds its commands and sets `func(args) -> int`.
COMMAND_MODULES = (
    "caltrain.cli.measure",
    "caltrain.cli.ingest",
    "caltrain.cli.serve",
    "caltrain.cli.train",
    "caltrain.cli.jobs",
    "caltrain.cli.trace",
    "caltrain.cli.assess",
    "caltrain.cli.model",
    "caltrain.cli.infer",
    "caltrain.cli.demo",
    "caltrain.cli.evidence",
    "caltrain.cli.enclave",
)


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help, unless it has none worth saying (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" not in text and action.default not in (None, False, argparse.SUPPRESS) and (
            action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
        ):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (`caltrain pack: error: ...`), exit code 2."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0] if message else 'bad arguments'}\n")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("caltrain")
    except PackageNotFoundError:
        import caltrain

        return caltrain.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="caltrain", description="Confidential and accountable deep learning on TEEs.")
    parser.add_argument("--version", action="version", version=f"caltrain {version()}", help="print the version")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CaltrainError as exc:
        print(f"caltrain: error: {type(exc).__name__}: {_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file a command was pointed at, unreadable or unwritable
        where = f": {exc.filename}" if exc.filename else ""
        print(f"caltrain: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
