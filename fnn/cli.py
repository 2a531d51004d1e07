"""The ``fnn`` command: ``fnn train``, ``fnn check``, ``fnn lr-find``.

Each subcommand lives in its own module (``fnn/cli_<name>.py``) that exposes
``add_parser(subparsers)`` and ``run(args) -> int``; this file only dispatches. Bad input ends
with one clear message on stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module implementing it
_COMMANDS: dict[str, str] = {
    "train": "fnn.cli_train",
    "check": "fnn.cli_check",
    "lr-find": "fnn.cli_lrfind",
}


class UsageError(Exception):
    """Bad flags or input: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fnn",
        description=(
            "fnn: functional neural networks in JAX with hand-written, verified backprop."
        ),
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def _version() -> str:
    from fnn import __version__

    return f"fnn {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    debug = getattr(args, "debug", False)
    module = importlib.import_module(_COMMANDS[args.command])
    try:
        return int(module.run(args) or 0)
    except (
        UsageError,
        ValueError,
        TypeError,
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
    ) as err:
        if debug:
            raise
        print(f"fnn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    # Under `python -m fnn.cli` this file runs as __main__, a second copy of the module whose
    # UsageError differs from the fnn.cli.UsageError subcommands raise; dispatch via fnn.cli.
    from fnn.cli import main as _main

    sys.exit(_main())
