"""The ``skipstep`` command: a thin argparse dispatcher.

Each subcommand lives in its own module, which exposes ``add_subcommand(subparsers)``: it adds its parser(s) and
sets ``func=<callable(args) -> int>`` as the parser default. Adding a subcommand is one line in
:data:`SUBCOMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from .cli_args import CommandParser

#: Modules that register subcommands, in the order they appear in ``skipstep --help``.
SUBCOMMAND_MODULES = [
    "skipstep.lab.demo",  # demo, sample
    "skipstep.lab.bench_cli",  # bench
    "skipstep.lab.generate",  # generate
    "skipstep.lab.tune",  # tune
]

#: Errors that are the user's to fix (bad values, unusable files and directories; every error class of the lab
#: derives from ValueError): printed as one line, exit status 2, no traceback -- on every rank under torchrun.
USER_ERRORS = (ValueError, OSError)
#: Raised by the testing hooks that stop a run early (finished work is kept): exit status 3.
INTERRUPTIONS = ("BenchInterrupted", "GenerateInterrupted")


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (an OSError as 'reason: path')."""
    if isinstance(err, OSError) and err.strerror:
        text = f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="skipstep",
        description="Few-step sampling for pretrained diffusion models: skipped-step posterior sampling and the "
                    "DDIM family, with side-by-side benchmarks against diffusers' schedulers.")
    parser.add_argument("--version", action="version", version=f"skipstep {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_subcommand(subparsers)
    parser.subcommand_parsers = subparsers.choices  # type: ignore[attr-defined]
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the CLI never downloads models
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the subcommand's parser: `skipstep <command>: error: ...`
        command_parser = parser.subcommand_parsers.get(getattr(args, "command", None), parser)
        command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished cells are kept -- rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        if type(err).__name__ in INTERRUPTIONS:
            print(f"interrupted: {err}; rerun the same command to resume", file=sys.stderr)
            return 3
        if isinstance(err, USER_ERRORS):
            print(f"skipstep {args.command}: error: {one_line(err)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
